//! Shell completion and man pages.
//!
//! Completion runs through the binary itself (clap_complete's `CompleteEnv`):
//! the script a shell loads only registers `tusk` as its own completer, and
//! on every TAB the shell calls `TUSK_COMPLETE=<shell> tusk -- <words>`. So
//! the completion always matches the installed binary, new flags need no new
//! script, and `tusk restore <TAB>` / `tusk verify <TAB>` can offer the ids of
//! the sets in the configured backup directory.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use clap::{CommandFactory, FromArgMatches as _};
use clap_complete::engine::{
    ArgValueCompleter, CompletionCandidate, PathCompleter, ValueCompleter as _,
};
use clap_complete::env::Shells;
use clap_complete::{CompleteEnv, Shell};

use tusk::config::Settings;
use tusk::set::BackupSet;

use crate::cli::{Cli, CompletionsArgs, GlobalArgs, ManArgs};

/// The variable that turns a run of `tusk` into a completion request.
/// Namespaced so that a stray `COMPLETE` in a cron or systemd environment
/// can never turn a backup run into printing a script.
pub const COMPLETE_VAR: &str = "TUSK_COMPLETE";

/// The program the registered scripts call: `tusk` on PATH, so that the
/// checked-in and packaged scripts hold no build path.
const COMPLETER: &str = "tusk";

/// The shells with a checked-in script, and the file name each one loads
/// (`completions/` in the repository; the package installs them).
pub const SCRIPT_FILES: [(Shell, &str); 5] = [
    (Shell::Bash, "tusk.bash"),
    (Shell::Zsh, "_tusk"),
    (Shell::Fish, "tusk.fish"),
    (Shell::Elvish, "tusk.elv"),
    (Shell::PowerShell, "tusk.ps1"),
];

/// Answers a completion request and exits, when the shell made one; a no-op
/// otherwise. Runs before anything else writes to stdout.
pub fn answer_completion_request() {
    CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .completer(COMPLETER)
        .complete();
}

pub fn exec(args: &CompletionsArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        for (shell, file) in SCRIPT_FILES {
            let path = dir.join(file);
            let script = registration(shell)?;
            std::fs::write(&path, script)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        return Ok(());
    }
    let shell = args
        .shell
        .expect("clap requires SHELL unless --dir is given");
    io::stdout().write_all(&registration(shell)?)?;
    Ok(())
}

/// The script that registers `tusk` as its own completer in `shell`: the
/// same text `TUSK_COMPLETE=<shell> tusk` prints.
fn registration(shell: Shell) -> Result<Vec<u8>> {
    let name = shell.to_string();
    let shells = Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| anyhow!("clap_complete has no dynamic completion for {name}"))?;
    let mut script = Vec::new();
    completer.write_registration(COMPLETE_VAR, "tusk", "tusk", COMPLETER, &mut script)?;
    Ok(script)
}

pub fn exec_man(args: &ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("could not create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("could not write man pages into {}", args.dir.display()))
}

/// Completes a backup set argument: `latest` and the set ids in the
/// configured backup directory, or a path once the word looks like one.
pub fn backup_set_completer() -> ArgValueCompleter {
    ArgValueCompleter::new(complete_backup_set)
}

fn complete_backup_set(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    if typed.starts_with(['/', '.', '~']) || typed.contains('/') {
        return PathCompleter::dir().complete(current);
    }
    let mut candidates =
        vec![CompletionCandidate::new("latest").help(Some("the newest set".into()))];
    // Settings that cannot be resolved (an unreadable /etc/tusk/tusk.yaml for
    // a normal user, say) leave only `latest`: completion never prints errors.
    if let Some(backup_dir) = backup_dir_of_command_line() {
        let sets = BackupSet::list(&backup_dir).unwrap_or_default();
        // Newest first: the one a person most likely wants.
        candidates.extend(sets.iter().rev().map(|set| {
            let started = set.manifest.started_at.format("%Y-%m-%d %H:%M UTC");
            CompletionCandidate::new(&set.manifest.id).help(Some(started.to_string().into()))
        }));
    }
    candidates
        .into_iter()
        .filter(|candidate| candidate.get_value().to_string_lossy().starts_with(&*typed))
        .collect()
}

/// The backup directory the command being completed would use: its own
/// `--backup-dir`/`--config` flags, `TUSK_*` variables, the config file and
/// the default, in the one precedence of `Settings::resolve`.
fn backup_dir_of_command_line() -> Option<PathBuf> {
    // A completion request is `tusk -- tusk <words...>`.
    let words: Vec<OsString> = std::env::args_os()
        .skip_while(|arg| arg != "--")
        .skip(1)
        .collect();
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(words)
        .ok()?;
    let global = GlobalArgs::from_arg_matches(&matches).ok()?;
    let settings = Settings::resolve(&global.overrides()).ok()?;
    Some(settings.backup_dir)
}
