//! The Docker Engine: finding a compose deployment's containers, stopping
//! and starting the app containers, and throwaway database containers.

pub mod app;
pub mod exec;
pub mod limits;
pub mod services;
pub mod throwaway;

use std::collections::HashMap;

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
};

use crate::creator::{Creator, Liveness};
use crate::error::TuskError;

pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// The directory compose ran in: where Mastodon's `.env.production` sits.
pub const COMPOSE_WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";

/// What a container tusk made is for (`dump`, `verify`).
pub const PURPOSE_LABEL: &str = "tusk.purpose";
/// The run that made it: host name, process id, process start time.
const HOST_LABEL: &str = "tusk.host";
const PID_LABEL: &str = "tusk.pid";
const STARTED_LABEL: &str = "tusk.started";

/// Labels for a container this run makes: its purpose and this run as its
/// creator, so a later run can remove it should this one be killed.
pub fn creator_labels(purpose: &str) -> HashMap<String, String> {
    let me = Creator::current();
    HashMap::from([
        (PURPOSE_LABEL.into(), purpose.into()),
        (HOST_LABEL.into(), me.host.clone()),
        (PID_LABEL.into(), me.pid.to_string()),
        (STARTED_LABEL.into(), me.started.to_string()),
    ])
}

/// Containers tusk made (named `tusk-...`, labelled with a purpose and a
/// creator) whose creator no longer runs on this host; by name.
pub async fn orphaned_containers(docker: &Docker) -> Result<Vec<String>> {
    let listed = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![PURPOSE_LABEL.to_string()],
            )])),
            ..Default::default()
        }))
        .await
        .context("could not list containers")?;
    let mut orphans = Vec::new();
    for container in listed {
        let Some(name) = container
            .names
            .as_ref()
            .and_then(|names| names.first())
            .map(|name| name.trim_start_matches('/').to_string())
        else {
            continue;
        };
        let labels = container.labels.unwrap_or_default();
        if name.starts_with("tusk-") && creator_of(&labels).is_some_and(is_gone) {
            orphans.push(name);
        }
    }
    orphans.sort();
    Ok(orphans)
}

fn creator_of(labels: &HashMap<String, String>) -> Option<Creator> {
    Some(Creator {
        host: labels.get(HOST_LABEL)?.clone(),
        pid: labels.get(PID_LABEL)?.parse().ok()?,
        started: labels.get(STARTED_LABEL)?.parse().ok()?,
    })
}

fn is_gone(creator: Creator) -> bool {
    creator.liveness() == Liveness::Gone
}

/// Removes a container tusk made, running or not, with its anonymous
/// volumes; one that is already gone is no error.
pub async fn remove_container(docker: &Docker, name: &str) -> Result<()> {
    let removed = docker
        .remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    match removed {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("could not remove container {name}")),
    }
}

/// Connects to the engine at `host` (`unix:///...` or `tcp://...`), else
/// `DOCKER_HOST`, else the local socket.
pub fn connect(host: Option<&str>) -> Result<Docker> {
    let docker = match host {
        Some(host) if host.starts_with("unix://") => {
            Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION)
        }
        Some(host) => Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_defaults(),
    };
    docker.with_context(|| {
        format!(
            "could not reach the Docker Engine at {}",
            host.unwrap_or("the default socket")
        )
    })
}

/// Whether the Engine at `host` (else `DOCKER_HOST`, else the local socket)
/// runs on this machine and sees its file system.
pub fn engine_is_local(host: Option<&str>) -> bool {
    let from_env = std::env::var("DOCKER_HOST").ok();
    is_local_address(host.or(from_env.as_deref()))
}

fn is_local_address(host: Option<&str>) -> bool {
    cfg!(target_os = "linux") && host.is_none_or(|host| host.starts_with("unix://"))
}

/// How the PostgreSQL container is named in the configuration.
#[derive(Debug, Clone)]
pub enum ContainerSelector {
    Name(String),
    ComposeService {
        service: String,
        project: Option<String>,
    },
}

impl std::fmt::Display for ContainerSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerSelector::Name(name) => write!(f, "container {name}"),
            ContainerSelector::ComposeService {
                service,
                project: Some(project),
            } => {
                write!(f, "compose service {service} of project {project}")
            }
            ContainerSelector::ComposeService {
                service,
                project: None,
            } => {
                write!(f, "compose service {service}")
            }
        }
    }
}

/// A running container, as much as tusk needs of it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub project: Option<String>,
    /// The compose project's directory, as compose recorded it.
    pub working_dir: Option<String>,
    /// Its address on its first network, reachable from the host on Linux.
    pub address: Option<String>,
}

/// Finds the running container `selector` names. A stopped or missing one
/// is a usage error that lists what is running.
pub async fn find_running(docker: &Docker, selector: &ContainerSelector) -> Result<Container> {
    let candidates = match selector {
        ContainerSelector::Name(name) => {
            match docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
            {
                Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {
                    vec![info.id.unwrap_or_default()]
                }
                Ok(_) => Vec::new(),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Vec::new(),
                Err(err) => return Err(err).context("could not ask the Docker Engine"),
            }
        }
        ContainerSelector::ComposeService { service, project } => {
            let mut labels = vec![format!("{COMPOSE_SERVICE_LABEL}={service}")];
            if let Some(project) = project {
                labels.push(format!("{COMPOSE_PROJECT_LABEL}={project}"));
            }
            let filters = HashMap::from([("label".to_string(), labels)]);
            docker
                .list_containers(Some(ListContainersOptions {
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .context("could not list containers")?
                .into_iter()
                .filter_map(|c| c.id)
                .collect()
        }
    };
    match candidates.as_slice() {
        [id] => inspect(docker, id).await,
        [] => Err(TuskError::usage(format!(
            "the PostgreSQL {selector} is not running; running containers: {}",
            running_names(docker).await?
        ))),
        _ => Err(TuskError::usage(format!(
            "{selector} matches {} running containers; name one with --container \
             or narrow it with --compose-project",
            candidates.len()
        ))),
    }
}

pub async fn inspect(docker: &Docker, id: &str) -> Result<Container> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("could not inspect container {id}"))?;
    let labels = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let address = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|networks| {
            let mut names: Vec<&String> = networks.keys().collect();
            names.sort();
            names
                .into_iter()
                .filter_map(|name| networks[name].ip_address.clone())
                .find(|ip| !ip.is_empty())
        });
    Ok(Container {
        id: info.id.unwrap_or_else(|| id.to_string()),
        name: info
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: info.image.unwrap_or_default(),
        project: labels.get(COMPOSE_PROJECT_LABEL).cloned(),
        working_dir: labels.get(COMPOSE_WORKING_DIR_LABEL).cloned(),
        address,
    })
}

/// Every running container of a compose service, in any project, by name.
pub async fn running_of_service(docker: &Docker, service: &str) -> Result<Vec<Container>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{COMPOSE_SERVICE_LABEL}={service}")],
    )]);
    let ids: Vec<String> = docker
        .list_containers(Some(ListContainersOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .context("could not list containers")?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    let mut containers = Vec::new();
    for id in ids {
        containers.push(inspect(docker, &id).await?);
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(containers)
}

/// Names of all running containers, for error messages.
pub async fn running_names(docker: &Docker) -> Result<String> {
    let mut names: Vec<String> = docker
        .list_containers(None::<ListContainersOptions>)
        .await
        .context("could not list containers")?
        .into_iter()
        .filter_map(|c| c.names?.first().cloned())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    names.sort();
    Ok(if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_unix_socket_is_a_local_engine() {
        assert!(super::is_local_address(None));
        assert!(super::is_local_address(Some("unix:///var/run/docker.sock")));
        assert!(!super::is_local_address(Some("tcp://10.0.0.5:2375")));
        assert!(!super::is_local_address(Some("ssh://admin@host")));
    }
}
