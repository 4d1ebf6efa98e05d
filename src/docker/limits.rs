//! What a container may use (its memory and CPU limits, else the Engine
//! host's) and which compose files started it, for sizing the server in it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;

/// Compose writes these labels on every container it starts.
const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";

/// A container's resources and its compose origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerResources {
    /// The memory limit in bytes, when one is set.
    pub memory_limit: Option<u64>,
    /// The CPU limit (`--cpus`, or quota / period), when one is set.
    pub cpu_limit: Option<f64>,
    /// The Engine host's memory in bytes and CPUs.
    pub host_memory: Option<u64>,
    pub host_cpus: Option<u32>,
    /// The compose project's directory and files, as the labels name them.
    pub compose_working_dir: Option<PathBuf>,
    pub compose_config_files: Vec<PathBuf>,
}

pub async fn resources(docker: &Docker, id: &str) -> Result<ContainerResources> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("could not inspect container {id}"))?;
    let host = info.host_config.unwrap_or_default();
    let positive = |v: Option<i64>| v.filter(|v| *v > 0);
    let cpu_limit = match positive(host.nano_cpus) {
        Some(nano) => Some(nano as f64 / 1e9),
        None => match (positive(host.cpu_quota), positive(host.cpu_period)) {
            (Some(quota), Some(period)) => Some(quota as f64 / period as f64),
            _ => None,
        },
    };
    let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
    let engine = docker
        .info()
        .await
        .context("could not ask the Docker Engine about its host")?;
    Ok(ContainerResources {
        memory_limit: positive(host.memory).map(|m| m as u64),
        cpu_limit,
        host_memory: positive(engine.mem_total).map(|m| m as u64),
        host_cpus: positive(engine.ncpu).map(|n| n as u32),
        compose_working_dir: labels.get(WORKING_DIR_LABEL).map(PathBuf::from),
        compose_config_files: labels
            .get(CONFIG_FILES_LABEL)
            .map(|files| {
                files
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default(),
    })
}
