//! Orphans: stored files that no database row points at. Read one listing
//! page at a time, checked with one query per class and page, deleted in
//! one request per page. Only keys of classes Mastodon stores, in one of
//! Paperclip's two partition shapes, can be orphans; everything else stays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use serde::Serialize;
use tokio_postgres::Client;

use super::rules::Schema;
use super::{MediaStore, PruneOptions, RuleReport};
use crate::mastodon::paperclip::{Attachment, KeyShape, parse_key, stem};
use crate::output::Output;
use crate::storage::ObjectInfo;

/// What the scan saw besides the orphans it removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrphanStats {
    pub listed: u64,
    /// Keys of a class tusk does not know, or whose table this database lacks.
    pub kept_unknown_class: u64,
    /// Keys not shaped like an attachment's (including "directory" keys).
    pub kept_unrecognized: u64,
    /// Orphan candidates younger than the minimum age.
    pub kept_recent: u64,
    /// The last key fully handled: `--start-after` resumes after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_key: Option<String>,
}

pub async fn apply(
    control: &Client,
    schema: &Schema,
    store: &MediaStore,
    opts: &PruneOptions,
    output: &Output,
) -> Result<RuleReport> {
    let prefix = crate::media::list_prefix(store.key_prefix.as_deref());
    tracing::info!(
        "orphans: scanning {}{}",
        store.storage.describe(),
        opts.start_after
            .as_ref()
            .map(|k| format!(" after {k}"))
            .unwrap_or_default()
    );
    // The listing runs on its own task and hands over pages through a
    // short queue, so at most a few pages wait in memory.
    let (pages_tx, mut pages) = tokio::sync::mpsc::channel::<Vec<ObjectInfo>>(2);
    let storage = Arc::clone(&store.storage);
    let list_prefix = prefix.clone();
    let start_after = opts.start_after.clone();
    let lister = tokio::spawn(async move {
        let mut listing = storage.list(list_prefix, start_after);
        while let Some(page) = listing.try_next().await? {
            if pages_tx.send(page).await.is_err() {
                // The scan stopped (it failed); its error is the one to report.
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    });

    let progress = output.byte_progress("orphans", None);
    let mut report = RuleReport {
        rule: "orphans".into(),
        ..RuleReport::default()
    };
    let mut stats = OrphanStats::default();
    let mut checker = Checker::new(control, schema);
    let oldest_allowed = SystemTime::now()
        .checked_sub(opts.orphans_min_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);

    let scan = async {
        while let Some(page) = pages.recv().await {
            let orphans = checker
                .orphans(&page, &prefix, oldest_allowed, &mut stats)
                .await?;
            if !orphans.is_empty() {
                let keys: Vec<String> = orphans.iter().map(|o| o.key.clone()).collect();
                if !opts.dry_run {
                    store.storage.delete_batch(&keys).await?;
                }
                report.files += keys.len() as u64;
                report.bytes += orphans.iter().map(|o| o.size).sum::<u64>();
                if opts.list_keys {
                    report.keys.extend(keys);
                }
            }
            stats.listed += page.len() as u64;
            progress.inc(page.iter().map(|o| o.size).sum());
            progress.set_message(format!("{} objects", stats.listed));
            stats.last_key = page.last().map(|o| o.key.clone());
        }
        Ok::<_, anyhow::Error>(())
    };
    let scanned = scan.await;
    drop(pages);
    let listed = lister.await.context("the listing task failed")?;
    progress.finish_and_clear();
    let resume = || match &stats.last_key {
        Some(key) => format!("; resume with --start-after '{key}'"),
        None => String::new(),
    };
    if let Err(err) = scanned {
        return Err(err.context(format!("the orphan scan stopped{}", resume())));
    }
    if let Err(err) = listed {
        return Err(err.context(format!("could not list the media{}", resume())));
    }
    report.orphans = Some(stats);
    Ok(report)
}

/// Looks up the rows behind a page of keys.
struct Checker<'a> {
    control: &'a Client,
    schema: &'a Schema,
    /// Whether the database was seen to be a Mastodon instance's.
    checked_instance: bool,
}

/// One key that parsed as an attachment.
struct Candidate<'p> {
    object: &'p ObjectInfo,
    attachment: &'static Attachment,
    id: i64,
    file_name: &'p str,
}

impl<'a> Checker<'a> {
    fn new(control: &'a Client, schema: &'a Schema) -> Self {
        Checker {
            control,
            schema,
            checked_instance: false,
        }
    }

    async fn orphans<'p>(
        &mut self,
        page: &'p [ObjectInfo],
        prefix: &str,
        oldest_allowed: SystemTime,
        stats: &mut OrphanStats,
    ) -> Result<Vec<&'p ObjectInfo>> {
        let mut candidates = Vec::new();
        for object in page {
            let Some(relative) = object.key.strip_prefix(prefix) else {
                stats.kept_unrecognized += 1;
                continue;
            };
            match parse_key(relative) {
                KeyShape::Attachment {
                    attachment,
                    id,
                    file_name,
                    ..
                } if self.schema.stores(attachment) => candidates.push(Candidate {
                    object,
                    attachment,
                    id,
                    file_name,
                }),
                KeyShape::Attachment { .. } | KeyShape::UnknownClass => {
                    stats.kept_unknown_class += 1
                }
                KeyShape::Unrecognized => stats.kept_unrecognized += 1,
            }
        }

        // One query per class on this page, keyed like the rows it returns.
        type Class = (&'static str, &'static str);
        let class = |a: &'static Attachment| -> Class { (a.table, a.name) };
        let mut by_class: HashMap<Class, (&'static Attachment, Vec<i64>)> = HashMap::new();
        for candidate in &candidates {
            by_class
                .entry(class(candidate.attachment))
                .or_insert((candidate.attachment, Vec::new()))
                .1
                .push(candidate.id);
        }
        let mut stored: HashMap<Class, HashMap<i64, Option<String>>> = HashMap::new();
        for (attachment, ids) in by_class.into_values() {
            self.check_instance_database().await?;
            let rows = self
                .control
                .query(
                    &format!(
                        "SELECT id, {} FROM {} WHERE id = ANY($1)",
                        attachment.column("file_name"),
                        attachment.table
                    ),
                    &[&ids],
                )
                .await
                .with_context(|| format!("could not look up {} rows", attachment.table))?;
            stored.insert(
                class(attachment),
                rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            );
        }

        let mut orphans = Vec::new();
        for candidate in candidates {
            let file_name = stored
                .get(&class(candidate.attachment))
                .and_then(|rows| rows.get(&candidate.id))
                .cloned()
                .flatten()
                .filter(|f| !f.is_empty());
            // Every style shares the original's name up to the extension.
            let referenced = file_name.is_some_and(|f| stem(&f) == stem(candidate.file_name));
            if referenced {
                continue;
            }
            if candidate
                .object
                .modified
                .is_some_and(|modified| modified > oldest_allowed)
            {
                stats.kept_recent += 1;
                continue;
            }
            orphans.push(candidate.object);
        }
        Ok(orphans)
    }

    /// Every Mastodon database has accounts (at least the instance actor);
    /// without any, tusk is connected to some other database and every
    /// file would look orphaned.
    async fn check_instance_database(&mut self) -> Result<()> {
        if self.checked_instance {
            return Ok(());
        }
        let any: bool = self
            .control
            .query_one("SELECT EXISTS (SELECT 1 FROM accounts)", &[])
            .await
            .context("could not read the accounts table")?
            .get(0);
        if !any {
            bail!(
                "the database has no accounts, so it is not this instance's (every Mastodon \
                 database holds at least the instance actor): check --database-url; no orphan \
                 was deleted"
            );
        }
        self.checked_instance = true;
        Ok(())
    }
}
