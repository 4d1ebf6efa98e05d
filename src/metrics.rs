//! Prometheus metrics for node_exporter's textfile collector
//! (`--metrics-file`, `metrics_file:`), so the monitoring that watches the
//! server also watches its backups.
//!
//! The values are read from what is on disk, not from the run that writes
//! the file: the complete sets and their `verification.json`, and the run
//! records of [`crate::set::runs`]. A file written by a failed run, or by
//! `verify`, is therefore as right as one written by a good backup. The file
//! is replaced atomically (a temporary file in the same directory, renamed
//! over it), so the collector never reads half of it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::set::BackupSet;
use crate::set::destination::{Destination, Place};
use crate::set::runs;

/// What the metrics say about one destination of backup sets.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationMetrics {
    /// The `destination` label: `local` for the backup directory.
    pub name: String,
    pub sets: usize,
    /// The newest complete set's finish time, duration and size.
    pub last_success: Option<DateTime<Utc>>,
    pub last_duration_seconds: Option<f64>,
    pub last_bytes: Option<u64>,
    /// When the last failed backup ended.
    pub last_failure: Option<DateTime<Utc>>,
    /// The newest successful verification of any set.
    pub last_verify_success: Option<DateTime<Utc>>,
}

impl DestinationMetrics {
    /// Reads a destination: its directory, or its bucket's listing.
    pub async fn read(destination: &Destination) -> Result<Self> {
        match &destination.place {
            Place::Dir(dir) => Self::read_local(&destination.name, dir),
            Place::Bucket(bucket) => {
                let sets = crate::set::bucket::list_sets(bucket).await?;
                let last_failure = crate::set::bucket::last_failure(bucket, "backup").await;
                Ok(Self::from_sets(&destination.name, &sets, last_failure))
            }
        }
    }

    /// Reads the backup directory `dir` as destination `name`.
    pub fn read_local(name: &str, dir: &Path) -> Result<Self> {
        let sets = BackupSet::list(dir)?;
        Ok(Self::from_sets(
            name,
            &sets,
            runs::last_failure(dir, "backup"),
        ))
    }

    fn from_sets(name: &str, sets: &[BackupSet], last_failure: Option<runs::RunRecord>) -> Self {
        let newest = sets.last().map(|set| &set.manifest);
        let last_failure = last_failure.map(|run| run.finished_at.unwrap_or(run.started_at));
        let last_verify_success = sets
            .iter()
            .filter_map(BackupSet::verification)
            .filter(|verification| verification.ok)
            .map(|verification| verification.verified_at)
            .max();
        DestinationMetrics {
            name: name.to_string(),
            sets: sets.len(),
            last_success: newest.map(|manifest| manifest.finished_at),
            last_duration_seconds: newest.map(|manifest| {
                (manifest.finished_at - manifest.started_at).num_milliseconds() as f64 / 1000.0
            }),
            last_bytes: newest.map(|manifest| manifest.total_bytes()),
            last_failure,
            last_verify_success,
        }
    }
}

/// One metric family: its name, help text and each destination's value.
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&DestinationMetrics) -> f64,
}

fn timestamp(at: Option<DateTime<Utc>>) -> f64 {
    at.map_or(0.0, |at| at.timestamp_millis() as f64 / 1000.0)
}

const FAMILIES: [Family; 6] = [
    Family {
        name: "tusk_backup_last_success_timestamp_seconds",
        help: "When the newest complete backup set was finished (Unix time; 0: no set).",
        value: |d| timestamp(d.last_success),
    },
    Family {
        name: "tusk_backup_last_duration_seconds",
        help: "How long the newest complete backup set took to write.",
        value: |d| d.last_duration_seconds.unwrap_or(0.0),
    },
    Family {
        name: "tusk_backup_last_bytes",
        help: "Size of the newest complete backup set in bytes.",
        value: |d| d.last_bytes.unwrap_or(0) as f64,
    },
    Family {
        name: "tusk_backup_last_failure_timestamp_seconds",
        help: "When the last failed backup ended (Unix time; 0: none recorded).",
        value: |d| timestamp(d.last_failure),
    },
    Family {
        name: "tusk_verify_last_success_timestamp_seconds",
        help: "When a backup set was last verified successfully (Unix time; 0: never).",
        value: |d| timestamp(d.last_verify_success),
    },
    Family {
        name: "tusk_backup_sets",
        help: "Number of complete backup sets.",
        value: |d| d.sets as f64,
    },
];

/// The metrics in Prometheus' text exposition format.
pub fn render(destinations: &[DestinationMetrics]) -> String {
    let mut text = String::new();
    for family in &FAMILIES {
        let _ = writeln!(text, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(text, "# TYPE {} gauge", family.name);
        for destination in destinations {
            let _ = writeln!(
                text,
                "{}{{destination=\"{}\"}} {}",
                family.name,
                escape_label(&destination.name),
                (family.value)(destination)
            );
        }
    }
    text
}

/// Writes the metrics to `path` atomically, readable by node_exporter.
pub fn write(path: &Path, destinations: &[DestinationMetrics]) -> Result<()> {
    write_text(path, &render(destinations))
}

/// Writes metrics already in the text format to `path` atomically (a
/// temporary file beside it, renamed over it), mode 0644.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".tusk-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("could not create a temporary file in {}", dir.display()))?;
    temp.write_all(text.as_bytes())
        .and_then(|()| {
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .with_context(|| format!("could not write {}", temp.path().display()))?;
    temp.persist(path)
        .with_context(|| format!("could not rename the metrics into {}", path.display()))?;
    Ok(())
}

/// Backslash, double quote and newline are escaped in label values.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_family_has_help_type_and_a_labelled_value() {
        let local = DestinationMetrics {
            name: "local".into(),
            sets: 3,
            last_success: Some(Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap()),
            last_duration_seconds: Some(12.5),
            last_bytes: Some(1024),
            last_failure: None,
            last_verify_success: None,
        };
        let text = render(&[local]);
        assert!(text.contains(
            "# TYPE tusk_backup_last_success_timestamp_seconds gauge\n\
             tusk_backup_last_success_timestamp_seconds{destination=\"local\"} 1796612400\n"
        ));
        assert!(text.contains("tusk_backup_sets{destination=\"local\"} 3\n"));
        assert!(
            text.contains("tusk_backup_last_failure_timestamp_seconds{destination=\"local\"} 0\n")
        );
        assert_eq!(text.matches("# HELP ").count(), 6);
    }

    #[test]
    fn an_empty_directory_reads_as_no_sets_and_the_file_is_replaced() {
        let backups = tempfile::tempdir().unwrap();
        let state = DestinationMetrics::read_local("local", backups.path()).unwrap();
        assert_eq!(state.sets, 0);
        assert_eq!(state.last_success, None);
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("tusk.prom");
        std::fs::write(&path, "old").unwrap();
        write(&path, &[state]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("tusk_backup_sets{destination=\"local\"} 0"));
        let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
