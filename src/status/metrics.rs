//! A status report in Prometheus' text exposition format: for
//! node_exporter's textfile collector (`--metrics-file`) and for
//! `--listen`'s `/metrics`. Names follow Prometheus' conventions (base
//! units: `_seconds`, `_bytes`; counters end in `_total`); a source that
//! could not be read leaves its families out and says so in its `_up`
//! gauge. The backup families are those `tusk backup` writes
//! ([`crate::metrics`]), so one dashboard reads either file.

use std::fmt::Write as _;

use super::StatusReport;
use crate::metrics::{DestinationMetrics, escape_label};

/// One family being written.
struct Writer {
    text: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
                .collect();
            format!("{{{}}}", pairs.join(","))
        };
        let _ = writeln!(self.text, "{name}{labels} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// The report as metrics.
pub fn render(report: &StatusReport) -> String {
    let mut out = Writer {
        text: String::new(),
    };

    out.gauge(
        "tusk_status_state",
        "The worst check's state: 0 ok, 1 warning, 2 critical, 3 unknown.",
        report.state.exit_code() as f64,
    );
    out.family(
        "tusk_status_check_state",
        "gauge",
        "Each check's state: 0 ok, 1 warning, 2 critical, 3 unknown.",
    );
    for check in &report.checks {
        out.sample(
            "tusk_status_check_state",
            &[("check", &check.name)],
            check.state.exit_code() as f64,
        );
    }
    out.gauge(
        "tusk_status_timestamp_seconds",
        "When these figures were read (Unix time).",
        report.checked_at.timestamp_millis() as f64 / 1000.0,
    );

    let redis_checked = report.checks.iter().any(|c| c.name.starts_with("sidekiq_"));
    if let Some(sidekiq) = &report.sidekiq {
        out.family(
            "tusk_sidekiq_queue_size",
            "gauge",
            "Jobs waiting in each Sidekiq queue.",
        );
        for queue in &sidekiq.queues {
            out.sample(
                "tusk_sidekiq_queue_size",
                &[("queue", &queue.name)],
                queue.size as f64,
            );
        }
        out.family(
            "tusk_sidekiq_queue_latency_seconds",
            "gauge",
            "Age of the oldest job in each Sidekiq queue (0 when empty).",
        );
        for queue in &sidekiq.queues {
            out.sample(
                "tusk_sidekiq_queue_latency_seconds",
                &[("queue", &queue.name)],
                queue.latency_seconds,
            );
        }
        out.gauge(
            "tusk_sidekiq_scheduled_jobs",
            "Jobs in Sidekiq's scheduled set.",
            sidekiq.scheduled as f64,
        );
        out.gauge(
            "tusk_sidekiq_retry_jobs",
            "Jobs in Sidekiq's retry set.",
            sidekiq.retries as f64,
        );
        out.gauge(
            "tusk_sidekiq_dead_jobs",
            "Jobs in Sidekiq's dead set.",
            sidekiq.dead as f64,
        );
        out.gauge(
            "tusk_sidekiq_processes",
            "Sidekiq processes with a heartbeat in the last minute.",
            sidekiq.processes as f64,
        );
        out.gauge(
            "tusk_sidekiq_busy_threads",
            "Sidekiq threads working on a job now.",
            sidekiq.busy as f64,
        );
        out.gauge(
            "tusk_sidekiq_threads",
            "Threads of all live Sidekiq processes (their concurrency).",
            sidekiq.threads as f64,
        );
        out.family(
            "tusk_sidekiq_processed_jobs_total",
            "counter",
            "Jobs Sidekiq has processed (stat:processed).",
        );
        out.sample(
            "tusk_sidekiq_processed_jobs_total",
            &[],
            sidekiq.processed_total as f64,
        );
        out.family(
            "tusk_sidekiq_failed_jobs_total",
            "counter",
            "Jobs that failed in Sidekiq (stat:failed).",
        );
        out.sample(
            "tusk_sidekiq_failed_jobs_total",
            &[],
            sidekiq.failed_total as f64,
        );
    }
    if redis_checked || report.redis.is_some() {
        out.gauge(
            "tusk_redis_up",
            "1 when Sidekiq's Redis answered.",
            if report.redis.is_some() { 1.0 } else { 0.0 },
        );
    }
    if let Some(redis) = &report.redis {
        out.gauge(
            "tusk_redis_used_memory_bytes",
            "Memory Redis uses.",
            redis.used_memory_bytes as f64,
        );
        out.gauge(
            "tusk_redis_max_memory_bytes",
            "Redis' maxmemory (0: no limit).",
            redis.max_memory_bytes as f64,
        );
    }

    let postgres_checked = report
        .checks
        .iter()
        .any(|c| c.name.starts_with("postgres_"));
    if postgres_checked || report.postgres.is_some() {
        out.gauge(
            "tusk_postgres_up",
            "1 when PostgreSQL answered.",
            if report.postgres.is_some() { 1.0 } else { 0.0 },
        );
    }
    if let Some(postgres) = &report.postgres {
        out.gauge(
            "tusk_postgres_database_size_bytes",
            "Size of Mastodon's database.",
            postgres.size_bytes as f64,
        );
        out.gauge(
            "tusk_postgres_connections",
            "Sessions open on the server.",
            postgres.connections as f64,
        );
        out.gauge(
            "tusk_postgres_max_connections",
            "The server's max_connections.",
            postgres.max_connections as f64,
        );
        out.gauge(
            "tusk_postgres_longest_transaction_seconds",
            "Age of the oldest open transaction (0: none).",
            postgres
                .longest_transaction
                .as_ref()
                .map_or(0.0, |t| t.seconds),
        );
        if let Some(retention) = &postgres.content_cache_retention {
            out.gauge(
                "tusk_mastodon_content_cache_retention_days",
                "Mastodon's content cache retention period (0: not set).",
                retention.days.unwrap_or(0) as f64,
            );
        }
    }

    if !report.backups.is_empty() {
        let destinations: Vec<DestinationMetrics> = report
            .backups
            .iter()
            .map(|summary| DestinationMetrics {
                name: summary.name.clone(),
                sets: summary.sets,
                last_success: summary.newest.as_ref().map(|s| s.finished_at),
                last_duration_seconds: summary.newest.as_ref().map(|s| s.duration_seconds),
                last_bytes: summary.newest.as_ref().map(|s| s.bytes),
                last_failure: summary.last_failure.as_ref().map(|f| f.at),
                last_verify_success: summary.last_verify_success,
            })
            .collect();
        out.text.push_str(&crate::metrics::render(&destinations));
        out.family(
            "tusk_verify_last_restore_bytes",
            "gauge",
            "Largest database size of the newest passing test restore (0: none measured).",
        );
        for summary in &report.backups {
            let bytes = summary
                .newest_verified
                .as_ref()
                .and_then(|v| v.restore_bytes)
                .unwrap_or(0);
            out.sample(
                "tusk_verify_last_restore_bytes",
                &[("destination", &summary.name)],
                bytes as f64,
            );
        }
    }
    if !report.disk.is_empty() {
        out.family(
            "tusk_disk_free_bytes",
            "gauge",
            "Free space at the backup and temporary directories.",
        );
        for space in &report.disk {
            let path = space.path.display().to_string();
            out.sample(
                "tusk_disk_free_bytes",
                &[("role", &space.role), ("path", &path)],
                space.free_bytes as f64,
            );
        }
    }
    if let Some(bytes) = report.media.as_ref().and_then(|m| m.stored_bytes) {
        let store = report.media.as_ref().map_or("", |m| m.store.as_str());
        out.family(
            "tusk_media_stored_bytes",
            "gauge",
            "Size of the media as last measured.",
        );
        out.sample("tusk_media_stored_bytes", &[("store", store)], bytes as f64);
    }
    out.text
}
