//! How tusk talks to its user: progress bars and prompts on a terminal,
//! plain log lines under cron, one JSON document on stdout with `--json`.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::error::TuskError;

/// The output choices of one run.
#[derive(Debug, Clone)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
    /// `--yes`: answer confirmations with yes.
    pub assume_yes: bool,
    /// Whether stderr is a terminal a person watches.
    pub interactive: bool,
}

impl Output {
    pub fn new(json: bool, quiet: bool, assume_yes: bool) -> Self {
        Output {
            json,
            quiet,
            assume_yes,
            interactive: std::io::stderr().is_terminal() && std::io::stdin().is_terminal(),
        }
    }

    /// A byte counter for a streaming stage; invisible without a terminal,
    /// where the stage's start and end are logged instead.
    pub fn byte_progress(&self, stage: &str, total: Option<u64>) -> ProgressBar {
        if !self.interactive || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{prefix:>10} {spinner} {bytes} {bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A counter of items (rows, objects) for a stage with a known total;
    /// invisible without a terminal.
    pub fn count_progress(&self, stage: &str, total: u64) -> ProgressBar {
        if !self.interactive || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Asks before something destructive. Without a terminal nobody can
    /// answer, so only `--yes` (or an explicit flag checked by the caller)
    /// lets it go ahead.
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.assume_yes {
            return Ok(true);
        }
        if !self.interactive {
            return Err(TuskError::usage(format!(
                "{question} — no terminal to ask on; pass --yes to confirm"
            )));
        }
        Ok(dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact()?)
    }

    /// Asks for a secret on the terminal, twice when `confirm` (a new
    /// passphrase). Without a terminal it is an error naming `fallback`,
    /// the way to give it unattended.
    pub fn secret(&self, question: &str, confirm: bool, fallback: &str) -> Result<String> {
        if !self.interactive {
            return Err(TuskError::usage(format!(
                "{question}: no terminal to ask on; {fallback}"
            )));
        }
        let mut prompt = dialoguer::Password::new().with_prompt(question);
        if confirm {
            prompt = prompt.with_confirmation("Repeat it", "the two did not match");
        }
        Ok(prompt.interact()?)
    }

    /// Prints the run's single JSON document.
    pub fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// The questions of a wizard (`tusk init`), asked of a person on a terminal
/// or answered without one. The wizard asks every question through this, so
/// both ways go through one flow.
pub trait Prompter {
    /// Whether a person answers (and can correct a wrong answer).
    fn is_interactive(&self) -> bool;
    /// A line of text; `proposal` is taken on an empty answer. `flag` names
    /// the command-line flag that gives the answer without a terminal.
    fn text(&mut self, question: &str, proposal: Option<&str>, flag: &str) -> Result<String>;
    /// One of `choices` (as shown); `proposal` is preselected.
    fn select(&mut self, question: &str, choices: &[String], proposal: usize) -> Result<usize>;
    fn confirm(&mut self, question: &str, proposal: bool) -> Result<bool>;
    /// A finding worth showing (what was detected, what was checked).
    fn note(&mut self, line: &str);
}

/// Asks on the terminal with dialoguer; notes go to stderr.
pub struct TerminalPrompter;

impl Prompter for TerminalPrompter {
    fn is_interactive(&self) -> bool {
        true
    }

    fn text(&mut self, question: &str, proposal: Option<&str>, _flag: &str) -> Result<String> {
        let mut input = dialoguer::Input::<String>::new().with_prompt(question);
        if let Some(proposal) = proposal {
            input = input.default(proposal.to_string());
        }
        Ok(input.interact_text()?.trim().to_string())
    }

    fn select(&mut self, question: &str, choices: &[String], proposal: usize) -> Result<usize> {
        Ok(dialoguer::Select::new()
            .with_prompt(question)
            .items(choices)
            .default(proposal)
            .interact()?)
    }

    fn confirm(&mut self, question: &str, proposal: bool) -> Result<bool> {
        Ok(dialoguer::Confirm::new()
            .with_prompt(question)
            .default(proposal)
            .interact()?)
    }

    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// The last lines tusk logged, kept in memory: a failure ping carries them
/// so the alert shows what went wrong without a trip to the cron mail. It
/// is a `tracing_subscriber` writer: the binary adds a log layer writing
/// into it beside the one writing to stderr.
#[derive(Debug, Clone)]
pub struct LogTail {
    state: Arc<Mutex<TailState>>,
}

#[derive(Debug)]
struct TailState {
    lines: VecDeque<String>,
    capacity: usize,
    /// A line written in pieces, until its newline arrives.
    unfinished: Vec<u8>,
}

impl LogTail {
    /// About a screenful: enough for the error and what led to it.
    pub const DEFAULT_LINES: usize = 50;

    pub fn new(capacity: usize) -> Self {
        LogTail {
            state: Arc::new(Mutex::new(TailState {
                lines: VecDeque::with_capacity(capacity),
                capacity,
                unfinished: Vec::new(),
            })),
        }
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.lines.iter().cloned().collect()
    }
}

impl std::io::Write for LogTail {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.unfinished.extend_from_slice(bytes);
        while let Some(end) = state.unfinished.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = state.unfinished.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            if state.lines.len() == state.capacity {
                state.lines.pop_front();
            }
            if state.capacity > 0 {
                state.lines.push_back(line);
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = LogTail;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// Renders rows as an aligned plain-text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let line: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        line.join("  ").trim_end().to_string()
    };
    let mut out = render(&mut headers.iter().copied());
    out.push('\n');
    for row in rows {
        out.push_str(&render(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_whole_lines() {
        use std::io::Write;
        let tail = LogTail::new(2);
        let mut writer = tail.clone();
        writer.write_all(b"one\ntwo\nthr").unwrap();
        assert_eq!(tail.lines(), ["one", "two"]);
        writer.write_all(b"ee\nfour\n").unwrap();
        assert_eq!(tail.lines(), ["three", "four"]);
    }

    #[test]
    fn aligns_tables() {
        let text = table(
            &["id", "size"],
            &[
                vec!["a-long-id".into(), "1 KiB".into()],
                vec!["b".into(), "2".into()],
            ],
        );
        assert_eq!(text, "id         size\na-long-id  1 KiB\nb          2\n");
    }
}
