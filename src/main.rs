//! The `tusk` binary: parses the command line, runs one command of the
//! library, and turns its outcome into an exit status. Everything else is in
//! the library (src/lib.rs).

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tusk::{cleanup, error};

/// Exit status after Ctrl-C, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // A shell asking for completions (TUSK_COMPLETE set) gets them and
    // nothing else runs.
    commands::completions::answer_completion_request();
    let cli = cli::Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(error::EXIT_FAILED);
        }
    };
    runtime.block_on(async {
        let outcome = tokio::select! {
            result = commands::dispatch(cli) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        };
        // Whatever an operation left to undo (scratch databases, stopped
        // services) runs now, also after an error or Ctrl-C.
        cleanup::run_leftovers().await;
        match outcome {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(err)) => {
                tracing::error!("{err:#}");
                error::exit_code_for(&err)
            }
            None => {
                tracing::error!("interrupted");
                ExitCode::from(EXIT_INTERRUPTED)
            }
        }
    })
}

/// Logs go to stderr: short lines on a terminal, timestamped lines for cron.
fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("TUSK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("tusk={default},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::io::stderr().is_terminal() {
        builder.without_time().init();
    } else {
        builder.with_ansi(false).init();
    }
}
