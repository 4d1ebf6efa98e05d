//! One file per subcommand: arguments in, options struct out, operation
//! called, result printed. The operations know nothing of clap.

pub mod backup;
pub mod backups;
pub mod completions;
pub mod media;
pub mod prune;
pub mod restore;
pub mod verify;

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Cli, Command};
use bollard::Docker;

use crate::config::{PgMode, Settings};
use crate::docker::{Container, ContainerSelector};
use crate::output::Output;
use crate::postgres::docker::DockerServer;
use crate::postgres::{DbTarget, PgServer, direct::DirectServer};

/// What every command gets: resolved settings and the output choices.
pub struct Context {
    pub settings: Settings,
    pub output: Output,
}

impl Context {
    /// The PostgreSQL server holding the instance's database, reached as
    /// `postgres.mode` says.
    pub async fn source_server(&self) -> Result<Box<dyn PgServer>> {
        let login = self.settings.database()?;
        match self.settings.mode {
            PgMode::Direct => Ok(self.direct_server(login.clone())),
            PgMode::Docker => {
                let (docker, container) = self.source_container().await?;
                let engine_is_local =
                    crate::docker::engine_is_local(self.settings.docker_host.as_deref());
                let server = DockerServer::new(docker, container, login)?.with_dump_transport(
                    self.settings.transport,
                    engine_is_local,
                    self.settings.temp_dir.clone(),
                )?;
                Ok(Box::new(server))
            }
        }
    }

    /// The Engine and the running database container (Docker mode).
    pub async fn source_container(&self) -> Result<(Docker, Container)> {
        let docker = crate::docker::connect(self.settings.docker_host.as_deref())?;
        let container = crate::docker::find_running(&docker, &self.settings.container).await?;
        Ok((docker, container))
    }

    /// A server reached over the network with the local tools.
    pub fn direct_server(&self, target: DbTarget) -> Box<dyn PgServer> {
        Box::new(DirectServer::new(
            target,
            self.settings.pg_bin_dir.clone(),
            self.settings.temp_dir.clone(),
        ))
    }

    /// A server in the named container, logging in as configured.
    pub async fn container_server(&self, name: &str) -> Result<Box<dyn PgServer>> {
        let docker = crate::docker::connect(self.settings.docker_host.as_deref())?;
        let selector = ContainerSelector::Name(name.to_string());
        let container = crate::docker::find_running(&docker, &selector).await?;
        Ok(Box::new(DockerServer::new(
            docker,
            container,
            self.settings.database()?,
        )?))
    }

    /// The instance's database name (libpq's default, `postgres`, if the
    /// login names none).
    pub fn source_database_name(&self) -> Result<String> {
        Ok(self
            .settings
            .database()?
            .database()
            .unwrap_or("postgres")
            .to_string())
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.settings.backup_dir.clone()
    }

    pub fn mode_name(&self) -> &'static str {
        match self.settings.mode {
            PgMode::Direct => "direct",
            PgMode::Docker => "docker",
        }
    }
}

pub async fn dispatch(cli: Cli) -> Result<()> {
    // Commands that need no settings run even with a broken config.
    match &cli.command {
        Command::Completions(args) => return completions::exec(args),
        Command::Man(args) => return completions::exec_man(args),
        _ => {}
    }
    let settings = Settings::resolve(&cli.global)?;
    if let Some(path) = &settings.config_file {
        tracing::debug!("config file: {}", path.display());
    }
    let ctx = Context {
        settings,
        output: Output::new(cli.global.json, cli.global.quiet, cli.global.yes),
    };
    match cli.command {
        Command::Backup(args) => backup::exec(&ctx, args).await,
        Command::Backups(args) => backups::exec(&ctx, args).await,
        Command::Restore(args) => restore::exec(&ctx, args).await,
        Command::Verify(args) => verify::exec(&ctx, args).await,
        Command::Media(args) => media::exec(&ctx, args).await,
        Command::Prune(args) => prune::exec(&ctx, args).await,
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    }
}
