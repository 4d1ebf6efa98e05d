//! Which backup sets a retention policy keeps, with the semantics of
//! restic's `forget` (docs/backup-sets.md, "Retention").
//!
//! Pure: sets in (an id and a start time each), decisions out. Where the
//! sets live (a directory, a bucket) and what else protects a set (the
//! newest good or verified set, a failed last backup) is the business of the
//! operation that removes them.
//!
//! The rules, as restic applies them:
//! - sets are taken newest first;
//! - each `keep_<calendar>` rule has a count and a bucket per set (hour,
//!   day, ISO week, month, year of the set's start in the configured time
//!   zone); a set is kept by the rule when its bucket differs from the bucket
//!   of the last set that rule kept, and the count goes down by one. So the
//!   newest set of each bucket is kept, for as many buckets as the count;
//! - `keep_last` is the same with a bucket of its own for every set;
//! - when the oldest set is reached and a rule still has counts left, it is
//!   kept too even if its bucket was already used (`oldest-<rule>`), which
//!   keeps the history as long as the policy allows;
//! - `keep_within` keeps every set that started after the newest set's start
//!   (not now) minus the duration, counted in calendar years, months, days
//!   in the time zone and then hours.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How many sets to keep, rule by rule; `None` (or 0) leaves a rule out.
/// This is the `retention:` map of tusk.yaml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// A duration as restic writes it: `2y5m7d3h`.
    pub keep_within: Option<Within>,
}

impl RetentionPolicy {
    /// A policy that keeps nothing at all: every rule left out. Pruning with
    /// it would remove every set the safety rules do not protect, so callers
    /// refuse it.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        counts.iter().all(|c| c.unwrap_or(0) == 0)
            && self.keep_within.as_ref().is_none_or(Within::is_zero)
    }
}

/// A calendar duration: years, months, days, then hours (`2y5m7d3h`; any
/// part may be left out, each at most once, in this order or any other).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Within {
    pub fn is_zero(&self) -> bool {
        *self == Within::default()
    }

    /// The first instant that is no longer within `self` before `newest`:
    /// sets that started strictly after it are kept. The calendar part is
    /// counted in `zone` (so a day across a DST change is 23 or 25 hours),
    /// an overflowing day rolls into the next month (31 March minus one
    /// month is 3 March, as in Go's `AddDate`), and the hours are then
    /// taken off as elapsed time.
    pub fn before(&self, newest: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let local = newest.with_timezone(&zone).naive_local();
        let months = i64::from(local.year()) * 12 + i64::from(local.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = months.div_euclid(12) as i32;
        let month = months.rem_euclid(12) as u32 + 1;
        let first = NaiveDate::from_ymd_opt(year, month, 1).expect("a valid month");
        let day = first + Duration::days(i64::from(local.day()) - 1 - i64::from(self.days));
        let wall = day.and_time(local.time());
        local_to_utc(wall, zone) - Duration::hours(i64::from(self.hours))
    }
}

/// A wall-clock time in `zone` as an instant, resolved as Go's `time.Date`
/// does (and so restic): a time in a DST gap moves forward by the gap, an
/// ambiguous time takes the offset in force at the wall time read as UTC.
fn local_to_utc(wall: chrono::NaiveDateTime, zone: Tz) -> DateTime<Utc> {
    let offset_at = |instant: chrono::NaiveDateTime| {
        i64::from(
            zone.offset_from_utc_datetime(&instant)
                .fix()
                .local_minus_utc(),
        )
    };
    let guess = offset_at(wall);
    let offset = offset_at(wall - Duration::seconds(guess));
    Utc.from_utc_datetime(&(wall - Duration::seconds(offset)))
}

impl FromStr for Within {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut within = Within::default();
        let mut rest = text.trim();
        let invalid = |why: &str| {
            format!(
                "keep_within {text:?} {why}: write a duration like restic's, \
                 e.g. \"2y5m7d3h\" (years, months, days, hours)"
            )
        };
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid("has no number where one is expected"));
            }
            let number: u32 = rest[..digits]
                .parse()
                .map_err(|_| invalid("has a number that is too large"))?;
            let unit = rest[digits..].chars().next();
            let field = match unit {
                Some('y') => &mut within.years,
                Some('m') => &mut within.months,
                Some('d') => &mut within.days,
                Some('h') => &mut within.hours,
                None => return Err(invalid("has a number without a unit")),
                Some(_) => return Err(invalid("has a unit other than y, m, d or h")),
            };
            *field = number;
            rest = &rest[digits + 1..];
        }
        Ok(within)
    }
}

impl TryFrom<String> for Within {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Within> for String {
    fn from(within: Within) -> String {
        within.to_string()
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ];
        let mut wrote = false;
        for (number, unit) in parts {
            if number != 0 {
                write!(f, "{number}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            write!(f, "0h")?;
        }
        Ok(())
    }
}

/// Why a set is kept. The policy's rules first, then the protections the
/// prune operation adds on top of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// The oldest set, kept by a calendar rule that still had counts left.
    Oldest(Rule),
    Within,
    /// The newest complete set that has not failed a verification.
    NewestGood,
    /// The newest set whose last verification passed.
    NewestVerified,
    /// Nothing is removed: the last backup failed, is still running or was
    /// killed, or a newer attempt was left incomplete.
    Held,
    /// An incomplete set (`.partial`) less than a day old.
    RecentAttempt,
}

/// The calendar rules, for [`Reason::Oldest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Reason {
    /// The name in `--json` and in the table: `last`, `daily`,
    /// `oldest-monthly`, `newest-verified`, ...
    pub fn name(self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Hourly => "hourly",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
            Reason::Oldest(Rule::Hourly) => "oldest-hourly",
            Reason::Oldest(Rule::Daily) => "oldest-daily",
            Reason::Oldest(Rule::Weekly) => "oldest-weekly",
            Reason::Oldest(Rule::Monthly) => "oldest-monthly",
            Reason::Oldest(Rule::Yearly) => "oldest-yearly",
            Reason::Within => "within",
            Reason::NewestGood => "newest-good",
            Reason::NewestVerified => "newest-verified",
            Reason::Held => "held",
            Reason::RecentAttempt => "recent-attempt",
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dated {
    pub id: String,
    pub started_at: DateTime<Utc>,
}

/// The policy's verdict on one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub keep: bool,
    /// Every rule that kept it, in the order of [`Reason`]; empty when removed.
    pub reasons: Vec<Reason>,
}

/// A calendar rule's bucket of a local time, as a number that differs
/// exactly when the buckets differ.
fn bucket(rule: Rule, at: DateTime<Tz>) -> i64 {
    let (year, month, day, hour) = (
        i64::from(at.year()),
        i64::from(at.month()),
        i64::from(at.day()),
        i64::from(at.hour()),
    );
    match rule {
        Rule::Hourly => ((year * 100 + month) * 100 + day) * 100 + hour,
        Rule::Daily => (year * 100 + month) * 100 + day,
        Rule::Weekly => {
            let week = at.iso_week();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        Rule::Monthly => year * 100 + month,
        Rule::Yearly => year,
    }
}

/// Applies `policy` to `sets` with calendar buckets in `zone`: one decision
/// per set, newest first. `now` only serves to ignore sets dated in the
/// future when finding the newest set for `keep_within`, as restic does.
/// Sets that started at the same instant are ordered by id, the greater
/// first.
pub fn decide(
    sets: &[Dated],
    policy: &RetentionPolicy,
    zone: Tz,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut sorted: Vec<&Dated> = sets.iter().collect();
    sorted.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));

    struct Counter {
        reason: Reason,
        rule: Option<Rule>,
        left: u32,
        last_bucket: Option<i64>,
    }
    let counter = |count: Option<u32>, reason, rule| Counter {
        reason,
        rule,
        left: count.unwrap_or(0),
        last_bucket: None,
    };
    let mut counters = [
        counter(policy.keep_last, Reason::Last, None),
        counter(policy.keep_hourly, Reason::Hourly, Some(Rule::Hourly)),
        counter(policy.keep_daily, Reason::Daily, Some(Rule::Daily)),
        counter(policy.keep_weekly, Reason::Weekly, Some(Rule::Weekly)),
        counter(policy.keep_monthly, Reason::Monthly, Some(Rule::Monthly)),
        counter(policy.keep_yearly, Reason::Yearly, Some(Rule::Yearly)),
    ];

    let within_since = policy
        .keep_within
        .filter(|within| !within.is_zero())
        .map(|within| {
            let newest = sorted
                .iter()
                .map(|set| set.started_at)
                .filter(|at| *at < now)
                .max();
            // With every set in the future restic's newest is the zero
            // time, so every set is within.
            newest.map(|newest| within.before(newest, zone))
        });

    let oldest = sorted.len().saturating_sub(1);
    let mut decisions = Vec::with_capacity(sorted.len());
    for (index, set) in sorted.iter().enumerate() {
        let local = set.started_at.with_timezone(&zone);
        let mut reasons = Vec::new();
        for counter in &mut counters {
            if counter.left == 0 {
                continue;
            }
            // keep_last: a bucket of its own for every set.
            let value = match counter.rule {
                Some(rule) => bucket(rule, local),
                None => -(index as i64) - 1,
            };
            let new_bucket = counter.last_bucket != Some(value);
            if new_bucket || index == oldest {
                reasons.push(match (new_bucket, counter.rule) {
                    (false, Some(rule)) => Reason::Oldest(rule),
                    _ => counter.reason,
                });
                counter.last_bucket = Some(value);
                counter.left -= 1;
            }
        }
        if let Some(since) = within_since
            && since.is_none_or(|since| set.started_at > since)
        {
            reasons.push(Reason::Within);
        }
        reasons.sort();
        decisions.push(Decision {
            id: set.id.clone(),
            started_at: set.started_at,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    decisions
}

/// A time zone by its IANA name (`Europe/Berlin`, `UTC`).
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as \"UTC\" or \"Europe/Berlin\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use std::collections::{BTreeMap, BTreeSet};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn dated(times: &[&str]) -> Vec<Dated> {
        times
            .iter()
            .map(|t| Dated {
                id: format!("s-{}", at(t).format("%Y%m%dT%H%M%SZ")),
                started_at: at(t),
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        at("2026-12-07T00:00:00Z")
    }

    fn kept(decisions: &[Decision]) -> Vec<(String, Vec<&'static str>)> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| {
                (
                    d.started_at.format("%m-%dT%H:%M").to_string(),
                    d.reasons.iter().map(|r| r.name()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn durations_read_as_restic_writes_them() {
        let within: Within = "2y5m7d3h".parse().unwrap();
        assert_eq!(
            within,
            Within {
                years: 2,
                months: 5,
                days: 7,
                hours: 3
            }
        );
        assert_eq!(within.to_string(), "2y5m7d3h");
        assert_eq!("10d".parse::<Within>().unwrap().days, 10);
        for bad in ["5", "5w", "y", "-1d", "3d 2"] {
            let err = bad.parse::<Within>().unwrap_err();
            assert!(err.contains("2y5m7d3h"), "{bad}: {err}");
        }
    }

    #[test]
    fn policies_read_from_yaml_and_refuse_unknown_rules() {
        let policy: RetentionPolicy =
            serde_yaml_ng::from_str("{keep_last: 3, keep_daily: 7, keep_within: 1y2m}").unwrap();
        assert_eq!(policy.keep_last, Some(3));
        assert_eq!(policy.keep_within.unwrap().months, 2);
        assert!(serde_yaml_ng::from_str::<RetentionPolicy>("{keep_lats: 3}").is_err());
        assert!(serde_yaml_ng::from_str::<RetentionPolicy>("{keep_last: -1}").is_err());
        assert!(RetentionPolicy::default().is_empty());
        assert!(
            serde_yaml_ng::from_str::<RetentionPolicy>("{keep_last: 0}")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_newest_set_of_each_bucket_is_kept_and_each_bucket_counts_once() {
        let sets = dated(&[
            "2026-03-01T01:00:00Z",
            "2026-03-01T05:00:00Z",
            "2026-03-02T01:00:00Z",
            "2026-03-03T01:00:00Z",
            "2026-03-03T09:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let decisions = decide(&sets, &policy, Tz::UTC, now());
        assert_eq!(
            kept(&decisions),
            [
                ("03-03T09:00".into(), vec!["daily"]),
                ("03-02T01:00".into(), vec!["daily"]),
            ]
        );
        assert_eq!(decisions.len(), 5);
        assert_eq!(
            decisions[0].started_at,
            at("2026-03-03T09:00:00Z"),
            "newest first"
        );
    }

    #[test]
    fn the_oldest_set_is_kept_while_a_rule_has_counts_left() {
        // Three sets on one day and the policy allows five days: restic
        // (0.17 on) keeps the oldest too, to keep the history long.
        let sets = dated(&[
            "2026-03-01T01:00:00Z",
            "2026-03-01T05:00:00Z",
            "2026-03-01T09:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: Some(5),
            keep_last: Some(1),
            ..Default::default()
        };
        assert_eq!(
            kept(&decide(&sets, &policy, Tz::UTC, now())),
            [
                ("03-01T09:00".into(), vec!["last", "daily"]),
                ("03-01T01:00".into(), vec!["oldest-daily"]),
            ]
        );
        // With the count used up, the oldest goes.
        let policy = RetentionPolicy {
            keep_daily: Some(1),
            ..Default::default()
        };
        assert_eq!(
            kept(&decide(&sets, &policy, Tz::UTC, now())),
            [("03-01T09:00".into(), vec!["daily"])]
        );
    }

    #[test]
    fn within_counts_from_the_newest_set_not_from_now() {
        let sets = dated(&[
            "2020-01-01T00:00:00Z",
            "2020-01-09T00:00:00Z",
            "2020-01-10T00:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_within: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        let decisions = decide(&sets, &policy, Tz::UTC, now());
        // Strictly after newest - 1 day: the set exactly a day older goes.
        assert_eq!(kept(&decisions), [("01-10T00:00".into(), vec!["within"])]);
        // A set from the future (a wrong clock) is not the newest.
        let mut with_future = sets.clone();
        with_future.extend(dated(&["2030-01-01T00:00:00Z"]));
        let decisions = decide(&with_future, &policy, Tz::UTC, now());
        assert_eq!(decisions.iter().filter(|d| d.keep).count(), 2);
    }

    #[test]
    fn within_moves_by_calendar_months_like_go() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let one_month = Within {
            months: 1,
            ..Default::default()
        };
        // 31 March minus a month is "31 February", which rolls to 3 March.
        assert_eq!(
            one_month.before(at("2026-03-31T12:00:00Z"), Tz::UTC),
            at("2026-03-03T12:00:00Z")
        );
        // A day back across the spring change in Berlin is 23 hours.
        let one_day = Within {
            days: 1,
            ..Default::default()
        };
        assert_eq!(
            one_day.before(at("2026-03-29T10:00:00Z"), berlin),
            at("2026-03-28T11:00:00Z")
        );
        // A wall time in the gap moves forward, as Go's time.Date does.
        assert_eq!(
            local_to_utc(
                NaiveDate::from_ymd_opt(2026, 3, 29)
                    .unwrap()
                    .and_hms_opt(2, 30, 0)
                    .unwrap(),
                berlin
            ),
            at("2026-03-29T01:30:00Z")
        );
    }

    #[test]
    fn calendar_buckets_are_in_the_configured_zone() {
        // 23:30 and 00:30 in Berlin on new year's eve: two years there, one in UTC.
        let sets = dated(&["2024-12-31T23:30:00+01:00", "2025-01-01T00:30:00+01:00"]);
        let policy = RetentionPolicy {
            keep_yearly: Some(5),
            ..Default::default()
        };
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            decide(&sets, &policy, berlin, now())
                .iter()
                .filter(|d| d.keep)
                .count(),
            2
        );
        let utc = decide(&sets, &policy, Tz::UTC, now());
        assert_eq!(kept(&utc).len(), 2, "the oldest is kept by the count left");
        assert_eq!(utc[1].reasons, [Reason::Oldest(Rule::Yearly)]);
        assert!(
            parse_time_zone("Mars/Olympus")
                .unwrap_err()
                .contains("IANA")
        );
    }

    #[derive(Deserialize)]
    struct Fixture {
        restic: String,
        snapshots: Vec<String>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        time_zone: String,
        policy: RetentionPolicy,
        keep: Vec<Kept>,
        remove: Vec<String>,
    }

    #[derive(Deserialize)]
    struct Kept {
        time: String,
        matches: Vec<String>,
    }

    /// restic's match text as tusk's reason name.
    fn reason_name(restic: &str) -> String {
        let name = restic
            .trim_end_matches(" snapshot")
            .replace("oldest ", "oldest-");
        if name.starts_with("within ") {
            "within".into()
        } else {
            name
        }
    }

    fn instant(restic_time: &str) -> DateTime<Utc> {
        DateTime::<FixedOffset>::parse_from_rfc3339(restic_time)
            .unwrap_or_else(|err| panic!("{restic_time}: {err}"))
            .with_timezone(&Utc)
    }

    /// The timeline and the keep/remove results come from the real restic
    /// (scripts/retention-fixture.sh); tusk must decide exactly the same.
    #[test]
    fn decisions_match_restic_forget_on_a_two_year_timeline() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/retention/restic-forget.json"
        );
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(fixture.restic.starts_with("restic "), "{}", fixture.restic);
        let sets: Vec<Dated> = fixture
            .snapshots
            .iter()
            .map(|t| Dated {
                id: format!("social-{}", instant(t).format("%Y%m%dT%H%M%SZ")),
                started_at: instant(t),
            })
            .collect();
        assert!(sets.len() > 60, "a timeline of {} sets", sets.len());
        assert_eq!(fixture.cases.len(), 14);
        for case in &fixture.cases {
            let zone = parse_time_zone(&case.time_zone).unwrap();
            let decisions = decide(&sets, &case.policy, zone, now());
            let ours: BTreeMap<DateTime<Utc>, BTreeSet<String>> = decisions
                .iter()
                .filter(|d| d.keep)
                .map(|d| {
                    let names = d.reasons.iter().map(|r| r.name().to_string()).collect();
                    (d.started_at, names)
                })
                .collect();
            let restics: BTreeMap<DateTime<Utc>, BTreeSet<String>> = case
                .keep
                .iter()
                .map(|k| {
                    let names = k.matches.iter().map(|m| reason_name(m)).collect();
                    (instant(&k.time), names)
                })
                .collect();
            assert_eq!(
                ours, restics,
                "{} in {}: kept sets and reasons differ from restic's",
                case.name, case.time_zone
            );
            let removed: BTreeSet<DateTime<Utc>> = decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.started_at)
                .collect();
            let restic_removed: BTreeSet<DateTime<Utc>> =
                case.remove.iter().map(|t| instant(t)).collect();
            assert_eq!(
                removed, restic_removed,
                "{} in {}",
                case.name, case.time_zone
            );
            assert_eq!(ours.len() + removed.len(), sets.len());
        }
    }
}
