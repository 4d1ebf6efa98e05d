//! `tusk backups copy` and `tusk backups cleanup`: moving a set between
//! destinations, and aborting the multipart uploads failed runs left open.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::error::TuskError;
use crate::output::Output;
use crate::set::bucket::{self, PartialBucketSet};
use crate::set::destination::{Destination, DestinationLock, Place};
use crate::set::manifest::Problem;
use crate::set::{BackupSet, LockPolicy, PartialSet, SetPlace, stream};

/// What `tusk backups copy` did, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct CopyReport {
    pub id: String,
    pub from: String,
    pub to: String,
    /// Where the copy is.
    pub location: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// Copies `set` into `to`, holding `to`'s lock. Each artefact's stored
/// bytes are streamed (never decompressed) and hashed on the way; the copy
/// is read back and hashed again before its manifest is written, so a set
/// that is listed at the destination has been checked there.
pub async fn copy(
    set: &BackupSet,
    from: &str,
    to: &Destination,
    lock: &LockPolicy,
    output: &Output,
) -> Result<CopyReport> {
    let started = std::time::Instant::now();
    let id = set.manifest.id.clone();
    let held = DestinationLock::acquire(to, "copy", lock).await?;
    let outcome = copy_locked(set, to, output).await;
    held.release().await?;
    let location = outcome?;
    Ok(CopyReport {
        id,
        from: from.to_string(),
        to: to.name.clone(),
        location,
        bytes: set.manifest.total_bytes(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn copy_locked(set: &BackupSet, to: &Destination, output: &Output) -> Result<String> {
    let id = &set.manifest.id;
    match &to.place {
        Place::Dir(dir) => {
            if dir.join(id).exists() {
                return Err(TuskError::usage(format!(
                    "destination {} already has set {id}",
                    to.name
                )));
            }
            let partial = PartialSet::create(dir, id)?;
            for artefact in &set.manifest.artefacts {
                let sink = partial.sink(&artefact.name).await?;
                copy_artefact(set, artefact, sink, output).await?;
            }
            check_copy(set, &SetPlace::Dir(partial.dir.clone())).await?;
            Ok(partial.commit(&set.manifest)?.display().to_string())
        }
        Place::Bucket(target) => {
            if bucket::open_set(target, id).await?.is_some() {
                return Err(TuskError::usage(format!(
                    "destination {} already has set {id}",
                    to.name
                )));
            }
            let partial = PartialBucketSet::create(target, id).await?;
            let copied = async {
                for artefact in &set.manifest.artefacts {
                    copy_artefact(set, artefact, partial.sink(&artefact.name), output).await?;
                }
                check_copy(set, &target.place(id)).await
            }
            .await;
            if let Err(err) = copied {
                if let Err(cleanup) = partial.abandon().await {
                    tracing::warn!("{cleanup:#}");
                }
                return Err(err);
            }
            Ok(partial.commit(&set.manifest).await?.describe())
        }
    }
}

/// Streams one artefact's stored bytes into `sink`, checking size and hash.
async fn copy_artefact(
    set: &BackupSet,
    artefact: &crate::set::manifest::Artefact,
    sink: stream::ArtefactSink,
    output: &Output,
) -> Result<()> {
    let progress = output.byte_progress("copy", Some(artefact.bytes));
    let reader = set.open_stored(artefact).await?;
    let (mut hashing, tally) = stream::HashingWriter::shared(sink);
    let mut counted = stream::CountingReader::new(reader, progress.clone());
    let copied = async {
        tokio::io::copy(&mut counted, &mut hashing).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut hashing).await
    }
    .await;
    progress.finish_and_clear();
    copied.with_context(|| format!("could not copy {}", artefact.name))?;
    let (bytes, sha256) = tally
        .lock()
        .expect("the tally is never poisoned")
        .take()
        .context("the copy was not finished")?;
    if bytes != artefact.bytes || sha256 != artefact.sha256 {
        bail!(
            "{} of set {} read {bytes} bytes with sha256 {sha256}, but its manifest says {} \
             bytes with {}: the source is damaged (run `tusk verify --checksums-only`)",
            artefact.name,
            set.manifest.id,
            artefact.bytes,
            artefact.sha256
        );
    }
    Ok(())
}

/// Reads the copy back and compares it with the manifest.
async fn check_copy(set: &BackupSet, place: &SetPlace) -> Result<()> {
    let copy = set.elsewhere(place.clone());
    let problems: Vec<Problem> = copy.check_artefacts().await?;
    if !problems.is_empty() {
        let summary: Vec<String> = problems
            .iter()
            .map(|p| format!("{} {}", p.kind, p.subject))
            .collect();
        bail!(
            "the copy at {} does not match the manifest ({}); it was not completed",
            place.describe(),
            summary.join(", ")
        );
    }
    Ok(())
}

/// One open multipart upload, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct OpenUploadReport {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `tusk backups cleanup` found and did on one destination.
#[derive(Debug, Serialize)]
pub struct CleanupReport {
    pub name: String,
    pub location: String,
    pub dry_run: bool,
    pub uploads: Vec<OpenUploadReport>,
    pub aborted: usize,
}

/// Aborts every open multipart upload under each bucket destination's
/// prefix. It holds the destination's lock, so no backup or copy is
/// writing there: every open upload is one a failed or killed run left.
pub async fn cleanup(
    destinations: &[Destination],
    dry_run: bool,
    lock: &LockPolicy,
) -> Result<Vec<CleanupReport>> {
    let mut reports = Vec::new();
    for destination in destinations {
        let Place::Bucket(target) = &destination.place else {
            continue;
        };
        let held = DestinationLock::acquire(destination, "cleanup", lock).await?;
        let outcome = async {
            let uploads = target.storage.open_uploads(&target.prefix).await?;
            let mut aborted = 0;
            if !dry_run {
                for upload in &uploads {
                    target
                        .storage
                        .abort_upload(&upload.key, &upload.upload_id)
                        .await?;
                    tracing::info!("aborted the open upload of {}", upload.key);
                    aborted += 1;
                }
            }
            Ok::<_, anyhow::Error>(CleanupReport {
                name: destination.name.clone(),
                location: destination.describe(),
                dry_run,
                uploads: uploads
                    .into_iter()
                    .map(|upload| OpenUploadReport {
                        key: upload.key,
                        upload_id: upload.upload_id,
                        initiated: upload.initiated.map(chrono::DateTime::from),
                    })
                    .collect(),
                aborted,
            })
        }
        .await;
        held.release().await?;
        reports.push(outcome?);
    }
    Ok(reports)
}
