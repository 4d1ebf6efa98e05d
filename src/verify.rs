//! `tusk verify`: proves a backup set restores to the data it recorded.
//!
//! First every artefact is re-hashed against the manifest. Then the
//! database is restored into a scratch database and compared with the
//! manifest: each table's row count, the schema_migrations set, and the
//! objects Mastodon needs but schema.rb does not create (`timestamp_id()`
//! and the id sequences). Then the database's own properties (settings,
//! role settings, comment, grants, connection limit) are applied from the
//! archive as a restore applies them and compared with those the backup
//! recorded. The scratch database is dropped in every case.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::manifest::{Problem, Verification};
use crate::backup::set::BackupSet;
use crate::backup::{migrations_facts, table_key};
use crate::database_properties::{self, existing_roles};
use crate::output::Output;
use crate::postgres::PgServer;
use crate::restore::{self, LoadOptions};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub checksums_only: bool,
    pub jobs: u32,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub checksums_only: bool,
    pub server: Option<String>,
    pub tables_compared: usize,
    pub restore_seconds: Option<f64>,
    pub peak_database_bytes: Option<i64>,
    pub problems: Vec<Problem>,
    /// What was not compared, and why.
    pub notes: Vec<String>,
}

/// Verifies `set`; `server` hosts the scratch restore unless checksums only.
pub async fn run(
    set: &BackupSet,
    server: Option<&dyn PgServer>,
    opts: &VerifyOptions,
    output: &Output,
) -> Result<VerifyReport> {
    let mut problems = set.check_artefacts().await?;
    let mut report = VerifyReport {
        id: set.manifest.id.clone(),
        ok: false,
        checksums_only: opts.checksums_only,
        server: None,
        tables_compared: 0,
        restore_seconds: None,
        peak_database_bytes: None,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if problems.is_empty() {
        tracing::info!("checksums of {} match its manifest", set.manifest.id);
        if let (false, Some(server)) = (opts.checksums_only, server) {
            report.server = Some(server.target().redacted());
            test_restore(set, server, opts, output, &mut report, &mut problems).await?;
        }
    }
    report.ok = problems.is_empty();
    report.problems = problems;
    set.record_verification(&Verification {
        verified_at: Utc::now(),
        ok: report.ok,
        checksums_only: report.checksums_only,
        server: report.server.clone(),
        restore_seconds: report.restore_seconds,
        peak_database_bytes: report.peak_database_bytes,
        problems: report.problems.clone(),
    })?;
    Ok(report)
}

async fn test_restore(
    set: &BackupSet,
    server: &dyn PgServer,
    opts: &VerifyOptions,
    output: &Output,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let mut admin = restore::connect_maintenance(server).await?;
    let me: String = admin
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let scratch = format!("tusk_verify_{}", restore::random_hex());
    let guard = restore::create_scratch_database(server, &admin, &scratch, &me, set).await?;
    tracing::info!(
        "test restore of {} into {scratch} on {}",
        set.manifest.id,
        server.target()
    );

    // Ownership and grants are not what verify checks, and the roles may not
    // exist on the scratch server.
    let load = LoadOptions {
        jobs: opts.jobs,
        no_owner: true,
        no_acl: true,
        role: None,
        analyze: false,
    };
    let started = Instant::now();
    let restore = restore::load_database(server, set, &scratch, &load, output);
    let (loaded, peak) = watch_size(&admin, &scratch, restore).await;
    report.restore_seconds = Some(started.elapsed().as_secs_f64());
    report.peak_database_bytes = peak;

    let outcome = match loaded {
        Ok(()) => match compare(set, server, &scratch, report, problems).await {
            Ok(()) => compare_properties(set, &mut admin, &scratch, report, problems).await,
            Err(err) => Err(err),
        },
        Err(err) => {
            problems.push(Problem {
                kind: "restore".into(),
                subject: set.manifest.id.clone(),
                expected: "pg_restore succeeds".into(),
                got: format!("{err:#}"),
            });
            Ok(())
        }
    };
    guard.run().await?;
    outcome
}

/// Runs `work` while sampling the database's size; returns its result and the peak.
async fn watch_size<T>(
    admin: &Client,
    database: &str,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<i64>) {
    let mut peak: Option<i64> = None;
    let sample = || async {
        admin
            .query_one(
                "SELECT pg_database_size(oid) FROM pg_database WHERE datname = $1",
                &[&database],
            )
            .await
            .ok()
            .map(|row| row.get::<_, i64>(0))
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(size) = sample().await {
                    peak = Some(peak.map_or(size, |p| p.max(size)));
                }
            }
        }
    };
    if let Some(size) = sample().await {
        peak = Some(peak.map_or(size, |p| p.max(size)));
    }
    (result, peak)
}

/// Applies the archive's database-level statements to the scratch database
/// and compares its properties with those the backup recorded. Statements
/// naming roles this server lacks are left out, and so are those roles'
/// entries in the comparison.
async fn compare_properties(
    set: &BackupSet,
    admin: &mut Client,
    scratch: &str,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let Some(recorded) = &set.manifest.database.properties else {
        report.notes.push(
            "this set was written before tusk recorded the database's own properties \
             (settings, comment, grants); they were not compared"
                .into(),
        );
        return Ok(());
    };
    let script = match restore::read_property_script(set).await {
        Ok(script) => script,
        Err(err) => {
            problems.push(Problem {
                kind: "database_property".into(),
                subject: "archive".into(),
                expected: "the database's properties in the archive".into(),
                got: format!("{err:#}"),
            });
            return Ok(());
        }
    };
    let roles = existing_roles(admin).await?;
    let (script, left_out) = script.split_by_roles(&roles);
    if !left_out.is_empty() {
        report.notes.push(format!(
            "not applied nor compared, their roles do not exist on this server: {}",
            left_out.join(", ")
        ));
    }
    let denied = match script.apply_permitted(admin, scratch).await {
        Ok(denied) => denied,
        Err(err) => {
            problems.push(Problem {
                kind: "database_property".into(),
                subject: "apply".into(),
                expected: "the archive's database properties apply".into(),
                got: format!("{err:#}"),
            });
            return Ok(());
        }
    };
    let mut expected = recorded.for_roles(&roles);
    let mut got = database_properties::read(admin, scratch)
        .await?
        .for_roles(&roles);
    if !denied.is_empty() {
        let mut described: Vec<String> = Vec::new();
        for kind in &denied {
            expected.forget(kind);
            got.forget(kind);
            let description = kind.describe();
            if !described.contains(&description) {
                described.push(description);
            }
        }
        report.notes.push(format!(
            "not applied nor compared, the verifying role may not set them: {}",
            described.join(", ")
        ));
    }
    problems.extend(expected.differences(&got));
    Ok(())
}

async fn compare(
    set: &BackupSet,
    server: &dyn PgServer,
    scratch: &str,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let session = server.connect(scratch).await?;
    let facts = &set.manifest.database;

    for (table, expected) in &facts.tables {
        let (schema, name) = match table.split_once('.') {
            Some((schema, name)) => (schema.to_string(), name.to_string()),
            None => ("public".to_string(), table.clone()),
        };
        let got = session
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    crate::postgres::quote_ident(&schema),
                    crate::postgres::quote_ident(&name)
                ),
                &[],
            )
            .await
            .map(|row| row.get::<_, i64>(0));
        report.tables_compared += 1;
        match got {
            Ok(got) if got == *expected => {}
            Ok(got) => problems.push(Problem {
                kind: "row_count".into(),
                subject: table.clone(),
                expected: expected.to_string(),
                got: got.to_string(),
            }),
            Err(_) => problems.push(Problem {
                kind: "missing".into(),
                subject: table.clone(),
                expected: format!("{expected} rows"),
                got: "no such table".into(),
            }),
        }
    }

    if let Some(expected) = &facts.schema_migrations {
        let versions: Result<Vec<String>, _> = session
            .query("SELECT version::text FROM public.schema_migrations", &[])
            .await
            .map(|rows| rows.iter().map(|row| row.get(0)).collect());
        let got = versions.map(migrations_facts);
        match got {
            Ok(got) if got == *expected => {}
            Ok(got) => problems.push(Problem {
                kind: "schema_migrations".into(),
                subject: "schema_migrations".into(),
                expected: format!("{} versions, max {:?}", expected.count, expected.max),
                got: format!("{} versions, max {:?}", got.count, got.max),
            }),
            Err(_) => problems.push(Problem {
                kind: "missing".into(),
                subject: "schema_migrations".into(),
                expected: "table".into(),
                got: "no such table".into(),
            }),
        }
    }

    if facts.timestamp_id {
        let exists: bool = session
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'timestamp_id')",
                &[],
            )
            .await?
            .get(0);
        if !exists {
            problems.push(Problem {
                kind: "object".into(),
                subject: "timestamp_id()".into(),
                expected: "function".into(),
                got: "missing".into(),
            });
        }
    }

    let sequences: Vec<String> = session
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S'",
            &[],
        )
        .await?
        .iter()
        .map(|row| table_key(row.get(0), row.get(1)))
        .collect();
    for sequence in &facts.sequences {
        if !sequences.contains(sequence) {
            problems.push(Problem {
                kind: "object".into(),
                subject: sequence.clone(),
                expected: "sequence".into(),
                got: "missing".into(),
            });
        }
    }
    Ok(())
}
