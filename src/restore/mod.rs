//! `tusk restore`: roles first, then the database, into a staging database
//! that replaces the target only once it restored completely.

pub mod analyze;
pub mod database_properties;
pub mod files;
pub mod globals;
pub mod redis;

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio_postgres::Client;

use crate::cleanup;
use crate::error::TuskError;
use crate::janitor;
use crate::names::{ASIDE_PURPOSE, STAGING_PURPOSE};
use crate::output::Output;
use crate::postgres::temporary::{force_drop, hold_temporary_database};
use crate::postgres::{DbTarget, PgServer, Tool, ToolCommand, quote_ident, server_version};
use crate::set::BackupSet;
use crate::set::content::{self, ContentDigests, EarlyDigests};
use crate::set::manifest::ArtefactKind;
use database_properties::{PropertyScript, missing_roles};

/// Session settings for pg_restore: index builds get more memory and
/// commits need not wait for the disk (a crashed restore is redone anyway).
const RESTORE_PGOPTIONS: &str = "-c maintenance_work_mem=512MB -c synchronous_commit=off";

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Database to create or replace on the target server.
    pub database: String,
    /// Replace a target database that holds tables.
    pub force: bool,
    pub jobs: u32,
    pub no_owner: bool,
    /// Leave out all grants: the objects' and the database's own.
    pub no_acl: bool,
    pub role: Option<String>,
    pub globals: bool,
    /// The content to digest while restoring ([`LoadOptions::early_content`]).
    pub early_content: Option<ContentDigests>,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub target: String,
    pub database: String,
    pub replaced_existing: bool,
    pub globals_applied: bool,
    pub kept_roles: Vec<String>,
    /// The database's own properties applied: `setting search_path`,
    /// `comment`, `grants`...
    pub database_properties: Vec<String>,
    /// What an operator should know, e.g. properties that could not be read.
    pub notes: Vec<String>,
    pub seconds: f64,
    /// Tables digested while pg_restore ran ([`LoadOptions::early_content`]).
    #[serde(skip)]
    pub early_content: EarlyDigests,
}

/// How pg_restore loads one database.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub jobs: u32,
    pub no_owner: bool,
    pub no_acl: bool,
    pub role: Option<String>,
    /// Collect planner statistics: table by table while a parallel
    /// pg_restore still runs, the rest at the end.
    pub analyze: bool,
    /// Digest each table's content as soon as a parallel pg_restore has
    /// loaded its rows, on a session of its own, for the comparison that
    /// follows the restore (migrate, verify): it then reads only what was
    /// not digested yet.
    pub early_content: Option<ContentDigests>,
}

/// Restores the roles and the database of `set`, which the caller has
/// checked first ([`BackupSet::require_intact`]: the hashing is done once
/// when files or Redis are restored beside the database).
pub async fn run(
    server: &dyn PgServer,
    set: &BackupSet,
    opts: &RestoreOptions,
    output: &Output,
) -> Result<RestoreReport> {
    let started = Instant::now();

    let mut admin = server.connect_maintenance().await?;
    janitor::sweep_tools(server).await;
    janitor::sweep_databases(server, &admin).await;
    let (target_major, target_version) = server_version(&admin).await?;
    if target_major < set.manifest.source.server_major {
        tracing::warn!(
            "restoring a PostgreSQL {} dump onto an older server ({target_version}); \
             this may fail on newer syntax",
            set.manifest.source.server_version
        );
    }
    let database = &opts.database;
    let target_db = server.target().with_database(database);
    let existing = inspect_database(server, &admin, database).await?;
    if let Some(relations) = existing.relations.filter(|n| *n > 0) {
        if !opts.force {
            return Err(TuskError::usage(format!(
                "target database {target_db} is not empty ({relations} tables, views or sequences); \
                 nothing was changed. Pass --force to replace it"
            )));
        }
        if output.interactive
            && !output.confirm(&format!(
                "Replace database {target_db} ({relations} relations) with backup {}?",
                set.manifest.id
            ))?
        {
            bail!("restore cancelled; {target_db} was not changed");
        }
    }

    let mut notes = Vec::new();
    let properties = property_script(set, opts, &mut notes).await;
    let mut kept_roles = Vec::new();
    if opts.globals {
        kept_roles = apply_globals(server, &admin, set).await?;
    }
    require_roles(&admin, set, &properties, &target_db).await?;

    let owner = choose_owner(&admin, set, opts, existing.owner.as_deref()).await?;
    let staging = crate::names::staging_name(database, STAGING_PURPOSE);
    let staging_guard = create_scratch_database(server, &admin, &staging, &owner, set).await?;
    properties
        .check(&mut admin, &staging)
        .await
        .with_context(|| {
            format!(
                "nothing was changed on {target_db}: the database's own properties do not apply"
            )
        })?;
    tracing::info!(
        "restoring {} into staging database {staging} on {}",
        set.manifest.id,
        server.target()
    );
    let load = LoadOptions {
        jobs: opts.jobs,
        no_owner: opts.no_owner,
        no_acl: opts.no_acl,
        role: opts.role.clone(),
        analyze: true,
        early_content: opts.early_content.clone(),
    };
    let early_content = load_database(server, set, &staging, &load, output).await?;
    properties.apply(&mut admin, &staging).await?;
    if !properties.is_empty() {
        tracing::info!(
            "applied the database's {}",
            properties.describe().join(", ")
        );
    }

    if existing.owner.is_some() {
        swap_in(&admin, &staging, database).await?;
    } else {
        rename_database(&admin, &staging, database).await?;
    }
    staging_guard.dismiss();
    tracing::info!("restored {} into {target_db}", set.manifest.id);

    Ok(RestoreReport {
        id: set.manifest.id.clone(),
        target: target_db.redacted(),
        database: database.clone(),
        replaced_existing: existing.relations.is_some_and(|n| n > 0),
        globals_applied: opts.globals,
        kept_roles,
        database_properties: properties.describe(),
        notes,
        seconds: started.elapsed().as_secs_f64(),
        early_content,
    })
}

struct ExistingDatabase {
    /// Owner, when the database exists.
    owner: Option<String>,
    /// Number of user relations, when the database exists.
    relations: Option<i64>,
}

async fn inspect_database(
    server: &dyn PgServer,
    admin: &Client,
    database: &str,
) -> Result<ExistingDatabase> {
    let row = admin
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await?;
    let Some(row) = row else {
        return Ok(ExistingDatabase {
            owner: None,
            relations: None,
        });
    };
    let session = server.connect(database).await?;
    let relations: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            &[],
        )
        .await?
        .get(0);
    Ok(ExistingDatabase {
        owner: Some(row.get(0)),
        relations: Some(relations),
    })
}

/// Applies the roles; returns the roles left as they were on this server.
async fn apply_globals(
    server: &dyn PgServer,
    admin: &Client,
    set: &BackupSet,
) -> Result<Vec<String>> {
    let row = admin
        .query_one(
            "SELECT current_user::text, rolsuper OR rolcreaterole, \
                    (SELECT rolname::text FROM pg_roles WHERE oid = 10) \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (me, can_create_roles, bootstrap): (String, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    if !can_create_roles {
        return Err(TuskError::usage(format!(
            "role {me} on {} may not create roles, so the backup's roles cannot be restored; \
             connect as a superuser, or pass --no-globals (with --no-owner --role ROLE)",
            server.target()
        )));
    }
    let artefact = set
        .manifest
        .artefact(ArtefactKind::Globals)
        .context("the backup set has no globals artefact")?;
    let mut script = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut set.open_artefact(artefact).await?, &mut script)
        .await
        .context("could not read the globals artefact")?;

    let mut protected = vec![me];
    if !protected.contains(&bootstrap) {
        protected.push(bootstrap);
    }
    let rewritten = globals::make_idempotent(&script, &protected);
    let command = ToolCommand::new(Tool::Psql)
        .args([
            "-X",
            "-q",
            "--no-password",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ])
        .database("postgres")
        .with_stdin();
    let mut script: &[u8] = rewritten.sql.as_bytes();
    server
        .spawn(command)
        .await?
        .feed(&mut script)
        .await
        .context("applying the roles failed")?;
    tracing::info!(
        "roles applied; kept as they are on this server: {}",
        rewritten.kept_roles.join(", ")
    );
    Ok(rewritten.kept_roles)
}

/// The database-level statements of the set's archive that this restore
/// applies: all of them but the grants under `--no-acl`.
async fn property_script(
    set: &BackupSet,
    opts: &RestoreOptions,
    notes: &mut Vec<String>,
) -> PropertyScript {
    let script = match read_property_script(set).await {
        Ok(script) => script,
        Err(err) => {
            // The data can still be restored; say loudly what is missing.
            let note = format!(
                "the database's own settings, comment and grants were not restored: {err:#}"
            );
            tracing::warn!("{note}");
            notes.push(note);
            PropertyScript::default()
        }
    };
    if opts.no_acl {
        script.without_privileges()
    } else {
        script
    }
}

/// Every role the statements name must exist by now (the roles were
/// restored, or the operator created them), as pg_restore would insist.
/// Checked before the staging database is created.
async fn require_roles(
    admin: &Client,
    set: &BackupSet,
    script: &PropertyScript,
    target_db: &DbTarget,
) -> Result<()> {
    let missing = missing_roles(admin, script.roles()).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let only_grants = missing_roles(admin, script.without_privileges().roles())
        .await?
        .is_empty();
    let fix = if only_grants {
        "restore the roles too (leave out --no-globals), create them first, \
         or pass --no-acl to restore without any grants"
    } else {
        "restore the roles too (leave out --no-globals) or create them first"
    };
    Err(TuskError::usage(format!(
        "the database's settings or grants in backup {} name roles that do not exist on the \
         target server: {}; {target_db} was not changed. To restore them, {fix}",
        set.manifest.id,
        missing.join(", "),
    )))
}

/// The database-level statements of the set's archive (see
/// [`database_properties`]).
pub async fn read_property_script(set: &BackupSet) -> Result<PropertyScript> {
    let artefact = set
        .manifest
        .artefact(ArtefactKind::Database)
        .context("the backup set has no database artefact")?;
    let entries = crate::archive::read_toc(set.open_artefact(artefact).await?)
        .await
        .context("could not read the archive's table of contents")?;
    PropertyScript::from_toc(&entries, &set.manifest.database.name)
        .context("could not read the database's own properties from the archive")
}

/// The owner of the staging database: the replaced database's owner, else
/// `--role`, else the source's owner when that role exists here.
async fn choose_owner(
    admin: &Client,
    set: &BackupSet,
    opts: &RestoreOptions,
    existing_owner: Option<&str>,
) -> Result<String> {
    if let Some(owner) = existing_owner {
        return Ok(owner.to_string());
    }
    if let Some(role) = &opts.role {
        return Ok(role.clone());
    }
    let source_owner = &set.manifest.database.owner;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[source_owner])
        .await?
        .is_some();
    if exists {
        return Ok(source_owner.clone());
    }
    let me: String = admin
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    Ok(me)
}

/// Creates an empty database that is dropped again unless the caller
/// dismisses the returned guard. `admin` (a maintenance-database session)
/// holds the database's lock ([`temporary_database_lock`]) until it ends.
pub async fn create_scratch_database(
    server: &dyn PgServer,
    admin: &Client,
    name: &str,
    owner: &str,
    set: &BackupSet,
) -> Result<cleanup::Deferred> {
    hold_temporary_database(admin, name).await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING '{}' OWNER {}",
            quote_ident(name),
            set.manifest.database.encoding.replace('\'', ""),
            quote_ident(owner)
        ))
        .await
        .with_context(|| format!("could not create database {name} on {}", server.target()))?;
    let target = server.target().clone();
    let name = name.to_string();
    Ok(cleanup::defer(format!("drop database {name}"), move || {
        drop_database(target, name)
    }))
}

/// Drops a database tusk created, disconnecting anyone still in it.
pub async fn drop_database(target: DbTarget, name: String) -> Result<()> {
    let admin = target.connect_maintenance().await?;
    force_drop(&admin, &name)
        .await
        .with_context(|| format!("could not drop database {name}"))?;
    tracing::info!("dropped database {name}");
    Ok(())
}

/// Streams the set's database artefact into pg_restore, stopping at the
/// first error; returns the tables digested meanwhile.
pub async fn load_database(
    server: &dyn PgServer,
    set: &BackupSet,
    database: &str,
    opts: &LoadOptions,
    output: &Output,
) -> Result<EarlyDigests> {
    let artefact = set
        .manifest
        .artefact(ArtefactKind::Database)
        .context("the backup set has no database artefact")?;

    let mut command = ToolCommand::new(Tool::PgRestore)
        .args(["--exit-on-error", "--no-password"])
        .arg(format!("--dbname={}", conninfo_dbname(database)))
        .env("PGOPTIONS", RESTORE_PGOPTIONS);
    if opts.no_owner {
        command = command.arg("--no-owner");
    }
    if opts.no_acl {
        command = command.arg("--no-acl");
    }
    if let Some(role) = &opts.role {
        command = command.arg(format!("--role={role}"));
    }

    let started = Instant::now();
    let progress = output.byte_progress("pg_restore", Some(artefact.uncompressed_bytes));
    let mut early_content = EarlyDigests::new();
    let result = if opts.jobs > 1 {
        // Parallel workers seek in the archive, so it needs a real file.
        progress.set_prefix("staging");
        let reader = set.open_artefact(artefact).await?;
        let staging_started = Instant::now();
        let staged = server
            .stage_archive(reader, artefact.uncompressed_bytes)
            .await?;
        tracing::debug!(
            "staged the archive at {} in {:.1}s",
            staged.path,
            staging_started.elapsed().as_secs_f64()
        );
        if let Some(file) = staged.local_file.clone() {
            add_data_offsets(file).await;
        }
        progress.set_prefix("pg_restore");
        let mut command = command
            .arg(format!("--jobs={}", opts.jobs))
            .arg(staged.path.clone());
        let plan = match opts.analyze || opts.early_content.is_some() {
            true => analyze::read_plan(set.open_artefact(artefact).await?).await,
            false => None,
        };
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
        if plan.is_some() {
            command = command.arg("--verbose").observe_stderr(lines_tx);
        } else {
            drop(lines_tx);
        }
        let (loaded_tx, loaded) = tokio::sync::mpsc::unbounded_channel();
        let follow = follow_restore(server, database, plan, lines, opts.analyze, loaded_tx);
        let digests = digest_while_restoring(server, database, opts.early_content.as_ref(), loaded);
        let restore = async {
            match server.spawn(command).await {
                Ok(process) => process.wait().await.map(drop),
                Err(err) => Err(err),
            }
        };
        let (restored, analyzed, digested) = tokio::join!(restore, follow, digests);
        let removed = staged.cleanup.run().await;
        let analyzed = restored.and(removed).and(analyzed)?;
        early_content = digested;
        if opts.analyze {
            finish_analyze(server, database, opts.jobs, &analyzed).await
        } else {
            Ok(())
        }
    } else {
        let process = server.spawn(command.with_stdin()).await?;
        let source = set.open_artefact(artefact).await?;
        let mut counted = crate::set::stream::CountingReader::new(source, progress.clone());
        match process.feed(&mut counted).await {
            Ok(_) if opts.analyze => {
                finish_analyze(server, database, opts.jobs, &HashSet::new()).await
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        }
    };
    progress.finish_and_clear();
    tracing::debug!(
        "pg_restore finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    result.with_context(|| format!("restoring {} into {database} failed", set.manifest.id))?;
    Ok(early_content)
}

/// pg_dump writing into a pipe cannot record where each table's data
/// starts, so parallel pg_restore workers would read the archive from the
/// start for every table; tusk writes the offsets into its staged copy.
/// Failure only costs speed.
async fn add_data_offsets(file: std::path::PathBuf) {
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || crate::archive::add_data_offsets(&file)).await {
        Ok(Ok(count)) => tracing::debug!(
            "recorded the data offsets of {count} archive entries in {:.2}s",
            started.elapsed().as_secs_f64()
        ),
        Ok(Err(err)) => tracing::debug!("restoring without data offsets: {err:#}"),
        Err(err) => tracing::debug!("restoring without data offsets: {err}"),
    }
}

/// `dbname='...'` in libpq's connection-string syntax, so any name is safe.
fn conninfo_dbname(database: &str) -> String {
    format!(
        "dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Follows pg_restore's progress lines: sends each table whose rows are
/// loaded to `loaded`, and (with `analyze`) ANALYZEs each table on one
/// extra session as soon as it is complete; returns the tables it analyzed.
async fn follow_restore(
    server: &dyn PgServer,
    database: &str,
    plan: Option<analyze::Plan>,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    analyze: bool,
    loaded: tokio::sync::mpsc::UnboundedSender<analyze::TableName>,
) -> Result<HashSet<analyze::TableName>> {
    let mut analyzed = HashSet::new();
    let Some(mut plan) = plan else {
        return Ok(analyzed);
    };
    let session = match analyze {
        true => Some(server.connect(database).await?),
        false => None,
    };
    while let Some(line) = lines.recv().await {
        let Some(item) = analyze::finished_item(&line) else {
            continue;
        };
        if let Some(table) = plan.data_of(item) {
            // The digests are an optimisation: a closed receiver is fine.
            let _ = loaded.send(table.clone());
        }
        for table in plan.finished(item) {
            if let Some(session) = &session {
                analyze::analyze_table(session, &table).await?;
                analyzed.insert(table);
            }
        }
    }
    Ok(analyzed)
}

/// Digests each table `loaded` names, on a session of its own, while the
/// restore goes on. A table that cannot be digested now is left for the
/// comparison, which reads it again and reports what it finds.
async fn digest_while_restoring(
    server: &dyn PgServer,
    database: &str,
    expected: Option<&ContentDigests>,
    mut loaded: tokio::sync::mpsc::UnboundedReceiver<analyze::TableName>,
) -> EarlyDigests {
    let mut digests = EarlyDigests::new();
    let Some(expected) = expected else {
        return digests;
    };
    let session = match server.connect(database).await {
        Ok(session) => session,
        Err(err) => {
            tracing::debug!("no content digests while restoring: {err:#}");
            return digests;
        }
    };
    while let Some((schema, name)) = loaded.recv().await {
        let key = crate::set::facts::table_key(&schema, &name);
        let Some(table) = expected.tables.get(&key) else {
            continue;
        };
        match content::digest_table(&session, &expected.settings, &table.copy).await {
            Ok(digest) => {
                digests.insert(key, digest);
            }
            Err(err) => tracing::debug!("{key} is left for the comparison: {err:#}"),
        }
    }
    digests
}

/// ANALYZEs what the restore has not analyzed yet, on `jobs` sessions.
async fn finish_analyze(
    server: &dyn PgServer,
    database: &str,
    jobs: u32,
    done: &HashSet<analyze::TableName>,
) -> Result<()> {
    let started = Instant::now();
    analyze::analyze_rest(server, database, jobs, done).await?;
    tracing::info!(
        "analyzed {database}: {} tables while restoring, the rest in {:.1}s",
        done.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn rename_database(admin: &Client, from: &str, to: &str) -> Result<()> {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
        .await
        .with_context(|| format!("could not rename database {from} to {to}"))
}

/// Puts the restored staging database in place of `target`: both renames
/// in one transaction, so a run killed meanwhile leaves the target as it
/// was. The old database, set aside under a locked name, is dropped after.
async fn swap_in(admin: &Client, staging: &str, target: &str) -> Result<()> {
    let aside = crate::names::staging_name(target, ASIDE_PURPOSE);
    hold_temporary_database(admin, &aside).await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&target],
        )
        .await?;
    let swapped = admin
        .batch_execute(&format!(
            "BEGIN; ALTER DATABASE {target_q} RENAME TO {aside_q}; \
             ALTER DATABASE {staging_q} RENAME TO {target_q}; COMMIT",
            target_q = quote_ident(target),
            aside_q = quote_ident(&aside),
            staging_q = quote_ident(staging),
        ))
        .await;
    if let Err(err) = swapped {
        let _ = admin.batch_execute("ROLLBACK").await;
        return Err(err).with_context(|| format!("could not put {staging} in place of {target}"));
    }
    force_drop(admin, &aside)
        .await
        .with_context(|| format!("restored, but could not drop the replaced database {aside}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_tusk_makes_count_as_temporary_databases() {
        use crate::names::{staging_name, verify_scratch_name};
        use crate::postgres::temporary::is_temporary_database;
        for made in [
            staging_name("mastodon", STAGING_PURPOSE),
            staging_name(&"m".repeat(80), STAGING_PURPOSE),
            staging_name("mastodon", ASIDE_PURPOSE),
            verify_scratch_name(),
        ] {
            assert!(is_temporary_database(&made), "{made}");
        }
    }

    #[test]
    fn conninfo_escapes_quotes() {
        assert_eq!(conninfo_dbname("a'b\\c"), "dbname='a\\'b\\\\c'");
    }
}
