//! Removes what a run killed by SIGKILL (or a power cut) left behind.
//!
//! A run that is sent SIGINT, SIGTERM or SIGHUP undoes its own work
//! (`cleanup`). SIGKILL gives it no chance, so backup, restore and verify
//! start by sweeping what such a run of theirs could have left:
//!
//! - `<id>.partial` sets in the backup directory, once this run holds the
//!   directory's lock (no live backup can be writing one then);
//! - staging (`*_tusk_restore_*`), set-aside (`*_tusk_old_*`) and verify
//!   (`tusk_verify_*`) databases whose advisory lock is free: their creator
//!   held it on its session until it dropped or renamed them, so the
//!   session, and the run, is gone;
//! - helper and throwaway containers (`tusk-*`, labelled with their
//!   creator) and temporary files and directories (`tusk-restore-*`,
//!   `tusk-pipe-*`, named by their creator) and archives staged in the
//!   database container (`/tmp/tusk-restore-*`, beside a file naming their
//!   creator) whose creating process no longer runs on this host.
//!
//! Nothing that is not named exactly as tusk names things is touched, and a
//! failed sweep never fails the operation: it is logged.

use std::path::Path;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::creator::{Liveness, parse_temp_name, process_liveness};
use crate::postgres::temporary::{force_drop, is_temporary_database, temporary_database_lock};
use crate::postgres::{PIPE_DIR_KIND, PgServer, STAGED_ARCHIVE_KIND};
use crate::set::DirLock;

/// Removes the backup directory's stale `.partial` sets; `lock` proves that
/// no live backup is writing one.
pub fn sweep_backup_dir(lock: &DirLock) {
    let stale = match lock.stale_partial_sets() {
        Ok(stale) => stale,
        Err(err) => {
            tracing::warn!("could not look for unfinished backup sets: {err:#}");
            return;
        }
    };
    for dir in stale {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(
                "removed {}, an unfinished set of a backup that was killed",
                dir.display()
            ),
            Err(err) => tracing::warn!("could not remove {}: {err}", dir.display()),
        }
    }
}

/// Removes the temporary files, helper containers and staged archives (in
/// the database container) that `server`'s tools made for runs that no
/// longer run.
pub async fn sweep_tools(server: &dyn PgServer) {
    sweep_temp_dir(&server.temp_dir());
    if let Some(docker) = server.engine() {
        match crate::docker::orphaned_containers(docker).await {
            Ok(orphans) => {
                for name in orphans {
                    match crate::docker::remove_container(docker, &name).await {
                        Ok(()) => tracing::info!(
                            "removed container {name}, left by a tusk run that was killed"
                        ),
                        Err(err) => tracing::warn!("{err:#}"),
                    }
                }
            }
            Err(err) => tracing::warn!("could not look for leftover containers: {err:#}"),
        }
    }
    match server.staged_archives_elsewhere().await {
        Ok(staged) => {
            for (path, creator) in staged {
                if creator.liveness() != Liveness::Gone {
                    continue;
                }
                match server.remove_staged_archive(&path).await {
                    Ok(()) => tracing::info!(
                        "removed {path} ({}), left by a tusk run that was killed",
                        server.describe_tools()
                    ),
                    Err(err) => tracing::warn!("{err:#}"),
                }
            }
        }
        Err(err) => tracing::warn!("could not look for leftover staged archives: {err:#}"),
    }
}

/// Removes `tusk-restore-*` files and `tusk-pipe-*` directories in `dir`
/// whose creating process is gone.
pub fn sweep_temp_dir(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Err(err) => {
            tracing::warn!("could not read {}: {err}", dir.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let creator = if file_type.is_file() && name.ends_with(".dump") {
            parse_temp_name(&name, STAGED_ARCHIVE_KIND)
        } else if file_type.is_dir() {
            parse_temp_name(&name, PIPE_DIR_KIND)
        } else {
            None
        };
        let Some((pid, started)) = creator else {
            continue;
        };
        if process_liveness(pid, started) != Liveness::Gone {
            continue;
        }
        let path = entry.path();
        let removed = if file_type.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!(
                "removed {}, left by tusk process {pid}, which was killed",
                path.display()
            ),
            Err(err) => tracing::warn!("could not remove {}: {err}", path.display()),
        }
    }
}

/// Drops the temporary databases on `admin`'s server whose creator is
/// gone. `admin` must be a maintenance-database session (where creators
/// hold their locks) that holds none of them itself.
pub async fn sweep_databases(server: &dyn PgServer, admin: &Client) {
    if let Err(err) = try_sweep_databases(admin).await {
        tracing::warn!(
            "could not look for leftover databases on {}: {err:#}",
            server.target()
        );
    }
}

async fn try_sweep_databases(admin: &Client) -> Result<()> {
    let names: Vec<String> = admin
        .query("SELECT datname::text FROM pg_database ORDER BY 1", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .filter(|name: &String| is_temporary_database(name))
        .collect();
    for name in names {
        let key = temporary_database_lock(&name);
        let free: bool = admin
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if !free {
            tracing::debug!("database {name} is in use by a live tusk run");
            continue;
        }
        let dropped = force_drop(admin, &name)
            .await
            .with_context(|| format!("could not drop database {name}"));
        admin
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await?;
        match dropped {
            Ok(()) => tracing::info!("dropped database {name}, left by a tusk run that was killed"),
            Err(err) => tracing::warn!("{err:#}"),
        }
    }
    Ok(())
}
