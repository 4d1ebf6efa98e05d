//! Backup sets in a bucket: `<prefix><id>/<artefact>`, with the manifest
//! written last, the destination's lock object and run records beside the
//! sets (`<prefix>.tusk.lock`, `<prefix>.tusk-last-backup.json`).
//!
//! An object store has no rename, so what a prefix holds is told by marker
//! objects: a backup writes `<id>/.tusk-attempt.json` before anything else
//! and removes it after the manifest, and a prune writes
//! `<id>/.tusk-removing` before it deletes the manifest and the rest. A
//! prefix with the manifest (and no removal marker) is a complete set; with
//! only the attempt marker, an incomplete attempt; with neither, it is not
//! tusk's and is never touched, whatever its name.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;

use crate::cleanup::{self, Deferred};
use crate::error::TuskError;
use crate::set::destination::Bucket;
use crate::set::lock::{LockOwner, LockPolicy, Staleness};
use crate::set::manifest::{MANIFEST_FILE, Manifest};
use crate::set::runs::{self, RunRecord};
use crate::set::{BackupSet, SetPlace, parse_id, stream};
use crate::storage::multipart::{MultipartWriter, UploadsInFlight};
use crate::storage::{PutMode, PutOptions, PutOutcome, Storage};

/// Written first in a set's prefix by a backup, removed after its manifest.
pub const ATTEMPT_MARKER: &str = ".tusk-attempt.json";
/// Written first by a prune that removes the set.
pub const REMOVING_MARKER: &str = ".tusk-removing";
/// The destination's lock object, beside the sets.
pub const LOCK_OBJECT: &str = ".tusk.lock";

const JSON: &str = "application/json";

fn json_options() -> PutOptions {
    PutOptions {
        content_type: JSON.into(),
        ..PutOptions::default()
    }
}

impl Bucket {
    /// `<prefix><id>/`.
    pub fn set_prefix(&self, id: &str) -> String {
        format!("{}{id}/", self.prefix)
    }

    /// Where set `id` is (or would be) in this bucket.
    pub fn place(&self, id: &str) -> SetPlace {
        SetPlace::Bucket {
            storage: self.storage.clone(),
            prefix: self.set_prefix(id),
        }
    }
}

/// What one set-shaped prefix holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The manifest is there (tusk's, for this id: checked when opened).
    Complete,
    /// Only the attempt marker: a backup that did not finish.
    Incomplete,
    /// A removal that did not finish.
    Removing,
}

/// Every prefix under the destination that is named like a set id and
/// holds one of tusk's markers or a manifest, with its keys. Anything else
/// is not in the result.
pub async fn scan(bucket: &Bucket) -> Result<BTreeMap<String, (Found, Vec<String>)>> {
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pages = bucket.storage.list(bucket.prefix.clone(), None);
    while let Some(page) = pages.try_next().await? {
        for object in page {
            let Some(rest) = object.key.strip_prefix(&bucket.prefix) else {
                continue;
            };
            let Some((first, _)) = rest.split_once('/') else {
                continue;
            };
            if parse_id(first).is_some() {
                by_id.entry(first.to_string()).or_default().push(object.key);
            }
        }
    }
    let mut found = BTreeMap::new();
    for (id, keys) in by_id {
        let prefix = bucket.set_prefix(&id);
        let has = |name: &str| {
            keys.iter()
                .any(|key| key.strip_prefix(&prefix) == Some(name))
        };
        let kind = if has(REMOVING_MARKER) {
            Found::Removing
        } else if has(MANIFEST_FILE) {
            Found::Complete
        } else if has(ATTEMPT_MARKER) {
            Found::Incomplete
        } else {
            continue;
        };
        found.insert(id, (kind, keys));
    }
    Ok(found)
}

/// Opens the complete set `id` found by [`scan`]: `None`, with a warning,
/// when its manifest is not tusk's manifest for that id.
pub async fn open_set(bucket: &Bucket, id: &str) -> Result<Option<BackupSet>> {
    let place = bucket.place(id);
    let described = place.describe();
    match BackupSet::open_at(place).await {
        Ok(Some(set)) if set.manifest.id == id && set.manifest.tool.name == "tusk" => Ok(Some(set)),
        Ok(Some(_)) => {
            tracing::warn!("leaving {described} alone: its manifest is not tusk's for this id");
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(err) => {
            tracing::warn!("leaving {described} alone: {err:#}");
            Ok(None)
        }
    }
}

/// Every complete set in the bucket, oldest first.
pub async fn list_sets(bucket: &Bucket) -> Result<Vec<BackupSet>> {
    let mut sets = Vec::new();
    for (id, (kind, _)) in scan(bucket).await? {
        if kind == Found::Complete
            && let Some(set) = open_set(bucket, &id).await?
        {
            sets.push(set);
        }
    }
    super::sort_sets(&mut sets);
    Ok(sets)
}

/// Removes what [`scan`] found for `id`: the removal marker first, then
/// the manifest (so the set is never listed as good again), then the rest,
/// the marker last.
pub async fn remove(bucket: &Bucket, id: &str, keys: &[String]) -> Result<()> {
    let prefix = bucket.set_prefix(id);
    let marker = format!("{prefix}{REMOVING_MARKER}");
    bucket
        .storage
        .put_bytes(
            &marker,
            Vec::new().into(),
            &json_options(),
            PutMode::Replace,
        )
        .await?;
    let manifest = format!("{prefix}{MANIFEST_FILE}");
    bucket.storage.delete(&manifest).await?;
    // One request per key: a set has a handful of objects, and DeleteObjects
    // needs a checksum header some stores refuse.
    for key in keys
        .iter()
        .filter(|key| **key != manifest && **key != marker)
    {
        bucket.storage.delete(key).await?;
    }
    // An attempt's upload a killed run left open; a store that cannot list
    // them (s3s-fs) leaves that to its own tools.
    if let Err(err) = abort_uploads(&*bucket.storage, &prefix).await {
        tracing::warn!("{err:#}");
    }
    bucket.storage.delete(&marker).await
}

/// Aborts every open multipart upload under `prefix`; returns them.
pub async fn abort_uploads(
    storage: &dyn Storage,
    prefix: &str,
) -> Result<Vec<crate::storage::OpenUpload>> {
    let uploads = storage.open_uploads(prefix).await?;
    for upload in &uploads {
        storage.abort_upload(&upload.key, &upload.upload_id).await?;
    }
    Ok(uploads)
}

/// The last recorded run of `command` on the destination.
pub async fn last_run(bucket: &Bucket, command: &str) -> Option<RunRecord> {
    read_record(bucket, &runs::record_name(command)).await
}

/// The last failed run of `command` on the destination.
pub async fn last_failure(bucket: &Bucket, command: &str) -> Option<RunRecord> {
    read_record(bucket, &runs::failure_name(command)).await
}

async fn read_record(bucket: &Bucket, name: &str) -> Option<RunRecord> {
    let key = format!("{}{name}", bucket.prefix);
    let place = SetPlace::Bucket {
        storage: bucket.storage.clone(),
        prefix: bucket.prefix.clone(),
    };
    match place.read_file(name).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::warn!("ignoring the damaged run record {key}: {err}");
                None
            }
        },
        Ok(None) => None,
        Err(err) => {
            tracing::warn!("could not read the run record {key}: {err:#}");
            None
        }
    }
}

/// Records a run on the destination, as [`runs::save`] does in a directory.
pub async fn save_run(bucket: &Bucket, record: &RunRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record)?;
    let mut names = vec![runs::record_name(&record.command)];
    if record.outcome == runs::Outcome::Failed {
        names.push(runs::failure_name(&record.command));
    }
    for name in names {
        let key = format!("{}{name}", bucket.prefix);
        bucket
            .storage
            .put_bytes(&key, json.clone().into(), &json_options(), PutMode::Replace)
            .await
            .with_context(|| format!("could not record the {} run", record.command))?;
    }
    Ok(())
}

/// A set being written to a bucket. Until [`Self::commit`] it is an
/// incomplete attempt; dropped without a commit, it is removed (its open
/// uploads aborted) by [`Self::abandon`] or, on an error path, by the
/// cleanup `main` runs.
pub struct PartialBucketSet {
    bucket: Bucket,
    id: String,
    removal: Option<Deferred>,
    uploads: UploadsInFlight,
}

impl PartialBucketSet {
    pub async fn create(bucket: &Bucket, id: &str) -> Result<Self> {
        let prefix = bucket.set_prefix(id);
        let existing = bucket.storage.list(prefix.clone(), None).try_next().await?;
        if existing.is_some_and(|page| !page.is_empty()) {
            bail!(
                "backup set {id} already exists in {}; wait a second and run again",
                bucket.describe()
            );
        }
        let marker = serde_json::to_vec_pretty(&LockOwner::this_process("backup"))?;
        bucket
            .storage
            .put_bytes(
                &format!("{prefix}{ATTEMPT_MARKER}"),
                marker.into(),
                &json_options(),
                PutMode::Replace,
            )
            .await?;
        let storage = bucket.storage.clone();
        let uploads = UploadsInFlight::default();
        let in_flight = uploads.clone();
        let removal = cleanup::defer(
            format!("remove the incomplete set {id} from {}", bucket.describe()),
            move || async move {
                // Each uploader aborts its own upload once its writer is
                // gone; wait for that before the objects go.
                in_flight.wait(std::time::Duration::from_secs(30)).await;
                let keys: Vec<String> = crate::storage::list_all(&*storage, &prefix)
                    .await?
                    .into_iter()
                    .map(|object| object.key)
                    .collect();
                for key in &keys {
                    storage.delete(key).await?;
                }
                Ok(())
            },
        );
        Ok(PartialBucketSet {
            bucket: bucket.clone(),
            id: id.to_string(),
            removal: Some(removal),
            uploads,
        })
    }

    /// The artefact `name` of the set: a multipart upload, streamed.
    pub fn sink(&self, name: &str) -> stream::ArtefactSink {
        Box::new(MultipartWriter::new(
            self.bucket.storage.clone(),
            format!("{}{name}", self.bucket.set_prefix(&self.id)),
            PutOptions {
                content_type: "application/octet-stream".into(),
                ..PutOptions::default()
            },
            self.bucket.parts,
            Some(self.uploads.token()),
        ))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.bucket.describe(),
            self.bucket.set_prefix(&self.id)
        )
    }

    /// Writes the manifest, last, and then removes the attempt marker.
    pub async fn commit(mut self, manifest: &Manifest) -> Result<SetPlace> {
        let prefix = self.bucket.set_prefix(&self.id);
        let json = serde_json::to_vec_pretty(manifest)?;
        self.bucket
            .storage
            .put_bytes(
                &format!("{prefix}{MANIFEST_FILE}"),
                json.into(),
                &json_options(),
                PutMode::Replace,
            )
            .await?;
        if let Some(removal) = self.removal.take() {
            removal.dismiss();
        }
        if let Err(err) = self
            .bucket
            .storage
            .delete(&format!("{prefix}{ATTEMPT_MARKER}"))
            .await
        {
            // The manifest decides; a marker beside it changes nothing.
            tracing::warn!("could not remove {prefix}{ATTEMPT_MARKER}: {err:#}");
        }
        Ok(self.bucket.place(&self.id))
    }

    /// Removes what was written so far.
    pub async fn abandon(mut self) -> Result<()> {
        match self.removal.take() {
            Some(removal) => removal.run().await,
            None => Ok(()),
        }
    }
}

/// The destination's lock, as an object beside the sets. See
/// [`BucketLock::acquire`] for what it guarantees.
pub struct BucketLock {
    storage: std::sync::Arc<dyn Storage>,
    key: String,
    record: Vec<u8>,
    release: Option<Deferred>,
}

enum Attempt {
    Taken(BucketLock),
    Held(String),
}

impl BucketLock {
    /// Takes the lock object `<prefix>.tusk.lock` for `command`, waiting up
    /// to `policy.wait` for a holder to finish; exit 4 when it does not.
    ///
    /// The object is created with `If-None-Match: *`, a conditional write
    /// that AWS S3 (since 2024), R2, B2 and MinIO honour: of two runs that
    /// race, one gets 412 and waits or stops. A store that ignores the
    /// header simply stores the object; then the record is read back and
    /// compared, which catches a run that wrote before the other read, but
    /// not two writes that overlap exactly. A record left by a killed run is
    /// taken over as a directory's is ([`LockOwner::staleness`]): a dead pid
    /// on this host at once, another host's after `stale_after`.
    pub async fn acquire(bucket: &Bucket, command: &str, policy: &LockPolicy) -> Result<Self> {
        const POLL: std::time::Duration = std::time::Duration::from_millis(1000);
        let key = format!("{}{LOCK_OBJECT}", bucket.prefix);
        let deadline = tokio::time::Instant::now() + policy.wait;
        let mut logged_wait = false;
        loop {
            let held_by = match Self::try_acquire(bucket, &key, command, policy).await? {
                Attempt::Taken(lock) => return Ok(lock),
                Attempt::Held(holder) => holder,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let advice = match policy.wait.is_zero() {
                    true => "; try again when it has finished, or pass --wait SECONDS".to_string(),
                    false => format!(
                        " after waiting {}s; try again when it has finished",
                        policy.wait.as_secs()
                    ),
                };
                return Err(TuskError::Locked(format!(
                    "the lock {key} in {} is held by {held_by}{advice}",
                    bucket.storage.describe()
                ))
                .into());
            }
            if !logged_wait {
                tracing::info!(
                    "waiting up to {}s for the lock of {} ({held_by})",
                    policy.wait.as_secs(),
                    bucket.describe()
                );
                logged_wait = true;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    async fn read_owner(
        storage: &dyn Storage,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<LockOwner>)>> {
        let Some(mut reader) = storage.get(key, 0).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await?;
        let owner = serde_json::from_slice(&bytes).ok();
        Ok(Some((bytes, owner)))
    }

    async fn try_acquire(
        bucket: &Bucket,
        key: &str,
        command: &str,
        policy: &LockPolicy,
    ) -> Result<Attempt> {
        let storage = &*bucket.storage;
        if let Some((_, owner)) = Self::read_owner(storage, key).await? {
            let Some(owner) = owner else {
                return Ok(Attempt::Held(format!(
                    "an unreadable record (remove {key} if no tusk run is using the bucket)"
                )));
            };
            let why = match owner.staleness(Utc::now(), policy.stale_after) {
                Staleness::Live => return Ok(Attempt::Held(owner.describe())),
                Staleness::Dead => "that process is gone".to_string(),
                Staleness::PidReused => "that pid is now another process".to_string(),
                Staleness::TooOld => format!("older than {}s", policy.stale_after.as_secs()),
            };
            tracing::warn!(
                "taking over the stale lock {key} in {} of {}: {why}",
                storage.describe(),
                owner.describe()
            );
            storage.delete(key).await?;
        }
        let record = serde_json::to_vec_pretty(&LockOwner::this_process(command))?;
        let outcome = storage
            .put_bytes(
                key,
                record.clone().into(),
                &json_options(),
                PutMode::CreateOnly,
            )
            .await?;
        let current = Self::read_owner(storage, key).await?;
        // Our record is there: our write (a repeated one may report that
        // the object exists: its first attempt landed). Anything else is
        // another run's, whatever the store said about the condition.
        let ours = current.as_ref().is_some_and(|(bytes, _)| *bytes == record);
        if !ours {
            if outcome == PutOutcome::Written {
                tracing::warn!(
                    "{} stored the lock {key} although another run's record replaced it: \
                     the store may ignore If-None-Match",
                    storage.describe()
                );
            }
            let holder = current
                .and_then(|(_, owner)| owner)
                .map_or_else(|| "another run".to_string(), |owner| owner.describe());
            return Ok(Attempt::Held(holder));
        }
        let release_storage = bucket.storage.clone();
        let release_key = key.to_string();
        let release_record = record.clone();
        let release = cleanup::defer(format!("release the lock {key}"), move || async move {
            release_if_ours(&*release_storage, &release_key, &release_record).await
        });
        Ok(Attempt::Taken(BucketLock {
            storage: bucket.storage.clone(),
            key: key.to_string(),
            record,
            release: Some(release),
        }))
    }

    /// Removes the lock object, if it still holds this run's record.
    pub async fn release(mut self) -> Result<()> {
        match self.release.take() {
            Some(release) => release.run().await,
            None => release_if_ours(&*self.storage, &self.key, &self.record).await,
        }
    }
}

async fn release_if_ours(storage: &dyn Storage, key: &str, record: &[u8]) -> Result<()> {
    match BucketLock::read_owner(storage, key).await? {
        Some((bytes, _)) if bytes == record => storage.delete(key).await,
        Some(_) => {
            tracing::warn!("the lock {key} was taken over by another run; left as it is");
            Ok(())
        }
        None => Ok(()),
    }
}

/// When an attempt's prefix was started (its id's time).
pub fn attempt_time(id: &str) -> Option<DateTime<Utc>> {
    parse_id(id).map(|(_, at)| at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::stream::{WriteOptions, write_artefact};
    use crate::set::{Compression, manifest::MANIFEST_FORMAT};
    use crate::storage::local::LocalStorage;
    use crate::storage::multipart::PartSizes;
    use tokio::io::AsyncReadExt;

    fn bucket(root: &std::path::Path) -> Bucket {
        Bucket {
            storage: std::sync::Arc::new(LocalStorage::new(root.to_path_buf())),
            prefix: "mastodon/".into(),
            parts: PartSizes::default(),
        }
    }

    fn manifest(id: &str, artefacts: Vec<crate::set::manifest::Artefact>) -> Manifest {
        let text = format!(
            r#"{{"format": {MANIFEST_FORMAT}, "id": "{id}", "instance": "social",
            "tool": {{"name": "tusk", "version": "0"}},
            "started_at": "2026-01-02T03:04:05Z", "finished_at": "2026-01-02T03:04:06Z",
            "source": {{"server": "s", "server_version": "15", "server_major": 15,
              "pg_dump_version": "15", "mode": "direct", "superuser": true, "role_passwords": true}},
            "database": {{"name": "m", "owner": "o", "encoding": "UTF8", "size_bytes": 1,
              "schema_migrations": null, "tables": {{}}, "timestamp_id": true, "sequences": []}},
            "compression": {{"algorithm": "zstd", "level": 1}},
            "artefacts": [], "durations": {{}}}}"#
        );
        let mut manifest: Manifest = serde_json::from_str(&text).unwrap();
        manifest.artefacts = artefacts;
        manifest
    }

    #[tokio::test]
    async fn a_set_written_to_a_store_reads_back_and_only_tusks_prefixes_count() {
        let root = tempfile::tempdir().unwrap();
        let bucket = bucket(root.path());
        let id = "social-20260102T030405Z";
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 7).to_le_bytes())
            .collect();

        let partial = PartialBucketSet::create(&bucket, id).await.unwrap();
        let written = write_artefact(
            Box::new(std::io::Cursor::new(data.clone())),
            partial.sink("database.dump.zst"),
            WriteOptions {
                compression: Compression::Zstd,
                level: 1,
                progress: &indicatif::ProgressBar::hidden(),
                layer: None,
            },
        )
        .await
        .unwrap();
        // Before the manifest the prefix is an incomplete attempt.
        let found = scan(&bucket).await.unwrap();
        assert_eq!(found[id].0, Found::Incomplete);
        assert!(list_sets(&bucket).await.unwrap().is_empty());

        let artefact = crate::set::manifest::Artefact {
            name: "database.dump.zst".into(),
            kind: crate::set::manifest::ArtefactKind::Database,
            bytes: written.bytes,
            sha256: written.sha256.clone(),
            uncompressed_bytes: written.uncompressed_bytes,
            file: None,
            source: None,
            redis: None,
        };
        partial
            .commit(&manifest(id, vec![artefact.clone()]))
            .await
            .unwrap();
        // Foreign things under the prefix: id-shaped without a marker, and not id-shaped.
        for key in ["mastodon/social-20200101T000000Z/x", "mastodon/notes.txt"] {
            bucket
                .storage
                .put_bytes(key, b"x".to_vec().into(), &json_options(), PutMode::Replace)
                .await
                .unwrap();
        }
        let found = scan(&bucket).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[id].0, Found::Complete);

        let sets = list_sets(&bucket).await.unwrap();
        assert_eq!(sets.len(), 1);
        let set = &sets[0];
        assert!(set.check_artefacts().await.unwrap().is_empty());
        let mut back = Vec::new();
        set.open_artefact(&artefact)
            .await
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, data);

        // A removal that stopped after its marker never lists as a set.
        let keys = found[id].1.clone();
        bucket
            .storage
            .put_bytes(
                &format!("mastodon/{id}/{REMOVING_MARKER}"),
                Vec::new().into(),
                &json_options(),
                PutMode::Replace,
            )
            .await
            .unwrap();
        assert_eq!(scan(&bucket).await.unwrap()[id].0, Found::Removing);
        assert!(list_sets(&bucket).await.unwrap().is_empty());
        remove(&bucket, id, &keys).await.unwrap();
        assert!(scan(&bucket).await.unwrap().is_empty());
        assert!(root.path().join("mastodon/notes.txt").exists());
    }

    #[tokio::test]
    async fn the_lock_object_is_exclusive_and_released() {
        let root = tempfile::tempdir().unwrap();
        let bucket = bucket(root.path());
        let policy = LockPolicy::default();
        let held = BucketLock::acquire(&bucket, "backup", &policy)
            .await
            .unwrap();
        let second = BucketLock::acquire(&bucket, "prune", &policy).await;
        let err = second.err().expect("held");
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_LOCKED)
        );
        assert!(format!("{err:#}").contains("backup by pid"), "{err:#}");
        held.release().await.unwrap();
        assert!(!root.path().join("mastodon/.tusk.lock").exists());
        BucketLock::acquire(&bucket, "prune", &policy)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
}
