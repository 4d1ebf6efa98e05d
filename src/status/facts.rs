//! Reading the facts `status` judges: PostgreSQL, Redis, the app
//! containers and the media. Each reader is bounded in time by its caller.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::docker::services::ServiceContainer;
use crate::redis::RedisSession;

/// The PostgreSQL server and the Mastodon database on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostgresFacts {
    pub version: String,
    /// `server_version_num`: 140003 is 14.3, 170002 is 17.2.
    pub version_num: i32,
    pub database: String,
    pub size_bytes: i64,
    /// Sessions now, of all databases (they share `max_connections`).
    pub connections: i64,
    pub max_connections: i64,
    /// Slots only superusers may take.
    pub reserved_connections: i64,
    pub longest_transaction: Option<Transaction>,
    /// A standby answers: this is a replica, not the primary.
    pub in_recovery: bool,
    pub replicas: Vec<Replica>,
    /// The newest applied migration (`schema_migrations`).
    pub schema_version: Option<String>,
    /// Mastodon's admin settings "content cache retention period" and
    /// "media cache retention period" (`settings` table).
    pub content_cache_retention: Option<RetentionSetting>,
    pub media_cache_retention: Option<RetentionSetting>,
}

/// The oldest open transaction of a client session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transaction {
    pub pid: i32,
    pub user: Option<String>,
    pub state: Option<String>,
    pub seconds: f64,
    /// The start of its current (or last) statement.
    pub query: Option<String>,
}

/// A standby streaming from this server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replica {
    pub name: Option<String>,
    pub client: Option<String>,
    pub state: Option<String>,
    pub replay_lag_seconds: Option<f64>,
}

/// One of Mastodon's retention settings as stored and as Mastodon reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionSetting {
    /// The `value` column: YAML, e.g. `--- 30\n`.
    pub stored: Option<String>,
    /// The period in days when Mastodon applies it: a positive integer
    /// (`ContentRetentionPolicy`); `None` means nothing is deleted.
    pub days: Option<i64>,
}

impl RetentionSetting {
    /// Reads a stored value as Mastodon does: only a positive YAML integer
    /// is a period; blank, zero or a string disables it.
    pub fn from_stored(stored: Option<String>) -> Self {
        let days = stored
            .as_deref()
            .and_then(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).ok())
            .and_then(|value| match value {
                serde_yaml_ng::Value::Number(number) => number.as_i64(),
                _ => None,
            })
            .filter(|days| *days > 0);
        RetentionSetting { stored, days }
    }
}

/// Reads the server's and the database's state; `statement_timeout` keeps
/// a catalog query from hanging on a lock.
pub async fn read_postgres(session: &Client, database: &str) -> Result<PostgresFacts> {
    session
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .context("could not set a statement timeout")?;
    let row = session
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    pg_database_size(current_database()), \
                    (SELECT count(*) FROM pg_stat_activity)::bigint, \
                    current_setting('max_connections')::bigint, \
                    current_setting('superuser_reserved_connections')::bigint, \
                    pg_is_in_recovery()",
            &[],
        )
        .await
        .context("could not read the server's state")?;
    let longest_transaction = session
        .query_opt(
            "SELECT pid, usename::text, state, \
                    extract(epoch FROM now() - xact_start)::float8, left(query, 120) \
             FROM pg_stat_activity \
             WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' \
             ORDER BY xact_start LIMIT 1",
            &[],
        )
        .await
        .context("could not read pg_stat_activity")?
        .map(|row| Transaction {
            pid: row.get(0),
            user: row.get(1),
            state: row.get(2),
            seconds: row.get(3),
            query: row.get(4),
        });
    let replicas = session
        .query(
            "SELECT application_name, client_addr::text, state, \
                    extract(epoch FROM replay_lag)::float8 \
             FROM pg_stat_replication ORDER BY application_name",
            &[],
        )
        .await
        .context("could not read pg_stat_replication")?
        .into_iter()
        .map(|row| Replica {
            name: row.get(0),
            client: row.get(1),
            state: row.get(2),
            replay_lag_seconds: row.get(3),
        })
        .collect();
    let exists = |table: &'static str| async move {
        let found: bool = session
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?
            .get(0);
        anyhow::Ok(found)
    };
    let schema_version = if exists("schema_migrations").await? {
        session
            .query_one("SELECT max(version)::text FROM schema_migrations", &[])
            .await?
            .get(0)
    } else {
        None
    };
    let (content_cache_retention, media_cache_retention) = if exists("settings").await? {
        // Site-wide settings have no owner; older versions also kept
        // per-user rows (thing_type) in the same table.
        let setting = |var: &'static str| async move {
            let value: Option<String> = session
                .query_opt(
                    "SELECT value FROM settings WHERE var = $1 ORDER BY id LIMIT 1",
                    &[&var],
                )
                .await?
                .and_then(|row| row.get(0));
            anyhow::Ok(RetentionSetting::from_stored(value))
        };
        (
            Some(setting("content_cache_retention_period").await?),
            Some(setting("media_cache_retention_period").await?),
        )
    } else {
        (None, None)
    };
    Ok(PostgresFacts {
        version: row.get(0),
        version_num: row.get(1),
        database: database.to_string(),
        size_bytes: row.get(2),
        connections: row.get(3),
        max_connections: row.get(4),
        reserved_connections: row.get(5),
        longest_transaction,
        in_recovery: row.get(6),
        replicas,
        schema_version,
        content_cache_retention,
        media_cache_retention,
    })
}

/// Sidekiq's Redis server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisFacts {
    /// Without the password.
    pub url: String,
    pub namespace: Option<String>,
    pub version: String,
    pub used_memory_bytes: u64,
    /// 0: no limit.
    pub max_memory_bytes: u64,
    /// Sidekiq needs `noeviction`: any other policy may drop queued jobs.
    pub max_memory_policy: Option<String>,
}

pub async fn read_redis(session: &mut RedisSession) -> Result<RedisFacts> {
    let server = session.info("server").await?;
    let memory = session.info("memory").await?;
    let get = |pairs: &[(String, String)], key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let number = |pairs: &[(String, String)], key: &str| {
        get(pairs, key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(RedisFacts {
        url: session.target().redacted(),
        namespace: session.target().namespace.clone(),
        version: get(&server, "redis_version").unwrap_or_default(),
        used_memory_bytes: number(&memory, "used_memory"),
        max_memory_bytes: number(&memory, "maxmemory"),
        max_memory_policy: get(&memory, "maxmemory_policy"),
    })
}

/// Mastodon's version and its app containers (Docker mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MastodonFacts {
    /// From the app containers' image tag (`v4.3.8` is 4.3.8), when they
    /// run a tagged image.
    pub version: Option<String>,
    pub schema_version: Option<String>,
    /// Docker mode only.
    pub containers: Vec<ServiceContainer>,
}

/// `4.3.8` from an image reference `ghcr.io/mastodon/mastodon:v4.3.8`
/// (also `tootsuite/mastodon:4.2.10`, `...:v4.4.0-beta.1@sha256:...`).
pub fn version_of_image(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    let version = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = version.split(['.', '-']);
    let numeric = |part: Option<&str>| {
        part.is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
    };
    (numeric(parts.next()) && numeric(parts.next())).then(|| version.to_string())
}

/// Major and minor of a version string (`4.3.8` -> (4, 3)).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The first schema version of Mastodon 4.3 (its rc.1); any later schema
/// is at least 4.3.
const SCHEMA_4_3: &str = "20240916190140";

/// What tusk can say of the Mastodon release: from the image tag, else at
/// least 4.3 from the schema.
pub fn mastodon_release(facts: &MastodonFacts) -> Option<(u32, u32)> {
    if let Some(version) = facts.version.as_deref().and_then(major_minor) {
        return Some(version);
    }
    let schema = facts.schema_version.as_deref()?;
    (schema >= SCHEMA_4_3).then_some((4, 3))
}

/// The media's size as last measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaFacts {
    /// `local` or `s3`.
    pub store: String,
    pub location: String,
    pub stored_bytes: Option<u64>,
    pub stored_files: Option<u64>,
    pub measured_at: Option<DateTime<Utc>>,
    /// `walk` (the folder was just measured) or `media usage` (the last
    /// `tusk media usage` run's record).
    pub source: Option<String>,
}

/// Sums the files under `root` (the local `public/system`).
pub fn walk_size(root: &std::path::Path) -> Result<(u64, u64)> {
    let mut stack = vec![root.to_path_buf()];
    let (mut bytes, mut files) = (0u64, 0u64);
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("could not read {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                bytes += entry.metadata()?.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_settings_are_read_as_mastodon_reads_them() {
        let read =
            |stored: Option<&str>| RetentionSetting::from_stored(stored.map(String::from)).days;
        assert_eq!(read(Some("--- 30\n")), Some(30));
        assert_eq!(read(Some("--- 0\n")), None);
        assert_eq!(read(Some("--- \n")), None);
        assert_eq!(read(Some("--- '30'\n")), None, "a string is not a period");
        assert_eq!(read(None), None);
    }

    #[test]
    fn versions_come_from_image_tags() {
        assert_eq!(
            version_of_image("ghcr.io/mastodon/mastodon:v4.3.8").as_deref(),
            Some("4.3.8")
        );
        assert_eq!(
            version_of_image("tootsuite/mastodon:4.2.10").as_deref(),
            Some("4.2.10")
        );
        assert_eq!(
            version_of_image("localhost:5000/mastodon:v4.4.0-beta.1@sha256:abc").as_deref(),
            Some("4.4.0-beta.1")
        );
        assert_eq!(version_of_image("ghcr.io/mastodon/mastodon:latest"), None);
        assert_eq!(version_of_image("mastodon"), None);
        assert_eq!(major_minor("4.4.0-beta.1"), Some((4, 4)));
    }

    #[test]
    fn the_release_falls_back_to_the_schema() {
        let facts = |version: Option<&str>, schema: Option<&str>| MastodonFacts {
            version: version.map(String::from),
            schema_version: schema.map(String::from),
            containers: Vec::new(),
        };
        assert_eq!(mastodon_release(&facts(Some("4.4.1"), None)), Some((4, 4)));
        assert_eq!(
            mastodon_release(&facts(None, Some("20241007071624"))),
            Some((4, 3))
        );
        assert_eq!(mastodon_release(&facts(None, Some("20230908000000"))), None);
    }
}
