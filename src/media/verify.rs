//! `tusk media verify`: the local tree against the bucket.
//!
//! Presence and size come from one listing. Content is compared by MD5:
//! the listing's ETag where it is one, else the object's ETag from a HEAD
//! (some stores list without ETags); multipart ETags are recomputed from
//! the local file with tusk's part size.

use std::collections::HashMap;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde::Serialize;

use super::{LocalFile, MediaLayout};
use crate::storage::local::file_md5;
use crate::storage::s3::{MULTIPART_THRESHOLD, PART_SIZE};
use crate::storage::{ObjectInfo, Storage, list_all};

#[derive(Debug, Default, Serialize)]
pub struct MediaVerifyReport {
    pub local_files: usize,
    pub objects: usize,
    /// Keys of local files proven present and identical.
    #[serde(skip)]
    pub identical: Vec<String>,
    pub identical_count: usize,
    pub missing: Vec<String>,
    /// (key, local size, object size)
    pub size_mismatch: Vec<(String, u64, u64)>,
    pub checksum_mismatch: Vec<String>,
    /// Objects under the prefix with no local file.
    pub extra: Vec<String>,
}

impl MediaVerifyReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && self.checksum_mismatch.is_empty()
    }
}

pub async fn run(
    storage: &dyn Storage,
    layout: &MediaLayout,
    concurrency: usize,
) -> Result<MediaVerifyReport> {
    let local = layout.walk().await?;
    let objects: HashMap<String, ObjectInfo> = list_all(storage, &layout.list_prefix())
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    verify_files(storage, layout, &local, &objects, concurrency).await
}

/// Compares `local` with a listing taken before.
pub async fn verify_files(
    storage: &dyn Storage,
    layout: &MediaLayout,
    local: &[LocalFile],
    objects: &HashMap<String, ObjectInfo>,
    concurrency: usize,
) -> Result<MediaVerifyReport> {
    let mut report = MediaVerifyReport {
        local_files: local.len(),
        objects: objects.len(),
        ..Default::default()
    };
    let mut candidates = Vec::new();
    for file in local {
        let key = layout.key_for(&file.relative);
        match objects.get(&key) {
            None => report.missing.push(key),
            Some(object) if object.size != file.size => {
                report.size_mismatch.push((key, file.size, object.size))
            }
            Some(object) => candidates.push((key, file, object.etag.clone())),
        }
    }
    let local_keys: std::collections::HashSet<String> =
        local.iter().map(|f| layout.key_for(&f.relative)).collect();
    report.extra = objects
        .keys()
        .filter(|key| !local_keys.contains(*key))
        .cloned()
        .collect();
    report.extra.sort();

    let outcomes: Vec<(String, bool)> = futures_util::stream::iter(candidates)
        .map(|(key, file, listed_etag)| async move {
            let etag = match listed_etag {
                Some(etag) => Some(etag),
                None => storage.head(&key).await?.and_then(|meta| meta.etag),
            };
            let Some(etag) = etag else {
                anyhow::bail!(
                    "{} reports no ETag for {key}; cannot compare contents",
                    storage.describe()
                );
            };
            let local_etag = local_etag(file, etag.contains('-')).await?;
            Ok((key, local_etag == etag))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for (key, same) in outcomes {
        if same {
            report.identical.push(key);
        } else {
            report.checksum_mismatch.push(key);
        }
    }
    report.identical.sort();
    report.checksum_mismatch.sort();
    report.missing.sort();
    report.identical_count = report.identical.len();
    Ok(report)
}

/// The ETag a store gives `file` as tusk uploads it: the MD5, or for a
/// multipart upload the MD5 of the parts' MD5s and the part count.
async fn local_etag(file: &LocalFile, multipart: bool) -> Result<String> {
    if !multipart || file.size <= MULTIPART_THRESHOLD {
        return file_md5(&file.path).await;
    }
    let path = file.path.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut reader = std::fs::File::open(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let mut digests = Md5::new();
        let mut parts = 0;
        loop {
            let mut part = Vec::with_capacity(PART_SIZE as usize);
            (&mut reader).take(PART_SIZE).read_to_end(&mut part)?;
            if part.is_empty() {
                break;
            }
            digests.update(Md5::digest(&part));
            parts += 1;
        }
        Ok(format!("{}-{parts}", hex::encode(digests.finalize())))
    })
    .await?
}
