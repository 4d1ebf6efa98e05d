//! Retries with exponential backoff, as a wrapper around any [`Storage`].
//!
//! Only failures the store marks transient ([`super::is_transient`]) are
//! repeated: a 403 or a missing bucket fails at once, and so does any error
//! that did not come from the store at all (a local file that cannot be
//! read, a page the caller refused).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;

use bytes::Bytes;

use super::{
    ObjectMeta, ObjectReader, OpenUpload, Pages, PutMode, PutOptions, PutOutcome, Storage,
    is_transient,
};

pub struct Retrying<S> {
    inner: S,
    attempts: u32,
    first_delay: Duration,
}

impl<S: Storage> Retrying<S> {
    /// `attempts` tries in all, waiting `first_delay`, then twice as long each time.
    pub fn new(inner: S, attempts: u32, first_delay: Duration) -> Self {
        Retrying {
            inner,
            attempts: attempts.max(1),
            first_delay,
        }
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
        T: Send,
    {
        let mut delay = self.first_delay;
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if attempt < self.attempts && is_transient(&err) => {
                    tracing::debug!(
                        "{what} failed (attempt {attempt}/{}): {err:#}",
                        self.attempts
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A listing in progress: where to resume after a transient failure.
struct Listing<'a, S> {
    retrying: &'a Retrying<S>,
    prefix: String,
    pages: Pages<'a>,
    last_seen: Option<String>,
    attempt: u32,
    delay: Duration,
    failed: bool,
}

#[async_trait]
impl<S: Storage> Storage for Retrying<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put_file(&self, key: &str, path: &Path, size: u64, opts: &PutOptions) -> Result<()> {
        self.retry(key, || self.inner.put_file(key, path, size, opts))
            .await
    }

    /// A listing that fails transiently resumes after the last key it
    /// delivered, so no page is seen twice; the attempts count again after
    /// every page that arrives.
    fn list(&self, prefix: String, start_after: Option<String>) -> Pages<'_> {
        let listing = Listing {
            retrying: self,
            pages: self.inner.list(prefix.clone(), start_after.clone()),
            prefix,
            last_seen: start_after,
            attempt: 1,
            delay: self.first_delay,
            failed: false,
        };
        futures_util::stream::unfold(listing, |mut listing| async move {
            if listing.failed {
                return None;
            }
            loop {
                match listing.pages.next().await? {
                    Ok(page) => {
                        if let Some(last) = page.last() {
                            listing.last_seen = Some(last.key.clone());
                        }
                        listing.attempt = 1;
                        listing.delay = listing.retrying.first_delay;
                        return Some((Ok(page), listing));
                    }
                    Err(err)
                        if listing.attempt < listing.retrying.attempts && is_transient(&err) =>
                    {
                        tracing::debug!(
                            "listing failed (attempt {}/{}): {err:#}",
                            listing.attempt,
                            listing.retrying.attempts
                        );
                        tokio::time::sleep(listing.delay).await;
                        listing.delay *= 2;
                        listing.attempt += 1;
                        listing.pages = listing
                            .retrying
                            .inner
                            .list(listing.prefix.clone(), listing.last_seen.clone());
                    }
                    Err(err) => {
                        listing.failed = true;
                        return Some((Err(err), listing));
                    }
                }
            }
        })
        .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.retry(key, || self.inner.head(key)).await
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        let what = format!("deleting {} keys", keys.len());
        self.retry(&what, || self.inner.delete_batch(keys)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.retry(key, || self.inner.delete(key)).await
    }

    /// Only the request is repeated; a body that breaks off mid-stream
    /// fails the read (see [`resuming_get`]).
    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        self.retry(key, || self.inner.get(key, offset)).await
    }

    /// A create-only write that timed out may have landed: the repeat then
    /// finds the object and reports [`PutOutcome::Exists`]; callers that
    /// must know compare the object with what they wrote.
    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        self.retry(key, || self.inner.put_bytes(key, body.clone(), opts, mode))
            .await
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<String> {
        self.retry(key, || self.inner.start_upload(key, opts)).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String> {
        let what = format!("part {number} of {key}");
        self.retry(&what, || {
            self.inner.upload_part(key, upload_id, number, body.clone())
        })
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<()> {
        self.retry(key, || self.inner.complete_upload(key, upload_id, parts))
            .await
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        self.retry(key, || self.inner.abort_upload(key, upload_id))
            .await
    }

    async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        self.retry(prefix, || self.inner.open_uploads(prefix)).await
    }
}

/// Reads `key` from `offset` on; when the body breaks off mid-stream (a
/// reset connection, a timeout), asks again from where it stopped, up to
/// `attempts` times in a row. Request failures are the store's retrying's.
pub async fn resuming_get(
    storage: std::sync::Arc<dyn Storage>,
    key: String,
    attempts: u32,
) -> Result<Option<ObjectReader>> {
    let Some(first) = storage.get(&key, 0).await? else {
        return Ok(None);
    };
    Ok(Some(Box::new(Resuming {
        storage,
        key,
        offset: 0,
        failures: 0,
        attempts,
        state: ReadState::Reading(first),
    })))
}

type Reopen =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<ObjectReader>>> + Send>>;

enum ReadState {
    Reading(ObjectReader),
    Reopening(Reopen),
}

struct Resuming {
    storage: std::sync::Arc<dyn Storage>,
    key: String,
    offset: u64,
    failures: u32,
    attempts: u32,
    state: ReadState,
}

impl tokio::io::AsyncRead for Resuming {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReadState::Reading(reader) => {
                    let before = buf.filled().len();
                    match std::pin::Pin::new(reader).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {
                            let read = buf.filled().len() - before;
                            this.offset += read as u64;
                            if read > 0 {
                                this.failures = 0;
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(err)) if this.failures + 1 < this.attempts => {
                            this.failures += 1;
                            tracing::debug!(
                                "reading {} broke off at byte {} ({err}); asking again",
                                this.key,
                                this.offset
                            );
                            let storage = this.storage.clone();
                            let key = this.key.clone();
                            let offset = this.offset;
                            let delay = Duration::from_millis(200 << this.failures.min(6));
                            this.state = ReadState::Reopening(Box::pin(async move {
                                tokio::time::sleep(delay).await;
                                storage.get(&key, offset).await
                            }));
                        }
                        other => return other,
                    }
                }
                ReadState::Reopening(reopen) => match std::task::ready!(reopen.as_mut().poll(cx)) {
                    Ok(Some(reader)) => this.state = ReadState::Reading(reader),
                    Ok(None) => {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{} disappeared while it was read", this.key),
                        )));
                    }
                    Err(err) => {
                        return Poll::Ready(Err(std::io::Error::other(format!("{err:#}"))));
                    }
                },
            }
        }
    }
}

/// A shared store is a store (destinations hand out `Arc<dyn Storage>`).
#[async_trait]
impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn put_file(&self, key: &str, path: &Path, size: u64, opts: &PutOptions) -> Result<()> {
        (**self).put_file(key, path, size, opts).await
    }
    fn list(&self, prefix: String, start_after: Option<String>) -> Pages<'_> {
        (**self).list(prefix, start_after)
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        (**self).head(key).await
    }
    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        (**self).delete_batch(keys).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key).await
    }
    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectReader>> {
        (**self).get(key, offset).await
    }
    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        (**self).put_bytes(key, body, opts, mode).await
    }
    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<String> {
        (**self).start_upload(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String> {
        (**self).upload_part(key, upload_id, number, body).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<()> {
        (**self).complete_upload(key, upload_id, parts).await
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        (**self).abort_upload(key, upload_id).await
    }
    async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        (**self).open_uploads(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::TryStreamExt;

    use super::*;
    use crate::storage::{Failure, ObjectInfo, StoreError, list_all};

    /// A store that fails as scripted: each call takes the next outcome.
    struct Flaky {
        keys: Vec<String>,
        /// Per call: `None` succeeds, `Some(failure)` fails.
        script: Mutex<Vec<Option<Failure>>>,
        calls: Mutex<Vec<String>>,
    }

    impl Flaky {
        fn new(script: &[Option<Failure>]) -> Self {
            Flaky {
                keys: (1..=5).map(|i| format!("k{i}")).collect(),
                script: Mutex::new(script.iter().rev().copied().collect()),
                calls: Mutex::new(Vec::new()),
            }
        }

        fn outcome(&self, call: String) -> Result<()> {
            self.calls.lock().unwrap().push(call);
            match self.script.lock().unwrap().pop().flatten() {
                None => Ok(()),
                Some(failure) => Err(StoreError::error(failure, format!("{failure:?} failure"))),
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Storage for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }

        async fn put_file(&self, key: &str, _: &Path, _: u64, _: &PutOptions) -> Result<()> {
            self.outcome(format!("put {key}"))
        }

        /// Two keys a page; every page request follows the script.
        fn list(&self, prefix: String, start_after: Option<String>) -> Pages<'_> {
            let keys: Vec<String> = self
                .keys
                .iter()
                .filter(|k| k.starts_with(&prefix))
                .filter(|k| start_after.as_ref().is_none_or(|after| *k > after))
                .cloned()
                .collect();
            let pages: Vec<Vec<String>> = keys.chunks(2).map(<[String]>::to_vec).collect();
            futures_util::stream::iter(pages)
                .then(move |page| async move {
                    self.outcome(format!("list from {}", page[0]))?;
                    Ok(page
                        .into_iter()
                        .map(|key| ObjectInfo {
                            key,
                            size: 1,
                            etag: None,
                            modified: None,
                        })
                        .collect())
                })
                .boxed()
        }

        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.outcome(format!("head {key}")).map(|()| None)
        }

        async fn delete_batch(&self, keys: &[String]) -> Result<()> {
            self.outcome(format!("delete {}", keys.len()))
        }
    }

    fn retrying(script: &[Option<Failure>]) -> Retrying<Flaky> {
        Retrying::new(Flaky::new(script), 3, Duration::from_millis(1))
    }

    const T: Option<Failure> = Some(Failure::Transient);
    const P: Option<Failure> = Some(Failure::Permanent);

    #[tokio::test]
    async fn transient_failures_are_repeated_until_the_attempts_run_out() {
        let store = retrying(&[T, T, None]);
        store.head("a").await.unwrap();
        assert_eq!(store.inner.calls().len(), 3);

        let store = retrying(&[T, T, T, None]);
        let err = store.head("a").await.unwrap_err();
        assert!(is_transient(&err));
        assert_eq!(store.inner.calls().len(), 3, "three attempts in all");
    }

    #[tokio::test]
    async fn permanent_failures_are_not_repeated() {
        let store = retrying(&[P, None]);
        store.delete_batch(&["a".into()]).await.unwrap_err();
        assert_eq!(store.inner.calls(), ["delete 1"]);
    }

    #[tokio::test]
    async fn errors_that_are_not_the_stores_are_not_repeated() {
        struct LocalTrouble;
        #[async_trait]
        impl Storage for LocalTrouble {
            fn describe(&self) -> String {
                "local".into()
            }
            async fn put_file(&self, _: &str, path: &Path, _: u64, _: &PutOptions) -> Result<()> {
                anyhow::bail!("could not read {}", path.display())
            }
            fn list(&self, _: String, _: Option<String>) -> Pages<'_> {
                futures_util::stream::empty().boxed()
            }
            async fn head(&self, _: &str) -> Result<Option<ObjectMeta>> {
                Ok(None)
            }
            async fn delete_batch(&self, _: &[String]) -> Result<()> {
                Ok(())
            }
        }
        let store = Retrying::new(LocalTrouble, 5, Duration::from_secs(3600));
        // Were it retried, the test would sleep for an hour.
        let err = store
            .put_file("k", Path::new("/gone"), 1, &PutOptions::default())
            .await
            .unwrap_err();
        assert!(!is_transient(&err));
    }

    #[tokio::test]
    async fn a_listing_resumes_after_the_last_key_it_delivered() {
        // Page 1 arrives, page 2 fails twice, then the rest arrives.
        let store = retrying(&[None, T, T, None, None]);
        let keys: Vec<String> = list_all(&store, "k")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            ["k1", "k2", "k3", "k4", "k5"],
            "every key once, in order"
        );
        assert_eq!(
            store.inner.calls(),
            [
                "list from k1",
                "list from k3",
                "list from k3",
                "list from k3",
                "list from k5"
            ]
        );
    }

    #[tokio::test]
    async fn a_listing_stops_at_a_permanent_failure() {
        let store = retrying(&[None, P]);
        let pages: Vec<Result<Vec<ObjectInfo>>> = store.list("k".into(), None).collect().await;
        assert_eq!(pages.len(), 2);
        assert!(pages[0].is_ok() && pages[1].is_err());
        assert!(store.list("k".into(), None).try_concat().await.is_ok());
    }
}

#[cfg(test)]
mod resuming_tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A store whose first body breaks off after `cut` bytes.
    struct Breaking {
        data: Vec<u8>,
        cut: usize,
        requests: Mutex<Vec<u64>>,
    }

    /// Yields `data`, then an error instead of the end.
    struct CutShort(std::io::Cursor<Vec<u8>>);

    impl tokio::io::AsyncRead for CutShort {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let poll = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
            if matches!(poll, std::task::Poll::Ready(Ok(()))) && buf.filled().len() == before {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
            poll
        }
    }

    #[async_trait]
    impl Storage for Breaking {
        fn describe(&self) -> String {
            "breaking".into()
        }
        async fn put_file(&self, _: &str, _: &Path, _: u64, _: &PutOptions) -> Result<()> {
            unreachable!()
        }
        fn list(&self, _: String, _: Option<String>) -> Pages<'_> {
            unreachable!()
        }
        async fn head(&self, _: &str) -> Result<Option<ObjectMeta>> {
            unreachable!()
        }
        async fn delete_batch(&self, _: &[String]) -> Result<()> {
            unreachable!()
        }
        async fn get(&self, _: &str, offset: u64) -> Result<Option<ObjectReader>> {
            let mut requests = self.requests.lock().unwrap();
            requests.push(offset);
            let rest = self.data[offset as usize..].to_vec();
            if requests.len() == 1 {
                return Ok(Some(Box::new(CutShort(std::io::Cursor::new(
                    rest[..self.cut].to_vec(),
                )))));
            }
            Ok(Some(Box::new(std::io::Cursor::new(rest))))
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_read_on_from_where_it_stopped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let store = Arc::new(Breaking {
            data: data.clone(),
            cut: 40_000,
            requests: Mutex::new(Vec::new()),
        });
        let mut reader = resuming_get(store.clone(), "k".into(), 3)
            .await
            .unwrap()
            .unwrap();
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(*store.requests.lock().unwrap(), [0, 40_000]);
    }
}
