//! Streaming an object of unknown size into a store: a writer that cuts
//! what it is given into parts and uploads them while more arrives.
//!
//! The part size grows with the object ([`PartSizes`]), so a stream fits
//! the store's part-count limit without knowing its length in advance,
//! while a small or middling one (nearly every database) goes up in small
//! parts and costs little memory: the part being filled, one waiting, and
//! [`PARTS_IN_FLIGHT`] uploading.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use super::{PutMode, PutOptions, Storage};

/// S3's smallest part (all but the last); B2 and R2 use the same.
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// S3's largest object.
pub const MAX_OBJECT_BYTES: u64 = 5 << 40;
/// S3's part-count limit, the default `max_parts`.
pub const DEFAULT_MAX_PARTS: u32 = 10_000;
/// The first parts' size: S3's smallest, so the four parts held at once
/// (filling, queued, two uploading) keep a backup's memory under 64 MB;
/// per-request overhead stays small at this size.
pub const DEFAULT_FIRST_PART_BYTES: u64 = MIN_PART_BYTES;
/// Parts uploading at once (besides the one being filled and one queued).
pub const PARTS_IN_FLIGHT: usize = 2;
/// The size tiers the part count is divided into: the part size doubles
/// from one tier to the next (up to [`MAX_PART_BYTES`]).
const TIERS: u32 = 20;

/// The size of each part of a stream of unknown length: `first` bytes for
/// the first tier of `max_parts / 20` parts, twice that for the next tier,
/// and so on up to S3's 5 GiB part limit. With 10,000 parts of 5 MiB
/// first, the parts hold 5 MiB × 500 × (2^10 − 1) + 5 GiB × 500 × 10, far
/// beyond S3's 5 TiB object limit, and a 2.5 GB stream needs only 5 MiB
/// parts. With `max_parts: 1000` the parts hold about 2.7 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSizes {
    pub first: u64,
    pub max_parts: u32,
}

impl Default for PartSizes {
    fn default() -> Self {
        PartSizes {
            first: DEFAULT_FIRST_PART_BYTES,
            max_parts: DEFAULT_MAX_PARTS,
        }
    }
}

impl PartSizes {
    /// The size of part `number` (from 1); `None` past the part limit.
    pub fn size(&self, number: u32) -> Option<u64> {
        if number == 0 || number > self.max_parts {
            return None;
        }
        let tier_length = (self.max_parts / TIERS).max(1);
        let tier = ((number - 1) / tier_length).min(40);
        Some(self.first.saturating_mul(1u64 << tier).min(MAX_PART_BYTES))
    }

    /// The most the parts hold together (capped at S3's object limit).
    pub fn capacity(&self) -> u64 {
        (1..=self.max_parts)
            .map(|n| self.size(n).unwrap_or(0))
            .fold(0u64, u64::saturating_add)
            .min(MAX_OBJECT_BYTES)
    }
}

/// The uploaders of writers that may have been dropped: a failed run waits
/// for them (each aborts its upload) before it ends, so no parts stay
/// billed, bounded by `timeout`.
#[derive(Clone, Default)]
pub struct UploadsInFlight {
    running: Arc<std::sync::Mutex<Vec<oneshot::Receiver<()>>>>,
}

impl UploadsInFlight {
    /// A token for one more uploader; it is dropped when the uploader ends.
    pub fn token(&self) -> oneshot::Sender<()> {
        let (sender, receiver) = oneshot::channel();
        self.running.lock().expect("never poisoned").push(receiver);
        sender
    }

    /// Waits until every uploader has ended, at most `timeout`.
    pub async fn wait(&self, timeout: std::time::Duration) {
        let running: Vec<_> = std::mem::take(&mut *self.running.lock().expect("never poisoned"));
        let all = futures_util::future::join_all(running);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                "an upload was still being aborted after {}s",
                timeout.as_secs()
            );
        }
    }
}

/// A part on its way to the uploader.
enum Message {
    Part(i32, Bytes),
    /// Everything was sent: complete the upload (or, with no part sent
    /// yet, store these bytes as a plain object).
    Finish(Option<Bytes>),
}

/// An [`AsyncWrite`] that becomes the object `key` once it is shut down.
/// Dropped before that, its upload is aborted (by its task; a run that
/// ends at once may leave it to `tusk backups cleanup`).
pub struct MultipartWriter {
    sizes: PartSizes,
    buffer: BytesMut,
    /// The part being filled.
    number: u32,
    sender: PollSender<Message>,
    task: Option<JoinHandle<Result<()>>>,
    finish_sent: bool,
    key: String,
}

impl MultipartWriter {
    /// `done` is dropped when the uploader has finished: completed, or
    /// aborted after the writer went away (see [`UploadsInFlight`]).
    pub fn new(
        storage: Arc<dyn Storage>,
        key: String,
        opts: PutOptions,
        sizes: PartSizes,
        done: Option<oneshot::Sender<()>>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(1);
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let outcome = upload(storage, task_key, opts, receiver).await;
            drop(done);
            outcome
        });
        MultipartWriter {
            sizes,
            buffer: BytesMut::new(),
            number: 1,
            sender: PollSender::new(sender),
            task: Some(task),
            finish_sent: false,
            key,
        }
    }

    fn part_size(&self) -> std::io::Result<usize> {
        self.sizes
            .size(self.number)
            .map(|size| size as usize)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is larger than {} parts can hold ({} bytes); raise max_parts",
                    self.key,
                    self.sizes.max_parts,
                    self.sizes.capacity()
                ))
            })
    }

    fn poll_reserve(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.sender.poll_reserve(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.failure())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The uploader stopped: its error, when it has one ready.
    fn failure(&mut self) -> std::io::Error {
        std::io::Error::other(format!("the upload of {} failed", self.key))
    }
}

impl AsyncWrite for MultipartWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let size = this.part_size()?;
        if this.buffer.len() >= size {
            std::task::ready!(this.poll_reserve(cx))?;
            let part = this.buffer.split_to(size).freeze();
            let number = this.number as i32;
            this.sender
                .send_item(Message::Part(number, part))
                .map_err(|_| this.failure())?;
            this.number += 1;
        }
        // The buffer never holds more than a part, so there is room.
        let size = this.part_size()?;
        if this.buffer.capacity() < size {
            this.buffer.reserve(size - this.buffer.len());
        }
        let take = buf.len().min(size - this.buffer.len());
        this.buffer.extend_from_slice(&buf[..take]);
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.finish_sent {
            std::task::ready!(this.poll_reserve(cx))?;
            let rest = this.buffer.split().freeze();
            let message = if this.number == 1 {
                Message::Finish(Some(rest))
            } else {
                if !rest.is_empty() {
                    // The last part may be smaller than the rest; it goes
                    // first, then the request to complete.
                    let number = this.number as i32;
                    this.sender
                        .send_item(Message::Part(number, rest))
                        .map_err(|_| this.failure())?;
                    this.number += 1;
                    std::task::ready!(this.poll_reserve(cx))?;
                }
                Message::Finish(None)
            };
            this.sender.send_item(message).map_err(|_| this.failure())?;
            this.finish_sent = true;
        }
        let Some(task) = this.task.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = std::task::ready!(Pin::new(task).poll(cx));
        this.task = None;
        Poll::Ready(match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(std::io::Error::other(format!("{err:#}"))),
            Err(err) => Err(std::io::Error::other(err)),
        })
    }
}

use std::future::Future;

/// The uploader: starts the upload at the first part, keeps up to
/// [`PARTS_IN_FLIGHT`] parts going, completes on `Finish`, and aborts when
/// the writer goes away without one or a part fails.
async fn upload(
    storage: Arc<dyn Storage>,
    key: String,
    opts: PutOptions,
    mut receiver: mpsc::Receiver<Message>,
) -> Result<()> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    let mut upload_id: Option<String> = None;
    let mut parts: Vec<(i32, String)> = Vec::new();
    let mut running = FuturesUnordered::new();
    let outcome: Result<bool> = async {
        loop {
            tokio::select! {
                // Finished parts first: their errors end the upload early.
                Some(done) = running.next(), if !running.is_empty() => {
                    let done: Result<(i32, String)> = done;
                    parts.push(done?);
                }
                message = receiver.recv(), if running.len() < PARTS_IN_FLIGHT => {
                    match message {
                        None => return Ok(false),
                        Some(Message::Finish(Some(body))) => {
                            storage
                                .put_bytes(&key, body, &opts, PutMode::Replace)
                                .await?;
                            return Ok(true);
                        }
                        Some(Message::Finish(None)) => {
                            while let Some(done) = running.next().await {
                                parts.push(done?);
                            }
                            let id = upload_id.as_deref().context("no part was uploaded")?;
                            parts.sort_by_key(|(number, _)| *number);
                            storage.complete_upload(&key, id, &parts).await?;
                            return Ok(true);
                        }
                        Some(Message::Part(number, body)) => {
                            if upload_id.is_none() {
                                upload_id = Some(storage.start_upload(&key, &opts).await?);
                            }
                            let storage = storage.clone();
                            let key = key.clone();
                            let id = upload_id.clone().expect("started above");
                            running.push(async move {
                                let etag = storage.upload_part(&key, &id, number, body).await?;
                                Ok((number, etag))
                            });
                        }
                    }
                }
            }
        }
    }
    .await;
    let completed = matches!(outcome, Ok(true));
    if !completed && let Some(id) = &upload_id {
        drop(running);
        // Parts of an abandoned upload are billed until it is aborted.
        if let Err(err) = storage.abort_upload(&key, id).await {
            tracing::warn!(
                "could not abort the upload of {key} ({err:#}); `tusk backups cleanup` will"
            );
        }
    }
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => bail!("the upload of {key} was abandoned"),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_parts_hold_five_tebibytes_and_start_small() {
        let sizes = PartSizes::default();
        assert_eq!(sizes.capacity(), MAX_OBJECT_BYTES);
        assert_eq!(sizes.size(1), Some(5 << 20));
        // A 2.5 GB artefact needs nothing larger than the first size.
        assert_eq!(sizes.size(500), Some(5 << 20));
        assert_eq!(sizes.size(501), Some(10 << 20));
        assert_eq!(sizes.size(10_000), Some(MAX_PART_BYTES));
        assert_eq!(sizes.size(10_001), None);
        assert!((1..=10_000).all(|n| sizes.size(n).unwrap() <= MAX_PART_BYTES));
    }

    #[test]
    fn fewer_parts_grow_faster() {
        let sizes = PartSizes {
            first: 8 << 20,
            max_parts: 1000,
        };
        assert_eq!(sizes.size(50), Some(8 << 20));
        assert_eq!(sizes.size(51), Some(16 << 20));
        assert!(sizes.capacity() > 2 << 40, "{}", sizes.capacity());
        // Sizes never shrink.
        assert!((1..1000).all(|n| sizes.size(n) <= sizes.size(n + 1)));
    }
}
