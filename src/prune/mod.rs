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
    /// User archives (`backups` rows and their files) older than this many
    /// days, as Mastodon's BackupsVacuum.
    pub user_archives_days: Option<u32>,
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
            || self.user_archives_days.is_some()
            || self.orphans
    }
}

/// The rules and their knobs as one source gives them: the `prune:` section
/// of tusk.yaml, or the command line. `None` means "not said here".
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSettings {
    pub media_cache_days: Option<u32>,
    pub media_cache_semantics: Option<CacheSemantics>,
    pub profiles_days: Option<u32>,
    pub avatars: Option<bool>,
    pub headers: Option<bool>,
    pub include_follows: Option<bool>,
    pub preview_cards_days: Option<u32>,
    pub unattached_media: Option<bool>,
    pub user_archives_days: Option<u32>,
    pub orphans: Option<bool>,
    pub orphans_min_age_minutes: Option<u64>,
    pub concurrency: Option<usize>,
    pub batch_size: Option<usize>,
}

impl PruneSettings {
    fn names_a_rule(&self) -> bool {
        self.media_cache_days.is_some()
            || self.profiles_days.is_some()
            || self.preview_cards_days.is_some()
            || self.unattached_media == Some(true)
            || self.user_archives_days.is_some()
            || self.orphans == Some(true)
    }
}

/// The prune rules by name, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneRule {
    MediaCache,
    Profiles,
    PreviewCards,
    UnattachedMedia,
    UserArchives,
    Orphans,
}

impl PruneRule {
    /// The names `--only` accepts.
    pub const CHOICES: [(&'static str, &'static str); 6] = [
        ("media_cache", ""),
        ("profiles", ""),
        ("preview_cards", ""),
        ("unattached_media", ""),
        ("user_archives", ""),
        ("orphans", ""),
    ];
}

/// What a single run asks for besides the rules.
#[derive(Debug, Default, Clone)]
pub struct RunChoices {
    /// Run only these of the chosen rules (all when empty).
    pub only: Vec<PruneRule>,
    pub start_after: Option<String>,
    pub dry_run: bool,
    pub list_keys: bool,
}

impl PruneOptions {
    /// The command line over the config file: rules named on the command
    /// line replace the configured rules; every other setting falls back
    /// one by one, then to tootctl's defaults.
    pub fn resolve(file: &PruneSettings, flags: &PruneSettings, run: RunChoices) -> Self {
        let rules = if flags.names_a_rule() { flags } else { file };
        let only = |rule: PruneRule| run.only.is_empty() || run.only.contains(&rule);
        // The command line's choice replaces the file's; neither named means
        // both, as `tootctl media remove --prune-profiles`.
        let profile_source = match (flags.avatars, flags.headers) {
            (None, None) => file,
            _ => flags,
        };
        let (avatars, headers) = match (profile_source.avatars, profile_source.headers) {
            (None, None) => (true, true),
            (avatars, headers) => (avatars.unwrap_or(false), headers.unwrap_or(false)),
        };
        PruneOptions {
            media_cache_days: rules
                .media_cache_days
                .filter(|_| only(PruneRule::MediaCache)),
            media_cache_semantics: flags
                .media_cache_semantics
                .or(file.media_cache_semantics)
                .unwrap_or(CacheSemantics::Tootctl),
            profiles_days: rules.profiles_days.filter(|_| only(PruneRule::Profiles)),
            avatars,
            headers,
            include_follows: flags
                .include_follows
                .or(file.include_follows)
                .unwrap_or(false),
            preview_cards_days: rules
                .preview_cards_days
                .filter(|_| only(PruneRule::PreviewCards)),
            unattached_media: rules.unattached_media.unwrap_or(false)
                && only(PruneRule::UnattachedMedia),
            user_archives_days: rules
                .user_archives_days
                .filter(|_| only(PruneRule::UserArchives)),
            orphans: rules.orphans.unwrap_or(false) && only(PruneRule::Orphans),
            orphans_min_age: Duration::from_secs(
                60 * flags
                    .orphans_min_age_minutes
                    .or(file.orphans_min_age_minutes)
                    .unwrap_or(60),
            ),
            start_after: run.start_after,
            dry_run: run.dry_run,
            concurrency: flags.concurrency.or(file.concurrency).unwrap_or(4).max(1),
            batch_size: flags.batch_size.or(file.batch_size).unwrap_or(1000).max(1),
            list_keys: run.list_keys,
        }
    }

    /// The chosen rules, as a person would name them.
    pub fn describe_rules(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.unattached_media {
            names.push("unattached media".to_string());
        }
        if let Some(days) = self.media_cache_days {
            names.push(format!("media cached over {days} days"));
        }
        if let Some(days) = self.profiles_days {
            names.push(format!("profiles unseen for {days} days"));
        }
        if let Some(days) = self.preview_cards_days {
            names.push(format!("preview cards over {days} days"));
        }
        if let Some(days) = self.user_archives_days {
            names.push(format!("user archives over {days} days"));
        }
        if self.orphans {
            names.push("orphaned files".to_string());
        }
        names
    }
}

/// What one rule freed (or, in a dry run, would free).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleReport {
    pub rule: String,
    /// Rows whose attachments were cleared (or deleted: unattached media,
    /// user archives).
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
             unattached_media, user_archives_days or orphans in tusk.yaml, or pass the matching flags (see tusk prune --help)",
        ));
    }
    for (name, days) in [
        ("media_cache_days", opts.media_cache_days),
        ("profiles_days", opts.profiles_days),
        ("preview_cards_days", opts.preview_cards_days),
        ("user_archives_days", opts.user_archives_days),
    ] {
        if days == Some(0) {
            return Err(TuskError::usage(format!(
                "{name} must be at least 1 (0 would drop files Mastodon is still fetching or writing)"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> PruneSettings {
        PruneSettings {
            media_cache_days: Some(7),
            preview_cards_days: Some(30),
            profiles_days: Some(60),
            headers: Some(true),
            concurrency: Some(8),
            ..Default::default()
        }
    }

    #[test]
    fn without_rule_flags_the_configured_rules_run() {
        let opts = PruneOptions::resolve(&file(), &PruneSettings::default(), RunChoices::default());
        assert_eq!(opts.media_cache_days, Some(7));
        assert_eq!(opts.preview_cards_days, Some(30));
        assert_eq!(opts.profiles_days, Some(60));
        assert!(!opts.orphans && !opts.unattached_media);
        assert_eq!((opts.avatars, opts.headers), (false, true));
        assert_eq!((opts.concurrency, opts.batch_size), (8, 1000));
        assert_eq!(opts.orphans_min_age, Duration::from_secs(3600));
    }

    #[test]
    fn rule_flags_replace_every_configured_rule_but_knobs_fall_back() {
        let flags = PruneSettings {
            orphans: Some(true),
            batch_size: Some(10),
            ..Default::default()
        };
        let opts = PruneOptions::resolve(&file(), &flags, RunChoices::default());
        assert_eq!(opts.media_cache_days, None);
        assert_eq!(opts.preview_cards_days, None);
        assert_eq!(opts.profiles_days, None);
        assert!(opts.orphans);
        assert_eq!((opts.concurrency, opts.batch_size), (8, 10));
    }

    #[test]
    fn user_archives_are_a_rule_of_their_own() {
        let flags = PruneSettings {
            user_archives_days: Some(7),
            ..Default::default()
        };
        let opts = PruneOptions::resolve(&file(), &flags, RunChoices::default());
        assert_eq!(opts.user_archives_days, Some(7));
        assert_eq!(
            opts.media_cache_days, None,
            "a rule flag replaces the file's rules"
        );
        assert!(opts.any_rule());
        let only_cards = RunChoices {
            only: vec![PruneRule::PreviewCards],
            ..Default::default()
        };
        let with_archives = PruneSettings {
            user_archives_days: Some(7),
            ..file()
        };
        let opts = PruneOptions::resolve(&with_archives, &PruneSettings::default(), only_cards);
        assert_eq!(opts.user_archives_days, None);
        let zero = PruneOptions::resolve(
            &PruneSettings {
                user_archives_days: Some(0),
                ..Default::default()
            },
            &PruneSettings::default(),
            RunChoices::default(),
        );
        assert!(validate(&zero).is_err());
    }

    #[test]
    fn only_narrows_the_chosen_rules() {
        let run = RunChoices {
            only: vec![PruneRule::PreviewCards],
            ..Default::default()
        };
        let opts = PruneOptions::resolve(&file(), &PruneSettings::default(), run);
        assert_eq!(opts.preview_cards_days, Some(30));
        assert_eq!(opts.media_cache_days, None);
        assert_eq!(opts.profiles_days, None);
    }

    #[test]
    fn profile_parts_from_the_command_line_replace_the_files() {
        let flags = PruneSettings {
            avatars: Some(true),
            ..Default::default()
        };
        let opts = PruneOptions::resolve(&file(), &flags, RunChoices::default());
        assert_eq!((opts.avatars, opts.headers), (true, false));
        let none = PruneOptions::resolve(
            &PruneSettings::default(),
            &PruneSettings::default(),
            RunChoices::default(),
        );
        assert_eq!((none.avatars, none.headers), (true, true));
    }

    #[test]
    fn rule_names_are_the_ones_only_accepts() {
        for (name, _) in PruneRule::CHOICES {
            let parsed: PruneRule =
                serde_yaml_ng::from_str(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(format!("{parsed:?}").to_lowercase().replace('_', "") == name.replace('_', ""));
        }
    }
}
