//! `tusk rehearse`: a migration drill for CI and weekly cron. It takes the
//! newest good set (or dumps one now), restores it into a throwaway target
//! (a new database on a given server, or a throwaway container from an
//! image such as the next PostgreSQL major), verifies its content, runs
//! the admin's command against it (`--run`, e.g. the next Mastodon image's
//! `rails db:migrate`), records the restore's wall time and peak size, and
//! writes JSON and JUnit reports. The throwaway target is removed on every
//! way out, signals included.
//!
//! It never writes to the production database or touches its containers:
//! the test restore is `verify`'s, which only reads the set; `--fresh` only
//! reads the database (pg_dump).

pub mod junit;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::backup::{self, BackupOptions};
use crate::error::{TuskError, exit_status_for};
use crate::output::Output;
use crate::postgres::{DbTarget, PgServer};
use crate::set::BackupSet;
use crate::set::manifest::Problem;
use crate::verify::{self, ScratchServer, VerifyOptions, WhileRestored};

/// Which set to rehearse with.
pub enum SetChoice {
    /// The newest of these sets (listed from every destination) whose last
    /// verification, if any, succeeded; `searched` says where they were
    /// listed, for the error when none is.
    LatestGood {
        sets: Vec<BackupSet>,
        searched: String,
    },
    /// A set the caller found (`--set`).
    Given(Box<BackupSet>),
    /// Dump one now (read-only on the source).
    Fresh {
        source: Box<dyn PgServer>,
        backup: Box<BackupOptions>,
    },
}

pub struct RehearseOptions {
    pub set: SetChoice,
    /// The keys that open the set (when it is encrypted).
    pub identities: Option<Arc<crate::set::encryption::Identities>>,
    pub scratch: ScratchServer,
    /// A shell command run against the restored copy.
    pub run: Option<String>,
    pub jobs: u32,
    /// Where to write the JUnit XML report.
    pub junit: Option<PathBuf>,
    /// Where to write the JSON report (besides `--json` on stdout).
    pub report_file: Option<PathBuf>,
}

/// How the `--run` command went.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub command: String,
    /// `None` when it was ended by a signal.
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct RehearseReport {
    pub ok: bool,
    /// The exit status tusk ends with (docs/exit-codes.md).
    pub exit_code: u8,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub set_id: Option<String>,
    pub fresh: bool,
    /// The image of the throwaway container, when one was used.
    pub image: Option<String>,
    /// Where the test restore ran (no password).
    pub target: Option<String>,
    pub restore_seconds: Option<f64>,
    pub peak_database_bytes: Option<i64>,
    pub tables_compared: usize,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
    pub run: Option<RunOutcome>,
    /// Why the rehearsal failed, when it did.
    pub error: Option<String>,
}

/// Rehearses; always returns a report (also written to the report files),
/// and the error that decides the exit status when it failed.
pub async fn run(opts: RehearseOptions, output: &Output) -> (RehearseReport, Result<()>) {
    let started_at = Utc::now();
    let clock = Instant::now();
    let image = match &opts.scratch {
        ScratchServer::Image(spec) => Some(spec.image.clone()),
        ScratchServer::ContainerLike(spec) => Some(spec.like.image.clone()),
        ScratchServer::Database(_) => None,
    };
    let mut report = RehearseReport {
        ok: false,
        exit_code: 0,
        started_at,
        seconds: 0.0,
        set_id: None,
        fresh: matches!(opts.set, SetChoice::Fresh { .. }),
        image,
        target: None,
        restore_seconds: None,
        peak_database_bytes: None,
        tables_compared: 0,
        problems: Vec::new(),
        notes: Vec::new(),
        run: None,
        error: None,
    };
    let junit = opts.junit.clone();
    let report_file = opts.report_file.clone();
    let outcome = rehearse(opts, output, &mut report).await;
    report.seconds = clock.elapsed().as_secs_f64();
    report.ok = outcome.is_ok();
    if let Err(err) = &outcome {
        report.exit_code = exit_status_for(err);
        report.error = Some(format!("{err:#}"));
    }
    let written = write_reports(&report, junit.as_deref(), report_file.as_deref());
    let outcome = match (outcome, written) {
        (Err(err), _) => Err(err),
        (Ok(()), Err(err)) => {
            report.ok = false;
            report.exit_code = exit_status_for(&err);
            Err(err)
        }
        (Ok(()), Ok(())) => Ok(()),
    };
    (report, outcome)
}

async fn rehearse(
    opts: RehearseOptions,
    output: &Output,
    report: &mut RehearseReport,
) -> Result<()> {
    let set = match opts.set {
        SetChoice::LatestGood { sets, searched } => latest_good(sets, &searched)?,
        SetChoice::Given(set) => *set,
        SetChoice::Fresh { source, backup } => {
            tracing::info!("--fresh: dumping the database now (read-only)");
            let written = backup::run(source.as_ref(), &backup, output).await?;
            BackupSet::open(std::path::Path::new(&written.path))?
        }
    };
    let set = match &opts.identities {
        Some(identities) => set.unlock(identities.clone()),
        None => set,
    };
    report.set_id = Some(set.manifest.id.clone());
    tracing::info!("rehearsing with backup set {}", set.manifest.id);

    let outcome = Arc::new(Mutex::new(None));
    let while_restored: Option<Box<dyn WhileRestored>> = opts.run.map(|command| {
        Box::new(RunCommand {
            command,
            outcome: outcome.clone(),
        }) as Box<dyn WhileRestored>
    });
    let verified = verify::run(
        &set,
        VerifyOptions {
            scratch: Some(opts.scratch),
            jobs: opts.jobs,
            content: true,
            while_restored,
        },
        output,
    )
    .await?;
    report.target = verified.server.clone();
    report.restore_seconds = verified.restore_seconds;
    report.peak_database_bytes = verified.peak_database_bytes;
    report.tables_compared = verified.tables_compared;
    report.problems = verified.problems.clone();
    report.notes = verified.notes.clone();
    report.run = outcome.lock().unwrap().clone();

    if !verified.ok {
        return Err(TuskError::VerificationFailed(format!(
            "{} problem(s) restoring backup set {}",
            verified.problems.len(),
            set.manifest.id
        ))
        .into());
    }
    if let Some(run) = &report.run
        && !run.ok
    {
        return Err(TuskError::CommandFailed(format!(
            "the --run command `{}` failed ({}) against the restored copy",
            run.command,
            run.exit_code
                .map_or("ended by a signal".to_string(), |code| format!(
                    "exit {code}"
                ))
        ))
        .into());
    }
    Ok(())
}

/// The newest set whose last verification, if any, succeeded.
fn latest_good(mut sets: Vec<BackupSet>, searched: &str) -> Result<BackupSet> {
    sets.sort_by(|a, b| {
        (a.manifest.started_at, &a.manifest.id).cmp(&(b.manifest.started_at, &b.manifest.id))
    });
    let newest = sets.len();
    let good = sets
        .into_iter()
        .rev()
        .find(|set| set.verification().is_none_or(|v| v.ok));
    good.ok_or_else(|| {
        if newest == 0 {
            TuskError::usage(format!("no backup sets in {searched}"))
        } else {
            TuskError::usage(format!(
                "none of the {newest} backup sets in {searched} passed its last verification; \
                 run `tusk backup` or name one with --set"
            ))
        }
    })
}

/// `--run`: the admin's command with the restored copy in its environment.
struct RunCommand {
    command: String,
    outcome: Arc<Mutex<Option<RunOutcome>>>,
}

#[async_trait::async_trait]
impl WhileRestored for RunCommand {
    async fn run(&mut self, restored: &DbTarget) -> Result<()> {
        let env = command_env(restored);
        tracing::info!("running `{}` against {}", self.command, restored.redacted());
        let started = Instant::now();
        // Its output goes to stderr, so that stdout stays tusk's JSON.
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("could not run `{}`", self.command))?;
        let outcome = RunOutcome {
            command: self.command.clone(),
            exit_code: status.code(),
            seconds: started.elapsed().as_secs_f64(),
            ok: status.success(),
        };
        tracing::info!(
            "`{}` ended with {status} after {:.1}s",
            self.command,
            outcome.seconds
        );
        *self.outcome.lock().unwrap() = Some(outcome);
        Ok(())
    }
}

/// `DATABASE_URL` and `DB_*` as Mastodon reads them, and libpq's `PG*`.
fn command_env(target: &DbTarget) -> Vec<(String, String)> {
    let libpq: std::collections::HashMap<&str, String> = target.libpq_env().into_iter().collect();
    let host = libpq.get("PGHOST").cloned().unwrap_or_default();
    let port = libpq
        .get("PGPORT")
        .cloned()
        .unwrap_or_else(|| "5432".into());
    let user = libpq.get("PGUSER").cloned().unwrap_or_default();
    let password = libpq.get("PGPASSWORD").cloned().unwrap_or_default();
    let database = target.database().unwrap_or("postgres").to_string();
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let userinfo = if password.is_empty() {
        percent_encode(&user)
    } else {
        format!("{}:{}", percent_encode(&user), percent_encode(&password))
    };
    vec![
        (
            "DATABASE_URL".into(),
            format!(
                "postgresql://{userinfo}@{url_host}:{port}/{}",
                percent_encode(&database)
            ),
        ),
        ("DB_HOST".into(), host.clone()),
        ("DB_PORT".into(), port.clone()),
        ("DB_NAME".into(), database.clone()),
        ("DB_USER".into(), user.clone()),
        ("DB_PASS".into(), password.clone()),
        ("PGHOST".into(), host),
        ("PGPORT".into(), port),
        ("PGDATABASE".into(), database),
        ("PGUSER".into(), user),
        ("PGPASSWORD".into(), password),
    ]
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The rehearsal's steps as JUnit cases.
fn junit_cases(report: &RehearseReport) -> Vec<junit::Case> {
    let of_kind = |kinds: &[&str]| -> Vec<&Problem> {
        report
            .problems
            .iter()
            .filter(|p| kinds.contains(&p.kind.as_str()))
            .collect()
    };
    let failure = |problems: Vec<&Problem>| -> Option<(String, String)> {
        if problems.is_empty() {
            return None;
        }
        let details: Vec<String> = problems
            .iter()
            .map(|p| {
                format!(
                    "{} {}: expected {}, got {}",
                    p.kind, p.subject, p.expected, p.got
                )
            })
            .collect();
        Some((format!("{} problem(s)", problems.len()), details.join("\n")))
    };
    let set_failure = report
        .set_id
        .is_none()
        .then(|| report.error.clone().unwrap_or_default());
    let checksums = failure(of_kind(&["checksum", "size"])).or_else(|| {
        failure(
            of_kind(&["missing"])
                .into_iter()
                .filter(|p| p.got == "no file")
                .collect(),
        )
    });
    let restore_problem = failure(of_kind(&["restore"]));
    let content_kinds = [
        "row_count",
        "schema_migrations",
        "object",
        "database_property",
        "content",
        "sequence",
        "large_objects",
    ];
    let content = failure(
        report
            .problems
            .iter()
            .filter(|p| {
                content_kinds.contains(&p.kind.as_str())
                    || (p.kind == "missing" && p.got != "no file")
            })
            .collect(),
    );
    let restored = report.restore_seconds.is_some() && restore_problem.is_none();
    // A failure that is no problem of the set (the server, the image) is
    // the restore's.
    let other_error = (report.problems.is_empty() && report.set_id.is_some())
        .then(|| report.error.clone())
        .flatten()
        .filter(|_| report.run.as_ref().is_none_or(|run| run.ok));
    let mut cases = vec![
        junit::Case {
            name: "find the backup set".into(),
            seconds: 0.0,
            failure: set_failure.map(|error| ("no backup set".to_string(), error)),
            skipped: None,
        },
        junit::Case {
            name: "checksums".into(),
            seconds: 0.0,
            failure: checksums.clone(),
            skipped: report.set_id.is_none().then(|| "no backup set".to_string()),
        },
        junit::Case {
            name: "restore".into(),
            seconds: report.restore_seconds.unwrap_or(0.0),
            failure: restore_problem
                .or_else(|| other_error.map(|error| ("the restore failed".to_string(), error))),
            skipped: (report.set_id.is_none() || checksums.is_some())
                .then(|| "the set could not be used".to_string()),
        },
        junit::Case {
            name: "content".into(),
            seconds: 0.0,
            failure: content,
            skipped: (!restored).then(|| "nothing was restored".to_string()),
        },
    ];
    if let Some(run) = &report.run {
        cases.push(junit::Case {
            name: format!("run: {}", run.command),
            seconds: run.seconds,
            failure: (!run.ok).then(|| {
                (
                    run.exit_code
                        .map_or("ended by a signal".to_string(), |code| {
                            format!("exit {code}")
                        }),
                    format!("`{}` failed against the restored copy", run.command),
                )
            }),
            skipped: None,
        });
    }
    // A case is either failed or skipped.
    for case in &mut cases {
        if case.failure.is_some() {
            case.skipped = None;
        }
    }
    cases
}

fn write_reports(
    report: &RehearseReport,
    junit_path: Option<&Path>,
    report_path: Option<&Path>,
) -> Result<()> {
    if let Some(path) = report_path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("could not write the report {}", path.display()))?;
    }
    if let Some(path) = junit_path {
        let suite = format!(
            "rehearse {}",
            report.set_id.as_deref().unwrap_or("(no set)")
        );
        let xml = junit::write(
            &suite,
            &report.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            report.seconds,
            &junit_cases(report),
        )?;
        std::fs::write(path, xml)
            .with_context(|| format!("could not write the JUnit report {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_gets_the_copy_in_mastodon_and_libpq_terms() {
        let target =
            DbTarget::parse("postgresql://mastodon:p%40ss:w@10.1.2.3:5433/tusk_verify_1").unwrap();
        let env: std::collections::HashMap<String, String> =
            command_env(&target).into_iter().collect();
        assert_eq!(env["DB_HOST"], "10.1.2.3");
        assert_eq!(env["DB_PORT"], "5433");
        assert_eq!(env["DB_NAME"], "tusk_verify_1");
        assert_eq!(env["DB_USER"], "mastodon");
        assert_eq!(env["DB_PASS"], "p@ss:w");
        assert_eq!(
            env["DATABASE_URL"],
            "postgresql://mastodon:p%40ss%3Aw@10.1.2.3:5433/tusk_verify_1"
        );
        assert_eq!(env["PGDATABASE"], "tusk_verify_1");
    }

    fn report_with(problems: &[(&str, &str)], run_ok: Option<bool>) -> RehearseReport {
        RehearseReport {
            ok: false,
            exit_code: 3,
            started_at: Utc::now(),
            seconds: 1.0,
            set_id: Some("m-20261207T010203Z".into()),
            fresh: false,
            image: None,
            target: None,
            restore_seconds: Some(0.5),
            peak_database_bytes: None,
            tables_compared: 2,
            problems: problems
                .iter()
                .map(|(kind, got)| Problem {
                    kind: kind.to_string(),
                    subject: "accounts".into(),
                    expected: "3".into(),
                    got: got.to_string(),
                })
                .collect(),
            notes: Vec::new(),
            run: run_ok.map(|ok| RunOutcome {
                command: "rails db:migrate".into(),
                exit_code: Some(if ok { 0 } else { 1 }),
                seconds: 2.0,
                ok,
            }),
            error: None,
        }
    }

    fn failed(cases: &[junit::Case]) -> Vec<String> {
        cases
            .iter()
            .filter(|c| c.failure.is_some())
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn each_problem_fails_its_own_case() {
        assert_eq!(
            failed(&junit_cases(&report_with(&[("checksum", "x")], None))),
            ["checksums"]
        );
        assert_eq!(
            failed(&junit_cases(&report_with(
                &[("row_count", "2")],
                Some(true)
            ))),
            ["content"]
        );
        assert_eq!(
            failed(&junit_cases(&report_with(&[], Some(false)))),
            ["run: rails db:migrate"]
        );
    }
}
