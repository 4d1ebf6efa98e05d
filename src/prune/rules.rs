//! The row-based rules: which rows each selects (tootctl's scopes, written
//! as SQL) and what it does to them (Paperclip's column changes, or the
//! vacuum's row deletion), batch by batch.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::{Context, Result};
use futures_util::{TryStreamExt, stream};
use tokio_postgres::{Client, Row};

use super::{MediaStore, PruneOptions, RuleReport, journal};
use crate::mastodon::paperclip::{
    AVATAR, Attachment, BACKUP_DUMP, HEADER, MEDIA_FILE, MEDIA_THUMBNAIL, PREVIEW_CARD_IMAGE,
};
use crate::output::Output;
use crate::storage::DELETE_BATCH;

/// Which of Mastodon's two selections of expired cached media to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSemantics {
    /// `tootctl media remove`: created before the cutoff.
    Tootctl,
    /// Mastodon's daily vacuum: created and updated before the cutoff.
    Vacuum,
}

impl CacheSemantics {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 2] = [
        (
            "tootctl",
            "`tootctl media remove`: created before the cutoff",
        ),
        (
            "vacuum",
            "Mastodon's daily vacuum: created and updated before the cutoff",
        ),
    ];
}

/// The columns the instance's tables have, so every statement names only
/// columns that exist (4.2 and 4.3 differ, and the fixture is a subset).
pub struct Schema {
    columns: HashSet<(String, String)>,
}

impl Schema {
    pub async fn read(client: &Client) -> Result<Self> {
        let rows = client
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema()",
                &[],
            )
            .await
            .context("could not read the database's columns")?;
        Ok(Schema {
            columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        })
    }

    pub fn has(&self, table: &str, column: &str) -> bool {
        self.columns
            .contains(&(table.to_string(), column.to_string()))
    }

    /// Whether the attachment's table (and file name column) exists.
    pub fn stores(&self, attachment: &Attachment) -> bool {
        self.has(attachment.table, &attachment.column("file_name"))
    }
}

/// What a rule does to the rows it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Null the attachments' columns and keep the row (Mastodon fetches the
    /// file again when someone looks); `touch` bumps `updated_at` as
    /// ActiveRecord's `save` does after tootctl's `destroy`.
    Clear { touch: bool },
    /// Delete the rows (unattached uploads, expired user archives).
    Delete,
}

/// One rule, resolved against the schema.
pub struct Rule {
    name: String,
    table: &'static str,
    attachments: Vec<&'static Attachment>,
    /// SQL condition; `$2` is the cutoff (timestamp text, UTC).
    condition: String,
    days: f64,
    action: Action,
    /// Per attachment: the expression that is true when its files sit under
    /// `cache/`.
    cached_sql: Vec<String>,
    /// Columns set to NULL by `Clear`.
    cleared_columns: Vec<String>,
}

/// The rules the options ask for, in the order they run: unattached
/// uploads first (their rows go), then the caches.
pub fn selected(opts: &PruneOptions, schema: &Schema) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    if opts.unattached_media {
        rules.push(Rule::new(
            "unattached_media",
            &[&MEDIA_FILE, &MEDIA_THUMBNAIL],
            "status_id IS NULL AND scheduled_status_id IS NULL AND created_at < $2::text::timestamp"
                .into(),
            1.0,
            Action::Delete,
            schema,
        )?);
    }
    if let Some(days) = opts.media_cache_days {
        // The `cached` scope holds rows whose file name is '' too, but
        // tootctl skips them (`file.blank?`: nil, empty or only spaces);
        // the vacuum's `file.destroy` does nothing to them either.
        let mut condition = format!(
            "remote_url <> '' AND file_file_name IS NOT NULL AND {} \
             AND created_at < $2::text::timestamp",
            not_blank("file_file_name")
        );
        let touch = match opts.media_cache_semantics {
            CacheSemantics::Tootctl => true,
            CacheSemantics::Vacuum => {
                condition.push_str(" AND updated_at < $2::text::timestamp");
                false
            }
        };
        rules.push(Rule::new(
            "media_cache",
            &[&MEDIA_FILE, &MEDIA_THUMBNAIL],
            condition,
            days.into(),
            Action::Clear { touch },
            schema,
        )?);
    }
    if let Some(days) = opts.profiles_days {
        let mut attachments: Vec<&'static Attachment> = Vec::new();
        if opts.avatars {
            attachments.push(&AVATAR);
        }
        if opts.headers {
            attachments.push(&HEADER);
        }
        // tootctl skips accounts whose chosen attachments are all blank.
        let present = attachments
            .iter()
            .map(|a| format!("COALESCE({}, '') <> ''", a.column("file_name")))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut condition = format!(
            "domain IS NOT NULL AND last_webfingered_at <= $2::text::timestamp \
             AND updated_at <= $2::text::timestamp AND ({present})"
        );
        if !opts.include_follows {
            // A follow in either direction protects the account, also one
            // between two remote accounts (tootctl checks any Follow).
            condition.push_str(
                " AND NOT EXISTS (SELECT 1 FROM follows WHERE follows.account_id = accounts.id) \
                 AND NOT EXISTS (SELECT 1 FROM follows WHERE follows.target_account_id = accounts.id)",
            );
        }
        rules.push(Rule::new(
            "profiles",
            &attachments,
            condition,
            days.into(),
            Action::Clear { touch: true },
            schema,
        )?);
    }
    if let Some(days) = opts.preview_cards_days {
        if days < 14 {
            tracing::warn!(
                "preview_cards_days is {days}: Mastodon fetches a card again only when its link is \
                 posted 14 days after the last fetch, so younger cards stay without an image"
            );
        }
        rules.push(Rule::new(
            "preview_cards",
            &[&PREVIEW_CARD_IMAGE],
            "COALESCE(image_file_name, '') <> '' AND updated_at < $2::text::timestamp".into(),
            days.into(),
            Action::Clear { touch: true },
            schema,
        )?);
    }
    if let Some(days) = opts.user_archives_days {
        // Mastodon's BackupsVacuum: every archive created before the cutoff
        // goes, row and file (`destroy`); nothing else points at a backup.
        rules.push(Rule::new(
            "user_archives",
            &[&BACKUP_DUMP],
            "created_at < $2::text::timestamp".into(),
            days.into(),
            Action::Delete,
            schema,
        )?);
    }
    Ok(rules)
}

/// SQL that is false where Rails' `blank?` is true for a string column:
/// NULL, empty, or nothing but white space.
fn not_blank(column: &str) -> String {
    format!("COALESCE({column}, '') !~ '^[[:space:]]*$'")
}

impl Rule {
    fn new(
        name: &str,
        attachments: &[&'static Attachment],
        condition: String,
        days: f64,
        action: Action,
        schema: &Schema,
    ) -> Result<Self> {
        let table = attachments[0].table;
        if !schema.stores(attachments[0]) {
            return Err(crate::error::TuskError::usage(format!(
                "the database has no {table}.{} column: is this Mastodon's database?",
                attachments[0].column("file_name")
            )));
        }
        // Attachments this Mastodon version lacks are skipped (no
        // media_attachments.thumbnail_* before 3.2).
        let attachments: Vec<&'static Attachment> = attachments
            .iter()
            .copied()
            .filter(|a| schema.stores(a))
            .collect();
        let cached_sql = attachments
            .iter()
            .map(|a| {
                let version = a.column("storage_schema_version");
                match a.remote_sql {
                    Some(remote) if schema.has(a.table, &version) => {
                        format!("(({remote}) AND COALESCE({version}, 0) >= 1)")
                    }
                    _ => "false".to_string(),
                }
            })
            .collect();
        let cleared_columns = attachments
            .iter()
            .flat_map(|a| {
                [
                    "file_name",
                    "content_type",
                    "file_size",
                    "fingerprint",
                    "updated_at",
                ]
                .map(|suffix| a.column(suffix))
            })
            .filter(|column| schema.has(table, column))
            .collect();
        Ok(Rule {
            name: name.to_string(),
            table,
            attachments,
            condition,
            days,
            action,
            cached_sql,
            cleared_columns,
        })
    }

    /// `id`, then per attachment: file name, content type, size, cached.
    fn row_columns(&self) -> String {
        let mut columns = vec!["id".to_string()];
        for (i, a) in self.attachments.iter().enumerate() {
            columns.push(format!("{} AS f{i}", a.column("file_name")));
            columns.push(format!("{} AS c{i}", a.column("content_type")));
            columns.push(format!(
                "COALESCE({}, 0)::bigint AS s{i}",
                a.column("file_size")
            ));
            columns.push(format!("{} AS k{i}", self.cached_sql[i]));
        }
        columns.join(", ")
    }

    /// One page of matching rows after `$1`, by id.
    fn select_sql(&self, limit: usize) -> String {
        format!(
            "SELECT {} FROM {} WHERE id > $1 AND ({}) ORDER BY id LIMIT {limit}",
            self.row_columns(),
            self.table,
            self.condition
        )
    }

    /// Changes the rows `$1` that still match, returning their values from
    /// before the change (the keys to delete).
    fn claim_sql(&self) -> String {
        match self.action {
            Action::Delete => format!(
                "DELETE FROM {} WHERE id = ANY($1) AND ({}) RETURNING {}",
                self.table,
                self.condition,
                self.row_columns()
            ),
            Action::Clear { touch } => {
                let mut sets: Vec<String> = self
                    .cleared_columns
                    .iter()
                    .map(|c| format!("{c} = NULL"))
                    .collect();
                if touch {
                    sets.push("updated_at = now() AT TIME ZONE 'UTC'".into());
                }
                let returned = (0..self.attachments.len())
                    .map(|i| format!("old.f{i}, old.c{i}, old.s{i}, old.k{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "WITH old AS (SELECT {columns} FROM {table} WHERE id = ANY($1) AND ({condition}) \
                     ORDER BY id FOR UPDATE) \
                     UPDATE {table} SET {sets} FROM old WHERE {table}.id = old.id \
                     RETURNING old.id, {returned}",
                    columns = self.row_columns(),
                    table = self.table,
                    condition = self.condition,
                    sets = sets.join(", "),
                )
            }
        }
    }

    /// Keys (below the media root) and recorded bytes of one row.
    fn files_of(&self, row: &Row) -> (Vec<String>, u64) {
        let id: i64 = row.get(0);
        let mut keys = Vec::new();
        let mut bytes = 0;
        for (i, attachment) in self.attachments.iter().enumerate() {
            let base = 1 + 4 * i;
            let file_name: Option<String> = row.get(base);
            let Some(file_name) = file_name.filter(|f| !f.is_empty()) else {
                continue;
            };
            let content_type: Option<String> = row.get(base + 1);
            let size: i64 = row.get(base + 2);
            let cached: bool = row.get(base + 3);
            bytes += size.max(0) as u64;
            for (style, name) in attachment.style_files(&file_name, content_type.as_deref()) {
                keys.push(attachment.key(id, cached, style, &name));
            }
        }
        (keys, bytes)
    }
}

/// Database sessions for batches in flight, one per batch.
pub struct SessionPool {
    idle: Mutex<Vec<Client>>,
}

impl SessionPool {
    pub fn new(sessions: Vec<Client>) -> Self {
        SessionPool {
            idle: Mutex::new(sessions),
        }
    }

    fn take(&self) -> Client {
        self.idle
            .lock()
            .expect("pool lock")
            .pop()
            .expect("no more batches in flight than sessions")
    }

    fn give_back(&self, client: Client) {
        self.idle.lock().expect("pool lock").push(client);
    }

    fn size(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

/// The cutoff as UTC timestamp text, read from the server's clock so rows
/// written by Mastodon and the cutoff share one clock.
async fn cutoff(client: &Client, days: f64) -> Result<String> {
    let row = client
        .query_one(
            "SELECT to_char((now() AT TIME ZONE 'UTC') - $1::float8 * interval '1 day', \
             'YYYY-MM-DD HH24:MI:SS.US')",
            &[&days],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn apply(
    rule: &Rule,
    control: &Client,
    pool: &SessionPool,
    store: &MediaStore,
    opts: &PruneOptions,
    output: &Output,
) -> Result<RuleReport> {
    let cutoff = cutoff(control, rule.days).await?;
    tracing::info!(
        "{}: {} rows of {} with {} (cutoff {cutoff} UTC)",
        rule.name,
        if opts.dry_run { "reading" } else { "pruning" },
        rule.table,
        rule.condition.replace("$2::text::timestamp", "cutoff")
    );
    let total: i64 = control
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE id > $1 AND ({})",
                rule.table, rule.condition
            ),
            &[&i64::MIN, &cutoff],
        )
        .await?
        .get(0);
    let progress = output.count_progress(&rule.name, total.max(0) as u64);
    let mut report = RuleReport {
        rule: rule.name.clone(),
        ..RuleReport::default()
    };

    let select = control
        .prepare(&rule.select_sql(opts.batch_size.max(1)))
        .await
        .with_context(|| format!("could not prepare the {} selection", rule.name))?;
    // Keyset pages: each starts after the last id of the one before, so
    // rows changed meanwhile neither repeat nor shift the window.
    let pages = stream::try_unfold(Some(i64::MIN), |after| {
        let select = &select;
        let cutoff = &cutoff;
        async move {
            let Some(after) = after else {
                return Ok::<_, anyhow::Error>(None);
            };
            let rows = control.query(select, &[&after, cutoff]).await?;
            let next = rows.last().map(|r| r.get::<_, i64>(0));
            Ok(if rows.is_empty() {
                None
            } else {
                Some((rows, next))
            })
        }
    });

    if opts.dry_run {
        let mut pages = std::pin::pin!(pages);
        while let Some(rows) = pages.try_next().await? {
            for row in &rows {
                let (keys, bytes) = rule.files_of(row);
                report.rows += 1;
                report.files += keys.len() as u64;
                report.bytes += bytes;
                if opts.list_keys {
                    report.keys.extend(keys.iter().map(|k| store.key(k)));
                }
            }
            progress.inc(rows.len() as u64);
        }
        progress.finish_and_clear();
        return Ok(report);
    }

    let claim = rule.claim_sql();
    let results: Vec<(u64, u64, u64)> = pages
        .map_ok(|rows| {
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let claim = &claim;
            let cutoff = &cutoff;
            let progress = &progress;
            async move {
                let done = prune_batch(rule, pool, claim, store, &ids, cutoff).await?;
                progress.inc(ids.len() as u64);
                Ok(done)
            }
        })
        .try_buffer_unordered(pool.size().max(1))
        .try_collect()
        .await?;
    progress.finish_and_clear();
    for (rows, files, bytes) in results {
        report.rows += rows;
        report.files += files;
        report.bytes += bytes;
    }
    Ok(report)
}

/// One batch: rows changed and keys journalled in one transaction, then
/// the files deleted, then the journal entries. Returns rows, files, bytes.
async fn prune_batch(
    rule: &Rule,
    pool: &SessionPool,
    claim: &str,
    store: &MediaStore,
    ids: &[i64],
    cutoff: &str,
) -> Result<(u64, u64, u64)> {
    let mut client = pool.take();
    let outcome = async {
        let tx = client.transaction().await?;
        let rows = tx
            .query(claim, &[&ids, &cutoff])
            .await
            .with_context(|| format!("could not update a batch of {}", rule.table))?;
        let mut keys = Vec::new();
        let mut bytes = 0;
        for row in &rows {
            let (row_keys, row_bytes) = rule.files_of(row);
            keys.extend(row_keys.iter().map(|k| store.key(k)));
            bytes += row_bytes;
        }
        journal::record(&tx, &keys).await?;
        tx.commit().await?;
        for chunk in keys.chunks(DELETE_BATCH) {
            store.storage.delete_batch(chunk).await.with_context(|| {
                format!(
                    "could not delete files from {}; their rows are already updated and the keys \
                     wait in {}: run tusk prune again to finish",
                    store.storage.describe(),
                    journal::TABLE
                )
            })?;
        }
        journal::forget(&client, &keys).await?;
        Ok((rows.len() as u64, keys.len() as u64, bytes))
    }
    .await;
    pool.give_back(client);
    outcome
}
