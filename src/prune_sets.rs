//! `tusk backups prune` (and `tusk backup --prune`): removes the backup sets
//! a destination's retention policy no longer keeps.
//!
//! Two halves, so any destination plugs in: the [`plan`] works on a
//! [`Listing`] (set ids, start times, verification outcomes, the last
//! backup run) and knows nothing of where the sets live; [`DirSets`] lists
//! and removes them in a local backup directory, [`crate::set::bucket`] in
//! a bucket (where an incomplete attempt is a prefix with tusk's attempt
//! marker and no manifest).
//!
//! Retention decides with restic's rules ([`crate::set::retention`]); on top
//! of them a set is never removed when it is the newest good set or the
//! newest verified set, and nothing at all is removed while the last backup
//! of the destination failed, is still running (or was killed), or is older
//! than an incomplete attempt. Only entries tusk made are ever touched: a
//! directory named like a set id that holds tusk's manifest for that id, or
//! an incomplete attempt `<id>.partial`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::error::TuskError;
use crate::output::Output;
use crate::set::bucket::{self, Found};
use crate::set::destination::{Bucket, Destination, DestinationLock, Place};
use crate::set::manifest::MANIFEST_FILE;
use crate::set::retention::{self, Dated, Reason, RetentionPolicy};
use crate::set::runs::{self, Outcome, RunRecord};
use crate::set::{BackupSet, LockPolicy, PARTIAL_SUFFIX, parse_id};

/// A removal in progress: the entry is renamed to `<name>.removing` before
/// its files go, so a half-deleted set never looks complete.
const REMOVING_SUFFIX: &str = ".removing";

/// An incomplete attempt younger than this may still be written (or looked
/// at); older ones are removed.
pub fn incomplete_grace() -> Duration {
    Duration::days(1)
}

/// Refuses a destination without a policy (pruning it would remove all
/// but the protected sets) or one that cannot be used.
pub fn require_retention(destination: &Destination) -> Result<()> {
    if let Some(why) = &destination.unusable {
        return Err(TuskError::usage(why.clone()));
    }
    if destination.retention.is_empty() {
        return Err(TuskError::usage(format!(
            "destination {:?} ({}) has no retention policy: add e.g. \
             `retention: {{keep_daily: 7, keep_weekly: 4}}` to tusk.yaml (top level for \
             backup_dir, or in the destination's entry under destinations:)",
            destination.name,
            destination.describe()
        )));
    }
    Ok(())
}

/// What `tusk backups prune` needs to know, free of any CLI type.
#[derive(Debug, Clone)]
pub struct PruneSetsOptions {
    pub destinations: Vec<Destination>,
    /// The zone of the calendar buckets (hour, day, week, month, year).
    pub time_zone: Tz,
    /// Decide and report only.
    pub dry_run: bool,
    /// Ask on the terminal before removing (see [`Output::confirm`]).
    pub confirm: bool,
    /// Waiting for another run's lock on a backup directory (`--wait`).
    pub lock: LockPolicy,
}

/// A complete set as the plan sees it.
#[derive(Debug, Clone)]
pub struct ListedSet {
    pub id: String,
    pub instance: String,
    pub started_at: DateTime<Utc>,
    /// The outcome of the set's last verification, if it had one.
    pub verified: Option<bool>,
}

/// An incomplete attempt (`<id>.partial`).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub started_at: DateTime<Utc>,
}

/// Everything tusk made in a destination, and its last backup run.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub sets: Vec<ListedSet>,
    pub incomplete: Vec<Attempt>,
    /// Removals an earlier prune began and did not finish (`<name>.removing`).
    pub unfinished_removals: Vec<String>,
    pub last_backup: Option<RunRecord>,
}

/// One entry's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<Reason>,
    /// An incomplete attempt (`<id>.partial`), not a set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// The plan for one destination: every entry, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Why nothing is removed, when something forbids it.
    pub held: Option<String>,
    pub sets: Vec<Entry>,
}

/// Decides, without touching anything. Sets of different instances in one
/// destination are judged separately (restic groups by host the same way).
pub fn plan(listing: &Listing, policy: &RetentionPolicy, zone: Tz, now: DateTime<Utc>) -> Plan {
    let held = hold(listing);
    let mut by_instance: BTreeMap<&str, Vec<&ListedSet>> = BTreeMap::new();
    for set in &listing.sets {
        by_instance.entry(&set.instance).or_default().push(set);
    }
    let mut sets = Vec::new();
    for group in by_instance.values() {
        let dated: Vec<Dated> = group
            .iter()
            .map(|set| Dated {
                id: set.id.clone(),
                started_at: set.started_at,
            })
            .collect();
        let newest = |wanted: &dyn Fn(&ListedSet) -> bool| {
            group
                .iter()
                .filter(|set| wanted(set))
                .max_by_key(|set| (set.started_at, &set.id))
                .map(|set| set.id.clone())
        };
        let newest_good = newest(&|set| set.verified != Some(false));
        let newest_verified = newest(&|set| set.verified == Some(true));
        for decision in retention::decide(&dated, policy, zone, now) {
            let mut reasons = decision.reasons;
            if newest_good.as_deref() == Some(decision.id.as_str()) {
                reasons.push(Reason::NewestGood);
            }
            if newest_verified.as_deref() == Some(decision.id.as_str()) {
                reasons.push(Reason::NewestVerified);
            }
            if reasons.is_empty() && held.is_some() {
                reasons.push(Reason::Held);
            }
            sets.push(Entry {
                id: decision.id,
                started_at: decision.started_at,
                keep: !reasons.is_empty(),
                reasons,
                incomplete: false,
            });
        }
    }
    for attempt in &listing.incomplete {
        let mut reasons = Vec::new();
        if now - attempt.started_at < incomplete_grace() {
            reasons.push(Reason::RecentAttempt);
        } else if held.is_some() {
            reasons.push(Reason::Held);
        }
        sets.push(Entry {
            id: attempt.id.clone(),
            started_at: attempt.started_at,
            keep: !reasons.is_empty(),
            reasons,
            incomplete: true,
        });
    }
    sets.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
    Plan { held, sets }
}

/// Why the destination must not be pruned now, if it must not.
fn hold(listing: &Listing) -> Option<String> {
    let Some(last) = &listing.last_backup else {
        return (!listing.sets.is_empty() || !listing.incomplete.is_empty()).then(|| {
            "no backup run is recorded here yet (.tusk-last-backup.json); \
             run `tusk backup` first"
                .to_string()
        });
    };
    let started = last.started_at.format("%Y-%m-%d %H:%M:%S UTC");
    match last.outcome {
        Outcome::Failed => {
            return Some(format!(
                "the last backup (started {started}) failed: {}",
                last.error.as_deref().unwrap_or("no error recorded")
            ));
        }
        Outcome::Running => {
            return Some(format!(
                "the last backup (started {started}, pid {} on {}) never finished: \
                 it is still running or was killed",
                last.pid, last.host
            ));
        }
        Outcome::Ok => {}
    }
    listing
        .incomplete
        .iter()
        .filter(|attempt| attempt.started_at > last.started_at)
        .max_by_key(|attempt| attempt.started_at)
        .map(|attempt| {
            format!(
                "a backup attempt newer than the last successful backup (started {started}) \
                 was left incomplete: {}{PARTIAL_SUFFIX}",
                attempt.id
            )
        })
}

/// The sets of a local backup directory.
pub struct DirSets<'a> {
    pub dir: &'a Path,
}

impl DirSets<'_> {
    /// Reads what tusk made in the directory; everything else is left out
    /// (and so never removed).
    pub fn list(&self) -> Result<Listing> {
        let mut listing = Listing {
            last_backup: runs::last(self.dir, "backup"),
            ..Listing::default()
        };
        let entries = match std::fs::read_dir(self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(err) => {
                return Err(err).with_context(|| format!("could not read {}", self.dir.display()));
            }
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("could not read {}", self.dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() || path.is_symlink() {
                continue;
            }
            if let Some(doomed) = name.strip_suffix(REMOVING_SUFFIX) {
                let id = doomed.strip_suffix(PARTIAL_SUFFIX).unwrap_or(doomed);
                if parse_id(id).is_some() {
                    listing.unfinished_removals.push(name);
                }
                continue;
            }
            if let Some(id) = name.strip_suffix(PARTIAL_SUFFIX) {
                if let Some((_, started_at)) = parse_id(id) {
                    listing.incomplete.push(Attempt {
                        id: id.to_string(),
                        started_at,
                    });
                }
                continue;
            }
            let Some((instance, _)) = parse_id(&name) else {
                continue;
            };
            if !path.join(MANIFEST_FILE).is_file() {
                continue;
            }
            let set = match BackupSet::open(&path) {
                Ok(set) if set.manifest.id == name && set.manifest.tool.name == "tusk" => set,
                Ok(_) => {
                    tracing::warn!(
                        "leaving {} alone: its manifest is not tusk's manifest for this id",
                        path.display()
                    );
                    continue;
                }
                Err(err) => {
                    tracing::warn!("leaving {} alone: {err:#}", path.display());
                    continue;
                }
            };
            listing.sets.push(ListedSet {
                id: name.clone(),
                instance: instance.to_string(),
                started_at: set.manifest.started_at,
                verified: set.verification().map(|v| v.ok),
            });
        }
        Ok(listing)
    }

    /// Removes a set or attempt: renamed to `<name>.removing` first, so an
    /// interrupted removal never leaves something that looks complete.
    pub fn remove(&self, entry: &Entry) -> Result<()> {
        let name = match entry.incomplete {
            true => format!("{}{PARTIAL_SUFFIX}", entry.id),
            false => entry.id.clone(),
        };
        let from = self.dir.join(&name);
        let doomed = self.dir.join(format!("{name}{REMOVING_SUFFIX}"));
        std::fs::rename(&from, &doomed).with_context(|| {
            format!(
                "could not rename {} to {} to remove it",
                from.display(),
                doomed.display()
            )
        })?;
        std::fs::remove_dir_all(&doomed)
            .with_context(|| format!("could not remove {}", doomed.display()))
    }

    /// Finishes a removal an earlier run began (`<name>.removing`).
    pub fn finish_removal(&self, removing: &str) -> Result<()> {
        let path = self.dir.join(removing);
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("could not remove {}", path.display()))
    }
}

/// The sets of a bucket destination, as the plan sees them, with the keys
/// of each entry (for its removal).
async fn list_bucket(bucket: &Bucket) -> Result<(Listing, BTreeMap<String, Vec<String>>)> {
    let mut listing = Listing {
        last_backup: bucket::last_run(bucket, "backup").await,
        ..Listing::default()
    };
    let mut keys = BTreeMap::new();
    for (id, (found, found_keys)) in bucket::scan(bucket).await? {
        let Some((instance, started_at)) = parse_id(&id) else {
            continue;
        };
        match found {
            Found::Removing => listing.unfinished_removals.push(id.clone()),
            Found::Incomplete => listing.incomplete.push(Attempt {
                id: id.clone(),
                started_at,
            }),
            Found::Complete => {
                let Some(set) = bucket::open_set(bucket, &id).await? else {
                    continue;
                };
                listing.sets.push(ListedSet {
                    id: id.clone(),
                    instance: instance.to_string(),
                    started_at: set.manifest.started_at,
                    verified: set.verification().map(|v| v.ok),
                });
            }
        }
        keys.insert(id, found_keys);
    }
    Ok((listing, keys))
}

/// What happened on one destination, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct DestinationReport {
    pub name: String,
    /// The directory, or the bucket and prefix.
    pub location: String,
    pub dry_run: bool,
    pub held: Option<String>,
    pub removed: usize,
    pub sets: Vec<Entry>,
}

/// The whole run, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct PruneSetsReport {
    pub destinations: Vec<DestinationReport>,
}

/// Prunes every destination in `opts`, each under its lock.
pub async fn run(opts: &PruneSetsOptions, output: &Output) -> Result<PruneSetsReport> {
    let mut destinations = Vec::new();
    for destination in &opts.destinations {
        let missing_dir = destination.dir().is_some_and(|dir| !dir.exists());
        let lock = if opts.dry_run && missing_dir {
            None
        } else {
            Some(DestinationLock::acquire(destination, "prune", &opts.lock).await?)
        };
        let report = prune_locked(
            destination,
            opts.time_zone,
            opts.dry_run,
            opts.confirm,
            output,
        )
        .await;
        if let Some(lock) = lock {
            lock.release().await?;
        }
        destinations.push(report?);
    }
    Ok(PruneSetsReport { destinations })
}

/// Prunes one destination whose lock the caller holds (`tusk backup
/// --prune` keeps the lock of its backup for this). With `confirm`, it asks
/// on the terminal (or wants `--yes`) before removing anything.
pub async fn prune_locked(
    destination: &Destination,
    time_zone: Tz,
    dry_run: bool,
    confirm: bool,
    output: &Output,
) -> Result<DestinationReport> {
    require_retention(destination)?;
    let (listing, bucket_keys) = match &destination.place {
        Place::Dir(dir) => (DirSets { dir }.list()?, BTreeMap::new()),
        Place::Bucket(bucket) => list_bucket(bucket).await?,
    };
    let plan = plan(&listing, &destination.retention, time_zone, Utc::now());
    let doomed: Vec<&Entry> = plan.sets.iter().filter(|entry| !entry.keep).collect();
    let mut removed = 0;
    if !dry_run && !doomed.is_empty() {
        if confirm {
            let ids: Vec<&str> = doomed.iter().map(|entry| entry.id.as_str()).collect();
            let question = format!(
                "Remove {} of {} entries from {} ({}): {}?",
                doomed.len(),
                plan.sets.len(),
                destination.name,
                destination.describe(),
                ids.join(", ")
            );
            if !output.confirm(&question)? {
                anyhow::bail!("nothing removed from {}: not confirmed", destination.name);
            }
        }
        for entry in &doomed {
            match &destination.place {
                Place::Dir(dir) => DirSets { dir }.remove(entry)?,
                Place::Bucket(bucket) => {
                    let keys = bucket_keys.get(&entry.id).cloned().unwrap_or_default();
                    bucket::remove(bucket, &entry.id, &keys).await?;
                }
            }
            tracing::info!(
                "removed {}{} from {}",
                entry.id,
                if entry.incomplete {
                    " (incomplete)"
                } else {
                    ""
                },
                destination.name
            );
            removed += 1;
        }
    }
    if !dry_run && plan.held.is_none() {
        for name in &listing.unfinished_removals {
            match &destination.place {
                Place::Dir(dir) => DirSets { dir }.finish_removal(name)?,
                Place::Bucket(bucket) => {
                    let keys = bucket_keys.get(name).cloned().unwrap_or_default();
                    bucket::remove(bucket, name, &keys).await?;
                }
            }
            tracing::info!("finished removing {name} from {}", destination.name);
        }
    }
    if let Some(why) = &plan.held {
        tracing::warn!("{}: nothing removed: {why}", destination.name);
    }
    Ok(DestinationReport {
        name: destination.name.clone(),
        location: destination.describe(),
        dry_run,
        held: plan.held,
        removed,
        sets: plan.sets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn set(id_time: &str, verified: Option<bool>) -> ListedSet {
        let started_at = at(id_time);
        ListedSet {
            id: crate::set::new_id("social", started_at),
            instance: "social".into(),
            started_at,
            verified,
        }
    }

    fn ok_run(started: &str) -> RunRecord {
        RunRecord {
            command: "backup".into(),
            started_at: at(started),
            finished_at: Some(at(started)),
            outcome: Outcome::Ok,
            set_id: None,
            bytes: None,
            error: None,
            pid: 1,
            host: "h".into(),
        }
    }

    fn keep_last(n: u32) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    fn kept(plan: &Plan) -> Vec<(String, Vec<&'static str>)> {
        plan.sets
            .iter()
            .filter(|e| e.keep)
            .map(|e| {
                (
                    e.started_at.format("%d").to_string(),
                    e.reasons.iter().map(|r| r.name()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_newest_verified_and_the_newest_good_set_survive_any_policy() {
        let listing = Listing {
            sets: vec![
                set("2026-01-01T00:00:00Z", Some(true)),
                set("2026-01-02T00:00:00Z", None),
                set("2026-01-03T00:00:00Z", Some(false)),
            ],
            last_backup: Some(ok_run("2026-01-03T00:00:00Z")),
            ..Listing::default()
        };
        let plan = plan(&listing, &keep_last(1), Tz::UTC, at("2026-01-04T00:00:00Z"));
        assert_eq!(plan.held, None);
        assert_eq!(
            kept(&plan),
            [
                ("03".into(), vec!["last"]),
                ("02".into(), vec!["newest-good"]),
                ("01".into(), vec!["newest-verified"]),
            ]
        );
    }

    #[test]
    fn nothing_is_removed_after_a_failed_or_unfinished_backup() {
        let sets = vec![
            set("2026-01-01T00:00:00Z", None),
            set("2026-01-02T00:00:00Z", None),
        ];
        let now = at("2026-01-05T00:00:00Z");
        let mut failed = ok_run("2026-01-04T00:00:00Z");
        failed.outcome = Outcome::Failed;
        failed.error = Some("disk full".into());
        let mut running = failed.clone();
        running.outcome = Outcome::Running;
        for last_backup in [Some(failed), Some(running), None] {
            let listing = Listing {
                sets: sets.clone(),
                last_backup,
                ..Listing::default()
            };
            let plan = plan(&listing, &keep_last(1), Tz::UTC, now);
            assert!(plan.held.is_some());
            assert!(plan.sets.iter().all(|e| e.keep), "{plan:?}");
            assert_eq!(plan.sets[1].reasons, [Reason::Held]);
        }
        // An incomplete attempt newer than the last good backup holds too.
        let listing = Listing {
            sets,
            incomplete: vec![Attempt {
                id: "social-20260104T000000Z".into(),
                started_at: at("2026-01-04T00:00:00Z"),
            }],
            last_backup: Some(ok_run("2026-01-02T00:00:00Z")),
            ..Listing::default()
        };
        let plan = plan(&listing, &keep_last(1), Tz::UTC, now);
        assert!(
            plan.held
                .unwrap()
                .contains("social-20260104T000000Z.partial")
        );
        assert!(plan.sets.iter().all(|e| e.keep));
    }

    #[test]
    fn old_incomplete_attempts_go_and_recent_ones_stay() {
        let listing = Listing {
            sets: vec![set("2026-01-03T00:00:00Z", None)],
            incomplete: vec![
                Attempt {
                    id: "social-20260101T000000Z".into(),
                    started_at: at("2026-01-01T00:00:00Z"),
                },
                Attempt {
                    id: "social-20260103T120000Z".into(),
                    started_at: at("2026-01-03T12:00:00Z"),
                },
            ],
            last_backup: Some(ok_run("2026-01-03T18:00:00Z")),
            ..Listing::default()
        };
        let plan = plan(&listing, &keep_last(1), Tz::UTC, at("2026-01-04T00:00:00Z"));
        let fates: Vec<(&str, bool, bool)> = plan
            .sets
            .iter()
            .map(|e| (e.id.as_str(), e.incomplete, e.keep))
            .collect();
        assert_eq!(
            fates,
            [
                ("social-20260103T120000Z", true, true),
                ("social-20260103T000000Z", false, true),
                ("social-20260101T000000Z", true, false),
            ]
        );
    }
}
