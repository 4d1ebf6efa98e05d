//! `tusk status`: is the instance healthy? One look at Mastodon's app
//! containers, PostgreSQL, Sidekiq's Redis, the backup sets and the disk,
//! each judged ok / warning / critical against thresholds
//! ([`thresholds::Thresholds`]), with the facts behind each judgement.
//!
//! The facts are gathered concurrently and each source has a deadline, so
//! one slow server makes its checks `unknown` and never hangs the report
//! (`--listen` serves one report per scrape). Nothing is written to any
//! server: Sidekiq's state is read as its own API reads it, without the
//! clean-up of dead processes its API does on the side.

pub mod backups;
pub mod facts;
pub mod metrics;
pub mod serve;
pub mod thresholds;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::docker::services::ServiceContainer;
use crate::mastodon::sidekiq::{self, SidekiqState};
use crate::output::human_bytes;
use crate::postgres::PgServer;
use crate::redis::RedisTarget;
use backups::{DestinationSummary, DiskSpace, SetsListing};
use facts::{MastodonFacts, MediaFacts, PostgresFacts, RedisFacts};
pub use thresholds::{Limits, State, StatusSettings, Thresholds};

/// Every check `status` knows, in the order it reports them.
pub const CHECKS: [(&str, &str); 15] = [
    (
        "mastodon",
        "Mastodon's version and app containers (Docker mode)",
    ),
    (
        "postgres_version",
        "PostgreSQL's version against Mastodon's requirements",
    ),
    (
        "postgres_connections",
        "Sessions in use against max_connections",
    ),
    ("postgres_transactions", "The longest open transaction"),
    (
        "redis_version",
        "Redis' version against Mastodon's requirements",
    ),
    (
        "redis_memory",
        "Redis' memory against maxmemory, and its eviction policy",
    ),
    (
        "sidekiq_latency",
        "Each queue's latency (age of its oldest job)",
    ),
    ("sidekiq_processes", "Live Sidekiq processes"),
    ("sidekiq_retries", "Jobs in the retry set"),
    ("sidekiq_dead", "Jobs in the dead set"),
    (
        "backups",
        "Age of the newest backup set of each destination, the last failure",
    ),
    ("verify", "Age of the newest verified set"),
    (
        "disk",
        "Free space for a restore at the backup and temporary directories",
    ),
    ("media", "Size of the media (local folder or bucket)"),
    (
        "content_retention",
        "Mastodon's content and media cache retention settings",
    ),
];

/// Where the facts come from, made by the caller from the settings. A
/// source that could not be made (nothing configured, a container that is
/// not running) makes its checks `unknown` with the reason.
pub struct StatusSources {
    pub database: Result<Box<dyn PgServer>>,
    pub database_name: String,
    pub sidekiq_redis: Result<RedisTarget>,
    /// The deadline of each Redis command.
    pub redis_timeout: Duration,
    pub destinations: Vec<Box<dyn SetsListing>>,
    /// Where backups are written and a restore stages its copy.
    pub backup_dir: PathBuf,
    pub temp_dir: PathBuf,
    /// Docker mode: the app containers' states, read when asked.
    pub app_containers: Option<AppContainers>,
    pub media: MediaSource,
}

/// Reads the app containers' states (Docker mode).
pub type AppContainers = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<ServiceContainer>>> + Send>>
        + Send
        + Sync,
>;

/// How the media's size is known.
pub struct MediaSource {
    /// `local` or `s3`.
    pub store: String,
    pub location: String,
    /// The local folder, measured by walking it when `walk` is set.
    pub local_root: Option<PathBuf>,
    /// The last `tusk media usage` record.
    pub record: Option<crate::media::usage::UsageRecord>,
}

/// How `status` runs.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub thresholds: Thresholds,
    /// Only these checks (`--check`); all when empty.
    pub only: Vec<String>,
    /// The deadline of each source (a server connection and its queries).
    pub timeout: Duration,
    /// Measure a local media folder by walking it (not per scrape).
    pub walk_media: bool,
}

/// One judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub state: State,
    pub message: String,
}

/// Everything `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub state: State,
    pub checked_at: DateTime<Utc>,
    pub checks: Vec<Check>,
    pub mastodon: Option<MastodonFacts>,
    pub postgres: Option<PostgresFacts>,
    pub redis: Option<RedisFacts>,
    pub sidekiq: Option<SidekiqState>,
    pub backups: Vec<DestinationSummary>,
    pub disk: Vec<DiskSpace>,
    pub media: Option<MediaFacts>,
    pub thresholds: Thresholds,
}

impl StatusReport {
    /// The Nagios exit status of the whole report.
    pub fn exit_code(&self) -> u8 {
        self.state.exit_code()
    }
}

/// What each check needs to read.
fn needs(only: &[String], source: &[&str]) -> bool {
    only.is_empty() || only.iter().any(|name| source.contains(&name.as_str()))
}

const POSTGRES_CHECKS: [&str; 5] = [
    "mastodon",
    "postgres_version",
    "postgres_connections",
    "postgres_transactions",
    "content_retention",
];
const REDIS_CHECKS: [&str; 6] = [
    "redis_version",
    "redis_memory",
    "sidekiq_latency",
    "sidekiq_processes",
    "sidekiq_retries",
    "sidekiq_dead",
];
const BACKUP_CHECKS: [&str; 3] = ["backups", "verify", "disk"];

/// Runs the checks.
pub async fn run(sources: &StatusSources, opts: &StatusOptions) -> StatusReport {
    let now = Utc::now();
    let timeout = opts.timeout;
    let postgres = async {
        if !needs(&opts.only, &POSTGRES_CHECKS) && !needs(&opts.only, &REDIS_CHECKS) {
            return None;
        }
        Some(bounded(timeout, read_postgres(sources)).await)
    };
    let redis = async {
        if !needs(&opts.only, &REDIS_CHECKS) {
            return None;
        }
        Some(bounded(timeout, read_redis(sources, now)).await)
    };
    let containers = async {
        if !needs(
            &opts.only,
            &["mastodon", "postgres_version", "redis_version"],
        ) {
            return None;
        }
        let read = sources.app_containers.as_ref()?;
        Some(bounded(timeout, read()).await)
    };
    let backups = async {
        if !needs(&opts.only, &BACKUP_CHECKS) {
            return Vec::new();
        }
        let mut summaries = Vec::new();
        for destination in &sources.destinations {
            let summary = bounded(timeout, destination.summary()).await;
            summaries.push((destination.name().to_string(), summary));
        }
        summaries
    };
    let media = async {
        if !needs(&opts.only, &["media"]) {
            return None;
        }
        Some(read_media(&sources.media, opts.walk_media).await)
    };
    let (postgres, redis, containers, backups, media) =
        tokio::join!(postgres, redis, containers, backups, media);

    let mut judge = Judge {
        thresholds: &opts.thresholds,
        checks: Vec::new(),
        now,
    };
    let mastodon = judge.mastodon(postgres.as_ref(), containers);
    judge.postgres(postgres.as_ref(), mastodon.as_ref());
    let (redis_facts, sidekiq) = match redis {
        Some(Ok((facts, state))) => (Some(facts), Some(state)),
        Some(Err(err)) => {
            judge.unknown(&REDIS_CHECKS, &format!("{err:#}"));
            (None, None)
        }
        None => (None, None),
    };
    if let Some(facts) = &redis_facts {
        judge.redis(facts, mastodon.as_ref());
    }
    if let Some(state) = &sidekiq {
        judge.sidekiq(state);
    }
    let mut summaries = Vec::new();
    if needs(&opts.only, &BACKUP_CHECKS) {
        for (name, summary) in backups {
            match summary {
                Ok(summary) => summaries.push(summary),
                Err(err) => judge.push(
                    "backups",
                    State::Unknown,
                    format!("{name}: could not read the sets: {err:#}"),
                ),
            }
        }
        judge.backups(&summaries);
        judge.verify(&summaries);
    }
    let disk = if needs(&opts.only, &["disk"]) {
        judge.disk(&summaries, &sources.backup_dir, &sources.temp_dir)
    } else {
        Vec::new()
    };
    if let Some(media) = &media {
        judge.media(media);
    }
    if let Some(Ok(facts)) = &postgres {
        judge.content_retention(facts);
    }

    let mut checks = judge.merge();
    if !opts.only.is_empty() {
        checks.retain(|check| opts.only.contains(&check.name));
    }
    StatusReport {
        state: State::worst(checks.iter().map(|c| c.state)),
        checked_at: now,
        checks,
        postgres: postgres.and_then(Result::ok),
        mastodon,
        redis: redis_facts,
        sidekiq,
        backups: summaries,
        disk,
        media,
        thresholds: opts.thresholds.clone(),
    }
}

/// `work` within `timeout`, else an error saying so.
async fn bounded<T>(timeout: Duration, work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {} s",
                timeout.as_secs_f64()
            ))
        })
}

async fn read_postgres(sources: &StatusSources) -> Result<PostgresFacts> {
    let server = sources
        .database
        .as_ref()
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let session = server.connect(&sources.database_name).await?;
    facts::read_postgres(&session, &sources.database_name).await
}

async fn read_redis(
    sources: &StatusSources,
    now: DateTime<Utc>,
) -> Result<(RedisFacts, SidekiqState)> {
    let target = sources
        .sidekiq_redis
        .as_ref()
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    // The session's deadline bounds each command; the caller's the whole.
    let mut session = target.connect(sources.redis_timeout).await?;
    let facts = facts::read_redis(&mut session).await?;
    let state = sidekiq::read(&mut session, now.timestamp_millis()).await?;
    Ok((facts, state))
}

async fn read_media(source: &MediaSource, walk: bool) -> MediaFacts {
    let mut media = MediaFacts {
        store: source.store.clone(),
        location: source.location.clone(),
        stored_bytes: None,
        stored_files: None,
        measured_at: None,
        source: None,
    };
    if let Some(record) = &source.record {
        media.stored_bytes = Some(record.stored_bytes);
        media.stored_files = Some(record.stored_files);
        media.measured_at = Some(record.measured_at);
        media.source = Some("media usage".into());
    }
    if let (true, Some(root)) = (walk, &source.local_root) {
        if !root.is_dir() {
            media.source = Some(format!("{} is not a directory", root.display()));
            return media;
        }
        let root = root.clone();
        let walked = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || facts::walk_size(&root)),
        )
        .await;
        match walked {
            Ok(Ok(Ok((bytes, files)))) => {
                media.stored_bytes = Some(bytes);
                media.stored_files = Some(files);
                media.measured_at = Some(Utc::now());
                media.source = Some("walk".into());
            }
            Ok(Ok(Err(err))) => tracing::warn!("could not measure the media folder: {err:#}"),
            Ok(Err(err)) => tracing::warn!("could not measure the media folder: {err}"),
            Err(_) => tracing::warn!("measuring the media folder took over a minute; skipped"),
        }
    }
    media
}

/// The judgements made so far.
struct Judge<'a> {
    thresholds: &'a Thresholds,
    checks: Vec<Check>,
    now: DateTime<Utc>,
}

impl Judge<'_> {
    fn push(&mut self, name: &str, state: State, message: String) {
        self.checks.push(Check {
            name: name.to_string(),
            state,
            message,
        });
    }

    fn unknown(&mut self, names: &[&str], why: &str) {
        for name in names {
            self.push(name, State::Unknown, why.to_string());
        }
    }

    /// One check per name, in [`CHECKS`]' order: several judgements of one
    /// name (one per destination) become one, the worst state, messages
    /// joined.
    fn merge(self) -> Vec<Check> {
        let mut merged: Vec<Check> = Vec::new();
        for (name, _) in CHECKS {
            let parts: Vec<&Check> = self.checks.iter().filter(|c| c.name == name).collect();
            if parts.is_empty() {
                continue;
            }
            merged.push(Check {
                name: name.to_string(),
                state: State::worst(parts.iter().map(|c| c.state)),
                message: parts
                    .iter()
                    .map(|c| c.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        merged
    }

    fn mastodon(
        &mut self,
        postgres: Option<&Result<PostgresFacts>>,
        containers: Option<Result<Vec<ServiceContainer>>>,
    ) -> Option<MastodonFacts> {
        let schema_version = match postgres {
            Some(Ok(facts)) => facts.schema_version.clone(),
            _ => None,
        };
        let (containers, container_error) = match containers {
            Some(Ok(found)) => (Some(found), None),
            Some(Err(err)) => (None, Some(format!("{err:#}"))),
            None => (None, None),
        };
        let version = containers
            .as_ref()
            .and_then(|found| found.iter().find_map(|c| facts::version_of_image(&c.image)));
        let facts = MastodonFacts {
            version,
            schema_version,
            containers: containers.clone().unwrap_or_default(),
        };
        let mut said = Vec::new();
        match (&facts.version, &facts.schema_version) {
            (Some(version), _) => said.push(format!("Mastodon {version}")),
            (None, Some(schema)) => said.push(format!("schema {schema}")),
            (None, None) => {}
        }
        let mut state = State::Ok;
        if let Some(error) = container_error {
            state = State::Unknown;
            said.push(format!("containers: {error}"));
        }
        if let Some(found) = &containers {
            if found.is_empty() {
                state = state.max(State::Critical);
                said.push("no app container found".into());
            }
            for container in found {
                let container_state = match container.state.as_str() {
                    "running" if container.status.contains("(unhealthy)") => State::Warning,
                    "running" => State::Ok,
                    _ => State::Critical,
                };
                state = state.max(container_state);
                if container_state != State::Ok {
                    said.push(format!("{} {}", container.name, container.status));
                }
            }
            let up = found.iter().filter(|c| c.state == "running").count();
            said.push(format!("{up}/{} containers up", found.len()));
        }
        match postgres {
            Some(Err(err)) if facts.version.is_none() => {
                self.push("mastodon", State::Unknown, format!("{err:#}"));
                return Some(facts);
            }
            _ => {}
        }
        if said.is_empty() {
            said.push("version unknown (no image tag, no schema_migrations)".into());
        }
        self.push("mastodon", state, said.join(", "));
        Some(facts)
    }

    fn postgres(
        &mut self,
        postgres: Option<&Result<PostgresFacts>>,
        mastodon: Option<&MastodonFacts>,
    ) {
        let facts = match postgres {
            None => return,
            Some(Err(err)) => {
                let why = format!("{err:#}");
                self.unknown(
                    &[
                        "postgres_version",
                        "postgres_connections",
                        "postgres_transactions",
                        "content_retention",
                    ],
                    &why,
                );
                return;
            }
            Some(Ok(facts)) => facts,
        };
        let release = mastodon.and_then(facts::mastodon_release);
        let (major, minor) = (facts.version_num / 10000, facts.version_num % 10000);
        let (state, message) = if major == 14 && minor <= 3 {
            (
                State::Critical,
                format!(
                    "PostgreSQL {}: 14.0 to 14.3 can corrupt indexes and Mastodon 4.3 refuses \
                     them; upgrade to the latest 14.x",
                    facts.version
                ),
            )
        } else if major < 13 {
            let state = match release {
                Some(release) if release >= (4, 4) => State::Critical,
                _ => State::Warning,
            };
            (
                state,
                format!(
                    "PostgreSQL {}: Mastodon 4.4 needs 13 or newer",
                    facts.version
                ),
            )
        } else {
            (State::Ok, format!("PostgreSQL {}", facts.version))
        };
        let size = format!(
            "{message}, database {} {}",
            facts.database,
            human_bytes(facts.size_bytes.max(0) as u64)
        );
        let mut message = size;
        if facts.in_recovery {
            message.push_str(", a standby (read-only)");
        }
        for replica in &facts.replicas {
            message.push_str(&format!(
                ", replica {} {}{}",
                replica
                    .name
                    .clone()
                    .or(replica.client.clone())
                    .unwrap_or_default(),
                replica.state.clone().unwrap_or_default(),
                replica
                    .replay_lag_seconds
                    .map(|lag| format!(" lag {lag:.1} s"))
                    .unwrap_or_default()
            ));
        }
        self.push("postgres_version", state, message);

        let usable = (facts.max_connections - facts.reserved_connections).max(1);
        let percent = facts.connections as f64 * 100.0 / usable as f64;
        self.push(
            "postgres_connections",
            self.thresholds.connections_percent.above(percent),
            format!(
                "{} of {} connections in use ({percent:.0} %; {} reserved for superusers)",
                facts.connections, usable, facts.reserved_connections
            ),
        );

        match &facts.longest_transaction {
            Some(transaction) => self.push(
                "postgres_transactions",
                self.thresholds
                    .transaction_seconds
                    .above(transaction.seconds),
                format!(
                    "longest transaction {:.0} s (pid {}, {}, {})",
                    transaction.seconds,
                    transaction.pid,
                    transaction.user.clone().unwrap_or_default(),
                    transaction.state.clone().unwrap_or_default()
                ),
            ),
            None => self.push(
                "postgres_transactions",
                State::Ok,
                "no open transaction".into(),
            ),
        }
    }

    fn redis(&mut self, facts: &RedisFacts, mastodon: Option<&MastodonFacts>) {
        let release = mastodon.and_then(facts::mastodon_release);
        let at_least_4_4 = release.is_some_and(|release| release >= (4, 4));
        let version = facts::major_minor(&facts.version);
        let mut state = State::Ok;
        let mut message = format!("Redis {} at {}", facts.version, facts.url);
        if version.is_some_and(|v| v < (6, 2)) {
            state = if at_least_4_4 {
                State::Critical
            } else {
                State::Warning
            };
            message.push_str(": Mastodon 4.4 needs 6.2 or newer");
        }
        if let Some(namespace) = &facts.namespace {
            message.push_str(&format!(", namespace {namespace}"));
            if at_least_4_4 {
                state = State::Critical;
                message.push_str(
                    " (Mastodon 4.4 refuses to start with REDIS_NAMESPACE: migrate the keys)",
                );
            }
        }
        self.push("redis_version", state, message);

        let mut message = format!("{} used", human_bytes(facts.used_memory_bytes));
        let mut state = State::Ok;
        if facts.max_memory_bytes > 0 {
            let percent = facts.used_memory_bytes as f64 * 100.0 / facts.max_memory_bytes as f64;
            state = self.thresholds.redis_memory_percent.above(percent);
            message.push_str(&format!(
                " of maxmemory {} ({percent:.0} %)",
                human_bytes(facts.max_memory_bytes)
            ));
        } else {
            message.push_str(", no maxmemory");
        }
        if let Some(policy) = &facts.max_memory_policy
            && policy != "noeviction"
        {
            state = state.max(State::Warning);
            message.push_str(&format!(
                ", maxmemory-policy {policy}: Sidekiq needs noeviction, or Redis may drop \
                     queued jobs"
            ));
        }
        self.push("redis_memory", state, message);
    }

    fn sidekiq(&mut self, state: &SidekiqState) {
        let mut worst = State::Ok;
        let mut late = Vec::new();
        for queue in &state.queues {
            let queue_state = self
                .thresholds
                .queue(&queue.name)
                .above(queue.latency_seconds);
            worst = worst.max(queue_state);
            if queue_state != State::Ok {
                late.push(format!(
                    "{} {:.0} s behind ({} jobs)",
                    queue.name, queue.latency_seconds, queue.size
                ));
            }
        }
        let message = if late.is_empty() {
            match state.slowest_queue() {
                Some(slowest) if slowest.latency_seconds > 0.0 => format!(
                    "{} queues, {} jobs waiting, oldest {:.0} s in {}",
                    state.queues.len(),
                    state.enqueued(),
                    slowest.latency_seconds,
                    slowest.name
                ),
                _ => format!("{} queues, no job waiting", state.queues.len()),
            }
        } else {
            late.join(", ")
        };
        self.push("sidekiq_latency", worst, message);

        let (processes_state, message) = if state.processes == 0 {
            (
                State::Critical,
                "no Sidekiq process has reported in the last minute".to_string(),
            )
        } else {
            (
                State::Ok,
                format!(
                    "{} processes, {} of {} threads busy",
                    state.processes, state.busy, state.threads
                ),
            )
        };
        self.push("sidekiq_processes", processes_state, message);
        self.push(
            "sidekiq_retries",
            self.thresholds.retry_jobs.above(state.retries as f64),
            format!(
                "{} jobs waiting for a retry, {} scheduled",
                state.retries, state.scheduled
            ),
        );
        self.push(
            "sidekiq_dead",
            self.thresholds.dead_jobs.above(state.dead as f64),
            format!("{} dead jobs", state.dead),
        );
    }

    fn age_hours(&self, at: DateTime<Utc>) -> f64 {
        (self.now - at).num_milliseconds() as f64 / 3_600_000.0
    }

    fn backups(&mut self, summaries: &[DestinationSummary]) {
        for summary in summaries {
            let Some(newest) = &summary.newest else {
                self.push(
                    "backups",
                    State::Critical,
                    format!("{}: no backup set in {}", summary.name, summary.location),
                );
                continue;
            };
            let hours = self.age_hours(newest.finished_at);
            let mut state = self.thresholds.backup_max_age_hours.above(hours);
            let mut message = format!(
                "{}: newest set {} is {} old ({})",
                summary.name,
                newest.id,
                human_age(hours),
                human_bytes(newest.bytes)
            );
            if let Some(failure) = &summary.last_failure
                && failure.at > newest.finished_at
            {
                state = state.max(State::Warning);
                message.push_str(&format!(
                    ", the last backup failed {} ago: {}",
                    human_age(self.age_hours(failure.at)),
                    failure.error.as_deref().unwrap_or("no error recorded")
                ));
            }
            self.push("backups", state, message);
        }
        if summaries.is_empty() && !self.checks.iter().any(|c| c.name == "backups") {
            self.push(
                "backups",
                State::Unknown,
                "no destination configured".into(),
            );
        }
    }

    fn verify(&mut self, summaries: &[DestinationSummary]) {
        let newest_good = summaries
            .iter()
            .filter_map(|s| s.newest_verified.as_ref().map(|v| (s, v)))
            .max_by_key(|(_, v)| v.verified_at);
        let last = summaries
            .iter()
            .filter_map(|s| s.last_verification.as_ref().map(|v| (s, v)))
            .max_by_key(|(_, v)| v.verified_at);
        let Some((destination, good)) = newest_good else {
            let message = match last {
                Some((destination, v)) if !v.ok => format!(
                    "no set has passed a test restore; the last verification ({} in {}) failed",
                    v.id, destination.name
                ),
                _ => "no set has passed a test restore: run tusk verify latest".into(),
            };
            self.push("verify", State::Critical, message);
            return;
        };
        let days = self.age_hours(good.verified_at) / 24.0;
        let mut state = self.thresholds.verify_max_age_days.above(days);
        let mut message = format!(
            "{} ({}) verified {} ago{}",
            good.id,
            destination.name,
            human_age(days * 24.0),
            good.restore_seconds
                .map(|s| format!(", restore took {s:.0} s"))
                .unwrap_or_default()
        );
        if let Some((destination, last)) = last
            && !last.ok
            && last.verified_at > good.verified_at
        {
            state = State::Critical;
            message.push_str(&format!(
                "; the last verification, of {} ({}), failed",
                last.id, destination.name
            ));
        }
        self.push("verify", state, message);
    }

    fn disk(
        &mut self,
        summaries: &[DestinationSummary],
        backup_dir: &std::path::Path,
        temp_dir: &std::path::Path,
    ) -> Vec<DiskSpace> {
        // The last measured restore: the largest database a test restore grew.
        let restore_bytes = summaries
            .iter()
            .filter_map(|s| s.newest_verified.as_ref().or(s.last_verification.as_ref()))
            .filter_map(|v| v.restore_bytes)
            .max();
        let mut spaces = Vec::new();
        for (role, path) in [("backup_dir", backup_dir), ("temp_dir", temp_dir)] {
            match backups::disk_space(role, path) {
                Ok(space) => spaces.push(space),
                Err(err) => self.push("disk", State::Unknown, format!("{role}: {err:#}")),
            }
        }
        for space in &spaces {
            let free = human_bytes(space.free_bytes);
            match restore_bytes {
                Some(needed) if needed > 0 => {
                    let ratio = space.free_bytes as f64 / needed as f64;
                    self.push(
                        "disk",
                        self.thresholds.disk_free_ratio.below(ratio),
                        format!(
                            "{} {}: {free} free, a restore needs {} ({ratio:.1}x)",
                            space.role,
                            space.path.display(),
                            human_bytes(needed)
                        ),
                    );
                }
                _ => self.push(
                    "disk",
                    State::Ok,
                    format!(
                        "{} {}: {free} free (no restore measured yet: tusk verify records it)",
                        space.role,
                        space.path.display()
                    ),
                ),
            }
        }
        spaces
    }

    fn media(&mut self, media: &MediaFacts) {
        let message = match (media.stored_bytes, &media.measured_at) {
            (Some(bytes), Some(at)) => format!(
                "{} in {} ({} files, {} {} ago)",
                human_bytes(bytes),
                media.location,
                media.stored_files.unwrap_or(0),
                media.source.as_deref().unwrap_or("measured"),
                human_age(self.age_hours(*at))
            ),
            _ => format!(
                "{} ({}): not measured{}; tusk media usage records it",
                media.location,
                media.store,
                media
                    .source
                    .as_ref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            ),
        };
        self.push("media", State::Ok, message);
    }

    fn content_retention(&mut self, facts: &PostgresFacts) {
        let (Some(content), Some(media)) =
            (&facts.content_cache_retention, &facts.media_cache_retention)
        else {
            self.push(
                "content_retention",
                State::Unknown,
                "no settings table: not a Mastodon database?".into(),
            );
            return;
        };
        let content = match content.days {
            Some(days) => format!(
                "content cache retention {days} days (Mastodon deletes remote posts older than \
                 that)"
            ),
            None => "content cache retention not set (remote posts are kept)".to_string(),
        };
        let media = match media.days {
            Some(days) => format!("media cache retention {days} days"),
            None => "media cache retention not set".to_string(),
        };
        self.push(
            "content_retention",
            State::Ok,
            format!("{content}; {media}"),
        );
    }
}

/// `90 s`, `5 min`, `26 h`, `3 d`.
pub fn human_age(hours: f64) -> String {
    let seconds = hours * 3600.0;
    if seconds < 120.0 {
        format!("{:.0} s", seconds.max(0.0))
    } else if seconds < 2.0 * 3600.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if hours < 72.0 {
        format!("{hours:.0} h")
    } else {
        format!("{:.0} d", hours / 24.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mastodon::sidekiq::QueueState;
    use backups::{FailureFacts, SetFacts, VerificationFacts};

    fn judge(thresholds: &Thresholds) -> Judge<'_> {
        Judge {
            thresholds,
            checks: Vec::new(),
            now: Utc::now(),
        }
    }

    #[test]
    fn queue_latencies_are_judged_per_queue() {
        let thresholds = Thresholds::default();
        let mut judge = judge(&thresholds);
        let queue = |name: &str, latency_seconds| QueueState {
            name: name.into(),
            size: 3,
            latency_seconds,
        };
        judge.sidekiq(&SidekiqState {
            // 200 s is late for default, fine for pull.
            queues: vec![queue("default", 10.0), queue("pull", 200.0)],
            scheduled: 1,
            retries: 5,
            dead: 0,
            processes: 1,
            busy: 2,
            threads: 5,
            processed_total: 0,
            failed_total: 0,
        });
        let checks = judge.merge();
        assert_eq!(checks[0].name, "sidekiq_latency");
        assert_eq!(checks[0].state, State::Ok, "{}", checks[0].message);
        let mut judge = Judge {
            thresholds: &thresholds,
            checks: Vec::new(),
            now: Utc::now(),
        };
        judge.sidekiq(&SidekiqState {
            queues: vec![queue("default", 200.0), queue("pull", 2000.0)],
            scheduled: 0,
            retries: 0,
            dead: 0,
            processes: 0,
            busy: 0,
            threads: 0,
            processed_total: 0,
            failed_total: 0,
        });
        let checks = judge.merge();
        assert_eq!(checks[0].state, State::Critical);
        assert!(
            checks[0].message.contains("pull 2000 s behind"),
            "{}",
            checks[0].message
        );
        assert!(checks[0].message.contains("default 200 s behind"));
        assert_eq!(checks[1].name, "sidekiq_processes");
        assert_eq!(checks[1].state, State::Critical);
    }

    #[test]
    fn backups_are_judged_by_age_and_a_later_failure() {
        let thresholds = Thresholds::default();
        let mut judge = judge(&thresholds);
        let now = judge.now;
        let summary = |name: &str, hours: i64, failed_after: bool| DestinationSummary {
            name: name.into(),
            location: format!("/backups/{name}"),
            sets: 1,
            newest: Some(SetFacts {
                id: format!("{name}-set"),
                finished_at: now - chrono::Duration::hours(hours),
                duration_seconds: 3.0,
                bytes: 1024,
                database_bytes: Some(4096),
            }),
            newest_verified: None,
            last_verification: None,
            last_verify_success: None,
            last_failure: failed_after.then(|| FailureFacts {
                at: now - chrono::Duration::minutes(5),
                error: Some("disk full".into()),
            }),
        };
        judge.backups(&[summary("fresh", 2, false)]);
        judge.backups(&[summary("failed", 2, true)]);
        let checks = judge.merge();
        assert_eq!(checks[0].state, State::Warning);
        assert!(
            checks[0].message.contains("disk full"),
            "{}",
            checks[0].message
        );

        let mut judge = Judge {
            thresholds: &thresholds,
            checks: Vec::new(),
            now,
        };
        judge.backups(&[summary("old", 51, false)]);
        judge.verify(&[summary("old", 51, false)]);
        let checks = judge.merge();
        assert_eq!(checks[0].state, State::Critical);
        assert_eq!(checks[1].name, "verify");
        assert_eq!(checks[1].state, State::Critical, "never verified");

        let verified = |days: i64, ok: bool| VerificationFacts {
            id: "s".into(),
            verified_at: now - chrono::Duration::days(days),
            ok,
            checksums_only: false,
            restore_seconds: Some(12.0),
            restore_bytes: Some(1 << 30),
        };
        let mut with_verify = summary("local", 1, false);
        with_verify.newest_verified = Some(verified(9, true));
        with_verify.last_verification = Some(verified(9, true));
        let mut judge = Judge {
            thresholds: &thresholds,
            checks: Vec::new(),
            now,
        };
        judge.verify(std::slice::from_ref(&with_verify));
        with_verify.last_verification = Some(verified(1, false));
        judge.verify(&[with_verify]);
        let checks = judge.merge();
        assert_eq!(checks[0].state, State::Critical);
        assert!(
            checks[0].message.starts_with("s (local) verified 9 d ago"),
            "{}",
            checks[0].message
        );
        assert!(checks[0].message.contains("failed"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(30.0 / 3600.0), "30 s");
        assert_eq!(human_age(0.5), "30 min");
        assert_eq!(human_age(26.0), "26 h");
        assert_eq!(human_age(24.0 * 9.0), "9 d");
    }
}
