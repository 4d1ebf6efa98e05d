//! One file per subcommand: arguments in, options struct out, operation
//! called, result printed. The operations know nothing of clap.

pub mod backup;
pub mod backups;
pub mod blocks;
pub mod completions;
pub mod init;
pub mod media;
pub mod migrate;
pub mod prune;
pub mod rehearse;
pub mod restore;
pub mod status;
pub mod tune;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Result;

use tusk::config::Settings;
use tusk::instance::Instance;
use tusk::metrics::{self, DestinationMetrics};
use tusk::notify::{Notifier, RunDetails};
use tusk::output::{LogTail, Output};

use crate::cli::{Cli, Command};

/// What every command gets: the configured instance, the output choices,
/// and where to report runs.
pub struct Context {
    pub instance: Instance,
    pub output: Output,
    pub notifier: Notifier,
    pub metrics_file: Option<PathBuf>,
}

impl Context {
    /// Runs `work`, a command's operation, between the notifier's start and
    /// finish, and rewrites the metrics file after it. Neither can change
    /// the outcome: their failures are warnings. A command opts in by
    /// wrapping its operation here; `details` reads what a successful run
    /// produced.
    pub async fn reported<T>(
        &self,
        command: &str,
        work: impl Future<Output = Result<T>>,
        details: impl FnOnce(&T) -> RunDetails,
    ) -> Result<T> {
        let run = self.notifier.start(command).await;
        let outcome = work.await;
        self.write_metrics().await;
        let details = outcome.as_ref().map(details).unwrap_or_default();
        self.notifier
            .finish(run, details, outcome.as_ref().map(|_| ()))
            .await;
        outcome
    }

    async fn write_metrics(&self) {
        let Some(path) = &self.metrics_file else {
            return;
        };
        // One series per configured destination (the backup directory is
        // `local` when none are listed), buckets read by listing them.
        let mut destinations = Vec::new();
        let mut read = Ok(());
        for destination in &self.instance.settings.destinations {
            if destination.unusable.is_some() {
                continue;
            }
            match DestinationMetrics::read(destination).await {
                Ok(metrics) => destinations.push(metrics),
                Err(err) => {
                    read = Err(err);
                    break;
                }
            }
        }
        let written = read.and_then(|()| metrics::write(path, &destinations));
        if let Err(err) = written {
            tracing::warn!("could not write the metrics file: {err:#}");
        }
    }
}

pub async fn dispatch(cli: Cli, log_tail: LogTail) -> Result<()> {
    // Commands that need no settings run even with a broken config.
    match &cli.command {
        Command::Completions(args) => return completions::exec(args),
        Command::Man(args) => return completions::exec_man(args),
        Command::Init(args) => return init::exec(&cli.global, args).await,
        _ => {}
    }
    let settings = match Settings::resolve(&cli.global.overrides()) {
        Ok(settings) => settings,
        // A monitoring system reads 2 as CRITICAL: status says UNKNOWN.
        Err(err) if matches!(cli.command, Command::Status(_)) => {
            return Err(status::unknown(err));
        }
        Err(err) => return Err(err),
    };
    if let Some(path) = &settings.config_file {
        tracing::debug!("config file: {}", path.display());
    }
    let notifier = Notifier::new(settings.notify.clone(), settings.instance.clone(), log_tail);
    let ctx = Context {
        metrics_file: settings.metrics_file.clone(),
        instance: Instance::new(settings),
        output: Output::new(cli.global.json, cli.global.quiet, cli.global.yes),
        notifier,
    };
    match cli.command {
        Command::Backup(args) => backup::exec(&ctx, args).await,
        Command::Backups(args) => backups::exec(&ctx, args).await,
        Command::Restore(args) => restore::exec(&ctx, args).await,
        Command::Verify(args) => verify::exec(&ctx, args).await,
        Command::Media(args) => media::exec(&ctx, args).await,
        Command::Prune(args) => prune::exec(&ctx, args).await,
        Command::Tune(args) => tune::exec(&ctx, args).await,
        Command::Blocks(args) => blocks::exec(&ctx, args).await,
        Command::Migrate(args) => migrate::exec(&ctx, args).await,
        Command::Rehearse(args) => rehearse::exec(&ctx, args).await,
        Command::Status(args) => status::exec(&ctx, args).await,
        Command::Completions(_) | Command::Man(_) | Command::Init(_) => {
            unreachable!("handled above")
        }
    }
}
