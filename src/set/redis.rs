//! What a set records about a Redis snapshot, so that a restore can prove
//! the snapshot it loaded is the one taken: the keys in every database and
//! Sidekiq's queues and sets (scheduled, retrying and dead jobs are what a
//! restored instance would otherwise lose).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::mastodon::env_file::RedisRole;
use crate::mastodon::sidekiq;
use crate::redis::RedisSession;

/// The artefact's stem for a snapshot of `role`'s server: `redis.rdb`,
/// `redis-cache.rdb`.
pub fn snapshot_stem(role: RedisRole) -> &'static str {
    match role {
        RedisRole::Sidekiq => "redis.rdb",
        RedisRole::Cache => "redis-cache.rdb",
    }
}

/// Sidekiq's job counts: every queue's length and the sorted sets' sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidekiqCounts {
    pub queues: BTreeMap<String, u64>,
    pub scheduled: u64,
    pub retries: u64,
    pub dead: u64,
}

/// A Redis server's content as counted around its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisFacts {
    pub role: RedisRole,
    /// The database Mastodon uses on that server, and its key namespace.
    pub db: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Keys in every database that holds any.
    pub keys: BTreeMap<i64, u64>,
    /// Of those, the keys with an expiry: they may be gone when the
    /// snapshot is loaded (Redis drops expired keys as it loads).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expiring: BTreeMap<i64, u64>,
    /// Sidekiq's counts, for Sidekiq's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidekiq: Option<SidekiqCounts>,
    /// The counts were the same just before and just after the snapshot,
    /// so the snapshot holds exactly these; otherwise the instance was
    /// busy and they are close, not exact.
    pub exact: bool,
}

impl RedisFacts {
    /// Counts what `session`'s server holds now (`session` is on the
    /// database Mastodon uses, with its namespace).
    pub async fn read(session: &mut RedisSession, role: RedisRole) -> Result<Self> {
        let keyspace = session.keyspace().await?;
        let keys = keyspace.iter().map(|(db, c)| (*db, c.keys)).collect();
        let expiring = keyspace
            .iter()
            .filter(|(_, c)| c.expires > 0)
            .map(|(db, c)| (*db, c.expires))
            .collect();
        let sidekiq = match role {
            RedisRole::Sidekiq => {
                let state = sidekiq::read(session, chrono::Utc::now().timestamp_millis()).await?;
                Some(SidekiqCounts {
                    queues: state
                        .queues
                        .iter()
                        .map(|queue| (queue.name.clone(), queue.size))
                        .collect(),
                    scheduled: state.scheduled,
                    retries: state.retries,
                    dead: state.dead,
                })
            }
            RedisRole::Cache => None,
        };
        Ok(RedisFacts {
            role,
            db: session.target().db,
            namespace: session.target().namespace.clone(),
            keys,
            expiring,
            sidekiq,
            exact: true,
        })
    }

    /// The facts of a snapshot counted `before` and `after` it: exact when
    /// the keys without an expiry and Sidekiq's counts did not move in
    /// between (keys with an expiry come and go all the time: Sidekiq's
    /// process heartbeats, the cache). The snapshot holds at most the
    /// larger count of each database, and at least its keys without one.
    pub fn around(before: RedisFacts, after: RedisFacts) -> RedisFacts {
        let persistent = |facts: &RedisFacts| -> BTreeMap<i64, u64> {
            facts
                .keys
                .iter()
                .map(|(db, keys)| {
                    let expiring = facts.expiring.get(db).copied().unwrap_or(0);
                    (*db, keys.saturating_sub(expiring))
                })
                .filter(|(_, keys)| *keys > 0)
                .collect()
        };
        let lasting = persistent(&after);
        let exact = persistent(&before) == lasting && before.sidekiq == after.sidekiq;
        let mut keys = after.keys.clone();
        for (db, count) in &before.keys {
            let most = keys.entry(*db).or_insert(0);
            *most = (*most).max(*count);
        }
        let expiring = keys
            .iter()
            .map(|(db, most)| (*db, most - lasting.get(db).copied().unwrap_or(0).min(*most)))
            .filter(|(_, expiring)| *expiring > 0)
            .collect();
        RedisFacts {
            keys,
            expiring,
            exact,
            ..after
        }
    }

    /// Where `found` (counted on a server that loaded the snapshot) differs
    /// from these facts, one line each.
    pub fn differences(&self, found: &RedisFacts) -> Vec<String> {
        let mut differences = Vec::new();
        let databases: std::collections::BTreeSet<i64> =
            self.keys.keys().chain(found.keys.keys()).copied().collect();
        for db in databases {
            let want = self.keys.get(&db).copied().unwrap_or(0);
            let expiring = self.expiring.get(&db).copied().unwrap_or(0);
            let got = found.keys.get(&db).copied().unwrap_or(0);
            // Keys with an expiry may have expired since the snapshot.
            if got > want || got < want.saturating_sub(expiring) {
                let with_expiry = match expiring {
                    0 => String::new(),
                    n => format!(" ({n} of them with an expiry)"),
                };
                differences.push(format!(
                    "database {db}: {got} keys, the set recorded {want}{with_expiry}"
                ));
            }
        }
        if let (Some(want), Some(got)) = (&self.sidekiq, &found.sidekiq) {
            let queues: std::collections::BTreeSet<&String> =
                want.queues.keys().chain(got.queues.keys()).collect();
            for queue in queues {
                let (w, g) = (
                    want.queues.get(queue).copied().unwrap_or(0),
                    got.queues.get(queue).copied().unwrap_or(0),
                );
                if w != g {
                    differences.push(format!(
                        "Sidekiq queue {queue}: {g} jobs, the set recorded {w}"
                    ));
                }
            }
            for (set, w, g) in [
                ("scheduled", want.scheduled, got.scheduled),
                ("retry", want.retries, got.retries),
                ("dead", want.dead, got.dead),
            ] {
                if w != g {
                    differences.push(format!("Sidekiq {set} set: {g} jobs, the set recorded {w}"));
                }
            }
        }
        differences
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(keys: u64, default_queue: u64, retries: u64) -> RedisFacts {
        RedisFacts {
            role: RedisRole::Sidekiq,
            db: 0,
            namespace: None,
            keys: BTreeMap::from([(0, keys)]),
            expiring: BTreeMap::from([(0, 2)]),
            sidekiq: Some(SidekiqCounts {
                queues: BTreeMap::from([("default".to_string(), default_queue)]),
                scheduled: 2,
                retries,
                dead: 0,
            }),
            exact: true,
        }
    }

    #[test]
    fn a_snapshot_is_exact_only_when_nothing_lasting_moved_around_it() {
        assert!(RedisFacts::around(facts(10, 3, 1), facts(10, 3, 1)).exact);
        let busy = RedisFacts::around(facts(10, 3, 1), facts(10, 4, 1));
        assert!(!busy.exact);
        assert_eq!(busy.sidekiq.unwrap().queues["default"], 4);

        // A heartbeat expired between the counts: 8 lasting keys either
        // way, and the snapshot holds 8 to 10.
        let mut after = facts(9, 3, 1);
        after.expiring = BTreeMap::from([(0, 1)]);
        let heartbeat = RedisFacts::around(facts(10, 3, 1), after);
        assert!(heartbeat.exact);
        assert_eq!(heartbeat.keys[&0], 10);
        assert_eq!(heartbeat.expiring[&0], 2);

        // A lasting key appeared: not exact.
        let mut grown = facts(11, 3, 1);
        grown.expiring = BTreeMap::from([(0, 2)]);
        assert!(!RedisFacts::around(facts(10, 3, 1), grown).exact);
    }

    #[test]
    fn keys_with_an_expiry_may_be_gone_and_no_more() {
        // 10 keys, 2 of them expiring: 8 to 10 found is the same snapshot.
        for found in [8, 9, 10] {
            assert!(facts(10, 3, 1).differences(&facts(found, 3, 1)).is_empty());
        }
        assert_eq!(
            facts(10, 3, 1).differences(&facts(7, 3, 1)),
            ["database 0: 7 keys, the set recorded 10 (2 of them with an expiry)"]
        );
        assert_eq!(facts(10, 3, 1).differences(&facts(11, 3, 1)).len(), 1);
    }

    #[test]
    fn differences_name_the_database_the_queue_and_the_set() {
        assert!(facts(10, 3, 1).differences(&facts(10, 3, 1)).is_empty());
        let found = facts(7, 2, 0);
        assert_eq!(
            facts(10, 3, 1).differences(&found),
            [
                "database 0: 7 keys, the set recorded 10 (2 of them with an expiry)",
                "Sidekiq queue default: 2 jobs, the set recorded 3",
                "Sidekiq retry set: 0 jobs, the set recorded 1",
            ]
        );
    }
}
