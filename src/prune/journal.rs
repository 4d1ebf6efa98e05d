//! The journal of keys whose rows no longer point at them but whose files
//! may still exist: written in the transaction that changes the rows,
//! emptied once the files are gone, replayed by the next run. A table in
//! the instance's database, so the row change and the journal entry commit
//! together or not at all.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::MediaStore;
use crate::error::TuskError;
use crate::storage::DELETE_BATCH;

pub const TABLE: &str = "tusk_prune_pending";

/// Session-level advisory lock: one prune per database at a time.
const LOCK_KEY: i64 = 0x7475_736b_7072_756e; // "tuskprun"

/// How long to wait for the lock: a run that just ended may still hold it
/// for a moment, until its server process notices the closed connection.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes the prune lock for the session's lifetime, or fails with exit 4.
pub async fn lock(client: &Client) -> Result<()> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(TuskError::Locked(
                "another tusk prune is running on this database; wait for it to finish".into(),
            )
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Releases the lock before the session closes, so the next run finds it free.
pub async fn unlock(client: &Client) -> Result<()> {
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    Ok(())
}

pub async fn create(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY, \
             queued_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .with_context(|| format!("could not create the journal table {TABLE}"))
}

/// Records keys inside the caller's transaction.
pub async fn record(tx: &tokio_postgres::Transaction<'_>, keys: &[String]) -> Result<()> {
    tx.execute(
        &format!("INSERT INTO {TABLE} (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"),
        &[&keys],
    )
    .await?;
    Ok(())
}

/// Forgets keys whose files are gone.
pub async fn forget(client: &Client, keys: &[String]) -> Result<()> {
    client
        .execute(
            &format!("DELETE FROM {TABLE} WHERE key = ANY($1)"),
            &[&keys],
        )
        .await?;
    Ok(())
}

/// Deletes the files of every journalled key; returns how many there were.
pub async fn replay(client: &Client, store: &MediaStore) -> Result<u64> {
    let mut replayed = 0;
    loop {
        let rows = client
            .query(
                &format!("SELECT key FROM {TABLE} ORDER BY key LIMIT {DELETE_BATCH}"),
                &[],
            )
            .await?;
        if rows.is_empty() {
            return Ok(replayed);
        }
        let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        store.storage.delete_batch(&keys).await.with_context(|| {
            format!("could not delete files left by an interrupted run (they stay in {TABLE} for the next run)")
        })?;
        forget(client, &keys).await?;
        replayed += keys.len() as u64;
    }
}

/// Leaves no trace in Mastodon's database after a complete run.
pub async fn drop_if_empty(client: &Client) -> Result<()> {
    let left: i64 = client
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await?
        .get(0);
    if left == 0 {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
            .await?;
    } else {
        tracing::warn!("{left} keys stay in {TABLE}; the next run deletes their files");
    }
    Ok(())
}
