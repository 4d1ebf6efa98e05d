//! Undo actions that must run even when an operation fails or is interrupted.
//!
//! Async work cannot run in `Drop`, so an operation registers what to undo
//! (drop a scratch database, start stopped containers) and either runs it
//! itself on the normal path or leaves it here; `main` runs whatever is
//! left after the operation returned an error or was cancelled by Ctrl-C.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send>;

static PENDING: Mutex<Vec<(u64, String, Undo)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long the leftovers may take once the operation is gone.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A registered undo action.
#[must_use = "run the undo action or dismiss it"]
pub struct Deferred {
    id: u64,
}

/// Registers `undo`, described by `label` in logs.
pub fn defer<F, Fut>(label: impl Into<String>, undo: F) -> Deferred
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let undo: Undo = Box::new(move || Box::pin(undo()));
    PENDING.lock().unwrap().push((id, label.into(), undo));
    Deferred { id }
}

impl Deferred {
    /// Runs the undo action now.
    pub async fn run(self) -> Result<()> {
        match take(self.id) {
            Some((_, undo)) => undo().await,
            None => Ok(()),
        }
    }

    /// Forgets the undo action: the work it guarded is to be kept.
    pub fn dismiss(self) {
        take(self.id);
    }
}

fn take(id: u64) -> Option<(String, Undo)> {
    let mut pending = PENDING.lock().unwrap();
    let index = pending.iter().position(|(entry, _, _)| *entry == id)?;
    let (_, label, undo) = pending.remove(index);
    Some((label, undo))
}

/// Runs every action still registered, newest first. Called by `main`.
pub async fn run_leftovers() {
    loop {
        let next = PENDING.lock().unwrap().pop();
        let Some((_, label, undo)) = next else { break };
        tracing::info!("cleaning up: {label}");
        match tokio::time::timeout(LEFTOVER_TIMEOUT, undo()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("cleanup failed ({label}): {err:#}"),
            Err(_) => tracing::error!("cleanup timed out ({label})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn leftovers_run_once_and_dismissed_never() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let kept = defer("count", move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let dismissed = defer("never", || async { panic!("dismissed undo ran") });
        dismissed.dismiss();
        drop(kept);
        run_leftovers().await;
        run_leftovers().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
