//! The `tusk` binary: parses the command line, runs one command of the
//! library, and turns its outcome into an exit status. Everything else is in
//! the library (src/lib.rs).

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use tusk::output::LogTail;
use tusk::{cleanup, error, signals};

fn main() -> ExitCode {
    // A shell asking for completions (TUSK_COMPLETE set) gets them and
    // nothing else runs.
    commands::completions::answer_completion_request();
    let cli = cli::Cli::parse();
    let log_tail = LogTail::new(LogTail::DEFAULT_LINES);
    init_logging(cli.global.verbose, cli.global.quiet, log_tail.clone());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(error::EXIT_FAILED);
        }
    };
    let code = runtime.block_on(async {
        let mut signals = match signals::Signals::listen() {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!("{err:#}");
                return ExitCode::from(error::EXIT_FAILED);
            }
        };
        // SIGINT, SIGTERM and SIGHUP all cancel the command: dropping its
        // future ends the child processes and removes a partial set.
        let outcome = tokio::select! {
            result = commands::dispatch(cli, log_tail) => Ok(result),
            signal = signals.recv() => Err(signal),
        };
        let cancelled_by = outcome.as_ref().err().copied();
        if let Some(signal) = cancelled_by {
            tracing::error!("interrupted by {signal}; undoing what was started");
        }
        // Whatever an operation left to undo (scratch databases, stopped
        // services) runs now, also after an error or a signal.
        cleanup::run_leftovers(&mut signals, cancelled_by).await;
        match outcome {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(err)) => {
                if !error::is_report_only(&err) {
                    tracing::error!("{err:#}");
                }
                error::exit_code_for(&err)
            }
            Err(signal) => ExitCode::from(signal.exit_code()),
        }
    });
    // A blocking task still waiting (opening a helper's pipe) must not keep
    // the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Logs go to stderr: short lines on a terminal, timestamped lines for cron.
/// The last lines at info level and above also go to `tail`, whatever `-q`
/// says, for a failure ping's body.
fn init_logging(verbose: u8, quiet: bool, tail: LogTail) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("TUSK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("tusk={default},warn")));
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let stderr = if std::io::stderr().is_terminal() {
        stderr.without_time().boxed()
    } else {
        stderr.with_ansi(false).boxed()
    };
    let tail = fmt::layer()
        .with_writer(tail)
        .with_ansi(false)
        .with_target(false)
        .with_filter(EnvFilter::new("tusk=info,warn"));
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(tail)
        .init();
}
