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

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::docker::{Container, throwaway};
use crate::janitor;
use crate::output::Output;
use crate::postgres::docker::DockerServer;
use crate::postgres::{DbTarget, PgServer};
use crate::restore::database_properties::{self as properties_sql, existing_roles};
use crate::restore::{self, LoadOptions};
use crate::set::content::{self, ContentDigests, EarlyDigests};
use crate::set::manifest::{ArtefactKind, Problem, Verification};
use crate::set::properties;
use crate::set::{BackupSet, facts};
use bollard::Docker;

/// Where the test restore runs.
pub enum ScratchServer {
    /// A new database on this server, dropped afterwards.
    Database(Box<dyn PgServer>),
    /// A throwaway container from `like`'s image (the same PostgreSQL build),
    /// logging in as `login`, removed afterwards: production is never touched.
    ContainerLike(Box<ContainerLike>),
    /// A throwaway container from a named image (e.g. the next PostgreSQL
    /// major), removed afterwards.
    Image(Box<FromImage>),
}

/// A throwaway container to make from `image`.
pub struct FromImage {
    pub docker: Docker,
    pub image: String,
    pub login: DbTarget,
}

/// Work done against the restored copy after the comparison and before the
/// copy is removed (`tusk rehearse --run`). It records its own outcome; an
/// error means it could not be done at all.
#[async_trait::async_trait]
pub trait WhileRestored: Send {
    async fn run(&mut self, restored: &DbTarget) -> Result<()>;
}

/// A throwaway container to make, from `like`'s image.
pub struct ContainerLike {
    pub docker: Docker,
    pub like: Container,
    pub login: DbTarget,
}

pub struct VerifyOptions {
    /// `None` only re-hashes the artefacts.
    pub scratch: Option<ScratchServer>,
    /// Parallel pg_restore jobs for the test restore; also the sessions
    /// that read the restored tables back for their digests (at most 4).
    pub jobs: u32,
    /// Compare every table's content, the sequences' values and the large
    /// objects with the set's digests, beyond the row counts (the default;
    /// `--counts-only` turns it off).
    pub content: bool,
    /// Run against the restored copy once it loaded.
    pub while_restored: Option<Box<dyn WhileRestored>>,
}

impl VerifyOptions {
    fn comparison(&self) -> Comparison {
        Comparison {
            jobs: self.jobs,
            content: self.content,
        }
    }
}

/// How the test restore loads and compares.
#[derive(Debug, Clone, Copy)]
struct Comparison {
    jobs: u32,
    content: bool,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub checksums_only: bool,
    pub server: Option<String>,
    pub tables_compared: usize,
    /// Whether the tables' content was compared (not only their row counts).
    pub content_compared: bool,
    pub restore_seconds: Option<f64>,
    pub peak_database_bytes: Option<i64>,
    pub problems: Vec<Problem>,
    /// What was not compared, and why.
    pub notes: Vec<String>,
}

/// Verifies `set`: its checksums, then (unless `opts.scratch` is `None`) a
/// test restore compared with the manifest. Records the outcome in the set.
pub async fn run(
    set: &BackupSet,
    mut opts: VerifyOptions,
    output: &Output,
) -> Result<VerifyReport> {
    let mut problems = set.check_artefacts().await?;
    let mut report = VerifyReport {
        id: set.manifest.id.clone(),
        ok: false,
        checksums_only: opts.scratch.is_none(),
        server: None,
        tables_compared: 0,
        content_compared: false,
        restore_seconds: None,
        peak_database_bytes: None,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if problems.is_empty() {
        tracing::info!("checksums of {} match its manifest", set.manifest.id);
        if opts.scratch.is_some() {
            // A key that does not open the set says nothing about the set:
            // an error (exit 1), not a failed verification.
            set.check_identities().await?;
        }
        match opts.scratch.take() {
            None => {}
            Some(ScratchServer::Database(server)) => {
                report.server = Some(server.target().redacted());
                test_restore(
                    set,
                    server.as_ref(),
                    opts.comparison(),
                    &mut opts.while_restored,
                    output,
                    &mut report,
                    &mut problems,
                )
                .await?;
            }
            Some(ScratchServer::ContainerLike(spec)) => {
                let ContainerLike {
                    docker,
                    like,
                    login,
                } = *spec;
                let started = throwaway::start_like(&docker, &like, &login).await;
                in_container(
                    set,
                    started,
                    &docker,
                    &login,
                    &mut opts,
                    output,
                    &mut report,
                    &mut problems,
                )
                .await?;
            }
            Some(ScratchServer::Image(spec)) => {
                let FromImage {
                    docker,
                    image,
                    login,
                } = *spec;
                let started = throwaway::start_from_image(&docker, &image, &image, &login).await;
                in_container(
                    set,
                    started,
                    &docker,
                    &login,
                    &mut opts,
                    output,
                    &mut report,
                    &mut problems,
                )
                .await?;
            }
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
    })
    .await?;
    Ok(report)
}

/// The test restore in a throwaway container, which is removed whatever
/// happens (the guard also runs on a signal).
#[allow(clippy::too_many_arguments)]
async fn in_container(
    set: &BackupSet,
    started: Result<(Container, crate::cleanup::Deferred)>,
    docker: &Docker,
    login: &DbTarget,
    opts: &mut VerifyOptions,
    output: &Output,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let (container, removal) = started?;
    let tested = async {
        let server = DockerServer::new(docker.clone(), container, login)?;
        report.server = Some(server.target().redacted());
        test_restore(
            set,
            &server,
            opts.comparison(),
            &mut opts.while_restored,
            output,
            report,
            problems,
        )
        .await
    }
    .await;
    let removed = removal.run().await;
    tested.and(removed)
}

async fn test_restore(
    set: &BackupSet,
    server: &dyn PgServer,
    comparison: Comparison,
    while_restored: &mut Option<Box<dyn WhileRestored>>,
    output: &Output,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let mut admin = server.connect_maintenance().await?;
    janitor::sweep_tools(server).await;
    janitor::sweep_databases(server, &admin).await;
    let me: String = admin
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let scratch = crate::names::verify_scratch_name();
    let guard = restore::create_scratch_database(server, &admin, &scratch, &me, set).await?;
    tracing::info!(
        "test restore of {} into {scratch} on {}",
        set.manifest.id,
        server.target()
    );

    // Ownership and grants are not what verify checks, and the roles may not
    // exist on the scratch server.
    let load = LoadOptions {
        jobs: comparison.jobs,
        no_owner: true,
        no_acl: true,
        role: None,
        analyze: false,
        early_content: set.manifest.content.clone().filter(|_| comparison.content),
    };
    let started = Instant::now();
    let restore = restore::load_database(server, set, &scratch, &load, output);
    let (loaded, peak) = watch_size(&admin, &scratch, restore).await;
    report.restore_seconds = Some(started.elapsed().as_secs_f64());
    report.peak_database_bytes = peak;

    let outcome = match loaded {
        Ok(early) => {
            let compared =
                match compare(set, server, &scratch, comparison, &early, report, problems).await {
                    Ok(()) => compare_properties(set, &mut admin, &scratch, report, problems).await,
                    Err(err) => Err(err),
                };
            match (compared, while_restored.as_mut()) {
                (Ok(()), Some(work)) => work.run(&server.target().with_database(&scratch)).await,
                (compared, _) => compared,
            }
        }
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
    let mut got = properties::read(admin, scratch).await?.for_roles(&roles);
    if !denied.is_empty() {
        let mut described: Vec<String> = Vec::new();
        for kind in &denied {
            properties_sql::forget(&mut expected, kind);
            properties_sql::forget(&mut got, kind);
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

/// What comparing a restored database with its set's manifest found.
#[derive(Debug, Clone, Serialize)]
pub struct ContentCheck {
    pub tables_compared: usize,
    pub problems: Vec<Problem>,
    /// What was not compared, and why.
    pub notes: Vec<String>,
}

/// Compares `database` on `server`, restored from `set` by a full restore
/// (roles and the database's own properties applied), with what the set
/// recorded: each table's row count and content (`set::content::check`),
/// the applied migrations, the objects Mastodon needs, and the database's
/// properties for the roles that exist there. The same queries as a test
/// restore's, for `tusk migrate`.
/// Tables in `early` were digested while the restore ran and are not read
/// again.
pub async fn compare_restored(
    set: &BackupSet,
    server: &dyn PgServer,
    database: &str,
    early: &EarlyDigests,
) -> Result<ContentCheck> {
    let session = server.connect(database).await?;
    let restored = facts::read(&session)
        .await
        .with_context(|| format!("could not read the restored database {database}"))?;
    let mut problems = facts::compare(&set.manifest.database, &restored);
    let (found, mut notes) = compare_content(set, server, database, session, 2, early).await?;
    problems.extend(found);
    match &set.manifest.database.properties {
        Some(recorded) => {
            let admin = server.connect_maintenance().await?;
            let roles = existing_roles(&admin).await?;
            let got = properties::read(&admin, database).await?.for_roles(&roles);
            problems.extend(recorded.for_roles(&roles).differences(&got));
        }
        None => notes.push(
            "this set was written before tusk recorded the database's own properties; \
             they were not compared"
                .into(),
        ),
    }
    Ok(ContentCheck {
        tables_compared: set.manifest.database.tables.len(),
        problems,
        notes,
    })
}

async fn compare(
    set: &BackupSet,
    server: &dyn PgServer,
    scratch: &str,
    comparison: Comparison,
    early: &EarlyDigests,
    report: &mut VerifyReport,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    // A failure here is the server's, not the set's: it propagates (exit 1)
    // instead of reading as missing tables.
    let session = server.connect(scratch).await?;
    let restored = facts::read(&session)
        .await
        .with_context(|| format!("could not read the restored copy in {scratch}"))?;
    report.tables_compared = set.manifest.database.tables.len();
    problems.extend(facts::compare(&set.manifest.database, &restored));
    if comparison.content {
        let (found, notes) =
            compare_content(set, server, scratch, session, comparison.jobs, early).await?;
        problems.extend(found);
        report.notes.extend(notes);
        report.content_compared = true;
    }
    Ok(())
}

/// Compares the content of `database` (restored from `set`) with the set's
/// digests on `jobs` sessions (at most 4), `session` being the first.
/// Returns the differences and the notes (an older set's digests come
/// from its archive).
async fn compare_content(
    set: &BackupSet,
    server: &dyn PgServer,
    database: &str,
    session: Client,
    jobs: u32,
    early: &EarlyDigests,
) -> Result<(Vec<Problem>, Vec<String>)> {
    let (expected, note) = expected_content(set, &session).await?;
    let mut sessions = vec![session];
    for _ in 1..jobs.clamp(1, 4) {
        sessions.push(server.connect(database).await?);
    }
    let started = Instant::now();
    // Digests taken early are of the recorded content's tables; an older
    // set's expected digests come from its archive, and none were taken.
    let problems = content::check(&sessions, &expected, early)
        .await
        .with_context(|| format!("could not read the restored copy in {database}"))?;
    tracing::info!(
        "content of {} tables ({} digested while restoring), {} sequences and the large \
         objects compared in {:.1}s",
        expected.tables.len(),
        early.len(),
        expected.sequences.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((problems, note.into_iter().collect()))
}

/// The content digests `set` recorded; for a set written before backups
/// recorded them, those of its archive, with a note saying so.
pub async fn expected_content(
    set: &BackupSet,
    session: &Client,
) -> Result<(ContentDigests, Option<String>)> {
    if let Some(recorded) = &set.manifest.content {
        return Ok((recorded.clone(), None));
    }
    let artefact = set
        .manifest
        .artefact(ArtefactKind::Database)
        .context("the set has no database artefact")?;
    // The dump session's TimeZone and bytea_output were not recorded: the
    // verifying session's stand in (the same server's defaults, usually).
    let settings = content::session_settings(session).await?;
    let digests = content::from_archive(set.open_artefact(artefact).await?, &settings)
        .await
        .context("could not compute content digests from the set's archive")?;
    let note = format!(
        "this set was written before tusk recorded content digests: the expected digests \
         were computed from its archive (TimeZone {}, as this session has it), so the \
         comparison proves the restore, not the dump",
        settings.get("TimeZone").map_or("?", String::as_str)
    );
    Ok((digests, Some(note)))
}
