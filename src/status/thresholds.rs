//! The states a check can be in and the thresholds that decide them
//! (`status:` in tusk.yaml, merged over the defaults).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A check's outcome, Nagios' four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Warning,
    Critical,
    /// The check could not look (a server did not answer, nothing configured).
    Unknown,
}

impl State {
    /// The exit status in the Nagios plugin convention.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "warning",
            State::Critical => "critical",
            State::Unknown => "unknown",
        }
    }

    /// How bad it is: a critical check outweighs a warning, a warning an
    /// unknown one (something that is known to be wrong matters more than
    /// something that could not be looked at), and all of them ok.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }

    /// The worse of two states.
    pub fn max(self, other: State) -> State {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// The worst of all; ok for none.
    pub fn worst(states: impl IntoIterator<Item = State>) -> State {
        states.into_iter().fold(State::Ok, State::max)
    }
}

/// A warning and a critical threshold; either may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub warning: Option<f64>,
    pub critical: Option<f64>,
}

impl Limits {
    pub const fn new(warning: f64, critical: f64) -> Self {
        Limits {
            warning: Some(warning),
            critical: Some(critical),
        }
    }

    /// For a value where more is worse (an age, a latency): critical at or
    /// above `critical`, warning at or above `warning`.
    pub fn above(&self, value: f64) -> State {
        if self.critical.is_some_and(|limit| value >= limit) {
            State::Critical
        } else if self.warning.is_some_and(|limit| value >= limit) {
            State::Warning
        } else {
            State::Ok
        }
    }

    /// For a value where less is worse (free space over what is needed):
    /// critical below `critical`, warning below `warning`.
    pub fn below(&self, value: f64) -> State {
        if self.critical.is_some_and(|limit| value < limit) {
            State::Critical
        } else if self.warning.is_some_and(|limit| value < limit) {
            State::Warning
        } else {
            State::Ok
        }
    }
}

/// The `status:` section of tusk.yaml, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    /// Per queue, and `default` for the others.
    pub queue_latency_seconds: Option<BTreeMap<String, Limits>>,
    pub backup_max_age_hours: Option<Limits>,
    pub verify_max_age_days: Option<Limits>,
    pub connections_percent: Option<Limits>,
    pub transaction_seconds: Option<Limits>,
    pub redis_memory_percent: Option<Limits>,
    pub retry_jobs: Option<Limits>,
    pub dead_jobs: Option<Limits>,
    pub disk_free_ratio: Option<Limits>,
}

/// Every threshold, the file's over the defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Queue name (or `default`) to its latency limits.
    pub queue_latency_seconds: BTreeMap<String, Limits>,
    pub backup_max_age_hours: Limits,
    pub verify_max_age_days: Limits,
    pub connections_percent: Limits,
    pub transaction_seconds: Limits,
    pub redis_memory_percent: Limits,
    pub retry_jobs: Limits,
    pub dead_jobs: Limits,
    /// Free space over the space a restore needs (below is worse).
    pub disk_free_ratio: Limits,
}

/// The name of the queue limits that apply to unnamed queues.
pub const DEFAULT_QUEUE: &str = "default";

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            // `pull` fetches remote content and is allowed to lag; a busy
            // `default` or `push` queue delays local users and federation.
            queue_latency_seconds: BTreeMap::from([
                (DEFAULT_QUEUE.to_string(), Limits::new(60.0, 300.0)),
                ("pull".to_string(), Limits::new(300.0, 1800.0)),
            ]),
            // A nightly backup may be a couple of hours late before it warns.
            backup_max_age_hours: Limits::new(26.0, 50.0),
            verify_max_age_days: Limits::new(8.0, 15.0),
            connections_percent: Limits::new(80.0, 95.0),
            transaction_seconds: Limits::new(300.0, 3600.0),
            redis_memory_percent: Limits::new(80.0, 95.0),
            // Mastodon keeps thousands of retries for unreachable servers:
            // no limit unless the admin sets one.
            retry_jobs: Limits::default(),
            dead_jobs: Limits::default(),
            disk_free_ratio: Limits::new(2.0, 1.0),
        }
    }
}

impl StatusSettings {
    /// The thresholds in force: each one the file gives replaces the
    /// default; queue limits are merged by queue name.
    pub fn thresholds(&self) -> Thresholds {
        let mut thresholds = Thresholds::default();
        if let Some(queues) = &self.queue_latency_seconds {
            for (name, limits) in queues {
                thresholds
                    .queue_latency_seconds
                    .insert(name.clone(), *limits);
            }
        }
        let pick = |given: Option<Limits>, default: Limits| given.unwrap_or(default);
        Thresholds {
            backup_max_age_hours: pick(self.backup_max_age_hours, thresholds.backup_max_age_hours),
            verify_max_age_days: pick(self.verify_max_age_days, thresholds.verify_max_age_days),
            connections_percent: pick(self.connections_percent, thresholds.connections_percent),
            transaction_seconds: pick(self.transaction_seconds, thresholds.transaction_seconds),
            redis_memory_percent: pick(self.redis_memory_percent, thresholds.redis_memory_percent),
            retry_jobs: pick(self.retry_jobs, thresholds.retry_jobs),
            dead_jobs: pick(self.dead_jobs, thresholds.dead_jobs),
            disk_free_ratio: pick(self.disk_free_ratio, thresholds.disk_free_ratio),
            queue_latency_seconds: thresholds.queue_latency_seconds,
        }
    }
}

impl Thresholds {
    /// The latency limits of queue `name`: its own, else `default`'s.
    pub fn queue(&self, name: &str) -> Limits {
        self.queue_latency_seconds
            .get(name)
            .or_else(|| self.queue_latency_seconds.get(DEFAULT_QUEUE))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_state_wins_and_maps_to_nagios_codes() {
        assert_eq!(State::worst([]), State::Ok);
        assert_eq!(State::worst([State::Ok, State::Unknown]), State::Unknown);
        assert_eq!(
            State::worst([State::Unknown, State::Warning]),
            State::Warning
        );
        assert_eq!(
            State::worst([State::Critical, State::Warning, State::Unknown]),
            State::Critical
        );
        let codes: Vec<u8> = [State::Ok, State::Warning, State::Critical, State::Unknown]
            .map(State::exit_code)
            .to_vec();
        assert_eq!(codes, [0, 1, 2, 3]);
    }

    #[test]
    fn limits_decide_in_both_directions() {
        let age = Limits::new(26.0, 50.0);
        assert_eq!(age.above(25.9), State::Ok);
        assert_eq!(age.above(26.0), State::Warning);
        assert_eq!(age.above(50.0), State::Critical);
        let free = Limits::new(2.0, 1.0);
        assert_eq!(free.below(3.0), State::Ok);
        assert_eq!(free.below(1.5), State::Warning);
        assert_eq!(free.below(0.5), State::Critical);
        assert_eq!(Limits::default().above(1e12), State::Ok);
    }

    #[test]
    fn the_file_replaces_defaults_and_merges_queues() {
        let settings: StatusSettings = serde_yaml_ng::from_str(
            "queue_latency_seconds: {default: {warning: 30, critical: 120}, push: {warning: 10}}\n\
             backup_max_age_hours: {warning: 12, critical: 24}\n",
        )
        .unwrap();
        let thresholds = settings.thresholds();
        assert_eq!(thresholds.queue("ingress"), Limits::new(30.0, 120.0));
        assert_eq!(thresholds.queue("pull"), Limits::new(300.0, 1800.0));
        assert_eq!(
            thresholds.queue("push"),
            Limits {
                warning: Some(10.0),
                critical: None
            }
        );
        assert_eq!(thresholds.backup_max_age_hours, Limits::new(12.0, 24.0));
        assert_eq!(thresholds.verify_max_age_days, Limits::new(8.0, 15.0));
        let typo = serde_yaml_ng::from_str::<StatusSettings>("backup_max_age: {warning: 1}\n");
        assert!(typo.is_err());
    }
}
