//! `tusk backup`: roles and database into one checksummed backup set.

pub mod files;
pub mod redis;

use std::collections::BTreeMap;
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
use crate::process::ToolProcess;
use crate::set::Compression;
use crate::set::bucket::{self, PartialBucketSet};
use crate::set::content::{self, ContentDigests, DigestTap, TapHandle};
use crate::set::destination::{Destination, DestinationLock, Place};
use crate::set::manifest::{
    Artefact, ArtefactKind, CompressionInfo, DatabaseFacts, Manifest, SourceInfo, ToolInfo,
};
use crate::set::runs::{self, RunRecord};
use crate::set::{LockPolicy, PartialSet, new_id, stream};

use crate::prune_sets::{self, DestinationReport};
use chrono_tz::Tz;

/// What `tusk backup` needs to know, free of any CLI type.
#[derive(Debug)]
pub struct BackupOptions {
    /// Where the set goes: every destination here gets the same set, from
    /// one dump (a directory through `<id>.partial/`, a bucket through
    /// multipart uploads, with no local copy).
    pub destinations: Vec<Destination>,
    pub instance: String,
    pub database: String,
    pub compression: Compression,
    pub compression_level: i32,
    /// `direct` or `docker`, recorded in the manifest.
    pub mode: String,
    /// Mastodon's app containers to stop for the dump and start again
    /// afterwards, whatever happens (Docker mode's `--stop-services`).
    pub stop_services: Option<AppServices>,
    /// How long to wait for another run's lock on a destination.
    pub lock: LockPolicy,
    /// Prune every destination by its retention once the new set is
    /// complete, under the same locks (`--prune`), with calendar buckets
    /// in this zone.
    pub prune: Option<Tz>,
    /// Encryption, the instance's files and what is known of Mastodon.
    pub contents: files::SetContents,
}

impl BackupOptions {
    /// The first directory among the destinations (where a migration keeps
    /// its state); empty when the set goes only to buckets.
    pub fn backup_dir(&self) -> std::path::PathBuf {
        self.destinations
            .iter()
            .find_map(Destination::dir)
            .cloned()
            .unwrap_or_default()
    }
}

/// Where the set was written.
#[derive(Debug, Serialize)]
pub struct WrittenTo {
    pub destination: String,
    /// The set's directory, or the bucket and its prefix.
    pub location: String,
}

/// The outcome, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    /// The first destination's location of the set.
    pub path: String,
    pub destinations: Vec<WrittenTo>,
    pub bytes: u64,
    pub database: String,
    pub tables: usize,
    pub rows: i64,
    pub artefacts: Vec<Artefact>,
    pub durations: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// What `--prune` decided and removed afterwards, per destination.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<DestinationReport>,
}

/// Writes a new backup set, holding every destination's lock. With
/// `opts.stop_services`, the app is stopped once the locks are held and
/// always started again, also when the dump fails.
pub async fn run(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    if opts.destinations.is_empty() {
        bail!("no destination to write the backup to");
    }
    // The locks come first: a run that waits for them, or gives up, has
    // stopped nothing.
    let mut locks = Vec::new();
    for destination in &opts.destinations {
        match DestinationLock::acquire(destination, "backup", &opts.lock).await {
            Ok(lock) => locks.push(lock),
            Err(err) => {
                release(locks).await;
                return Err(err);
            }
        }
    }
    let outcome = locked(server, opts, output, &locks).await;
    release(locks).await;
    outcome
}

async fn release(locks: Vec<DestinationLock>) {
    for lock in locks {
        if let Err(err) = lock.release().await {
            tracing::warn!("{err:#}");
        }
    }
}

async fn locked(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
    locks: &[DestinationLock],
) -> Result<BackupReport> {
    // Under the lock, whatever a killed run left here is stale.
    for lock in locks {
        if let DestinationLock::Dir(lock) = lock {
            janitor::sweep_backup_dir(lock);
        }
    }
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
    // The set is complete and recorded as the last good backup; the locks
    // are still ours, so no other run comes between the backup and its
    // pruning.
    if let Some(time_zone) = opts.prune {
        for destination in &opts.destinations {
            let pruned = prune_sets::prune_locked(destination, time_zone, false, false, output)
                .await
                .with_context(|| {
                    format!(
                        "backup {} is complete, but pruning {} failed",
                        report.id, destination.name
                    )
                })?;
            report.pruned.push(pruned);
        }
    }
    Ok(report)
}

/// Records a run on every destination; a failure to record is logged.
async fn save_runs(destinations: &[Destination], record: &RunRecord) -> Result<()> {
    for destination in destinations {
        match &destination.place {
            Place::Dir(dir) => runs::save(dir, record)?,
            Place::Bucket(bucket) => bucket::save_run(bucket, record).await?,
        }
    }
    Ok(())
}

/// Dumps the set and records the run; the caller holds the locks (and
/// keeps them for `--prune`).
async fn write_set(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    // Recorded once the locks are ours: a run that could not start is no run.
    let run = RunRecord::start("backup");
    save_runs(&opts.destinations, &run).await?;
    let outcome = dump_set(server, opts, output).await;
    let ended = run.finish(
        &outcome
            .as_ref()
            .map(|report| (report.id.clone(), report.bytes))
            .map_err(|err| anyhow::anyhow!("{err:#}")),
    );
    if let Err(err) = save_runs(&opts.destinations, &ended).await {
        // The set itself is complete (or the run failed for its own reason).
        tracing::warn!("{err:#}");
    }
    outcome
}

/// The set under construction at every destination of the run: one
/// stream feeds them all ([`stream::Tee`]).
struct SetWriters {
    dirs: Vec<(String, PartialSet)>,
    buckets: Vec<(String, PartialBucketSet)>,
}

impl SetWriters {
    async fn create(destinations: &[Destination], id: &str) -> Result<Self> {
        let mut writers = SetWriters {
            dirs: Vec::new(),
            buckets: Vec::new(),
        };
        for destination in destinations {
            match &destination.place {
                Place::Dir(dir) => writers
                    .dirs
                    .push((destination.name.clone(), PartialSet::create(dir, id)?)),
                Place::Bucket(bucket) => match PartialBucketSet::create(bucket, id).await {
                    Ok(partial) => writers.buckets.push((destination.name.clone(), partial)),
                    Err(err) => {
                        writers.abandon().await;
                        return Err(err).with_context(|| {
                            format!(
                                "could not start the set in destination {}",
                                destination.name
                            )
                        });
                    }
                },
            }
        }
        Ok(writers)
    }

    /// Where the artefact `name` goes: one sink, or a tee of all of them.
    async fn sink(&self, name: &str) -> Result<stream::ArtefactSink> {
        let mut sinks = Vec::new();
        for (_, partial) in &self.dirs {
            sinks.push(partial.sink(name).await?);
        }
        for (_, partial) in &self.buckets {
            sinks.push(partial.sink(name));
        }
        let mut sinks = sinks.into_iter();
        let first = sinks.next().context("no destination")?;
        Ok(sinks.fold(first, |joined, next| {
            Box::new(stream::Tee::new(joined, next)) as stream::ArtefactSink
        }))
    }

    fn describe(&self) -> String {
        self.dirs
            .iter()
            .map(|(_, partial)| partial.describe())
            .chain(self.buckets.iter().map(|(_, partial)| partial.describe()))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Writes the manifest last at each destination: the buckets first
    /// (their upload is the slower part to lose), then the directories.
    async fn commit(self, manifest: &Manifest) -> Result<Vec<WrittenTo>> {
        let mut written = Vec::new();
        for (destination, partial) in self.buckets {
            let place = partial.commit(manifest).await?;
            written.push(WrittenTo {
                destination,
                location: place.describe(),
            });
        }
        for (destination, partial) in self.dirs {
            let path = partial.commit(manifest)?;
            written.push(WrittenTo {
                destination,
                location: path.display().to_string(),
            });
        }
        Ok(written)
    }

    /// Removes what was written (the directories remove themselves when dropped).
    async fn abandon(self) {
        for (destination, partial) in self.buckets {
            if let Err(err) = partial.abandon().await {
                tracing::warn!(
                    "could not remove the incomplete set from {destination} ({err:#}); \
                     `tusk backups prune` removes it after a day, and `tusk backups cleanup` \
                     aborts its uploads"
                );
            }
        }
    }
}

async fn dump_set(
    server: &dyn PgServer,
    opts: &BackupOptions,
    output: &Output,
) -> Result<BackupReport> {
    let mut started_at = Utc::now();
    let mut durations = BTreeMap::new();
    let mut notes = opts.contents.notes.clone();

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
    let taken = |id: &str| {
        opts.destinations
            .iter()
            .filter_map(Destination::dir)
            .any(|dir| dir.join(id).exists())
    };
    if taken(&new_id(&opts.instance, started_at)) {
        let into_second = u64::from(started_at.timestamp_subsec_millis());
        tokio::time::sleep(std::time::Duration::from_millis(
            1000 - into_second.min(999),
        ))
        .await;
        started_at = Utc::now();
    }
    let id = new_id(&opts.instance, started_at);
    let partial = SetWriters::create(&opts.destinations, &id).await?;
    tracing::info!(
        "backing up {} into {} ({} level {})",
        server.target().with_database(&opts.database),
        partial.describe(),
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
    let dumped = tokio::try_join!(
        globals,
        dump_database(server, &session, opts, &partial, output)
    );
    let ((globals, globals_seconds), (database_artefact, facts, content)) = match dumped {
        Ok(dumped) => dumped,
        Err(err) => {
            partial.abandon().await;
            return Err(err);
        }
    };
    let content = match content {
        Ok(content) => Some(content),
        Err(err) => {
            // The set is still a good backup; verify will compute the
            // digests from its archive, as for sets written before them.
            let note = format!("no content digests were recorded: {err:#}");
            tracing::warn!("{note}");
            notes.push(note);
            None
        }
    };
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

    let mut artefacts = vec![globals, database_artefact];
    let stage = Instant::now();
    let more = async {
        let mut more = Vec::new();
        for file in &opts.contents.files {
            more.push(write_instance_file(file, opts, &partial).await?);
        }
        for snapshot in &opts.contents.redis {
            more.push(redis::write(snapshot, opts, &partial, &mut notes).await?);
        }
        Ok::<_, anyhow::Error>(more)
    };
    match more.await {
        Ok(more) => artefacts.extend(more),
        Err(err) => {
            partial.abandon().await;
            return Err(err);
        }
    }
    if !opts.contents.redis.is_empty() {
        durations.insert("redis".into(), stage.elapsed().as_secs_f64());
    }
    let secrets = opts
        .contents
        .env_file
        .as_ref()
        .map(|env| files::check_secrets(env, &facts));
    if let Some(check) = secrets.as_ref().filter(|c| !c.missing.is_empty()) {
        notes.push(format!(
            "{} lacks {}: a restored instance loses what they protect",
            check.env_file,
            check.missing.join(", ")
        ));
    }
    let mastodon = files::mastodon_info(opts.contents.mastodon.clone(), &facts);

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
        artefacts,
        durations: durations.clone(),
        notes: notes.clone(),
        content,
        encryption: opts.contents.encryption.as_ref().map(|e| e.info()),
        mastodon,
        secrets,
    };
    manifest.format = manifest.required_format();
    manifest.durations.insert("finish".into(), 0.0);
    let written = partial.commit(&manifest).await?;
    durations.insert("finish".into(), stage.elapsed().as_secs_f64());
    tracing::info!(
        "backup set {id} complete: {}",
        human_bytes(manifest.total_bytes())
    );

    Ok(BackupReport {
        id,
        path: written
            .first()
            .map(|w| w.location.clone())
            .unwrap_or_default(),
        destinations: written,
        bytes: manifest.total_bytes(),
        database: opts.database.clone(),
        tables: manifest.database.tables.len(),
        rows: manifest.database.tables.values().sum(),
        artefacts: manifest.artefacts,
        durations,
        notes,
        pruned: Vec::new(),
    })
}

async fn dump_globals(
    server: &dyn PgServer,
    opts: &BackupOptions,
    partial: &SetWriters,
    superuser: bool,
) -> Result<Artefact> {
    let mut command = ToolCommand::new(Tool::PgDumpall)
        .arg("--globals-only")
        .arg("--no-password")
        .arg(format!("--database={}", opts.database));
    if !superuser {
        command = command.arg("--no-role-passwords");
    }
    let name = artefact_name("globals.sql", opts);
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
    .map(|(artefact, _)| artefact)
}

/// Dumps the database from a snapshot exported by `session`, counting every
/// table's rows in that same snapshot while pg_dump streams, and digesting
/// the archive's content on its way to the compressor (the digests' own
/// failure is the third result: it does not fail the backup).
async fn dump_database(
    server: &dyn PgServer,
    session: &Client,
    opts: &BackupOptions,
    partial: &SetWriters,
    output: &Output,
) -> Result<(Artefact, DatabaseFacts, Result<ContentDigests>)> {
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

    // The output settings pg_dump leaves as the session has them, read in
    // a session of the same role on the same database.
    let settings = content::session_settings(session).await?;
    let command = ToolCommand::new(Tool::PgDump)
        .arg("--format=custom")
        // tusk compresses the stream itself, faster and with zstd.
        .arg("--compress=0")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-password")
        .database(&opts.database)
        .bulk_output();
    let name = artefact_name("database.dump", opts);
    let dump = stream_tool_to_artefact(
        server,
        command,
        partial,
        &name,
        ArtefactKind::Database,
        opts,
        output.byte_progress("pg_dump", None),
    );
    let ((artefact, tap), facts) = tokio::try_join!(dump, crate::set::facts::read(session))?;
    session.batch_execute("COMMIT").await?;
    let digests = match tap {
        Some(tap) => tap.outcome(&settings),
        None => Err(anyhow::anyhow!("the archive was not read")),
    };
    Ok((artefact, facts, digests))
}

/// The stored name of an artefact: its stem, the compression's suffix and,
/// when encrypted, `.age`.
fn artefact_name(stem: &str, opts: &BackupOptions) -> String {
    files::stored_name(
        stem,
        opts.compression.suffix(),
        opts.contents.encryption.is_some(),
    )
}

/// The age layer of one artefact (a new file key), when the set is
/// encrypted: between the compressor and the hash, so the checksum is that
/// of the stored bytes.
async fn seal(opts: &BackupOptions) -> Result<Option<stream::StoredLayer>> {
    let Some(encryption) = &opts.contents.encryption else {
        return Ok(None);
    };
    let prepared = encryption
        .prepare()
        .await
        .context("could not start encrypting")?;
    Ok(Some(Box::new(move |inner: stream::ArtefactSink| {
        Box::new(prepared.wrap(inner)) as stream::ArtefactSink
    })))
}

/// Copies one of the instance's files into the set, compressed (and
/// encrypted) like every artefact.
async fn write_instance_file(
    file: &files::InstanceFile,
    opts: &BackupOptions,
    partial: &SetWriters,
) -> Result<Artefact> {
    let source = tokio::fs::File::open(&file.path)
        .await
        .with_context(|| format!("could not read {}", file.path.display()))?;
    let name = artefact_name(&file.stored_stem, opts);
    let sink = partial.sink(&name).await?;
    let written = stream::write_artefact(
        Box::new(source),
        sink,
        stream::WriteOptions {
            compression: opts.compression,
            level: opts.compression_level,
            progress: &ProgressBar::hidden(),
            layer: seal(opts).await?,
        },
    )
    .await
    .with_context(|| format!("could not write {name} to {}", partial.describe()))?;
    tracing::info!("{} saved as {name}", file.path.display());
    Ok(Artefact {
        name,
        kind: file.kind,
        bytes: written.bytes,
        sha256: written.sha256,
        uncompressed_bytes: written.uncompressed_bytes,
        file: Some(file.restore_as.clone()),
        source: Some(file.path.display().to_string()),
        redis: None,
    })
}

/// Runs a dump tool and streams its output, compressed and hashed, into
/// the artefact `name` of the set being written.
///
/// The tool's stdout stays a plain [`crate::postgres::BoxReader`] up to
/// [`stream::write_artefact`], so a reader that looks at the uncompressed
/// stream (per-table digests) wraps it here. Encryption is a
/// [`stream::StoredLayer`] in the [`stream::WriteOptions`] (and a suffix on
/// `name`).
async fn stream_tool_to_artefact(
    server: &dyn PgServer,
    command: ToolCommand,
    partial: &SetWriters,
    name: &str,
    kind: ArtefactKind,
    opts: &BackupOptions,
    progress: ProgressBar,
) -> Result<(Artefact, Option<TapHandle>)> {
    let mut process = server.spawn(command).await?;
    let mut stdout = process.take_stdout();
    // The database's custom-format archive is digested as it passes, in
    // the task that reads pg_dump's pipe: no copy of the data, no second
    // read ([`content::DigestTap`]).
    let mut tap = None;
    if kind == ArtefactKind::Database {
        let (reader, handle) = DigestTap::new(stdout);
        stdout = Box::new(reader);
        tap = Some(handle);
    }
    let artefact =
        stream_process_to_artefact(process, stdout, partial, name, kind, opts, progress).await?;
    Ok((artefact, tap))
}

/// Streams `stdout` of `process` into the artefact `name`; the process's
/// exit status decides whether the artefact is good.
async fn stream_process_to_artefact(
    process: ToolProcess,
    stdout: crate::process::BoxReader,
    partial: &SetWriters,
    name: &str,
    kind: ArtefactKind,
    opts: &BackupOptions,
    progress: ProgressBar,
) -> Result<Artefact> {
    let label = process.label.clone();
    let written = async {
        let sink = partial.sink(name).await?;
        stream::write_artefact(
            stdout,
            sink,
            stream::WriteOptions {
                compression: opts.compression,
                level: opts.compression_level,
                progress: &progress,
                layer: seal(opts).await?,
            },
        )
        .await
        .with_context(|| format!("could not write {name} to {}", partial.describe()))
    }
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
        file: None,
        source: None,
        redis: None,
    })
}
