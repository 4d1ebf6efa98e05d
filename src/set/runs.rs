//! The last run of a command on a backup directory, whatever its outcome.
//!
//! A failed backup leaves no set behind (its `.partial` directory is
//! removed), so without this record nothing would remember that last night
//! failed: retention must not prune after a failed night, and the status and
//! metrics report the last failure. A run records itself as `running` once it
//! holds the directory's lock and as `ok` or `failed` when it ends; a run
//! killed outright stays `running`, which readers treat as not successful.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::creator::Creator;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Started and not (yet) finished: still running, or killed.
    Running,
    Ok,
    Failed,
}

/// One run of a command (`backup`, `verify`, ...) on a backup directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub command: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    /// The set the run wrote or read, when it got that far.
    pub set_id: Option<String>,
    /// Bytes written (a backup's set size).
    pub bytes: Option<u64>,
    /// The error of a failed run, one line per cause.
    pub error: Option<String>,
    /// The process that ran it, to tell a killed run from a running one.
    pub pid: u32,
    pub host: String,
}

impl RunRecord {
    /// A run of `command` starting now in this process.
    pub fn start(command: &str) -> Self {
        RunRecord {
            command: command.to_string(),
            started_at: Utc::now(),
            finished_at: None,
            outcome: Outcome::Running,
            set_id: None,
            bytes: None,
            error: None,
            pid: Creator::current().pid,
            host: Creator::current().host.clone(),
        }
    }

    /// The same run, ended: `ok` with what it wrote, or failed with `err`.
    pub fn finish(mut self, outcome: &Result<(String, u64)>) -> Self {
        self.finished_at = Some(Utc::now());
        match outcome {
            Ok((set_id, bytes)) => {
                self.outcome = Outcome::Ok;
                self.set_id = Some(set_id.clone());
                self.bytes = Some(*bytes);
            }
            Err(err) => {
                self.outcome = Outcome::Failed;
                self.error = Some(format!("{err:#}"));
            }
        }
        self
    }

    pub fn duration_seconds(&self) -> Option<f64> {
        let finished = self.finished_at?;
        Some((finished - self.started_at).num_milliseconds() as f64 / 1000.0)
    }
}

/// The record's file (or object) name beside the sets.
pub fn record_name(command: &str) -> String {
    format!(".tusk-last-{command}.json")
}

/// The name of the record of the last failure.
pub fn failure_name(command: &str) -> String {
    format!(".tusk-last-{command}-failure.json")
}

fn record_path(dir: &Path, command: &str) -> PathBuf {
    dir.join(record_name(command))
}

/// The last failed run, kept apart so a success after it does not erase
/// when the command last failed (the metrics report both).
fn failure_path(dir: &Path, command: &str) -> PathBuf {
    dir.join(failure_name(command))
}

/// Replaces the record of `record.command` in `dir` (atomically); a failed
/// run also replaces the record of the last failure.
pub fn save(dir: &Path, record: &RunRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record)?;
    let mut paths = vec![record_path(dir, &record.command)];
    if record.outcome == Outcome::Failed {
        paths.push(failure_path(dir, &record.command));
    }
    for path in paths {
        super::write_file_atomically(&path, &json).with_context(|| {
            format!(
                "could not record the {} run in {}",
                record.command,
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// The last recorded run of `command` in `dir`, if any. A damaged record
/// reads as none, with a warning: it must not stop a backup.
pub fn last(dir: &Path, command: &str) -> Option<RunRecord> {
    read(&record_path(dir, command))
}

/// The last failed run of `command` in `dir`, if any ever failed.
pub fn last_failure(dir: &Path, command: &str) -> Option<RunRecord> {
    read(&failure_path(dir, command))
}

fn read(path: &Path) -> Option<RunRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!("ignoring {}: {err}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_recorded_running_then_with_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last(dir.path(), "backup"), None);
        let run = RunRecord::start("backup");
        save(dir.path(), &run).unwrap();
        assert_eq!(
            last(dir.path(), "backup").unwrap().outcome,
            Outcome::Running
        );

        let failed = run
            .clone()
            .finish(&Err(anyhow::anyhow!("disk full").context("could not write")));
        save(dir.path(), &failed).unwrap();
        let read = last(dir.path(), "backup").unwrap();
        assert_eq!(read.outcome, Outcome::Failed);
        assert_eq!(read.error.as_deref(), Some("could not write: disk full"));

        let ok = run.finish(&Ok(("social-20261207T010000Z".into(), 42)));
        save(dir.path(), &ok).unwrap();
        let read = last(dir.path(), "backup").unwrap();
        assert_eq!(read.outcome, Outcome::Ok);
        assert_eq!(read.set_id.as_deref(), Some("social-20261207T010000Z"));
        assert_eq!(
            last_failure(dir.path(), "backup").unwrap().error.as_deref(),
            Some("could not write: disk full"),
            "a success keeps the last failure"
        );
        assert!(read.duration_seconds().unwrap() >= 0.0);
        assert_eq!(last(dir.path(), "verify"), None, "one record per command");
    }
}
