//! `tusk media usage`: what the database says media take (as
//! `tootctl media usage` sums it) beside what storage really holds.

use anyhow::Result;
use serde::Serialize;
use tokio_postgres::Client;

use super::MediaLayout;
use crate::storage::{ObjectInfo, Storage, list_all};

/// One class of stored files.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub class: String,
    /// Bytes the database records for it.
    pub database_bytes: i64,
    /// Bytes of the database's share that belong to local accounts.
    pub local_bytes: Option<i64>,
    /// Bytes found on storage under its key prefix (with and without `cache/`).
    pub stored_bytes: u64,
    pub stored_files: u64,
}

/// The database's view of one class: table, SQL for total and local bytes,
/// and the storage prefix its files live under.
struct Class {
    name: &'static str,
    table: &'static str,
    total: &'static str,
    local: Option<&'static str>,
    prefix: &'static str,
}

const CLASSES: &[Class] = &[
    Class {
        name: "media attachments",
        table: "media_attachments",
        total: "SELECT sum(COALESCE(file_file_size, 0) + COALESCE(thumbnail_file_size, 0))::bigint FROM media_attachments",
        local: Some(
            "SELECT sum(COALESCE(file_file_size, 0) + COALESCE(thumbnail_file_size, 0))::bigint FROM media_attachments WHERE remote_url = ''",
        ),
        prefix: "media_attachments/",
    },
    Class {
        name: "avatars",
        table: "accounts",
        total: "SELECT sum(avatar_file_size)::bigint FROM accounts",
        local: Some("SELECT sum(avatar_file_size)::bigint FROM accounts WHERE domain IS NULL"),
        prefix: "accounts/avatars/",
    },
    Class {
        name: "headers",
        table: "accounts",
        total: "SELECT sum(header_file_size)::bigint FROM accounts",
        local: Some("SELECT sum(header_file_size)::bigint FROM accounts WHERE domain IS NULL"),
        prefix: "accounts/headers/",
    },
    Class {
        name: "preview cards",
        table: "preview_cards",
        total: "SELECT sum(image_file_size)::bigint FROM preview_cards",
        local: None,
        prefix: "preview_cards/",
    },
    Class {
        name: "custom emoji",
        table: "custom_emojis",
        total: "SELECT sum(image_file_size)::bigint FROM custom_emojis",
        local: Some("SELECT sum(image_file_size)::bigint FROM custom_emojis WHERE domain IS NULL"),
        prefix: "custom_emojis/",
    },
    Class {
        name: "user archives",
        table: "backups",
        total: "SELECT sum(dump_file_size)::bigint FROM backups",
        local: None,
        prefix: "backups/",
    },
    Class {
        name: "imports",
        table: "imports",
        total: "SELECT sum(data_file_size)::bigint FROM imports",
        local: None,
        prefix: "imports/",
    },
    Class {
        name: "site uploads",
        table: "site_uploads",
        total: "SELECT sum(file_file_size)::bigint FROM site_uploads",
        local: None,
        prefix: "site_uploads/",
    },
];

/// What the last `tusk media usage` found on storage, kept in the state
/// directory so `tusk status` can report a bucket's size without listing
/// it on every run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct UsageRecord {
    pub measured_at: chrono::DateTime<chrono::Utc>,
    /// `local` or `s3`.
    pub store: String,
    pub stored_bytes: u64,
    pub stored_files: u64,
}

/// The record's file name in the state directory.
pub const RECORD_FILE: &str = "media-usage.json";

impl UsageRecord {
    pub fn of(rows: &[UsageRow], store: &str) -> Self {
        UsageRecord {
            measured_at: chrono::Utc::now(),
            store: store.to_string(),
            stored_bytes: rows.iter().map(|r| r.stored_bytes).sum(),
            stored_files: rows.iter().map(|r| r.stored_files).sum(),
        }
    }

    /// Writes the record into `state_dir` (made if missing), atomically.
    pub fn save(&self, state_dir: &std::path::Path) -> Result<()> {
        use anyhow::Context as _;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("could not create {}", state_dir.display()))?;
        let mut temp = tempfile::NamedTempFile::new_in(state_dir)?;
        serde_json::to_writer_pretty(&mut temp, self)?;
        temp.persist(state_dir.join(RECORD_FILE)).with_context(|| {
            format!("could not write {}", state_dir.join(RECORD_FILE).display())
        })?;
        Ok(())
    }

    /// The record in `state_dir`, if there is a readable one.
    pub fn load(state_dir: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Per class: the database's sums beside what storage holds: the bucket
/// when one is given, else the local media folder.
pub async fn run(
    session: &Client,
    layout: &MediaLayout,
    bucket: Option<&dyn Storage>,
) -> Result<Vec<UsageRow>> {
    let stored: Vec<ObjectInfo> = match bucket {
        Some(bucket) => list_all(bucket, &layout.list_prefix())
            .await?
            .into_iter()
            .filter_map(|mut object| {
                object.key = layout.relative_for(&object.key)?.to_string();
                Some(object)
            })
            .collect(),
        None => layout
            .walk()
            .await?
            .into_iter()
            .map(|file| ObjectInfo {
                key: file.relative,
                size: file.size,
                etag: None,
                modified: None,
            })
            .collect(),
    };
    usage(session, &stored).await
}

/// Per class: the database's sums beside what `stored` holds (keys relative
/// to the media root). Tables a version lacks count as zero.
async fn usage(session: &Client, stored: &[ObjectInfo]) -> Result<Vec<UsageRow>> {
    let mut rows = Vec::new();
    for class in CLASSES {
        let exists: bool = session
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&class.table])
            .await?
            .get(0);
        let sum = |sql: &'static str| async move {
            let value: Option<i64> = session.query_one(sql, &[]).await?.get(0);
            anyhow::Ok(value.unwrap_or(0))
        };
        let (database_bytes, local_bytes) = if exists {
            let local = match class.local {
                Some(sql) => Some(sum(sql).await?),
                None => None,
            };
            (sum(class.total).await?, local)
        } else {
            (0, None)
        };
        let (files, bytes) = stored
            .iter()
            .filter(|o| {
                o.key
                    .strip_prefix("cache/")
                    .unwrap_or(&o.key)
                    .starts_with(class.prefix)
            })
            .fold((0u64, 0u64), |(n, b), o| (n + 1, b + o.size));
        rows.push(UsageRow {
            class: class.name.to_string(),
            database_bytes,
            local_bytes,
            stored_bytes: bytes,
            stored_files: files,
        });
    }
    // Whatever no class claims (unknown classes, stray files).
    let (files, bytes) = stored
        .iter()
        .filter(|o| {
            let key = o.key.strip_prefix("cache/").unwrap_or(&o.key);
            !CLASSES.iter().any(|c| key.starts_with(c.prefix))
        })
        .fold((0u64, 0u64), |(n, b), o| (n + 1, b + o.size));
    rows.push(UsageRow {
        class: "other".to_string(),
        database_bytes: 0,
        local_bytes: None,
        stored_bytes: bytes,
        stored_files: files,
    });
    Ok(rows)
}
