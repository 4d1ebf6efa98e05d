//! One run at a time per backup directory: `<dir>/.tusk.lock`.
//!
//! Two things make the lock. The kernel's `flock` on the file decides who
//! holds it: it is released when its holder exits, however it exits, so a
//! killed run never blocks the next one. Inside the file the holder records
//! itself as a [`LockOwner`] (command, host, pid, process start, start
//! time), written once the flock is taken and cleared when the lock is
//! released. The record names the holder in the message a second run
//! prints, and it is a second line of defence where `flock` does not
//! exclude: on a network file system mounted without working locks, two
//! hosts can both "take" the flock, but the second still finds the first's
//! record and stops.
//!
//! A record found under a flock that is ours again belongs to a run that
//! did not release the lock (it was killed, or its host went down). It is
//! taken over, with a warning, when [`LockOwner::staleness`] says so: the
//! pid is dead on this host, or it now belongs to another process (pid
//! reuse, told apart by the process start time and the boot id), or, for a
//! holder on another host whose pid cannot be checked from here, the record
//! is older than [`LockPolicy::stale_after`]. Otherwise the run stops with
//! exit 4 naming the holder. The same record and rule serve a lock object
//! in a bucket, where there is no flock at all.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::TuskError;

/// How long to wait for a held lock and when a left-over record is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// Poll for a held lock this long before giving up (exit 4); zero
    /// gives up at once.
    pub wait: Duration,
    /// A record from another host (whose pid cannot be checked) older than
    /// this is taken over.
    pub stale_after: Duration,
}

impl LockPolicy {
    pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(12 * 3600);
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            wait: Duration::ZERO,
            stale_after: Self::DEFAULT_STALE_AFTER,
        }
    }
}

/// Who holds a lock, as recorded in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// `backup`, `prune`, `copy`, ...
    pub command: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// The process's start in clock ticks since boot (`/proc/<pid>/stat`),
    /// to tell the holder from a later process that got the same pid.
    #[serde(default)]
    pub process_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: after a reboot every pid is new.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// Why a recorded holder no longer holds its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// It is still running (or cannot be shown not to be).
    Live,
    /// Its process is gone from this host.
    Dead,
    /// Its pid now belongs to another process, or the host rebooted since.
    PidReused,
    /// On another host, and older than the policy's `stale_after`.
    TooOld,
}

impl LockOwner {
    /// This process, starting `command` now.
    pub fn this_process(command: &str) -> Self {
        let pid = std::process::id();
        LockOwner {
            command: command.to_string(),
            host: crate::creator::Creator::current().host.clone(),
            pid,
            started_at: Utc::now(),
            process_start: process_start(pid),
            boot_id: boot_id(),
        }
    }

    /// Whether this holder still holds its lock, judged from this host at `now`.
    pub fn staleness(&self, now: DateTime<Utc>, stale_after: Duration) -> Staleness {
        if self.host != crate::creator::Creator::current().host.clone() {
            let age = (now - self.started_at).to_std().unwrap_or_default();
            return if age > stale_after {
                Staleness::TooOld
            } else {
                Staleness::Live
            };
        }
        if self.boot_id.is_some() && self.boot_id != boot_id() {
            return Staleness::PidReused;
        }
        if !pid_alive(self.pid) {
            return Staleness::Dead;
        }
        match (self.process_start, process_start(self.pid)) {
            (Some(recorded), Some(now)) if recorded != now => Staleness::PidReused,
            _ => Staleness::Live,
        }
    }

    /// `backup by pid 1234 on host h since 03:00:01Z`.
    pub fn describe(&self) -> String {
        let today = self.started_at.date_naive() == Utc::now().date_naive();
        let since = if today {
            self.started_at.format("%H:%M:%SZ").to_string()
        } else {
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        };
        format!(
            "{} by pid {} on host {} since {since}",
            self.command, self.pid, self.host
        )
    }
}

/// Holds `<backup-dir>/.tusk.lock` for the life of the value.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

/// What one attempt at the lock found.
enum Attempt {
    Taken(DirLock),
    Held(String),
}

impl DirLock {
    /// Takes the lock of `backup_dir` for `command`, waiting up to
    /// `policy.wait` for a holder to finish; exit 4 when it does not.
    pub async fn acquire(backup_dir: &Path, command: &str, policy: &LockPolicy) -> Result<Self> {
        const POLL: Duration = Duration::from_millis(500);
        let deadline = tokio::time::Instant::now() + policy.wait;
        let mut logged_wait = false;
        loop {
            let held_by = match Self::try_acquire(backup_dir, command, policy)? {
                Attempt::Taken(lock) => return Ok(lock),
                Attempt::Held(holder) => holder,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let path = backup_dir.join(super::LOCK_FILE);
                let advice = match policy.wait.is_zero() {
                    true => "; try again when it has finished, or pass --wait SECONDS".to_string(),
                    false => format!(
                        " after waiting {}s; try again when it has finished",
                        policy.wait.as_secs()
                    ),
                };
                return Err(TuskError::Locked(format!(
                    "{} is held by {held_by}{advice}",
                    path.display()
                ))
                .into());
            }
            if !logged_wait {
                tracing::info!(
                    "waiting up to {}s for the lock of {} ({held_by})",
                    policy.wait.as_secs(),
                    backup_dir.display()
                );
                logged_wait = true;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// The unfinished sets (`<id>.partial`) in the locked directory. Only a
    /// backup writes them, and only under this lock, so while it is held
    /// each one was left by a run that died (SIGKILL, a power cut).
    pub fn stale_partial_sets(&self) -> Result<Vec<PathBuf>> {
        let dir = self
            .path
            .parent()
            .expect("the lock file is in the directory");
        let mut stale = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let is_partial = entry.file_name().to_str().is_some_and(|name| {
                name.len() > super::PARTIAL_SUFFIX.len() && name.ends_with(super::PARTIAL_SUFFIX)
            });
            if is_partial && entry.file_type()?.is_dir() {
                stale.push(entry.path());
            }
        }
        stale.sort();
        Ok(stale)
    }

    fn try_acquire(backup_dir: &Path, command: &str, policy: &LockPolicy) -> Result<Attempt> {
        super::create_private_dir(backup_dir)?;
        let path = backup_dir.join(super::LOCK_FILE);
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("could not open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = match read_owner(&mut file) {
                    Some(owner) => owner.describe(),
                    // Between another run's flock and its record, or a
                    // process that is not tusk.
                    None => "another process".to_string(),
                };
                return Ok(Attempt::Held(holder));
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("could not lock {}", path.display()));
            }
        }
        // The flock is ours: a record still in the file is a holder that
        // never released it, or one that flock did not keep out.
        if let Some(owner) = read_owner(&mut file) {
            match owner.staleness(Utc::now(), policy.stale_after) {
                Staleness::Live => return Ok(Attempt::Held(owner.describe())),
                Staleness::Dead => tracing::warn!(
                    "taking over the stale lock {} of {}: that process is gone",
                    path.display(),
                    owner.describe()
                ),
                Staleness::PidReused => tracing::warn!(
                    "taking over the stale lock {} of {}: that pid is now another process",
                    path.display(),
                    owner.describe()
                ),
                Staleness::TooOld => tracing::warn!(
                    "taking over the stale lock {} of {}: older than {}s",
                    path.display(),
                    owner.describe(),
                    policy.stale_after.as_secs()
                ),
            }
        }
        let lock = DirLock { file, path };
        lock.record(&LockOwner::this_process(command))?;
        Ok(Attempt::Taken(lock))
    }

    fn record(&self, owner: &LockOwner) -> Result<()> {
        let json = serde_json::to_vec(owner)?;
        let mut file = &self.file;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| file.write_all(&json))
            .and_then(|()| file.sync_data())
            .with_context(|| {
                format!(
                    "could not record the lock's owner in {}",
                    self.path.display()
                )
            })
    }
}

impl Drop for DirLock {
    /// Clears the record before the flock goes with the file: a record
    /// found later means a run that never got here.
    fn drop(&mut self) {
        if let Err(err) = self.file.set_len(0) {
            tracing::warn!("could not clear {}: {err}", self.path.display());
        }
    }
}

fn read_owner(file: &mut File) -> Option<LockOwner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    serde_json::from_str(&text).ok()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only; EPERM means alive under another user.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Field 22 of `/proc/<pid>/stat`, after the command name in parentheses.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; field 22 is 19 further.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockPolicy {
        LockPolicy::default()
    }

    #[tokio::test]
    async fn partial_sets_under_the_lock_are_stale() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("x-1.partial")).unwrap();
        std::fs::create_dir(root.path().join("x-0")).unwrap();
        std::fs::write(root.path().join("notes.partial"), b"a file").unwrap();
        let lock = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap();
        assert_eq!(
            lock.stale_partial_sets().unwrap(),
            vec![root.path().join("x-1.partial")]
        );
    }

    #[tokio::test]
    async fn a_second_lock_is_refused_with_exit_4_naming_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap();
        let err = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_LOCKED)
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("backup by pid {}", std::process::id())),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_released_lock_leaves_no_record_and_can_be_taken_again() {
        let root = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap();
        let text = std::fs::read_to_string(root.path().join(".tusk.lock")).unwrap();
        let owner: LockOwner = serde_json::from_str(&text).unwrap();
        assert_eq!(owner.pid, std::process::id());
        assert_eq!(owner.command, "backup");
        drop(lock);
        assert_eq!(
            std::fs::read_to_string(root.path().join(".tusk.lock")).unwrap(),
            ""
        );
        DirLock::acquire(root.path(), "prune", &policy())
            .await
            .unwrap();
    }

    #[test]
    fn this_process_is_live_and_a_dead_or_reused_pid_is_stale() {
        let me = LockOwner::this_process("backup");
        let now = Utc::now();
        assert_eq!(me.staleness(now, Duration::ZERO), Staleness::Live);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = LockOwner {
            pid: dead_pid,
            process_start: None,
            ..me.clone()
        };
        assert_eq!(dead.staleness(now, Duration::ZERO), Staleness::Dead);

        let reused = LockOwner {
            process_start: me.process_start.map(|start| start + 1),
            ..me.clone()
        };
        assert_eq!(reused.staleness(now, Duration::ZERO), Staleness::PidReused);

        let rebooted = LockOwner {
            boot_id: Some("another-boot".into()),
            ..me.clone()
        };
        assert_eq!(
            rebooted.staleness(now, Duration::ZERO),
            Staleness::PidReused
        );
    }

    #[test]
    fn another_hosts_record_is_stale_only_after_stale_after() {
        let elsewhere = LockOwner {
            host: "another-host.invalid".into(),
            pid: 1,
            ..LockOwner::this_process("backup")
        };
        let hour = Duration::from_secs(3600);
        let soon = elsewhere.started_at + chrono::Duration::minutes(30);
        let later = elsewhere.started_at + chrono::Duration::minutes(90);
        assert_eq!(elsewhere.staleness(soon, hour), Staleness::Live);
        assert_eq!(elsewhere.staleness(later, hour), Staleness::TooOld);
    }

    #[tokio::test]
    async fn a_left_over_record_of_a_dead_process_is_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = LockOwner {
            pid: dead_pid,
            process_start: None,
            ..LockOwner::this_process("backup")
        };
        std::fs::write(
            root.path().join(".tusk.lock"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let _lock = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap();
        let live = LockOwner {
            host: "another-host.invalid".into(),
            ..LockOwner::this_process("backup")
        };
        drop(_lock);
        std::fs::write(
            root.path().join(".tusk.lock"),
            serde_json::to_vec(&live).unwrap(),
        )
        .unwrap();
        let err = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("on host another-host.invalid"),
            "a recent record from another host is respected: {err}"
        );
    }

    #[tokio::test]
    async fn waiting_gives_up_after_the_wait() {
        let root = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(root.path(), "backup", &policy())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let waiting = LockPolicy {
            wait: Duration::from_millis(1200),
            ..policy()
        };
        let err = DirLock::acquire(root.path(), "backup", &waiting)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(1200));
        assert!(err.to_string().contains("after waiting 1s"), "{err}");
    }
}
