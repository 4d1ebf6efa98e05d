//! `restore --redis-to DIR`: the set's snapshot of Sidekiq's Redis into the
//! data directory of a stopped Redis.
//!
//! Redis reads its `dbfilename` once, at start, and writes it again on a
//! clean shutdown, so a running server would overwrite whatever is put
//! there: the restore refuses while a redis-server works in DIR. The
//! snapshot is written beside the old file, loaded into a throwaway
//! redis-server and counted against the set's facts before it takes the
//! old file's place; the old file (and an append-only log, which Redis
//! would load instead) is kept under a name that says which restore set it
//! aside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::TuskError;
use crate::redis::snapshot::ThrowawayServer;
use crate::set::BackupSet;
use crate::set::manifest::ArtefactKind;
use crate::set::redis::{RedisFacts, RedisRole};

/// How long the check server may take to load the snapshot.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct RedisRestoreOptions {
    /// The stopped Redis's data directory (its `dir`).
    pub dir: PathBuf,
    /// The file it loads (its `dbfilename`).
    pub dbfilename: String,
    /// redis-server on this machine, for the check.
    pub server_bin: PathBuf,
    /// Set an append-only log aside too (Redis would load it instead).
    pub force: bool,
}

/// What `restore --redis-to` did, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct RedisRestoreReport {
    /// The file written.
    pub path: PathBuf,
    /// Keys per database, counted on a server that loaded the file.
    pub keys: std::collections::BTreeMap<i64, u64>,
    /// Sidekiq's counts found in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidekiq: Option<crate::set::redis::SidekiqCounts>,
    /// Whether the counts matched the set's record exactly (`false`: the
    /// set was taken on a busy instance and recorded no exact counts, or
    /// recorded none).
    pub matched_exactly: bool,
    /// Files moved aside, where they are now.
    pub kept: Vec<PathBuf>,
    pub notes: Vec<String>,
}

/// Writes, checks and puts in place the snapshot of Sidekiq's Redis.
pub async fn run(set: &BackupSet, opts: &RedisRestoreOptions) -> Result<RedisRestoreReport> {
    let artefact = set
        .manifest
        .artefacts
        .iter()
        .filter(|a| a.kind == ArtefactKind::Redis)
        .find(|a| {
            a.redis
                .as_ref()
                .is_none_or(|f| f.role == RedisRole::Sidekiq)
        })
        .ok_or_else(|| {
            TuskError::usage(format!(
                "backup set {} holds no Redis snapshot (it was written without Redis, or by an \
                 older tusk); nothing was changed",
                set.manifest.id
            ))
        })?;
    let dir = &opts.dir;
    if !dir.is_dir() {
        return Err(TuskError::usage(format!(
            "{} is not a directory: name the stopped Redis's data directory (its `dir`, e.g. \
             /var/lib/redis)",
            dir.display()
        )));
    }
    if let Some(pid) = redis_server_in(dir) {
        return Err(TuskError::usage(format!(
            "a redis-server (pid {pid}) is running in {}: stop it first (e.g. systemctl stop \
             redis-server); on shutdown it would write its own {} over the restored one. \
             Nothing was changed",
            dir.display(),
            opts.dbfilename
        )));
    }
    let logs = append_only_logs(dir);
    if !logs.is_empty() && !opts.force {
        return Err(TuskError::usage(format!(
            "{} holds an append-only log ({}), which Redis loads instead of {}: nothing was \
             changed. Pass --force to have it set aside, or turn appendonly off",
            dir.display(),
            logs.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            opts.dbfilename
        )));
    }

    // Beside the final name: the rename at the end stays on one file system.
    let partial = dir.join(format!(".tusk-restore-{}.rdb.partial", set.manifest.id));
    // One left by a killed run of the same restore is ours to replace.
    let _ = std::fs::remove_file(&partial);
    let removal = PartialFile(Some(partial.clone()));
    write_artefact_to(set, artefact, &partial).await?;
    let found = count_loaded(&opts.server_bin, &partial, artefact.redis.as_ref()).await?;
    let mut notes = Vec::new();
    let matched_exactly = match &artefact.redis {
        Some(recorded) => {
            let differences = recorded.differences(&found);
            match (differences.is_empty(), recorded.exact) {
                (true, _) => recorded.exact,
                (false, true) => {
                    return Err(TuskError::VerificationFailed(format!(
                        "the Redis snapshot of backup set {} does not hold what the set recorded \
                         ({}); nothing was changed in {}",
                        set.manifest.id,
                        differences.join("; "),
                        dir.display()
                    ))
                    .into());
                }
                (false, false) => {
                    let note = format!(
                        "the instance was busy during the snapshot, so its counts are close, not \
                         exact: {}",
                        differences.join("; ")
                    );
                    tracing::info!("{note}");
                    notes.push(note);
                    false
                }
            }
        }
        None => {
            notes.push(
                "the set recorded no key counts for its Redis snapshot; it loads, but could not \
                 be compared"
                    .into(),
            );
            false
        }
    };

    // Checked: now the old files make room, kept under a telling name.
    let target = dir.join(&opts.dbfilename);
    let mut kept = Vec::new();
    let mut aside = logs;
    if target.exists() {
        aside.insert(0, target.clone());
    }
    for path in aside {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let moved = path.with_file_name(format!("{name}.before-{}", set.manifest.id));
        std::fs::rename(&path, &moved).with_context(|| {
            format!(
                "could not move {} aside to {}",
                path.display(),
                moved.display()
            )
        })?;
        tracing::info!("kept {} as {}", path.display(), moved.display());
        kept.push(moved);
    }
    let owner = owner_of(dir)?;
    std::os::unix::fs::chown(&partial, Some(owner.0), Some(owner.1)).with_context(|| {
        format!(
            "could not give {} to the owner of {}",
            partial.display(),
            dir.display()
        )
    })?;
    std::fs::rename(&partial, &target).with_context(|| {
        format!(
            "could not rename {} to {}",
            partial.display(),
            target.display()
        )
    })?;
    removal.dismiss();
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync {}", dir.display()))?;
    tracing::info!(
        "restored Redis into {}: {} keys; start Redis to load it",
        target.display(),
        found.keys.values().sum::<u64>()
    );
    Ok(RedisRestoreReport {
        path: target,
        keys: found.keys,
        sidekiq: found.sidekiq,
        matched_exactly,
        kept,
        notes,
    })
}

/// Decrypts and decompresses the artefact into `path` (mode 0600), synced.
async fn write_artefact_to(
    set: &BackupSet,
    artefact: &crate::set::manifest::Artefact,
    path: &Path,
) -> Result<()> {
    let mut reader = set.open_artefact(artefact).await?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .with_context(|| format!("could not create {}", path.display()))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    tokio::io::copy(&mut reader, &mut writer)
        .await
        .with_context(|| format!("could not write {}", path.display()))?;
    writer.flush().await?;
    writer
        .into_inner()
        .sync_all()
        .await
        .with_context(|| format!("could not sync {}", path.display()))
}

/// Loads `rdb` into a throwaway redis-server and counts it as the set's
/// facts were counted (the same database and namespace).
async fn count_loaded(
    server_bin: &Path,
    rdb: &Path,
    recorded: Option<&RedisFacts>,
) -> Result<RedisFacts> {
    let server = ThrowawayServer::load(server_bin, rdb, LOAD_TIMEOUT)
        .await
        .context("the snapshot was not put in place: it could not be checked")?;
    let (db, namespace, role) = match recorded {
        Some(facts) => (facts.db, facts.namespace.clone(), facts.role),
        None => (0, None, RedisRole::Sidekiq),
    };
    let mut session = server.session(db, namespace).await?;
    RedisFacts::read(&mut session, role).await
}

/// The pid of a redis-server whose working directory is `dir`: Redis
/// changes into its `dir` at start. Compared by device and inode, so a
/// server in a container whose volume is `dir` is found too.
fn redis_server_in(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(dir).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let is_redis = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "redis-server");
            is_redis
                && std::fs::metadata(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.dev() == want.dev() && cwd.ino() == want.ino())
        })
}

/// Redis' append-only files in `dir`: the multi-part directory (Redis 7)
/// and the single file of older versions.
fn append_only_logs(dir: &Path) -> Vec<PathBuf> {
    ["appendonlydir", "appendonly.aof"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

fn owner_of(path: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("could not read {}", path.display()))?;
    Ok((meta.uid(), meta.gid()))
}

/// Removes the partial file unless the restore put it in place.
struct PartialFile(Option<PathBuf>);

impl PartialFile {
    fn dismiss(mut self) {
        self.0 = None;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
