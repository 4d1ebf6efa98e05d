//! Mastodon advice beside the settings: the server version Mastodon
//! accepts, pools that starve Sidekiq's threads, a Sidekiq layout for the
//! CPUs, and when to put PgBouncer in front of the server.

use serde::Serialize;

use crate::mastodon::pools::{ConnectionBudget, ProcessKind};
use crate::tune::ConnectionsInUse;
use crate::tune::pgtune::{Hardware, Setting};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// What it is about: `inputs`, `postgres_version`, `connections`,
    /// `db_pool`, `sidekiq_layout`, `pgbouncer`.
    pub topic: &'static str,
    pub message: String,
}

impl Advice {
    pub fn new(topic: &'static str, message: impl Into<String>) -> Self {
        Advice {
            topic,
            message: message.into(),
        }
    }
}

/// Mastodon 4.3 refuses PostgreSQL 14.0 to 14.3; 4.4 needs 13 or newer.
pub fn version_check(major: u32, version: &str) -> Vec<Advice> {
    let minor: Option<u32> = version
        .split(['.', ' '])
        .nth(1)
        .and_then(|m| m.parse().ok());
    let mut out = Vec::new();
    if major < 13 {
        out.push(Advice::new(
            "postgres_version",
            format!(
                "PostgreSQL {version}: Mastodon 4.4 needs PostgreSQL 13 or newer; upgrade before \
                 upgrading Mastodon"
            ),
        ));
    } else if major == 14 && minor.is_some_and(|m| m < 4) {
        out.push(Advice::new(
            "postgres_version",
            format!(
                "PostgreSQL {version}: Mastodon 4.3 and newer refuse 14.0 to 14.3 (they can \
                 corrupt indexes built concurrently, fixed in 14.4); update to the newest 14.x"
            ),
        ));
    } else {
        out.push(Advice::new(
            "postgres_version",
            format!("PostgreSQL {version}: accepted by Mastodon 4.3 and 4.4"),
        ));
    }
    out
}

/// The recommended `max_connections` against what the server has open now:
/// a limit below it would refuse sessions after the restart.
pub fn connections_in_use(recommended: u32, now: &ConnectionsInUse) -> Advice {
    let ConnectionsInUse {
        open,
        max_connections,
    } = *now;
    if recommended < open {
        Advice::new(
            "connections",
            format!(
                "{open} client connections are open now, more than the {recommended} recommended: \
                 check what holds them (pg_stat_activity) or pass a larger --connections before \
                 applying, or sessions will be refused after the restart"
            ),
        )
    } else {
        Advice::new(
            "connections",
            format!(
                "{open} client connections are open now; max_connections is {max_connections}, \
                 recommended {recommended}"
            ),
        )
    }
}

/// Each process's pool must cover its threads, or threads wait for a
/// connection (Mastodon's docs: DB_POOL at least Sidekiq's `-c`).
pub fn pools(budget: &ConnectionBudget) -> Vec<Advice> {
    let mut out = Vec::new();
    for process in &budget.processes {
        let Some(threads) = process.threads else {
            continue;
        };
        if process.pool < threads {
            let what = match process.kind {
                ProcessKind::Sidekiq => format!("Sidekiq's concurrency {threads}"),
                _ => format!("MAX_THREADS {threads}"),
            };
            out.push(Advice::new(
                "db_pool",
                format!(
                    "{}: DB_POOL {} is below {what}, so threads wait for a connection; set \
                     DB_POOL={threads} for this service",
                    process.service, process.pool
                ),
            ));
        }
    }
    let sidekiqs = budget
        .processes
        .iter()
        .filter(|p| p.kind == ProcessKind::Sidekiq)
        .count();
    if out.is_empty() && sidekiqs > 0 {
        out.push(Advice::new(
            "db_pool",
            "every Sidekiq process has a DB_POOL at least its concurrency",
        ));
    }
    out
}

/// Sidekiq threads per process in the suggested layout: Mastodon's docs
/// pair `-c 25` with `DB_POOL=25`.
const LAYOUT_THREADS: u32 = 25;

/// One Sidekiq process per two CPUs (a Ruby process uses about one core;
/// the rest is left to Puma and PostgreSQL), at most six; queues split so
/// federation (push, ingress, pull) cannot starve local users (default),
/// and `scheduler` in exactly one process.
pub fn sidekiq_layout(cpus: u32) -> Advice {
    let processes = (cpus / 2).clamp(1, 6);
    let groups: Vec<&str> = match processes {
        1 => vec!["-q default,8 -q push,6 -q ingress,4 -q mailers,2 -q pull -q scheduler"],
        2 => vec![
            "-q default -q ingress -q mailers -q scheduler",
            "-q push -q pull",
        ],
        3 => vec![
            "-q default -q mailers -q scheduler",
            "-q push",
            "-q ingress -q pull",
        ],
        n => {
            let mut groups = vec![
                "-q default -q mailers -q scheduler",
                "-q push",
                "-q ingress",
                "-q pull",
            ];
            let extra = ["-q push", "-q ingress"];
            for i in 0..(n as usize - 4) {
                groups.push(extra[i % extra.len()]);
            }
            groups
        }
    };
    let layout: Vec<String> = groups
        .iter()
        .map(|queues| format!("`sidekiq -c {LAYOUT_THREADS} {queues}`"))
        .collect();
    Advice::new(
        "sidekiq_layout",
        format!(
            "for {cpus} CPUs: {} Sidekiq process{} with DB_POOL={LAYOUT_THREADS} each: {}; \
             scheduler runs in exactly one process (Mastodon 4.4 adds the fasp queue: put it \
             with default); this layout needs {} connections",
            processes,
            if processes == 1 { "" } else { "es" },
            layout.join(", "),
            processes * LAYOUT_THREADS
        ),
    )
}

/// PostgreSQL's default `max_connections`, the point Mastodon's PgBouncer
/// guide names for adding PgBouncer.
const PGBOUNCER_MIN_THRESHOLD: u32 = 100;
/// Backends per CPU beyond which most of them wait on each other.
const CONNECTIONS_PER_CPU: u32 = 4;

/// PgBouncer when the connections exceed what the server should hold: more
/// than 4 per CPU (at least PostgreSQL's default 100), or more than memory
/// can give each its work_mem (PgTune's formula fell to its 4MB floor).
pub fn pgbouncer(hw: &Hardware, settings: &[Setting]) -> Advice {
    let threshold = (hw.cpus * CONNECTIONS_PER_CPU).max(PGBOUNCER_MIN_THRESHOLD);
    let floored = settings
        .iter()
        .find(|s| s.name == "work_mem")
        .is_some_and(|s| s.reason.contains("floor"));
    let mut reasons = Vec::new();
    if hw.connections > threshold {
        reasons.push(format!(
            "{} connections exceed {threshold} (4 per CPU, at least PostgreSQL's default 100)",
            hw.connections
        ));
    }
    if floored {
        reasons.push(
            "memory cannot give every connection its work_mem (PgTune's formula fell below \
             its 4MB floor)"
                .to_string(),
        );
    }
    if reasons.is_empty() {
        Advice::new(
            "pgbouncer",
            format!(
                "{} connections are within what the server holds ({threshold}): PgBouncer is \
                 not needed",
                hw.connections
            ),
        )
    } else {
        Advice::new(
            "pgbouncer",
            format!(
                "put PgBouncer in front of PostgreSQL: {}. Use pool_mode = transaction and \
                 PREPARED_STATEMENTS=false in .env.production, and run db:migrate against \
                 PostgreSQL directly",
                reasons.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::pgtune::{StorageKind, recommend};

    #[test]
    fn version_checks() {
        assert!(
            version_check(14, "14.2")[0]
                .message
                .contains("refuse 14.0 to 14.3")
        );
        assert!(
            version_check(12, "12.20")[0]
                .message
                .contains("needs PostgreSQL 13")
        );
        assert!(version_check(14, "14.4")[0].message.contains("accepted"));
        assert!(
            version_check(17, "17.2 (Debian 17.2-1)")[0]
                .message
                .contains("accepted")
        );
    }

    #[test]
    fn warns_when_more_connections_are_open_than_recommended() {
        let now = ConnectionsInUse {
            open: 80,
            max_connections: 100,
        };
        assert!(connections_in_use(72, &now).message.contains("refused"));
        assert!(
            connections_in_use(90, &now)
                .message
                .contains("max_connections is 100")
        );
    }

    #[test]
    fn pgbouncer_threshold() {
        let hw = |connections, cpus| Hardware {
            memory_kb: 16 * 1024 * 1024,
            cpus,
            storage: StorageKind::Ssd,
            connections,
            pg_major: 17,
        };
        let advise = |h: Hardware| pgbouncer(&h, &recommend(&h)).message;
        assert!(advise(hw(100, 4)).contains("not needed"));
        assert!(advise(hw(101, 4)).contains("put PgBouncer"));
        assert!(advise(hw(120, 32)).contains("not needed"));
        // 4GB, 9999 connections: work_mem floored.
        let small = Hardware {
            memory_kb: 4 * 1024 * 1024,
            ..hw(9999, 64)
        };
        assert!(advise(small).contains("work_mem"));
    }

    #[test]
    fn layouts_keep_scheduler_in_one_process() {
        for cpus in [1, 2, 4, 6, 8, 16, 64] {
            let advice = sidekiq_layout(cpus).message;
            assert_eq!(advice.matches("scheduler`").count(), 1, "{advice}");
            for queue in ["default", "push", "ingress", "mailers", "pull"] {
                assert!(advice.contains(&format!("-q {queue}")), "{queue}: {advice}");
            }
        }
    }
}
