//! `tusk prune`: drop cached files on retention rules with exactly the rows
//! tootctl (or Mastodon's daily vacuum) would pick, but in batches:
//! keyset-paginated selects, one UPDATE per batch, DeleteObjects of up to
//! 1000 keys, several batches at once.
//!
//! Order per batch, so that an interruption anywhere leaves Mastodon
//! consistent and a re-run finishes the job: the rows are changed and their
//! keys written to a journal table in one transaction; then the files go;
//! then the journal entries. Mastodon never sees a row whose file is gone,
//! and keys whose rows were already changed are in the journal, which the
//! next run deletes first.

pub mod journal;
pub mod orphans;
pub mod rules;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::error::TuskError;
use crate::output::Output;
use crate::postgres::PgServer;
use crate::storage::Storage;

pub use rules::CacheSemantics;

/// What to prune and how.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Cached remote media older than this many days.
    pub media_cache_days: Option<u32>,
    pub media_cache_semantics: CacheSemantics,
    /// Remote avatars/headers of accounts not seen for this many days.
    pub profiles_days: Option<u32>,
    pub avatars: bool,
    pub headers: bool,
    /// Prune profiles even of accounts in a follow relationship.
    pub include_follows: bool,
    /// Preview card images older than this many days.
    pub preview_cards_days: Option<u32>,
    /// Attachments never posted, older than a day: rows and files.
    pub unattached_media: bool,
    /// Files with no database row.
    pub orphans: bool,
    /// Orphan candidates younger than this are kept: Mastodon writes a file
    /// before the transaction that records it commits.
    pub orphans_min_age: Duration,
    /// Resume an orphan scan after this key.
    pub start_after: Option<String>,
    pub dry_run: bool,
    /// Batches in flight (each with its own database session).
    pub concurrency: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Collect every key for the report (`-v` with `--dry-run`).
    pub list_keys: bool,
}

impl PruneOptions {
    pub fn any_rule(&self) -> bool {
        self.media_cache_days.is_some()
            || self.profiles_days.is_some()
            || self.preview_cards_days.is_some()
            || self.unattached_media
            || self.orphans
    }
}

/// What one rule freed (or, in a dry run, would free).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleReport {
    pub rule: String,
    /// Rows whose attachments were cleared (or deleted, for unattached media).
    pub rows: u64,
    /// Keys deleted from storage (every style of every attachment).
    pub files: u64,
    /// Bytes of the originals, as the database records them (tootctl's
    /// figure); for orphans, the listed sizes.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans: Option<orphans::OrphanStats>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub storage: String,
    /// Keys left by an interrupted run and deleted first.
    pub journal_replayed: u64,
    pub rules: Vec<RuleReport>,
    pub seconds: f64,
}

/// Where the media are and how their keys are named.
pub struct MediaStore {
    pub storage: Arc<dyn Storage>,
    /// `S3_KEY_PREFIX`, without slashes at the ends.
    pub key_prefix: Option<String>,
}

impl MediaStore {
    /// The storage key of a key below the media root.
    pub fn key(&self, relative: &str) -> String {
        crate::media::key_for(self.key_prefix.as_deref(), relative)
    }
}

pub async fn run(
    server: &dyn PgServer,
    database: &str,
    store: &MediaStore,
    opts: &PruneOptions,
    output: &Output,
) -> Result<PruneReport> {
    let started = Instant::now();
    let control = server.connect(database).await?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        storage: store.storage.describe(),
        journal_replayed: 0,
        rules: Vec::new(),
        seconds: 0.0,
    };
    if !opts.dry_run {
        journal::lock(&control).await?;
        journal::create(&control).await?;
        report.journal_replayed = journal::replay(&control, store).await?;
        if report.journal_replayed > 0 {
            tracing::info!(
                "deleted {} files left by an interrupted run",
                report.journal_replayed
            );
        }
    }

    let schema = rules::Schema::read(&control).await?;
    let selected = rules::selected(opts, &schema)?;
    let mut sessions = Vec::new();
    if !selected.is_empty() {
        for _ in 0..opts.concurrency.max(1) {
            sessions.push(server.connect(database).await?);
        }
    }
    let pool = rules::SessionPool::new(sessions);

    for rule in selected {
        let rule_started = Instant::now();
        let mut rule_report = rules::apply(&rule, &control, &pool, store, opts, output).await?;
        rule_report.seconds = rule_started.elapsed().as_secs_f64();
        log_rule(&rule_report, opts.dry_run);
        report.rules.push(rule_report);
    }
    if opts.orphans {
        let rule_started = Instant::now();
        let mut rule_report = orphans::apply(&control, &schema, store, opts, output).await?;
        rule_report.seconds = rule_started.elapsed().as_secs_f64();
        log_rule(&rule_report, opts.dry_run);
        report.rules.push(rule_report);
    }

    if !opts.dry_run {
        journal::drop_if_empty(&control).await?;
        journal::unlock(&control).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn log_rule(report: &RuleReport, dry_run: bool) {
    tracing::info!(
        "{}: {} {} rows, {} files, {} bytes in {:.1}s",
        report.rule,
        if dry_run { "would free" } else { "freed" },
        report.rows,
        report.files,
        report.bytes,
        report.seconds
    );
}

/// Checks the rule values before anything runs.
pub fn validate(opts: &PruneOptions) -> Result<()> {
    if !opts.any_rule() {
        return Err(TuskError::usage(
            "no rule to apply: set prune.media_cache_days, profiles_days, preview_cards_days, \
             unattached_media or orphans in tusk.yaml, or pass the matching flags (see tusk prune --help)",
        ));
    }
    for (name, days) in [
        ("media_cache_days", opts.media_cache_days),
        ("profiles_days", opts.profiles_days),
        ("preview_cards_days", opts.preview_cards_days),
    ] {
        if days == Some(0) {
            return Err(TuskError::usage(format!(
                "{name} must be at least 1 (0 would drop files Mastodon is still fetching)"
            )));
        }
    }
    if opts.profiles_days.is_some() && !opts.avatars && !opts.headers {
        return Err(TuskError::usage(
            "profiles_days needs avatars, headers or both set to true",
        ));
    }
    if opts.start_after.is_some() && !opts.orphans {
        return Err(TuskError::usage(
            "--start-after only applies to the orphans rule",
        ));
    }
    Ok(())
}
