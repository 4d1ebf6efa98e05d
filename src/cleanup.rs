//! Undo actions that must run even when an operation fails or is cancelled.
//!
//! Async work cannot run in `Drop`, so an operation registers what to undo
//! (drop a scratch database, start stopped containers) and either runs it
//! itself on the normal path or leaves it here; `main` runs whatever is
//! left after the operation returned an error or was cancelled by a signal.
//!
//! An undo action, once started, is never cut short: it runs as a task of
//! its own, so cancelling the operation that awaited it does not abort it,
//! and [`run_leftovers`] waits for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::task::JoinHandle;

use crate::signals::{Signal, Signals};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send>;

static PENDING: Mutex<Vec<(u64, String, Undo)>> = Mutex::new(Vec::new());
/// Undo actions started by [`Deferred::run`], with their labels.
static STARTED: Mutex<Vec<(String, JoinHandle<()>)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long one undo action may take.
const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Runs the undo action now and returns its outcome. Should the caller
    /// be cancelled meanwhile, the action still runs to its end.
    pub async fn run(self) -> Result<()> {
        let Some((label, undo)) = take(self.id) else {
            return Ok(());
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = done_tx.send(undo().await);
        });
        {
            let mut started = STARTED.lock().unwrap();
            started.retain(|(_, task)| !task.is_finished());
            started.push((label.clone(), task));
        }
        done_rx
            .await
            .unwrap_or_else(|_| Err(anyhow!("the undo action panicked ({label})")))
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

/// Waits for the undo actions already started, then runs every action still
/// registered, newest first. Called by `main` after the operation ended or
/// was cancelled by `cancelled_by`. Signals arriving meanwhile are logged
/// and change nothing: the undo actions run to their end.
pub async fn run_leftovers(signals: &mut Signals, cancelled_by: Option<Signal>) {
    loop {
        let started = STARTED.lock().unwrap().pop();
        let Some((label, task)) = started else { break };
        if task.is_finished() {
            continue;
        }
        finish_despite_signals(signals, cancelled_by, &label, async {
            let _ = task.await;
        })
        .await;
    }
    loop {
        let next = PENDING.lock().unwrap().pop();
        let Some((_, label, undo)) = next else { break };
        tracing::info!("cleaning up: {label}");
        let undone = finish_despite_signals(
            signals,
            cancelled_by,
            &label,
            tokio::time::timeout(UNDO_TIMEOUT, undo()),
        )
        .await;
        match undone {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("cleanup failed ({label}): {err:#}"),
            Err(_) => tracing::error!("cleanup timed out ({label})"),
        }
    }
}

/// Awaits `work`, logging each signal that arrives meanwhile.
async fn finish_despite_signals<T>(
    signals: &mut Signals,
    cancelled_by: Option<Signal>,
    label: &str,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            signal = signals.recv() => {
                let again = if cancelled_by == Some(signal) { " again" } else { "" };
                tracing::warn!("received {signal}{again}; still cleaning up: {label}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    // One test, because the registry is global to the test process.
    #[tokio::test]
    async fn leftovers_run_once_dismissed_never_and_started_ones_to_the_end() {
        let mut signals = Signals::listen().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let kept = defer("count", move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let dismissed = defer("never", || async { panic!("dismissed undo ran") });
        dismissed.dismiss();
        drop(kept);

        // An action whose caller is cancelled while it runs still finishes.
        let counter = runs.clone();
        let slow = defer("slow", move || async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            counter.fetch_add(10, Ordering::SeqCst);
            Ok(())
        });
        let cancelled = tokio::time::timeout(Duration::from_millis(20), slow.run()).await;
        assert!(cancelled.is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 0);

        run_leftovers(&mut signals, None).await;
        run_leftovers(&mut signals, None).await;
        assert_eq!(runs.load(Ordering::SeqCst), 11);
    }
}
