//! Sidekiq's state as Sidekiq itself keeps it in Redis, read the way its own
//! API (lib/sidekiq/api.rb) reads it, without writing anything:
//!
//! - `queues`: a set of queue names; `queue:<name>`: a list of job JSON,
//!   pushed on the left, so the oldest job is the last element;
//! - `schedule`, `retry`, `dead`: sorted sets of jobs;
//! - `processes`: a set of process identities; each identity is a hash with
//!   `info` (JSON: hostname, concurrency, queues, ...), `busy` (threads
//!   working now) and `beat`. The hash expires a minute after the process's
//!   last heartbeat, so an identity without `info` is a dead process that
//!   nobody has pruned yet and is not counted (Sidekiq's `ProcessSet#each`);
//! - `stat:processed`, `stat:failed`: counters since the Redis was new.
//!
//! With redis-namespace (Mastodon before 4.4 with `REDIS_NAMESPACE`) every
//! key, the process hashes included, is prefixed `<namespace>:`; the
//! [`RedisSession`] adds the prefix.
//!
//! A queue's latency is the age of its oldest job, as `Sidekiq::Queue#latency`
//! computes it: the job's `enqueued_at` is float seconds since the epoch up
//! to Sidekiq 7 and integer milliseconds from Sidekiq 8; an empty queue, or a
//! job without `enqueued_at`, has latency 0.

use anyhow::Result;
use serde::Serialize;

use crate::redis::RedisSession;

/// One queue: how many jobs wait and how long the oldest has waited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueState {
    pub name: String,
    pub size: u64,
    pub latency_seconds: f64,
}

/// Sidekiq at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SidekiqState {
    /// Every queue in `queues`, by name.
    pub queues: Vec<QueueState>,
    /// Jobs waiting for their time (`schedule`).
    pub scheduled: u64,
    /// Failed jobs waiting for a retry (`retry`).
    pub retries: u64,
    /// Jobs that used up their retries (`dead`).
    pub dead: u64,
    /// Live Sidekiq processes (with a heartbeat in the last minute).
    pub processes: u64,
    /// Threads working on a job now, over all live processes.
    pub busy: u64,
    /// Threads of all live processes (their `concurrency`).
    pub threads: u64,
    /// Jobs processed and failed since the Redis was new (`stat:*`).
    pub processed_total: u64,
    pub failed_total: u64,
}

impl SidekiqState {
    /// The queue whose oldest job has waited longest.
    pub fn slowest_queue(&self) -> Option<&QueueState> {
        self.queues
            .iter()
            .max_by(|a, b| a.latency_seconds.total_cmp(&b.latency_seconds))
    }

    pub fn enqueued(&self) -> u64 {
        self.queues.iter().map(|q| q.size).sum()
    }
}

/// Reads Sidekiq's state; `now_ms` is the wall clock in milliseconds since
/// the epoch, against which latencies are measured.
pub async fn read(session: &mut RedisSession, now_ms: i64) -> Result<SidekiqState> {
    let mut names: Vec<String> = session
        .query(redis::cmd("SMEMBERS").arg(session.key("queues")))
        .await?;
    names.sort();

    let mut queues_pipe = redis::pipe();
    for name in &names {
        let key = session.key(&format!("queue:{name}"));
        queues_pipe.cmd("LLEN").arg(&key);
        queues_pipe.cmd("LINDEX").arg(&key).arg(-1);
    }
    let answers: Vec<redis::Value> = if names.is_empty() {
        Vec::new()
    } else {
        session.pipeline(&queues_pipe).await?
    };
    let mut queues = Vec::with_capacity(names.len());
    for (name, pair) in names.into_iter().zip(answers.chunks(2)) {
        let size: u64 = redis::from_redis_value_ref(&pair[0]).unwrap_or(0);
        let oldest: Option<String> = redis::from_redis_value_ref(&pair[1]).unwrap_or(None);
        queues.push(QueueState {
            name,
            size,
            latency_seconds: oldest.map_or(0.0, |job| latency_seconds(&job, now_ms)),
        });
    }

    let mut counts = redis::pipe();
    for set in ["schedule", "retry", "dead"] {
        counts.cmd("ZCARD").arg(session.key(set));
    }
    for counter in ["stat:processed", "stat:failed"] {
        counts.cmd("GET").arg(session.key(counter));
    }
    counts.cmd("SMEMBERS").arg(session.key("processes"));
    let (scheduled, retries, dead, processed, failed, identities): (
        u64,
        u64,
        u64,
        Option<String>,
        Option<String>,
        Vec<String>,
    ) = session.pipeline(&counts).await?;

    let (mut processes, mut busy, mut threads) = (0, 0, 0);
    if !identities.is_empty() {
        let mut beats = redis::pipe();
        for identity in &identities {
            beats
                .cmd("HMGET")
                .arg(session.key(identity))
                .arg("info")
                .arg("busy");
        }
        let rows: Vec<(Option<String>, Option<String>)> = session.pipeline(&beats).await?;
        for (info, busy_now) in rows {
            // Expired hash: the process stopped beating.
            let Some(info) = info else { continue };
            processes += 1;
            busy += busy_now
                .and_then(|b| b.trim().parse::<u64>().ok())
                .unwrap_or(0);
            threads += serde_json::from_str::<serde_json::Value>(&info)
                .ok()
                .and_then(|info| info.get("concurrency")?.as_u64())
                .unwrap_or(0);
        }
    }

    let counter = |value: Option<String>| value.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    Ok(SidekiqState {
        queues,
        scheduled,
        retries,
        dead,
        processes,
        busy,
        threads,
        processed_total: counter(processed),
        failed_total: counter(failed),
    })
}

/// The age in seconds of a job enqueued as `job` says, at `now_ms`: a
/// float `enqueued_at` is seconds (Sidekiq up to 7), an integer one is
/// milliseconds (Sidekiq 8); no `enqueued_at`, or a job that is not JSON,
/// is 0, as Sidekiq's stats read it.
pub fn latency_seconds(job: &str, now_ms: i64) -> f64 {
    let Ok(job) = serde_json::from_str::<serde_json::Value>(job) else {
        return 0.0;
    };
    let Some(serde_json::Value::Number(enqueued_at)) = job.get("enqueued_at") else {
        return 0.0;
    };
    if enqueued_at.is_f64() {
        let seconds = enqueued_at.as_f64().unwrap_or(0.0);
        now_ms as f64 / 1000.0 - seconds
    } else {
        let millis = enqueued_at
            .as_i64()
            .or_else(|| enqueued_at.as_u64().map(|v| v as i64))
            .unwrap_or(now_ms);
        (now_ms - millis) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_796_612_400_000;

    #[test]
    fn latency_reads_both_formats_of_enqueued_at() {
        // Sidekiq 7: float seconds.
        let seven = r#"{"class":"PushUpdateWorker","enqueued_at":1796612280.5}"#;
        assert_eq!(latency_seconds(seven, NOW_MS), 119.5);
        // Sidekiq 8: integer milliseconds.
        let eight = r#"{"class":"PushUpdateWorker","enqueued_at":1796612399250}"#;
        assert_eq!(latency_seconds(eight, NOW_MS), 0.75);
        // A float that happens to be whole is still seconds.
        let whole = r#"{"enqueued_at":1796612340.0}"#;
        assert_eq!(latency_seconds(whole, NOW_MS), 60.0);
    }

    #[test]
    fn a_job_without_a_time_or_json_has_no_latency() {
        assert_eq!(latency_seconds(r#"{"class":"X"}"#, NOW_MS), 0.0);
        assert_eq!(latency_seconds("not json", NOW_MS), 0.0);
        assert_eq!(latency_seconds(r#"{"enqueued_at":"soon"}"#, NOW_MS), 0.0);
    }

    #[test]
    fn the_slowest_queue_is_the_one_with_the_oldest_job() {
        let queue = |name: &str, latency_seconds| QueueState {
            name: name.into(),
            size: 1,
            latency_seconds,
        };
        let state = SidekiqState {
            queues: vec![
                queue("default", 3.0),
                queue("pull", 900.0),
                queue("push", 1.0),
            ],
            scheduled: 0,
            retries: 0,
            dead: 0,
            processes: 1,
            busy: 0,
            threads: 5,
            processed_total: 0,
            failed_total: 0,
        };
        assert_eq!(state.slowest_queue().unwrap().name, "pull");
        assert_eq!(state.enqueued(), 3);
    }
}
