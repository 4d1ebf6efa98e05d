//! Object storage: one interface, an S3 implementation and retrying as a
//! wrapper. Media push (and next prune and off-site copies) are written
//! against [`Storage`] and never know which store they talk to.

pub mod local;
pub mod multipart;
pub mod retry;
pub mod s3;

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The ETag without quotes, when the store reports one in listings.
    pub etag: Option<String>,
    /// When the object was last written, when the store says.
    pub modified: Option<SystemTime>,
}

impl ObjectInfo {
    /// The content MD5 in hex, when the ETag is one: single-part uploads
    /// only (a multipart ETag is `md5-of-md5s-N`).
    pub fn content_md5(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|etag| etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

/// Headers an object is stored with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: String,
    pub cache_control: Option<String>,
    /// A canned ACL (`public-read`, `private`); `None` sends no ACL header,
    /// for stores without object ACLs (B2, R2).
    pub acl: Option<String>,
}

/// What a store holds about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
}

/// Whether repeating a failed request can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A timeout, a dropped connection, a 5xx, 408 or 429: try again later.
    Transient,
    /// The request itself is wrong or not allowed (other 4xx): repeating it
    /// only delays the error.
    Permanent,
}

/// A request the store refused or could not complete, classified. Stores
/// put it into the error chain; [`retry::Retrying`] repeats only transient
/// ones, and never an error that did not come from the store.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub failure: Failure,
    pub message: String,
}

impl StoreError {
    /// The classified failure as an error to return.
    pub fn error(failure: Failure, message: impl Into<String>) -> anyhow::Error {
        StoreError {
            failure,
            message: message.into(),
        }
        .into()
    }
}

/// Whether `err` is, anywhere in its chain, a store failure worth repeating.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<StoreError>())
        .is_some_and(|store| store.failure == Failure::Transient)
}

/// A listing, one page of objects at a time, in key order.
pub type Pages<'a> = BoxStream<'a, Result<Vec<ObjectInfo>>>;

/// An object's bytes as a stream.
pub type ObjectReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A multipart upload that was started and not completed or aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// How a [`Storage::put_bytes`] may replace what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any object under the key.
    Replace,
    /// Only create: fail with [`PutOutcome::Exists`] when the key exists
    /// (`If-None-Match: *`, a conditional write).
    CreateOnly,
}

/// What a [`Storage::put_bytes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// [`PutMode::CreateOnly`] and an object was there: nothing written.
    Exists,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// `s3://bucket/prefix at https://endpoint` or a directory, for messages.
    fn describe(&self) -> String;

    /// Stores the local file at `path` (`size` bytes) under `key`, replacing
    /// any object there. Large files go up in parts; every request carries
    /// the content's MD5 so the store rejects corrupted transfers.
    async fn put_file(&self, key: &str, path: &Path, size: u64, opts: &PutOptions) -> Result<()>;

    /// Every object whose key starts with `prefix` and sorts after
    /// `start_after`, in key order, one listing page (at most 1000) at a time.
    /// The stream ends after the first error.
    fn list(&self, prefix: String, start_after: Option<String>) -> Pages<'_>;

    /// The object's size and headers, or `None` when there is no such key.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Deletes at most [`DELETE_BATCH`] keys in one request where the store
    /// allows it. Keys that do not exist count as deleted, so a re-run after
    /// an interruption simply finishes the job. Fails if any key survives.
    async fn delete_batch(&self, keys: &[String]) -> Result<()>;

    /// Deletes one key (a missing one counts as deleted). One DeleteObject
    /// request: unlike DeleteObjects it needs no checksum header, which
    /// some stores refuse (see `S3Settings::sdk_checksums`).
    async fn delete(&self, key: &str) -> Result<()> {
        self.delete_batch(&[key.to_string()]).await
    }

    /// The object's bytes from `offset` on, streamed; `None` when there is
    /// no such key.
    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        let _ = (key, offset);
        bail!("{} cannot read objects", self.describe())
    }

    /// Stores a small object from memory (a manifest, a lock record).
    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let _ = (key, body, opts, mode);
        bail!("{} cannot store objects from memory", self.describe())
    }

    /// Starts a multipart upload to `key`; returns its upload id.
    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<String> {
        let _ = (key, opts);
        bail!("{} has no multipart uploads", self.describe())
    }

    /// Uploads part `number` (from 1) of an upload; returns its ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String> {
        let _ = (key, upload_id, number, body);
        bail!("{} has no multipart uploads", self.describe())
    }

    /// Joins the parts (number, ETag), in order, into the object.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<()> {
        let _ = (key, upload_id, parts);
        bail!("{} has no multipart uploads", self.describe())
    }

    /// Throws an upload's parts away (they are billed until then). An
    /// upload that no longer exists counts as aborted.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let _ = (key, upload_id);
        bail!("{} has no multipart uploads", self.describe())
    }

    /// The multipart uploads under `prefix` that are still open.
    async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        let _ = prefix;
        Ok(Vec::new())
    }
}

/// S3's limit on keys per DeleteObjects request.
pub const DELETE_BATCH: usize = 1000;

/// Lists everything under `prefix` into one vector.
pub async fn list_all(storage: &dyn Storage, prefix: &str) -> Result<Vec<ObjectInfo>> {
    storage.list(prefix.to_string(), None).try_concat().await
}

/// The Content-Type an object is stored with, from its key's extension
/// (the types Mastodon's uploads have).
pub fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("avif") => "image/avif",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/vnd.microsoft.icon",
        Some("mp4" | "m4v") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("webm") => "video/webm",
        Some("ogv") => "video/ogg",
        Some("mp3") => "audio/mpeg",
        Some("m4a") => "audio/mp4",
        Some("ogg" | "oga" | "opus") => "audio/ogg",
        Some("wav") => "audio/wave",
        Some("flac") => "audio/flac",
        Some("aac") => "audio/aac",
        Some("3gp") => "video/3gpp",
        Some("zip") => "application/zip",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_etags_are_content_md5s() {
        let object = |etag: &str| ObjectInfo {
            key: "k".into(),
            size: 1,
            etag: Some(etag.into()),
            modified: None,
        };
        assert_eq!(
            object("9e107d9d372bb6826bd81d3542a419d6").content_md5(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(
            object("9e107d9d372bb6826bd81d3542a419d6-3").content_md5(),
            None
        );
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("x/small/a.PNG"), "image/png");
        assert_eq!(content_type("x/original/a.mp4"), "video/mp4");
        assert_eq!(content_type("x/original/a"), "application/octet-stream");
    }
}
