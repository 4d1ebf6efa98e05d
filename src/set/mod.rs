//! Backup sets on disk: `<backup-dir>/<id>/` with artefacts and a manifest.
//!
//! A set is built in `<id>.partial/` and renamed into place only after every
//! artefact and the manifest are on disk and fsynced, so a directory named
//! like an id is always complete.
//!
//! This is the domain of backup, restore and verify alike: the manifest and
//! the facts it records ([`manifest`], [`facts`]), the compressed streams
//! ([`stream`], [`Compression`]).

pub mod bucket;
mod compression;
pub mod content;
pub mod destination;
pub mod encryption;
pub mod facts;
pub mod lock;
pub mod manifest;
pub mod properties;
pub mod redis;
pub mod retention;
pub mod runs;
pub mod stream;

pub use compression::Compression;
pub use lock::{DirLock, LockPolicy};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use crate::error::TuskError;
use crate::postgres::BoxReader;
use crate::storage::{PutMode, PutOptions, Storage};
use encryption::Identities;
use manifest::{
    Artefact, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, Problem, VERIFICATION_FILE, Verification,
};

/// The name of a set under construction is its id with this suffix.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The backup directory's lock ([`lock`]).
const LOCK_FILE: &str = ".tusk.lock";

/// Where a set's files are.
#[derive(Clone)]
pub enum SetPlace {
    /// `<backup-dir>/<id>/`.
    Dir(PathBuf),
    /// The objects under `prefix` (`<destination prefix><id>/`) in a bucket.
    Bucket {
        storage: Arc<dyn Storage>,
        prefix: String,
    },
}

impl std::fmt::Debug for SetPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SetPlace {
    /// The directory, or the bucket and prefix, for messages and listings.
    pub fn describe(&self) -> String {
        match self {
            SetPlace::Dir(dir) => dir.display().to_string(),
            SetPlace::Bucket { storage, prefix } => format!("{} {prefix}", storage.describe()),
        }
    }

    /// The set's directory, when it is on this machine.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            SetPlace::Dir(dir) => Some(dir),
            SetPlace::Bucket { .. } => None,
        }
    }

    /// The stored bytes of the file `name` in the set; `None` when it is
    /// not there.
    pub async fn open_file(&self, name: &str) -> Result<Option<BoxReader>> {
        match self {
            SetPlace::Dir(dir) => {
                let path = dir.join(name);
                match tokio::fs::File::open(&path).await {
                    Ok(file) => Ok(Some(Box::new(file))),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(err) => {
                        Err(err).with_context(|| format!("could not open {}", path.display()))
                    }
                }
            }
            SetPlace::Bucket { storage, prefix } => {
                crate::storage::retry::resuming_get(
                    storage.clone(),
                    format!("{prefix}{name}"),
                    READ_RESUMES,
                )
                .await
            }
        }
    }

    /// A small file of the set, whole (a manifest, a verification record).
    pub async fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut reader) = self.open_file(name).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
            .await
            .with_context(|| format!("could not read {name} of {}", self.describe()))?;
        Ok(Some(bytes))
    }

    /// Replaces a small file of the set (atomically: a renamed file, or
    /// one object write).
    pub async fn write_file(&self, name: &str, contents: Vec<u8>) -> Result<()> {
        match self {
            SetPlace::Dir(dir) => write_file_atomically(&dir.join(name), &contents),
            SetPlace::Bucket { storage, prefix } => {
                let opts = PutOptions {
                    content_type: crate::storage::content_type(name).to_string(),
                    ..PutOptions::default()
                };
                storage
                    .put_bytes(
                        &format!("{prefix}{name}"),
                        contents.into(),
                        &opts,
                        PutMode::Replace,
                    )
                    .await?;
                Ok(())
            }
        }
    }
}

/// How often in a row a read from a bucket may break off and resume.
const READ_RESUMES: u32 = 5;

/// A complete backup set.
#[derive(Debug, Clone)]
pub struct BackupSet {
    pub place: SetPlace,
    pub manifest: Manifest,
    /// The outcome of its last verification, as read with the manifest.
    verification: Option<Verification>,
    /// The keys that open an encrypted set's artefacts ([`Self::unlock`]).
    identities: Option<Arc<Identities>>,
}

impl BackupSet {
    /// The set in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a backup set: could not read {MANIFEST_FILE}",
                dir.display()
            )
        })?;
        let manifest = parse_manifest(text.as_bytes(), &path.display().to_string())?;
        let verification = std::fs::read_to_string(dir.join(VERIFICATION_FILE))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok(BackupSet {
            place: SetPlace::Dir(dir.to_path_buf()),
            manifest,
            verification,
            identities: None,
        })
    }

    /// The set at `place`, or `None` when it has no manifest (it is not a
    /// set, or an incomplete one: the manifest is written last).
    pub async fn open_at(place: SetPlace) -> Result<Option<Self>> {
        let Some(bytes) = place.read_file(MANIFEST_FILE).await? else {
            return Ok(None);
        };
        let manifest = parse_manifest(&bytes, &format!("{} {MANIFEST_FILE}", place.describe()))?;
        let verification = match place.read_file(VERIFICATION_FILE).await {
            Ok(bytes) => bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            Err(err) => {
                tracing::warn!("{err:#}");
                None
            }
        };
        Ok(Some(BackupSet {
            place,
            manifest,
            verification,
            identities: None,
        }))
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
        sort_sets(&mut sets);
        Ok(sets)
    }

    /// The artefact's stored bytes (compressed, and as stored), for
    /// hashing and copying.
    pub async fn open_stored(&self, artefact: &Artefact) -> Result<BoxReader> {
        self.place
            .open_file(&artefact.name)
            .await?
            .with_context(|| {
                format!(
                    "backup set {} has no {} ({})",
                    self.manifest.id,
                    artefact.name,
                    self.place.describe()
                )
            })
    }

    /// The artefact's content, decrypted (an encrypted set, with the keys
    /// [`Self::unlock`] gave) and decompressed: the one way restore, verify
    /// and rehearse read a set, wherever it is.
    pub async fn open_artefact(&self, artefact: &Artefact) -> Result<BoxReader> {
        let stored = self.open_stored(artefact).await?;
        let plain = match &self.manifest.encryption {
            None => stored,
            Some(info) => {
                let Some(identities) = &self.identities else {
                    return Err(encryption::no_identity_error(&artefact.name, info));
                };
                identities.open(stored, &artefact.name, info).await?
            }
        };
        Ok(stream::decompress(
            plain,
            self.manifest.compression.algorithm,
        ))
    }

    /// Gives the set the keys that open its artefacts (an encrypted set).
    pub fn unlock(mut self, identities: Arc<Identities>) -> Self {
        self.identities = Some(identities);
        self
    }

    /// Whether the artefacts are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.manifest.encryption.is_some()
    }

    /// Opens the first artefact, so a key that does not fit is found
    /// before anything is changed.
    pub async fn check_identities(&self) -> Result<()> {
        if let Some(first) = self
            .manifest
            .artefacts
            .first()
            .filter(|_| self.is_encrypted())
        {
            self.open_artefact(first).await?;
        }
        Ok(())
    }

    /// Re-hashes every artefact; a set that does not match its manifest is
    /// a verification failure (exit 3) naming what is wrong. Restores call
    /// it once, before they change anything.
    pub async fn require_intact(&self) -> Result<()> {
        let problems = self.check_artefacts().await?;
        if problems.is_empty() {
            return Ok(());
        }
        let summary: Vec<String> = problems
            .iter()
            .map(|p| format!("{} {}", p.kind, p.subject))
            .collect();
        Err(TuskError::VerificationFailed(format!(
            "backup set {} is damaged ({}); nothing was restored",
            self.manifest.id,
            summary.join(", ")
        ))
        .into())
    }

    /// Re-hashes every artefact and compares it with the manifest.
    pub async fn check_artefacts(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for artefact in &self.manifest.artefacts {
            let Some(stored) = self.place.open_file(&artefact.name).await? else {
                problems.push(Problem {
                    kind: "missing".into(),
                    subject: artefact.name.clone(),
                    expected: format!("{} bytes", artefact.bytes),
                    got: "no file".into(),
                });
                continue;
            };
            let (bytes, sha256) = stream::hash_reader(stored).await.with_context(|| {
                format!(
                    "could not read {} of {}",
                    artefact.name,
                    self.place.describe()
                )
            })?;
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

    /// The same set (its manifest) at another place, e.g. its copy; no
    /// verification recorded there yet.
    pub fn elsewhere(&self, place: SetPlace) -> Self {
        BackupSet {
            place,
            manifest: self.manifest.clone(),
            verification: None,
            identities: self.identities.clone(),
        }
    }

    pub fn verification(&self) -> Option<Verification> {
        self.verification.clone()
    }

    /// Records a verification next to the manifest (atomically replaced).
    pub async fn record_verification(&self, verification: &Verification) -> Result<()> {
        let json = serde_json::to_vec_pretty(verification)?;
        self.place.write_file(VERIFICATION_FILE, json).await
    }
}

/// Sets in the order listings show them: oldest first.
pub fn sort_sets(sets: &mut [BackupSet]) {
    sets.sort_by(|a, b| {
        (a.manifest.started_at, &a.manifest.id).cmp(&(b.manifest.started_at, &b.manifest.id))
    });
}

fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).with_context(|| format!("{what} is damaged"))?;
    if manifest.format > MANIFEST_FORMAT {
        bail!(
            "{what} was written by a newer tusk (format {}); upgrade tusk",
            manifest.format
        );
    }
    Ok(manifest)
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

    /// Where the artefact `name` is written: a new file in the set's
    /// directory.
    pub async fn sink(&self, name: &str) -> Result<stream::ArtefactSink> {
        Ok(Box::new(
            stream::FileSink::create(&self.dir.join(name)).await?,
        ))
    }

    pub fn describe(&self) -> String {
        self.dir.display().to_string()
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
