//! Backup sets on disk: `<backup-dir>/<id>/` with artefacts and a manifest.
//!
//! A set is built in `<id>.partial/` and renamed into place only after every
//! artefact and the manifest are on disk and fsynced, so a directory named
//! like an id is always complete.
//!
//! This is the domain of backup, restore and verify alike: the manifest and
//! the facts it records ([`manifest`], [`facts`]), the compressed streams
//! ([`stream`], [`Compression`]).

mod compression;
pub mod facts;
pub mod lock;
pub mod manifest;
pub mod properties;
pub mod retention;
pub mod runs;
pub mod stream;

pub use compression::Compression;
pub use lock::{DirLock, LockPolicy};

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use crate::error::TuskError;
use manifest::{
    Artefact, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, Problem, VERIFICATION_FILE, Verification,
};
use stream::hash_file;

/// The name of a set under construction is its id with this suffix.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The backup directory's lock ([`lock`]).
const LOCK_FILE: &str = ".tusk.lock";

/// A complete backup set.
#[derive(Debug, Clone)]
pub struct BackupSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl BackupSet {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a backup set: could not read {MANIFEST_FILE}",
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        if manifest.format > MANIFEST_FORMAT {
            bail!(
                "{} was written by a newer tusk (format {}); upgrade tusk",
                path.display(),
                manifest.format
            );
        }
        Ok(BackupSet {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Finds a set by id in `backup_dir`, by path, or `latest` for the newest set.
    pub fn resolve(backup_dir: &Path, id_or_path: &str) -> Result<Self> {
        if id_or_path == "latest" {
            return Self::list(backup_dir)?.pop().ok_or_else(|| {
                TuskError::usage(format!("no backup sets in {}", backup_dir.display()))
            });
        }
        let as_path = Path::new(id_or_path);
        let dir = if as_path.is_dir() && as_path.join(MANIFEST_FILE).exists() {
            as_path.to_path_buf()
        } else {
            backup_dir.join(id_or_path)
        };
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(TuskError::usage(format!(
                "no backup set {id_or_path:?}: neither a set directory nor an id in {} \
                 (see `tusk backups list`)",
                backup_dir.display()
            )));
        }
        Self::open(&dir)
    }

    /// Every complete set in `backup_dir`, oldest first. Directories that
    /// are not sets (or are still `.partial`) are skipped.
    pub fn list(backup_dir: &Path) -> Result<Vec<Self>> {
        let entries = match std::fs::read_dir(backup_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("could not read {}", backup_dir.display()));
            }
        };
        let mut sets = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let is_partial = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(PARTIAL_SUFFIX));
            if is_partial || !path.join(MANIFEST_FILE).is_file() {
                continue;
            }
            match Self::open(&path) {
                Ok(set) => sets.push(set),
                Err(err) => tracing::warn!("skipping {}: {err:#}", path.display()),
            }
        }
        sets.sort_by(|a, b| {
            (a.manifest.started_at, &a.manifest.id).cmp(&(b.manifest.started_at, &b.manifest.id))
        });
        Ok(sets)
    }

    pub fn artefact_path(&self, artefact: &Artefact) -> PathBuf {
        self.dir.join(&artefact.name)
    }

    /// Re-hashes every artefact and compares it with the manifest.
    pub async fn check_artefacts(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for artefact in &self.manifest.artefacts {
            let path = self.artefact_path(artefact);
            if !path.is_file() {
                problems.push(Problem {
                    kind: "missing".into(),
                    subject: artefact.name.clone(),
                    expected: format!("{} bytes", artefact.bytes),
                    got: "no file".into(),
                });
                continue;
            }
            let (bytes, sha256) = hash_file(&path)
                .await
                .with_context(|| format!("could not read {}", path.display()))?;
            if bytes != artefact.bytes {
                problems.push(Problem {
                    kind: "size".into(),
                    subject: artefact.name.clone(),
                    expected: artefact.bytes.to_string(),
                    got: bytes.to_string(),
                });
            }
            if sha256 != artefact.sha256 {
                problems.push(Problem {
                    kind: "checksum".into(),
                    subject: artefact.name.clone(),
                    expected: artefact.sha256.clone(),
                    got: sha256,
                });
            }
        }
        Ok(problems)
    }

    pub fn verification(&self) -> Option<Verification> {
        let text = std::fs::read_to_string(self.dir.join(VERIFICATION_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records a verification next to the manifest (atomically replaced).
    pub fn record_verification(&self, verification: &Verification) -> Result<()> {
        let json = serde_json::to_vec_pretty(verification)?;
        write_file_atomically(&self.dir.join(VERIFICATION_FILE), &json)
    }
}

/// `<instance>-<yyyymmddThhmmssZ>`.
pub fn new_id(instance: &str, at: DateTime<Utc>) -> String {
    format!("{instance}-{}", at.format("%Y%m%dT%H%M%SZ"))
}

/// The instance and start time in a set id, or `None` when `name` is not
/// shaped like one (`<instance>-<yyyymmddThhmmssZ>`).
pub fn parse_id(name: &str) -> Option<(&str, DateTime<Utc>)> {
    let (instance, stamp) = name.rsplit_once('-')?;
    if instance.is_empty() || stamp.len() != "yyyymmddThhmmssZ".len() {
        return None;
    }
    let at = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    Some((instance, at.and_utc()))
}

/// A set under construction. Dropped without [`PartialSet::commit`], it
/// removes itself, so a failed or interrupted run leaves nothing that looks
/// like a set.
pub struct PartialSet {
    pub dir: PathBuf,
    final_dir: PathBuf,
    committed: bool,
}

impl PartialSet {
    pub fn create(backup_dir: &Path, id: &str) -> Result<Self> {
        let final_dir = backup_dir.join(id);
        let dir = backup_dir.join(format!("{id}{PARTIAL_SUFFIX}"));
        if final_dir.exists() || dir.exists() {
            bail!(
                "backup set {id} already exists in {}; wait a second and run again",
                backup_dir.display()
            );
        }
        create_private_dir(&dir)?;
        Ok(PartialSet {
            dir,
            final_dir,
            committed: false,
        })
    }

    /// Writes the manifest last, fsyncs, and renames the set into place.
    pub fn commit(mut self, manifest: &Manifest) -> Result<PathBuf> {
        let json = serde_json::to_vec_pretty(manifest)?;
        write_file_atomically(&self.dir.join(MANIFEST_FILE), &json)?;
        sync_dir(&self.dir)?;
        std::fs::rename(&self.dir, &self.final_dir).with_context(|| {
            format!(
                "could not rename {} to {}",
                self.dir.display(),
                self.final_dir.display()
            )
        })?;
        self.committed = true;
        if let Some(parent) = self.final_dir.parent() {
            sync_dir(parent)?;
        }
        Ok(self.final_dir.clone())
    }
}

impl Drop for PartialSet {
    fn drop(&mut self) {
        if !self.committed
            && let Err(err) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!("could not remove {}: {err}", self.dir.display());
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create directory {}", dir.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not fsync {}", dir.display()))
}

/// Writes `path` through a temporary sibling, fsynced, then renamed over it.
pub(crate) fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("could not create {}", temp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("could not write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("could not rename {} into place", temp.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_are_instance_and_utc_time() {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 3, 4, 5).unwrap();
        assert_eq!(
            new_id("social.example", at),
            "social.example-20261127T030405Z"
        );
    }

    #[test]
    fn ids_parse_back_into_instance_and_time() {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 3, 4, 5).unwrap();
        let id = new_id("social.my-example", at);
        assert_eq!(parse_id(&id), Some(("social.my-example", at)));
        for not_an_id in [
            "notes",
            "x-20261127",
            "-20261127T030405Z",
            "x-20261327T030405Z",
        ] {
            assert_eq!(parse_id(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn an_uncommitted_set_removes_itself() {
        let root = tempfile::tempdir().unwrap();
        let partial = PartialSet::create(root.path(), "x-1").unwrap();
        std::fs::write(partial.dir.join("globals.sql.zst"), b"half").unwrap();
        assert!(root.path().join("x-1.partial").exists());
        drop(partial);
        assert!(!root.path().join("x-1.partial").exists());
        assert!(!root.path().join("x-1").exists());
    }
}
