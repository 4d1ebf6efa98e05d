//! One file per subcommand: arguments in, options struct out, operation
//! called, result printed. The operations know nothing of clap.

pub mod backup;
pub mod backups;
pub mod completions;
pub mod restore;
pub mod verify;

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::output::Output;
use crate::postgres::{DbTarget, PgServer, direct::DirectServer};

/// What every command gets: resolved settings and the output choices.
pub struct Context {
    pub settings: Settings,
    pub output: Output,
}

impl Context {
    /// The PostgreSQL server holding the instance's database.
    pub fn source_server(&self) -> Result<Box<dyn PgServer>> {
        Ok(self.server_for(self.settings.database()?.clone()))
    }

    /// Another server reached the same way (restore and verify targets).
    pub fn server_for(&self, target: DbTarget) -> Box<dyn PgServer> {
        Box::new(DirectServer::new(
            target,
            self.settings.pg_bin_dir.clone(),
            self.settings.temp_dir.clone(),
        ))
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.settings.backup_dir.clone()
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
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    }
}
