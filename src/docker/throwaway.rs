//! Throwaway PostgreSQL containers: a test restore that never touches the
//! production server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};

use super::{Container, inspect};
use crate::cleanup;
use crate::postgres::DbTarget;

/// How long a fresh container may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A started container from `like`'s image, removed by the returned guard.
pub async fn start_like(
    docker: &Docker,
    like: &Container,
    login: &DbTarget,
) -> Result<(Container, cleanup::Deferred)> {
    let described = format!("{}'s image", like.name);
    start_from_image(docker, &like.image, &described, login).await
}

/// A started PostgreSQL container from `image` (described as `described`
/// in errors), removed by the returned guard, also after a failed start.
pub async fn start_from_image(
    docker: &Docker,
    image: &str,
    described: &str,
    login: &DbTarget,
) -> Result<(Container, cleanup::Deferred)> {
    let name = format!("tusk-verify-{}", crate::names::random_hex());
    let user = login.user().unwrap_or("postgres");
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec![
            format!("POSTGRES_USER={user}"),
            // Trust is safe here: the container is private to this run.
            "POSTGRES_HOST_AUTH_METHOD=trust".into(),
            format!("POSTGRES_PASSWORD={}", crate::names::random_hex()),
        ]),
        labels: Some(super::creator_labels("verify")),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            config,
        )
        .await
        .with_context(|| format!("could not create a verify container from {described}"))?;
    let remove_docker = docker.clone();
    let remove_name = name.clone();
    let guard = cleanup::defer(format!("remove container {name}"), move || async move {
        super::remove_container(&remove_docker, &remove_name).await?;
        tracing::info!("removed container {remove_name}");
        Ok(())
    });
    let started = async {
        docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("could not start container {name}"))?;
        let container = inspect(docker, &name).await?;
        wait_ready(&container, login).await?;
        Ok::<_, anyhow::Error>(container)
    }
    .await;
    match started {
        Ok(container) => {
            tracing::info!("verify container {name} ({image}) is ready");
            Ok((container, guard))
        }
        Err(err) => {
            if let Err(removal) = guard.run().await {
                tracing::warn!("{removal:#}");
            }
            Err(err)
        }
    }
}

/// Waits until PostgreSQL in `container` accepts SQL sessions from here.
async fn wait_ready(container: &Container, login: &DbTarget) -> Result<()> {
    let address = container
        .address
        .clone()
        .with_context(|| format!("container {} has no network address", container.name))?;
    let probe = login.with_host(&address, 5432).with_database("postgres");
    let started = Instant::now();
    loop {
        if let Ok(client) = probe.connect().await
            && client.simple_query("SELECT 1").await.is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "PostgreSQL in container {} did not become ready in {}s",
                container.name,
                READY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
