//! What `tusk status` knows about the backup sets of each destination and
//! the disk they (and a restore) need.
//!
//! A destination is read through [`SetsListing`]; [`DestinationListing`]
//! reads a configured destination, a directory or a bucket, from its
//! listing and its run records.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::set::BackupSet;
use crate::set::destination::{Destination, Place};
use crate::set::manifest::ArtefactKind;
use crate::set::runs::{self, RunRecord};

/// The newest complete set of a destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetFacts {
    pub id: String,
    pub finished_at: DateTime<Utc>,
    /// How long the backup took.
    pub duration_seconds: f64,
    pub bytes: u64,
    /// The database dump uncompressed: what a restore reads.
    pub database_bytes: Option<u64>,
}

/// A verification recorded in a set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerificationFacts {
    pub id: String,
    pub verified_at: DateTime<Utc>,
    pub ok: bool,
    pub checksums_only: bool,
    pub restore_seconds: Option<f64>,
    /// The test restore's largest database size: the space a restore takes.
    pub restore_bytes: Option<u64>,
}

/// The last failed backup run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureFacts {
    pub at: DateTime<Utc>,
    pub error: Option<String>,
}

/// One destination as `status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationSummary {
    pub name: String,
    /// Where it is (a directory, a bucket URL).
    pub location: String,
    pub sets: usize,
    pub newest: Option<SetFacts>,
    /// The newest set whose last verification passed (a test restore, not
    /// only checksums).
    pub newest_verified: Option<VerificationFacts>,
    /// The most recent verification of any set, passed or not.
    pub last_verification: Option<VerificationFacts>,
    /// When a set last passed any verification, `--checksums-only` too (the
    /// metrics' `tusk_verify_last_success_timestamp_seconds`, as `tusk
    /// backup` writes it).
    pub last_verify_success: Option<DateTime<Utc>>,
    pub last_failure: Option<FailureFacts>,
}

/// A destination of backup sets, summarised for `status`.
#[async_trait]
pub trait SetsListing: Send + Sync {
    fn name(&self) -> &str;
    async fn summary(&self) -> Result<DestinationSummary>;
}

/// A configured destination: its sets, their verifications and the last
/// failed backup (the directory's run record, or the bucket's).
pub struct DestinationListing {
    pub destination: Destination,
}

#[async_trait]
impl SetsListing for DestinationListing {
    fn name(&self) -> &str {
        &self.destination.name
    }

    async fn summary(&self) -> Result<DestinationSummary> {
        let destination = &self.destination;
        if let Some(why) = &destination.unusable {
            anyhow::bail!("{why}");
        }
        let (sets, last_failure) = match &destination.place {
            Place::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let sets = BackupSet::list(&dir)?;
                    anyhow::Ok((sets, runs::last_failure(&dir, "backup")))
                })
                .await
                .context("reading the backup directory stopped")??
            }
            Place::Bucket(bucket) => (
                crate::set::bucket::list_sets(bucket).await?,
                crate::set::bucket::last_failure(bucket, "backup").await,
            ),
        };
        Ok(summarise(
            &destination.name,
            &destination.describe(),
            &sets,
            last_failure,
        ))
    }
}

/// What `status` reports of `sets` (oldest first).
pub fn summarise(
    name: &str,
    location: &str,
    sets: &[BackupSet],
    last_failure: Option<RunRecord>,
) -> DestinationSummary {
    let newest = sets.last().map(|set| SetFacts {
        id: set.manifest.id.clone(),
        finished_at: set.manifest.finished_at,
        duration_seconds: (set.manifest.finished_at - set.manifest.started_at).num_milliseconds()
            as f64
            / 1000.0,
        bytes: set.manifest.total_bytes(),
        database_bytes: set
            .manifest
            .artefact(ArtefactKind::Database)
            .map(|a| a.uncompressed_bytes),
    });
    let verifications: Vec<VerificationFacts> = sets
        .iter()
        .filter_map(|set| {
            let verification = set.verification()?;
            Some(VerificationFacts {
                id: set.manifest.id.clone(),
                verified_at: verification.verified_at,
                ok: verification.ok,
                checksums_only: verification.checksums_only,
                restore_seconds: verification.restore_seconds,
                restore_bytes: verification
                    .peak_database_bytes
                    .and_then(|b| u64::try_from(b).ok()),
            })
        })
        .collect();
    let newest_verified = verifications
        .iter()
        .filter(|v| v.ok && !v.checksums_only)
        .max_by_key(|v| v.verified_at)
        .cloned();
    let last_verification = verifications.iter().max_by_key(|v| v.verified_at).cloned();
    let last_verify_success = verifications
        .iter()
        .filter(|v| v.ok)
        .map(|v| v.verified_at)
        .max();
    DestinationSummary {
        name: name.to_string(),
        location: location.to_string(),
        sets: sets.len(),
        newest,
        newest_verified,
        last_verification,
        last_verify_success,
        last_failure: last_failure.map(|run| FailureFacts {
            at: run.finished_at.unwrap_or(run.started_at),
            error: run.error,
        }),
    }
}

/// Free space where something is written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSpace {
    /// What the directory is for: `backup_dir`, `temp_dir`.
    pub role: String,
    pub path: PathBuf,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Free and total bytes of the file system holding `path` (for an
/// unprivileged user: `f_bavail`).
pub fn disk_space(role: &str, path: &Path) -> Result<DiskSpace> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    // The directory may not exist yet (no backup so far): measure the
    // nearest existing parent, which is where it would be made.
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = CString::new(existing.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", existing.display()))?;
    // SAFETY: statvfs writes into the zeroed struct we own and reads the
    // NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if status != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not measure the disk of {}", existing.display()));
    }
    let block = stat.f_frsize as u64;
    Ok(DiskSpace {
        role: role.to_string(),
        path: path.to_path_buf(),
        free_bytes: stat.f_bavail as u64 * block,
        total_bytes: stat.f_blocks as u64 * block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_has_no_sets_and_a_missing_one_is_measured_at_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let summary = summarise("local", "/nowhere", &[], None);
        assert_eq!(summary.sets, 0);
        assert_eq!(summary.newest, None);
        assert_eq!(summary.last_failure, None);
        let space = disk_space("backup_dir", &dir.path().join("not/yet")).unwrap();
        assert!(space.total_bytes >= space.free_bytes && space.total_bytes > 0);
    }
}
