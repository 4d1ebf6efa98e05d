//! `tusk backup`: roles and database into one checksummed backup set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio_postgres::Client;

use crate::docker::services::AppServices;
use crate::janitor;
use crate::output::{Output, human_bytes};
use crate::postgres::{PgServer, Tool, ToolCommand, server_version};
use crate::set::Compression;
use crate::set::manifest::{
    Artefact, ArtefactKind, CompressionInfo, DatabaseFacts, Manifest, SourceInfo, ToolInfo,
};
use crate::set::runs::{self, RunRecord};
use crate::set::{DirLock, LockPolicy, PartialSet, new_id, stream};

use crate::prune_sets::{self, DestinationReport, DirDestination};
use chrono_tz::Tz;

/// What `tusk backup` needs to know, free of any CLI type.
#[derive(Debug)]
pub struct BackupOptions {
    pub backup_dir: PathBuf,
    pub instance: String,
    pub database: String,
    pub compression: Compression,
    pub compression_level: i32,
    /// `direct` or `docker`, recorded in the manifest.
    pub mode: String,
    /// Mastodon's app containers to stop for the dump and start again
    /// afterwards, whatever happens (Docker mode's `--stop-services`).
    pub stop_services: Option<AppServices>,
    /// How long to wait for another run's lock on the backup directory.
    pub lock: LockPolicy,
    /// Prune this destination (the backup directory's) once the new set is
    /// complete, under the same lock (`--prune`).
    pub prune: Option<PruneAfter>,
}

/// What `tusk backup --prune` prunes afterwards.
#[derive(Debug, Clone)]
pub struct PruneAfter {
    pub destination: DirDestination,
    pub time_zone: Tz,
}

/// The outcome, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub database: String,
    pub tables: usize,
    pub rows: i64,
    pub artefacts: Vec<Artefact>,
    pub durations: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// What `--prune` decided and removed afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<DestinationReport>,
}

/// Writes a new backup set, holding the backup directory's lock. With
/// `opts.stop_services`, the app is stopped once the lock is held and
/// always started again, also when the dump fails.
pub async fn run(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    // The lock comes first: a run that waits for it, or gives up, has
    // stopped nothing.
    let lock = DirLock::acquire(&opts.backup_dir, "backup", &opts.lock).await?;
    // Under the lock, whatever a killed run left here is stale.
    janitor::sweep_backup_dir(&lock);
    janitor::sweep_tools(server).await;
    let mut report = match &opts.stop_services {
        None => write_set(server, opts, output).await?,
        Some(app) => {
            let stopped = app.stop().await?;
            let outcome = write_set(server, opts, output).await;
            let names = stopped.names().join(", ");
            stopped.start().await?;
            if !names.is_empty() {
                tracing::info!("started {names} again");
            }
            outcome?
        }
    };
    // The set is complete and recorded as the last good backup; the lock is
    // still ours, so no other run comes between the backup and its pruning.
    if let Some(prune) = &opts.prune {
        let pruned =
            prune_sets::prune_locked(&prune.destination, prune.time_zone, false, false, output)
                .with_context(|| {
                    format!(
                        "backup {} is complete, but pruning {} failed",
                        report.id, prune.destination.name
                    )
                })?;
        report.pruned = Some(pruned);
    }
    Ok(report)
}

/// Dumps the set and records the run; the caller holds the lock (and
/// keeps it for `--prune`).
async fn write_set(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    // Recorded once the lock is ours: a run that could not start is no run.
    let run = RunRecord::start("backup");
    runs::save(&opts.backup_dir, &run)?;
    let outcome = dump_set(server, opts, output).await;
    let ended = run.finish(
        &outcome
            .as_ref()
            .map(|report| (report.id.clone(), report.bytes))
            .map_err(|err| anyhow::anyhow!("{err:#}")),
    );
    if let Err(err) = runs::save(&opts.backup_dir, &ended) {
        // The set itself is complete (or the run failed for its own reason).
        tracing::warn!("{err:#}");
    }
    outcome
}

async fn dump_set(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    let mut started_at = Utc::now();
    let mut durations = BTreeMap::new();
    let mut notes = Vec::new();

    let stage = Instant::now();
    let session = server.connect(&opts.database).await?;
    let (server_major, server_version) = server_version(&session).await?;
    let (dump_major, dump_version) = server.tool_version(Tool::PgDump).await?;
    if dump_major < server_major {
        bail!(
            "pg_dump {dump_version} ({}) cannot dump a PostgreSQL {server_version} server: \
             install the PostgreSQL {server_major} client tools or set postgres.bin_dir",
            server.describe_tools()
        );
    }
    let superuser: bool = session
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    if !superuser {
        let note = "the dumping role is not a superuser: roles were dumped without passwords \
                    (--no-role-passwords); set them again after a restore"
            .to_string();
        tracing::warn!("{note}");
        notes.push(note);
    }
    durations.insert("connect".into(), stage.elapsed().as_secs_f64());

    // Ids have one-second resolution; a second run within the same second
    // waits for the next one rather than failing.
    if opts
        .backup_dir
        .join(new_id(&opts.instance, started_at))
        .exists()
    {
        let into_second = u64::from(started_at.timestamp_subsec_millis());
        tokio::time::sleep(std::time::Duration::from_millis(
            1000 - into_second.min(999),
        ))
        .await;
        started_at = Utc::now();
    }
    let id = new_id(&opts.instance, started_at);
    let partial = PartialSet::create(&opts.backup_dir, &id)?;
    tracing::info!(
        "backing up {} into {} ({} level {})",
        server.target().with_database(&opts.database),
        partial.dir.display(),
        opts.compression.name(),
        opts.compression_level
    );

    // The roles do not belong to the snapshot, so their small dump runs
    // alongside the database's instead of before it.
    let stage = Instant::now();
    let globals = async {
        let artefact = dump_globals(server, opts, &partial, superuser).await?;
        Ok::<_, anyhow::Error>((artefact, stage.elapsed().as_secs_f64()))
    };
    let ((globals, globals_seconds), (database_artefact, facts)) = tokio::try_join!(
        globals,
        dump_database(server, &session, opts, &partial, output)
    )?;
    durations.insert("globals".into(), globals_seconds);
    durations.insert("database".into(), stage.elapsed().as_secs_f64());
    tracing::info!(
        "database dumped: {} tables, {} rows, {} compressed from {} in {:.1}s",
        facts.tables.len(),
        facts.tables.values().sum::<i64>(),
        human_bytes(database_artefact.bytes),
        human_bytes(database_artefact.uncompressed_bytes),
        stage.elapsed().as_secs_f64()
    );

    let stage = Instant::now();
    let mut manifest = Manifest {
        format: crate::set::manifest::MANIFEST_FORMAT,
        id: id.clone(),
        instance: opts.instance.clone(),
        tool: ToolInfo {
            name: "tusk".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        started_at,
        finished_at: Utc::now(),
        source: SourceInfo {
            server: server.target().with_database(&opts.database).redacted(),
            server_version,
            server_major,
            pg_dump_version: dump_version,
            mode: opts.mode.clone(),
            superuser,
            role_passwords: superuser,
        },
        database: facts,
        compression: CompressionInfo {
            algorithm: opts.compression,
            level: opts.compression_level,
        },
        artefacts: vec![globals, database_artefact],
        durations: durations.clone(),
        notes: notes.clone(),
    };
    manifest.durations.insert("finish".into(), 0.0);
    let path = partial.commit(&manifest)?;
    durations.insert("finish".into(), stage.elapsed().as_secs_f64());
    tracing::info!(
        "backup set {id} complete: {}",
        human_bytes(manifest.total_bytes())
    );

    Ok(BackupReport {
        id,
        path,
        bytes: manifest.total_bytes(),
        database: opts.database.clone(),
        tables: manifest.database.tables.len(),
        rows: manifest.database.tables.values().sum(),
        artefacts: manifest.artefacts,
        durations,
        notes,
        pruned: None,
    })
}

async fn dump_globals(
    server: &dyn PgServer,
    opts: &BackupOptions,
    partial: &PartialSet,
    superuser: bool,
) -> Result<Artefact> {
    let mut command = ToolCommand::new(Tool::PgDumpall)
        .arg("--globals-only")
        .arg("--no-password")
        .arg(format!("--database={}", opts.database));
    if !superuser {
        command = command.arg("--no-role-passwords");
    }
    let name = format!("globals.sql{}", opts.compression.suffix());
    stream_tool_to_artefact(
        server,
        command,
        partial,
        &name,
        ArtefactKind::Globals,
        opts,
        // A few kilobytes; a second bar would only flicker beside pg_dump's.
        ProgressBar::hidden(),
    )
    .await
}

/// Dumps the database from a snapshot exported by `session`, counting every
/// table's rows in that same snapshot while pg_dump streams.
async fn dump_database(
    server: &dyn PgServer,
    session: &Client,
    opts: &BackupOptions,
    partial: &PartialSet,
    output: &Output,
) -> Result<(Artefact, DatabaseFacts)> {
    // The exporting transaction must stay open until pg_dump has imported
    // the snapshot; it stays open until the dump ends, which also serves
    // the counts.
    session
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .context("could not start the snapshot transaction")?;
    let snapshot: String = session
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("could not export a snapshot")?
        .get(0);

    let command = ToolCommand::new(Tool::PgDump)
        .arg("--format=custom")
        // tusk compresses the stream itself, faster and with zstd.
        .arg("--compress=0")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-password")
        .database(&opts.database)
        .bulk_output();
    let name = format!("database.dump{}", opts.compression.suffix());
    let dump = stream_tool_to_artefact(
        server,
        command,
        partial,
        &name,
        ArtefactKind::Database,
        opts,
        output.byte_progress("pg_dump", None),
    );
    let (artefact, facts) = tokio::try_join!(dump, crate::set::facts::read(session))?;
    session.batch_execute("COMMIT").await?;
    Ok((artefact, facts))
}

async fn stream_tool_to_artefact(
    server: &dyn PgServer,
    command: ToolCommand,
    partial: &PartialSet,
    name: &str,
    kind: ArtefactKind,
    opts: &BackupOptions,
    progress: ProgressBar,
) -> Result<Artefact> {
    let label = command.tool.program();
    let mut process = server.spawn(command).await?;
    let stdout = process.take_stdout();
    let path = partial.dir.join(name);
    let written = stream::write_compressed(
        stdout,
        &path,
        opts.compression,
        opts.compression_level,
        &progress,
    )
    .await;
    progress.finish_and_clear();
    // The exit status decides, even when the stream looked complete: a
    // backend killed mid-dump can still leave a well-formed prefix.
    let exit = process.wait().await;
    let written = match (written, exit) {
        (Ok(written), Ok(_)) => written,
        (_, Err(err)) => return Err(err),
        (Err(err), Ok(_)) => return Err(err),
    };
    if written.uncompressed_bytes == 0 {
        bail!("{label} produced no output");
    }
    Ok(Artefact {
        name: name.to_string(),
        kind,
        bytes: written.bytes,
        sha256: written.sha256,
        uncompressed_bytes: written.uncompressed_bytes,
    })
}
