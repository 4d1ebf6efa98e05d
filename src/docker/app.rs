//! Facts about Mastodon's app containers that a backup records: the image
//! a container runs, and the output of a short command in it
//! (`tootctl version`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::InspectContainerOptions;
use futures_util::StreamExt;

/// The image reference a container was created from, as written
/// (`ghcr.io/mastodon/mastodon:v4.3.2`), not the image id.
pub async fn image_reference(docker: &Docker, id: &str) -> Result<Option<String>> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("could not inspect container {id}"))?;
    Ok(info.config.and_then(|c| c.image).filter(|i| !i.is_empty()))
}

/// Runs `cmd` in the container and returns its standard output, or an
/// error when it fails or takes longer than `timeout`.
pub async fn exec_output(
    docker: &Docker,
    id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<String> {
    let label = cmd.join(" ");
    let exec = docker
        .create_exec(
            id,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("could not run {label} in container {id}"))?;
    let run = async {
        let started = docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            bail!("the Docker Engine did not attach to {label}");
        };
        let mut stdout = Vec::new();
        while let Some(item) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = item? {
                stdout.extend_from_slice(&message);
            }
        }
        Ok(stdout)
    };
    let stdout = tokio::time::timeout(timeout, run)
        .await
        .with_context(|| format!("{label} did not finish within {}s", timeout.as_secs()))??;
    let exit = docker.inspect_exec(&exec.id).await?.exit_code;
    if exit != Some(0) {
        bail!("{label} exited with {exit:?}");
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}
