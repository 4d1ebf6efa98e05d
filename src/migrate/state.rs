//! A migration's progress, kept in the backup directory so that a re-run
//! resumes where a failed one stopped and reuses the set it made.
//!
//! The file is replaced atomically after every stage; it names the target,
//! so a migration to another target (or `--restart`) starts over.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::set::write_file_atomically;

/// The state file's name in the backup directory (a dot file: not a set,
/// and left alone by retention).
pub const STATE_FILE: &str = ".tusk-migrate.json";

/// The stages of a migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Preflight,
    StopWrites,
    Backup,
    Restore,
    Verify,
    Cutover,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Preflight,
        Stage::StopWrites,
        Stage::Backup,
        Stage::Restore,
        Stage::Verify,
        Stage::Cutover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::StopWrites => "stop writes",
            Stage::Backup => "backup",
            Stage::Restore => "restore",
            Stage::Verify => "verify",
            Stage::Cutover => "cut-over report",
        }
    }
}

/// What a migration has done so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationState {
    /// The target server and database, as `postgresql://user@host:port/db`.
    pub target: String,
    pub started_at: DateTime<Utc>,
    /// Stages that completed, in order.
    pub done: Vec<Stage>,
    /// The set the backup stage wrote: the rollback point, reused on resume.
    pub set_id: Option<String>,
    /// The restore stage began: the target may hold (or, if the run was
    /// killed between the swap and this file, hold all of) the set's data,
    /// so a re-run may replace it without `--force`.
    pub restore_started: bool,
    /// App containers this migration stopped and leaves stopped.
    pub stopped_containers: Vec<String>,
}

impl MigrationState {
    pub fn new(target: &str) -> Self {
        MigrationState {
            target: target.to_string(),
            started_at: Utc::now(),
            done: Vec::new(),
            set_id: None,
            restore_started: false,
            stopped_containers: Vec::new(),
        }
    }

    /// The state to go on from: the saved one when it is for the same
    /// target and not to be restarted, else a fresh one.
    pub fn resume_or_new(saved: Option<MigrationState>, target: &str, restart: bool) -> Self {
        match saved {
            Some(saved) if !restart && saved.target == target => saved,
            _ => MigrationState::new(target),
        }
    }

    pub fn is_done(&self, stage: Stage) -> bool {
        self.done.contains(&stage)
    }

    pub fn mark_done(&mut self, stage: Stage) {
        if !self.is_done(stage) {
            self.done.push(stage);
        }
    }

    /// Whether an earlier run got past the preflight: a re-run resumes.
    pub fn is_resumed(&self) -> bool {
        self.done.iter().any(|stage| *stage > Stage::Preflight)
    }

    /// The first stage that has not completed.
    pub fn resume_at(&self) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|stage| *stage != Stage::Preflight && !self.is_done(*stage))
    }

    /// The app ran again since the set was made (someone started it): the
    /// set no longer holds the newest data, so the backup and everything
    /// after it must be done again.
    pub fn forget_the_copy(&mut self) {
        self.set_id = None;
        self.done.retain(|stage| *stage < Stage::Backup);
    }
}

pub fn path(backup_dir: &Path) -> PathBuf {
    backup_dir.join(STATE_FILE)
}

/// The saved state, if any.
pub fn load(backup_dir: &Path) -> Result<Option<MigrationState>> {
    let path = path(backup_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", path.display())),
    };
    let state = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged; remove it or pass --restart to start the migration over",
            path.display()
        )
    })?;
    Ok(Some(state))
}

/// Saves the state atomically.
pub fn save(backup_dir: &Path, state: &MigrationState) -> Result<()> {
    std::fs::create_dir_all(backup_dir)
        .with_context(|| format!("could not create {}", backup_dir.display()))?;
    write_file_atomically(&path(backup_dir), &serde_json::to_vec_pretty(state)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "postgresql://postgres@10.0.0.2:5432/mastodon";

    #[test]
    fn a_saved_state_resumes_only_for_its_target() {
        let mut saved = MigrationState::new(TARGET);
        saved.mark_done(Stage::Preflight);
        saved.mark_done(Stage::StopWrites);
        saved.mark_done(Stage::Backup);
        saved.set_id = Some("m-20261207T010203Z".into());

        let resumed = MigrationState::resume_or_new(Some(saved.clone()), TARGET, false);
        assert_eq!(resumed, saved);
        assert!(resumed.is_resumed());
        assert_eq!(resumed.resume_at(), Some(Stage::Restore));

        let other = MigrationState::resume_or_new(Some(saved.clone()), "postgresql://x", false);
        assert!(other.done.is_empty() && other.set_id.is_none());
        let restarted = MigrationState::resume_or_new(Some(saved), TARGET, true);
        assert!(restarted.done.is_empty() && restarted.set_id.is_none());
    }

    #[test]
    fn a_started_app_makes_the_copy_stale() {
        let mut state = MigrationState::new(TARGET);
        for stage in Stage::ALL {
            state.mark_done(stage);
        }
        assert_eq!(state.resume_at(), None);
        state.set_id = Some("set".into());
        state.forget_the_copy();
        assert_eq!(state.set_id, None);
        assert_eq!(state.done, [Stage::Preflight, Stage::StopWrites]);
        assert_eq!(state.resume_at(), Some(Stage::Backup));
    }

    #[test]
    fn the_state_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut state = MigrationState::new(TARGET);
        state.mark_done(Stage::Preflight);
        state.stopped_containers = vec!["web".into()];
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state));
    }
}
