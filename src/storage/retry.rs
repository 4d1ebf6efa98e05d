//! Retries with exponential backoff, as a wrapper around any [`Storage`].

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use super::{ObjectInfo, ObjectMeta, PutOptions, Storage};

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
                Err(err) if attempt < self.attempts => {
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

#[async_trait]
impl<S: Storage> Storage for Retrying<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put_file(&self, key: &str, path: &Path, size: u64, opts: &PutOptions) -> Result<()> {
        self.retry(key, || self.inner.put_file(key, path, size, opts))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        page: &mut (dyn FnMut(Vec<ObjectInfo>) -> Result<()> + Send),
    ) -> Result<()> {
        // A listing is resumed after the last key seen, not restarted.
        let mut last_seen: Option<String> = start_after.map(str::to_string);
        let mut delay = self.first_delay;
        let mut attempt = 1;
        loop {
            let resume = last_seen.clone();
            let mut tracking = |objects: Vec<ObjectInfo>| {
                if let Some(last) = objects.last() {
                    last_seen = Some(last.key.clone());
                }
                page(objects)
            };
            match self
                .inner
                .list(prefix, resume.as_deref(), &mut tracking)
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) if attempt < self.attempts => {
                    tracing::debug!(
                        "listing failed (attempt {attempt}/{}): {err:#}",
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

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.retry(key, || self.inner.head(key)).await
    }

    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        let what = format!("deleting {} keys", keys.len());
        self.retry(&what, || self.inner.delete_batch(keys)).await
    }
}
