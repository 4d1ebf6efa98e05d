//! Stopping Mastodon's app containers around a dump, and always starting
//! them again.

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, StartContainerOptions, StopContainerOptions,
};
use std::collections::HashMap;

use super::{COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, Container, inspect};
use crate::cleanup;

/// Seconds the app gets to shut down before the Engine kills it.
const STOP_TIMEOUT: i32 = 30;

/// Mastodon's app services of one deployment: the compose services (or
/// container names) beside the database container.
#[derive(Debug, Clone)]
pub struct AppServices {
    pub docker: Docker,
    /// The PostgreSQL container: its compose project scopes the search, and
    /// it is never stopped.
    pub database: Container,
    pub services: Vec<String>,
}

impl AppServices {
    /// Stops the running containers of the services; they are started again
    /// by [`StoppedServices::start`] or, after a failure or a signal, by the
    /// cleanup that runs before tusk exits.
    pub async fn stop(&self) -> Result<StoppedServices> {
        let containers = find(&self.docker, &self.database, &self.services).await?;
        stop(&self.docker, containers).await
    }
}

/// App containers stopped by tusk; started again by [`StoppedServices::start`]
/// or, after a failure or Ctrl-C, by `main`'s cleanup.
pub struct StoppedServices {
    names: Vec<String>,
    restart: cleanup::Deferred,
}

impl StoppedServices {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub async fn start(self) -> Result<()> {
        self.restart.run().await
    }

    /// Leaves the containers stopped, also after a failure or a signal
    /// (`tusk migrate`: the old app must not accept writes after the copy);
    /// returns their names.
    pub fn keep_stopped(self) -> Vec<String> {
        self.restart.dismiss();
        self.names
    }
}

/// Starts containers that tusk left stopped on purpose, by name.
pub async fn start_named(docker: &Docker, names: &[String]) -> Result<()> {
    start_all(docker, names).await
}

/// Finds the running containers of `services` in the database's compose
/// project (by label), else by container name, never the database itself.
pub async fn find(
    docker: &Docker,
    database: &Container,
    services: &[String],
) -> Result<Vec<Container>> {
    let mut found = Vec::new();
    for service in services {
        let mut labels = vec![format!("{COMPOSE_SERVICE_LABEL}={service}")];
        if let Some(project) = &database.project {
            labels.push(format!("{COMPOSE_PROJECT_LABEL}={project}"));
        }
        let by_label = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(HashMap::from([("label".to_string(), labels)])),
                ..Default::default()
            }))
            .await
            .context("could not list containers")?;
        let mut ids: Vec<String> = by_label.into_iter().filter_map(|c| c.id).collect();
        if ids.is_empty() {
            let by_name = docker
                .list_containers(Some(ListContainersOptions {
                    filters: Some(HashMap::from([(
                        "name".to_string(),
                        vec![format!("^/{service}$")],
                    )])),
                    ..Default::default()
                }))
                .await
                .context("could not list containers")?;
            ids = by_name.into_iter().filter_map(|c| c.id).collect();
        }
        if ids.is_empty() {
            tracing::info!("no running container for service {service}");
        }
        for id in ids {
            if id == database.id {
                tracing::warn!(
                    "not stopping {}: it is the PostgreSQL container",
                    database.name
                );
                continue;
            }
            found.push(inspect(docker, &id).await?);
        }
    }
    Ok(found)
}

/// One container of an app service, running or not.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceContainer {
    pub service: String,
    pub name: String,
    pub image: String,
    /// The Engine's state: `running`, `restarting`, `exited`, `paused`...
    pub state: String,
    /// The Engine's summary, e.g. `Up 3 hours (healthy)`.
    pub status: String,
}

/// The containers of `services` in any state, found as [`find`] finds
/// running ones (compose labels in the database's project, else names).
pub async fn states(
    docker: &Docker,
    database: &Container,
    services: &[String],
) -> Result<Vec<ServiceContainer>> {
    let mut found = Vec::new();
    for service in services {
        let mut labels = vec![format!("{COMPOSE_SERVICE_LABEL}={service}")];
        if let Some(project) = &database.project {
            labels.push(format!("{COMPOSE_PROJECT_LABEL}={project}"));
        }
        let list = |filter: (&str, Vec<String>)| {
            docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(filter.0.to_string(), filter.1)])),
                ..Default::default()
            }))
        };
        let mut containers = list(("label", labels))
            .await
            .context("could not list containers")?;
        if containers.is_empty() {
            containers = list(("name", vec![format!("^/{service}$")]))
                .await
                .context("could not list containers")?;
        }
        for container in containers {
            if container.id.as_deref() == Some(database.id.as_str()) {
                continue;
            }
            found.push(ServiceContainer {
                service: service.clone(),
                name: container
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: container.image.unwrap_or_default(),
                state: container
                    .state
                    .map(|state| state.to_string())
                    .unwrap_or_default(),
                status: container.status.unwrap_or_default(),
            });
        }
    }
    Ok(found)
}

/// Stops `containers` in order. Whatever happens next, they are started
/// again: the undo action is registered before the first stop.
pub async fn stop(docker: &Docker, containers: Vec<Container>) -> Result<StoppedServices> {
    let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
    let restart_docker = docker.clone();
    let restart_names = names.clone();
    let restart = cleanup::defer(format!("start {}", names.join(", ")), move || async move {
        start_all(&restart_docker, &restart_names).await
    });
    for container in &containers {
        tracing::info!("stopping {}", container.name);
        docker
            .stop_container(
                &container.id,
                Some(StopContainerOptions {
                    t: Some(STOP_TIMEOUT),
                    ..Default::default()
                }),
            )
            .await
            .with_context(|| format!("could not stop container {}", container.name))?;
    }
    Ok(StoppedServices { names, restart })
}

async fn start_all(docker: &Docker, names: &[String]) -> Result<()> {
    let mut failed = Vec::new();
    for name in names {
        tracing::info!("starting {name}");
        if let Err(err) = docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            tracing::error!("could not start container {name}: {err}");
            failed.push(name.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("could not start {}; start them by hand", failed.join(", "))
    }
}
