//! One file per subcommand: arguments in, options struct out, operation
//! called, result printed. The operations know nothing of clap.

pub mod backup;
pub mod backups;
pub mod blocks;
pub mod completions;
pub mod init;
pub mod media;
pub mod prune;
pub mod restore;
pub mod tune;
pub mod verify;

use anyhow::Result;

use tusk::config::Settings;
use tusk::instance::Instance;
use tusk::output::Output;

use crate::cli::{Cli, Command};

/// What every command gets: the configured instance and the output choices.
pub struct Context {
    pub instance: Instance,
    pub output: Output,
}

pub async fn dispatch(cli: Cli) -> Result<()> {
    // Commands that need no settings run even with a broken config.
    match &cli.command {
        Command::Completions(args) => return completions::exec(args),
        Command::Man(args) => return completions::exec_man(args),
        Command::Init(args) => return init::exec(&cli.global, args).await,
        _ => {}
    }
    let settings = Settings::resolve(&cli.global.overrides())?;
    if let Some(path) = &settings.config_file {
        tracing::debug!("config file: {}", path.display());
    }
    let ctx = Context {
        instance: Instance::new(settings),
        output: Output::new(cli.global.json, cli.global.quiet, cli.global.yes),
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
        Command::Completions(_) | Command::Man(_) | Command::Init(_) => {
            unreachable!("handled above")
        }
    }
}
