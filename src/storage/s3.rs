//! S3-compatible object storage (AWS, Backblaze B2, Cloudflare R2, Wasabi...).

use std::path::Path;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl, ObjectIdentifier,
};
use md5::{Digest, Md5};
use tokio::io::AsyncReadExt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures_util::StreamExt;

use bytes::Bytes;

use super::{
    Failure, ObjectInfo, ObjectMeta, ObjectReader, OpenUpload, Pages, PutMode, PutOptions,
    PutOutcome, Storage, StoreError,
};

/// Files up to this size go up in one PutObject (Mastodon's own threshold
/// is 15 MB, so nearly all media does).
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size for larger files; 10,000 parts cap a file at 80 GiB.
pub const PART_SIZE: u64 = 8 << 20;
/// Longest wait for one request. A DeleteObjects of 1000 keys can take
/// tens of seconds on B2 (Mastodon's 5 s read timeout made its daily
/// vacuum fail, mastodon#27752); an 8 MiB part on a slow uplink too.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the bucket is and how to talk to it.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// `https://s3.us-west-004.backblazeb2.com`; `None` means AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style URLs (`endpoint/bucket/key`), Mastodon's default with an endpoint.
    pub path_style: bool,
    /// Send the SDK's extra CRC32 checksum headers. Off by default for
    /// non-AWS stores: B2 rejected them in 2025. Content-MD5 is always sent.
    pub sdk_checksums: bool,
    /// `x-amz-storage-class` for new objects (`STANDARD`, `STANDARD_IA`...);
    /// `None` sends none (the bucket's default).
    pub storage_class: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Settings(s3://{} at {:?})", self.bucket, self.endpoint)
    }
}

pub struct S3Storage {
    client: Client,
    settings: S3Settings,
}

impl S3Storage {
    pub fn new(settings: S3Settings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key_id,
            &settings.secret_access_key,
            None,
            None,
            "tusk",
        );
        let checksums = if settings.sdk_checksums {
            RequestChecksumCalculation::WhenSupported
        } else {
            RequestChecksumCalculation::WhenRequired
        };
        let validation = if settings.sdk_checksums {
            ResponseChecksumValidation::WhenSupported
        } else {
            ResponseChecksumValidation::WhenRequired
        };
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .request_checksum_calculation(checksums)
            .response_checksum_validation(validation)
            // Retrying wraps every store, with its own backoff; SDK retries
            // underneath would multiply the attempts.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(REQUEST_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        S3Storage {
            client: Client::from_conf(config.build()),
            settings,
        }
    }

    fn storage_class(&self) -> Option<aws_sdk_s3::types::StorageClass> {
        self.settings
            .storage_class
            .as_deref()
            .map(aws_sdk_s3::types::StorageClass::from)
    }

    async fn put_single(&self, key: &str, body: Vec<u8>, opts: &PutOptions) -> Result<()> {
        let md5 = content_md5_base64(&body);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_type(&opts.content_type)
            .content_md5(md5)
            .set_storage_class(self.storage_class())
            .body(ByteStream::from(body));
        if let Some(cache_control) = &opts.cache_control {
            request = request.cache_control(cache_control);
        }
        if let Some(acl) = &opts.acl {
            request = request.acl(ObjectCannedAcl::from(acl.as_str()));
        }
        // Content-MD5 already guards the body; signing it too would hash
        // every byte with SHA-256 on both ends.
        request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not upload {key}"))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, path: &Path, opts: &PutOptions) -> Result<()> {
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .set_storage_class(self.storage_class())
            .content_type(&opts.content_type);
        if let Some(cache_control) = &opts.cache_control {
            request = request.cache_control(cache_control);
        }
        if let Some(acl) = &opts.acl {
            request = request.acl(ObjectCannedAcl::from(acl.as_str()));
        }
        let upload = request
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not start a multipart upload of {key}"))?;
        let upload_id = upload.upload_id().context("no upload id")?.to_string();
        match self.upload_parts(key, path, &upload_id).await {
            Ok(parts) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(store_error)
                    .with_context(|| format!("could not complete the upload of {key}"))?;
                Ok(())
            }
            Err(err) => {
                // Parts of an abandoned upload are billed until aborted.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(err)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("could not read {}", path.display()))?;
        let mut parts = Vec::new();
        for number in 1.. {
            let mut buffer = Vec::with_capacity(PART_SIZE as usize);
            (&mut file).take(PART_SIZE).read_to_end(&mut buffer).await?;
            if buffer.is_empty() && number > 1 {
                break;
            }
            let last = (buffer.len() as u64) < PART_SIZE;
            let e_tag = self
                .upload_part(key, upload_id, number, bytes::Bytes::from(buffer))
                .await?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(e_tag)
                    .build(),
            );
            if last {
                break;
            }
        }
        Ok(parts)
    }
}

fn content_md5_base64(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(body))
}

/// A failed request as a [`StoreError`]: in the service's own words (not
/// just "service error"), and classified as restic classifies them. A 4xx
/// other than 408 and 429 is the request's fault and permanent; a timeout,
/// a broken or refused connection, an unreadable answer, a 5xx, 408 and 429
/// may pass.
fn store_error<E>(err: SdkError<E, HttpResponse>) -> anyhow::Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = classify(&err);
    let message = match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        ),
    };
    StoreError::error(failure, message)
}

fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        SdkError::ConstructionFailure(_) => Failure::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transient
        }
        _ => match err
            .raw_response()
            .map(|response| response.status().as_u16())
        {
            Some(status) => failure_for_status(status),
            None => Failure::Transient,
        },
    }
}

/// What an HTTP status says about repeating the request.
pub fn failure_for_status(status: u16) -> Failure {
    match status {
        408 | 429 => Failure::Transient,
        400..=499 => Failure::Permanent,
        _ => Failure::Transient,
    }
}

fn trim_etag(etag: Option<&str>) -> Option<String> {
    etag.map(|e| e.trim_matches('"').to_string())
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        match &self.settings.endpoint {
            Some(endpoint) => format!("s3://{} at {endpoint}", self.settings.bucket),
            None => format!("s3://{} ({})", self.settings.bucket, self.settings.region),
        }
    }

    async fn put_file(&self, key: &str, path: &Path, size: u64, opts: &PutOptions) -> Result<()> {
        if size > MULTIPART_THRESHOLD {
            return self.put_multipart(key, path, opts).await;
        }
        let body = tokio::fs::read(path)
            .await
            .with_context(|| format!("could not read {}", path.display()))?;
        if body.len() as u64 != size {
            bail!("{} changed while it was being uploaded", path.display());
        }
        self.put_single(key, body, opts).await
    }

    fn list(&self, prefix: String, start_after: Option<String>) -> Pages<'_> {
        /// Where the listing stands between pages.
        enum Cursor {
            Start(Option<String>),
            Continue(String),
            Done,
        }
        futures_util::stream::try_unfold(Cursor::Start(start_after), move |cursor| {
            let prefix = prefix.clone();
            async move {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.settings.bucket)
                    .prefix(prefix)
                    .max_keys(1000);
                let request = match cursor {
                    Cursor::Done => return Ok(None),
                    Cursor::Start(start_after) => request.set_start_after(start_after),
                    Cursor::Continue(token) => request.continuation_token(token),
                };
                let response = request
                    .send()
                    .await
                    .map_err(store_error)
                    .with_context(|| format!("could not list {}", self.describe()))?;
                let objects = response
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        Some(ObjectInfo {
                            key: object.key()?.to_string(),
                            size: object.size().unwrap_or(0).max(0) as u64,
                            etag: trim_etag(object.e_tag()),
                            modified: object
                                .last_modified()
                                .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                        })
                    })
                    .collect();
                let next = match (response.is_truncated(), response.next_continuation_token()) {
                    (Some(true), Some(token)) => Cursor::Continue(token.to_string()),
                    _ => Cursor::Done,
                };
                Ok(Some((objects, next)))
            }
        })
        .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(ObjectMeta {
                size: head.content_length().unwrap_or(0).max(0) as u64,
                etag: trim_etag(head.e_tag()),
                content_type: head.content_type().map(str::to_string),
            })),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(store_error(err))
                .with_context(|| format!("could not read the headers of {key}")),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .raw_response()
                    .is_some_and(|response| response.status().as_u16() == 404) =>
            {
                Ok(())
            }
            Err(err) => Err(store_error(err)).with_context(|| format!("could not delete {key}")),
        }
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        let mut request = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key);
        if offset > 0 {
            request = request.range(format!("bytes={offset}-"));
        }
        match request.send().await {
            Ok(object) => Ok(Some(Box::new(object.body.into_async_read()))),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(store_error(err)).with_context(|| format!("could not read {key}")),
        }
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let md5 = content_md5_base64(&body);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_type(&opts.content_type)
            .content_md5(md5)
            .set_storage_class(self.storage_class())
            .body(ByteStream::from(body));
        if mode == PutMode::CreateOnly {
            request = request.if_none_match("*");
        }
        match request.customize().disable_payload_signing().send().await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(err) if mode == PutMode::CreateOnly && condition_failed(&err) => {
                Ok(PutOutcome::Exists)
            }
            Err(err) => Err(store_error(err)).with_context(|| format!("could not upload {key}")),
        }
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<String> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_type(&opts.content_type)
            .set_storage_class(self.storage_class())
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not start a multipart upload of {key}"))?;
        Ok(upload.upload_id().context("no upload id")?.to_string())
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String> {
        let md5 = content_md5_base64(&body);
        let part = self
            .client
            .upload_part()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_md5(md5)
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not upload part {number} of {key}"))?;
        part.e_tag()
            .map(str::to_string)
            .with_context(|| format!("the store returned no ETag for part {number} of {key}"))
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<()> {
        let parts = parts
            .iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(*number)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not complete the upload of {key}"))?;
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if no_such_upload(&err) => Ok(()),
            Err(err) => Err(store_error(err))
                .with_context(|| format!("could not abort the upload of {key}")),
        }
    }

    async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        let mut uploads = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let response = self
                .client
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|err| {
                    let not_implemented = err
                        .as_service_error()
                        .and_then(|e| e.code())
                        .is_some_and(|code| code == "NotImplemented");
                    match not_implemented {
                        // s3s-fs, for one: repeating cannot help.
                        true => StoreError::error(
                            Failure::Permanent,
                            "the store does not list multipart uploads (NotImplemented); \
                             abort them with the store's own tools",
                        ),
                        false => store_error(err),
                    }
                })
                .with_context(|| {
                    format!("could not list the open uploads in {}", self.describe())
                })?;
            for upload in response.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                uploads.push(OpenUpload {
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                    initiated: upload
                        .initiated()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
            match (
                response.is_truncated(),
                response.next_key_marker(),
                response.next_upload_id_marker(),
            ) {
                (Some(true), Some(key), upload)
                    if Some(key) != key_marker.as_deref() || upload != id_marker.as_deref() =>
                {
                    key_marker = Some(key.to_string());
                    id_marker = upload.map(str::to_string);
                }
                _ => break,
            }
        }
        Ok(uploads)
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if keys.len() > super::DELETE_BATCH {
            bail!(
                "{} keys in one delete; S3 takes at most {}",
                keys.len(),
                super::DELETE_BATCH
            );
        }
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()?;
        let response = self
            .client
            .delete_objects()
            .bucket(&self.settings.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(store_error)
            .with_context(|| format!("could not delete {} objects", keys.len()))?;
        // Quiet mode reports only the keys that failed.
        if let Some(first) = response.errors().first() {
            bail!(
                "{} of {} objects were not deleted (first: {}: {} {})",
                response.errors().len(),
                keys.len(),
                first.key().unwrap_or("?"),
                first.code().unwrap_or("error"),
                first.message().unwrap_or("")
            );
        }
        Ok(())
    }
}

/// Whether a failed request was refused because its condition did not hold
/// (`412 Precondition Failed`, or `409 ConditionalRequestConflict` when a
/// concurrent conditional write won).
fn condition_failed<E>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response()
        .is_some_and(|response| matches!(response.status().as_u16(), 412 | 409))
}

fn no_such_upload<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
) -> bool {
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "NoSuchUpload")
        || err
            .raw_response()
            .is_some_and(|response| response.status().as_u16() == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_errors_other_than_timeout_and_throttling_are_permanent() {
        for status in [400, 401, 403, 404, 409, 411, 412, 416] {
            assert_eq!(failure_for_status(status), Failure::Permanent, "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(failure_for_status(status), Failure::Transient, "{status}");
        }
    }
}
