//! Redis in a set: Sidekiq's scheduled and retrying jobs live only there.
//!
//! The snapshot streams from `redis-cli --rdb -` into the set like any
//! artefact (compressed, then encrypted). Its server is counted just before
//! and just after ([`RedisFacts::around`]), so a restore can check the
//! loaded file against the counts, exactly when nothing moved meanwhile.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use tokio::io::{AsyncRead, ReadBuf};

use super::{BackupOptions, SetWriters, artefact_name, stream_process_to_artefact};
use crate::process::BoxReader;
use crate::redis::RedisTarget;
use crate::redis::snapshot::{RDB_MAGIC, SnapshotSource};
use crate::set::manifest::{Artefact, ArtefactKind};
use crate::set::redis::{RedisFacts, RedisRole, snapshot_stem};

/// A Redis server whose snapshot goes into the set.
#[derive(Debug, Clone)]
pub struct RedisSnapshot {
    pub role: RedisRole,
    pub source: SnapshotSource,
    /// Where its content is counted around the snapshot: the database
    /// Mastodon uses, with its namespace. `None` when this machine cannot
    /// reach the server (the set then records no counts).
    pub counted_at: Option<RedisTarget>,
    /// How long connecting and each count may take.
    pub timeout: Duration,
}

/// Takes the snapshot into the set; the notes say what the manifest could
/// not record.
pub(super) async fn write(
    snapshot: &RedisSnapshot,
    opts: &BackupOptions,
    partial: &SetWriters,
    notes: &mut Vec<String>,
) -> Result<Artefact> {
    let before = count(snapshot).await;
    let name = artefact_name(snapshot_stem(snapshot.role), opts);
    let mut process = snapshot.source.spawn().await.with_context(|| {
        format!(
            "could not snapshot Redis ({}); pass --no-redis to back up without it",
            snapshot.source.describe()
        )
    })?;
    let stdout = Box::new(RdbCheck::new(process.take_stdout()));
    let mut artefact = stream_process_to_artefact(
        process,
        stdout,
        partial,
        &name,
        ArtefactKind::Redis,
        opts,
        ProgressBar::hidden(),
    )
    .await
    .with_context(|| {
        format!(
            "the snapshot of Redis ({}) failed (`redis-cli --rdb -` needs redis-cli 7 or later); \
             pass --no-redis to back up without it",
            snapshot.source.describe()
        )
    })?;
    let after = count(snapshot).await;
    artefact.source = Some(snapshot.source.describe());
    artefact.redis = match (before, after) {
        (Ok(before), Ok(after)) => Some(RedisFacts::around(before, after)),
        (Err(err), _) | (_, Err(err)) => {
            let note = format!(
                "the {} Redis snapshot was taken, but its keys could not be counted, so a \
                 restore cannot check them: {err:#}",
                snapshot.role.name()
            );
            tracing::warn!("{note}");
            notes.push(note);
            None
        }
    };
    if let Some(facts) = &artefact.redis {
        let keys: u64 = facts.keys.values().sum();
        tracing::info!(
            "Redis ({}) saved as {name}: {keys} keys{}",
            snapshot.source.describe(),
            if facts.exact {
                ""
            } else {
                " (busy: the counts moved during the snapshot)"
            }
        );
    }
    Ok(artefact)
}

async fn count(snapshot: &RedisSnapshot) -> Result<RedisFacts> {
    let target = snapshot
        .counted_at
        .as_ref()
        .context("this machine cannot reach the server to count its keys")?;
    let mut session = target.connect(snapshot.timeout).await?;
    RedisFacts::read(&mut session, snapshot.role).await
}

/// Passes an RDB stream through, failing it when it does not start as an
/// RDB file does: redis-cli that printed an error instead of a snapshot
/// must not leave a good-looking artefact.
struct RdbCheck {
    inner: BoxReader,
    seen: Vec<u8>,
}

impl RdbCheck {
    fn new(inner: BoxReader) -> Self {
        RdbCheck {
            inner,
            seen: Vec::with_capacity(RDB_MAGIC.len()),
        }
    }
}

impl AsyncRead for RdbCheck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let missing = RDB_MAGIC.len() - this.seen.len();
                if missing > 0 {
                    this.seen.extend_from_slice(&new[..new.len().min(missing)]);
                    let checked = this.seen.len();
                    if this.seen[..] != RDB_MAGIC[..checked] || (new.is_empty() && checked > 0) {
                        // An error hands back no bytes.
                        buf.set_filled(before);
                        return Poll::Ready(Err(std::io::Error::other(format!(
                            "redis-cli's output is not an RDB file (it starts with {:?})",
                            String::from_utf8_lossy(&this.seen)
                        ))));
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_through(input: &'static [u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        RdbCheck::new(Box::new(input))
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[tokio::test]
    async fn an_rdb_stream_passes_and_anything_else_fails() {
        assert_eq!(
            read_through(b"REDIS0011\xfa").await.unwrap(),
            b"REDIS0011\xfa"
        );
        let err = read_through(b"ERR unknown command").await.unwrap_err();
        assert!(err.to_string().contains("not an RDB file"), "{err}");
        // A stream cut off inside the magic is no snapshot either.
        assert!(read_through(b"RED").await.is_err());
        // Empty output is left to the caller's "produced no output".
        assert_eq!(read_through(b"").await.unwrap(), b"");
    }
}
