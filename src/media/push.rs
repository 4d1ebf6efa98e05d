//! `tusk media push`: the local media tree into the bucket.
//!
//! One listing tells what is already there (same size, and same MD5 where
//! the listing gives one), so an interrupted run resumes and a finished one
//! re-runs as a no-op without a request per object.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use futures_util::StreamExt;
use serde::Serialize;

use super::{LocalFile, MediaLayout};
use crate::output::Output;
use crate::storage::local::file_md5;
use crate::storage::{ObjectInfo, Storage, list_all};

/// Consecutive failed uploads (each after its retries) that stop a push.
const GIVE_UP_AFTER: usize = 8;

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub concurrency: usize,
    pub dry_run: bool,
    pub delete_local: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PushReport {
    pub dry_run: bool,
    pub local_files: usize,
    pub local_bytes: u64,
    pub already_present: usize,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// (key, error) of uploads that failed after retries.
    pub failed: Vec<(String, String)>,
    /// Uploads not started because the store kept failing.
    pub not_attempted: usize,
    /// Local files deleted after verification (`--delete-local`).
    pub deleted_local: usize,
    pub seconds: f64,
}

pub async fn run(
    storage: &dyn Storage,
    layout: &MediaLayout,
    opts: &PushOptions,
    output: &Output,
) -> Result<PushReport> {
    let started = Instant::now();
    // Walking a cold tree and listing the bucket both wait on I/O: together.
    let prefix = layout.list_prefix();
    let (local, listing) = tokio::try_join!(layout.walk(), list_all(storage, &prefix))?;
    let listing: HashMap<String, ObjectInfo> =
        listing.into_iter().map(|o| (o.key.clone(), o)).collect();
    let mut report = PushReport {
        dry_run: opts.dry_run,
        local_files: local.len(),
        local_bytes: local.iter().map(|f| f.size).sum(),
        ..Default::default()
    };

    let pending = files_to_upload(layout, &local, &listing, opts.concurrency).await?;
    report.already_present = local.len() - pending.len();
    let pending_bytes: u64 = pending.iter().map(|f| f.size).sum();
    tracing::info!(
        "{} files ({}) in {}; {} already in {}; {} to upload ({})",
        local.len(),
        crate::output::human_bytes(report.local_bytes),
        layout.root.display(),
        report.already_present,
        storage.describe(),
        pending.len(),
        crate::output::human_bytes(pending_bytes)
    );
    if opts.dry_run {
        for file in &pending {
            tracing::debug!("would upload {}", layout.key_for(&file.relative));
        }
        report.uploaded = pending.len();
        report.uploaded_bytes = pending_bytes;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let progress = output.byte_progress("upload", Some(pending_bytes));
    let failed = Mutex::new(Vec::new());
    let failing_in_a_row = AtomicUsize::new(0);
    let uploads = futures_util::stream::iter(&pending)
        .map(|file| {
            let progress = &progress;
            let failed = &failed;
            let failing_in_a_row = &failing_in_a_row;
            async move {
                // A store that keeps failing (down, full, wrong credentials)
                // would otherwise be retried file by file.
                if failing_in_a_row.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
                    return None;
                }
                let key = layout.key_for(&file.relative);
                match storage
                    .put_file(&key, &file.path, file.size, &layout.put_options(file))
                    .await
                {
                    Ok(()) => {
                        failing_in_a_row.store(0, Ordering::Relaxed);
                        progress.inc(file.size);
                        Some(file.size)
                    }
                    Err(err) => {
                        failing_in_a_row.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("{key}: {err:#}");
                        failed.lock().unwrap().push((key, format!("{err:#}")));
                        None
                    }
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let sizes: Vec<Option<u64>> = uploads.collect().await;
    progress.finish_and_clear();
    report.uploaded = sizes.iter().flatten().count();
    report.uploaded_bytes = sizes.iter().flatten().sum();
    report.failed = failed.into_inner().unwrap();
    report.failed.sort();
    report.not_attempted = pending.len() - report.uploaded - report.failed.len();
    if report.not_attempted > 0 {
        tracing::error!(
            "stopped after {GIVE_UP_AFTER} uploads in a row failed; {} files were not attempted",
            report.not_attempted
        );
    }

    if opts.delete_local && report.failed.is_empty() && report.not_attempted == 0 {
        report.deleted_local = delete_verified(storage, layout, &local, opts.concurrency).await?;
    } else if opts.delete_local {
        tracing::warn!(
            "not deleting local files: {} uploads failed",
            report.failed.len()
        );
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The local files the listing does not show as stored already.
async fn files_to_upload(
    layout: &MediaLayout,
    local: &[LocalFile],
    listing: &HashMap<String, ObjectInfo>,
    concurrency: usize,
) -> Result<Vec<LocalFile>> {
    let decisions: Vec<Result<Option<LocalFile>>> = futures_util::stream::iter(local)
        .map(|file| async move {
            let stored = listing.get(&layout.key_for(&file.relative));
            let present = match stored {
                None => false,
                Some(object) if object.size != file.size => false,
                // Same size and a plain MD5 ETag: compare contents.
                Some(object) => match object.content_md5() {
                    Some(md5) => file_md5(&file.path).await? == md5,
                    None => true,
                },
            };
            Ok((!present).then(|| file.clone()))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut pending: Vec<LocalFile> = decisions
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_>>()?;
    pending.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(pending)
}

/// Deletes the local files a fresh verification proves stored and
/// identical, and nothing at all if any file is not.
async fn delete_verified(
    storage: &dyn Storage,
    layout: &MediaLayout,
    local: &[LocalFile],
    concurrency: usize,
) -> Result<usize> {
    let report = super::verify::run(storage, layout, concurrency).await?;
    if !report.ok() {
        return Err(crate::error::TuskError::VerificationFailed(format!(
            "after the upload {} objects are missing, {} differ in size and {} in content; \
             no local file was deleted",
            report.missing.len(),
            report.size_mismatch.len(),
            report.checksum_mismatch.len()
        ))
        .into());
    }
    let proven: std::collections::HashSet<&str> =
        report.identical.iter().map(String::as_str).collect();
    let mut deleted = 0;
    for file in local {
        if proven.contains(layout.key_for(&file.relative).as_str()) {
            tokio::fs::remove_file(&file.path).await?;
            deleted += 1;
            crate::storage::local::remove_empty_parents(&layout.root, &file.path);
        }
    }
    tracing::info!("deleted {deleted} local files that are stored and identical");
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(root: &std::path::Path, relative: &str, content: &[u8]) -> LocalFile {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        LocalFile {
            relative: relative.into(),
            path,
            size: content.len() as u64,
            mode: 0o644,
        }
    }

    fn stored(key: &str, size: u64, etag: Option<&str>) -> (String, ObjectInfo) {
        let info = ObjectInfo {
            key: key.into(),
            size,
            etag: etag.map(str::to_string),
            modified: None,
        };
        (key.to_string(), info)
    }

    #[tokio::test]
    async fn a_rerun_uploads_only_what_the_listing_does_not_prove_stored() {
        let dir = tempfile::tempdir().unwrap();
        let layout = MediaLayout {
            root: dir.path().to_path_buf(),
            key_prefix: Some("pre".into()),
            permission: None,
        };
        let md5_of = |bytes: &[u8]| {
            use md5::{Digest, Md5};
            hex::encode(Md5::digest(bytes))
        };
        let files = vec![
            local(dir.path(), "a/missing.png", b"never uploaded"),
            local(dir.path(), "a/same.png", b"identical"),
            local(dir.path(), "a/shorter.png", b"half an upload"),
            local(dir.path(), "a/changed.png", b"new bytes"),
            local(dir.path(), "a/multipart.mp4", b"big file"),
        ];
        let listing: HashMap<String, ObjectInfo> = [
            stored("pre/a/same.png", 9, Some(&md5_of(b"identical"))),
            stored("pre/a/shorter.png", 4, None),
            stored("pre/a/changed.png", 9, Some(&md5_of(b"old bytes"))),
            // A multipart ETag is no content MD5: the size has to do.
            stored(
                "pre/a/multipart.mp4",
                8,
                Some("9e107d9d372bb6826bd81d3542a419d6-2"),
            ),
            // Unprefixed keys are not this tree's.
            stored("a/missing.png", 14, None),
        ]
        .into_iter()
        .collect();
        let pending = files_to_upload(&layout, &files, &listing, 4).await.unwrap();
        let names: Vec<&str> = pending.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["a/changed.png", "a/missing.png", "a/shorter.png"]);
    }
}
