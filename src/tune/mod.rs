//! `tusk tune`: PostgreSQL settings for the instance's server, computed as
//! PgTune computes them for a web application ([`pgtune`]), from memory,
//! CPUs and storage detected or given and a connection count derived from
//! Mastodon's own settings ([`crate::mastodon::pools`]), with advice on
//! Mastodon's pools, Sidekiq's layout and PgBouncer; and `--apply`, which
//! writes them with ALTER SYSTEM.

pub mod advice;
pub mod pgtune;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::docker::limits::ContainerResources;
use crate::error::TuskError;
use crate::mastodon::env_file::EnvFile;
use crate::mastodon::pools::{self, COMPOSE_FILE_NAMES, ConnectionBudget};
use crate::postgres::PgServer;

pub use advice::Advice;
pub use pgtune::{Hardware, Setting, StorageKind};

/// PgTune's default version, assumed when the server cannot be asked.
pub const DEFAULT_PG_MAJOR: u32 = 18;

/// What the admin gave on the command line; `None` means "detect it".
#[derive(Debug, Default, Clone)]
pub struct TuneOptions {
    pub memory_kb: Option<u64>,
    pub cpus: Option<u32>,
    pub storage: Option<StorageKind>,
    pub connections: Option<u32>,
    pub compose_file: Option<PathBuf>,
}

/// Memory and CPUs as measured, with where they were measured.
#[derive(Debug, Clone)]
pub struct Machine {
    pub memory_kb: u64,
    pub memory_source: String,
    pub cpus: u32,
    pub cpus_source: String,
}

/// Where the server runs, as far as tusk can see it.
pub struct Surroundings<'a> {
    pub machine: Machine,
    /// `.env.production`.
    pub env: Option<&'a EnvFile>,
    /// The compose files the database container's labels name.
    pub compose_from_labels: Vec<PathBuf>,
    /// The server, when it answers; `Err` says why it did not.
    pub server: std::result::Result<&'a dyn PgServer, String>,
    /// Set when the server is on another host than the memory and CPUs
    /// were measured on.
    pub remote_host: Option<String>,
}

/// The inputs the settings were computed from, and where each came from.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    pub memory: String,
    pub memory_kb: u64,
    pub memory_source: String,
    pub cpus: u32,
    pub cpus_source: String,
    pub storage: StorageKind,
    pub storage_source: String,
    pub connections: u32,
    pub connections_source: String,
    pub postgres_version: Option<String>,
    pub postgres_major: u32,
    pub db_type: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    /// Setting name -> value, as PgTune writes it.
    pub settings: BTreeMap<&'static str, String>,
    /// The same settings in PgTune's order, each with its reason.
    pub lines: Vec<Setting>,
    pub advice: Vec<Advice>,
    pub inputs: Inputs,
    /// How the connection count was derived (absent when given).
    pub connection_budget: Option<ConnectionBudget>,
}

/// Computes the recommendation.
pub async fn run(opts: &TuneOptions, around: Surroundings<'_>) -> Result<TuneReport> {
    let machine = &around.machine;
    let (memory_kb, memory_source) = match opts.memory_kb {
        Some(kb) => (kb, "given".to_string()),
        None => (machine.memory_kb, machine.memory_source.clone()),
    };
    if memory_kb < 1024 {
        return Err(TuskError::usage(format!(
            "memory {memory_kb}kB is too small to size PostgreSQL for; pass --memory, e.g. --memory 16GB"
        )));
    }
    let (cpus, cpus_source) = match opts.cpus {
        Some(n) => (n, "given".to_string()),
        None => (machine.cpus, machine.cpus_source.clone()),
    };
    let (storage, storage_source) = match opts.storage {
        Some(kind) => (kind, "given".to_string()),
        None => (
            StorageKind::Ssd,
            "not detected: PgTune's default".to_string(),
        ),
    };

    let budget = match opts.connections {
        Some(_) => None,
        None => Some(connection_budget(opts, &around)?),
    };
    let (connections, connections_source) = match (opts.connections, &budget) {
        (Some(n), _) => (n, "given".to_string()),
        (None, Some(budget)) => (budget.total, describe_budget(budget, around.env.is_some())),
        (None, None) => unreachable!("derived when not given"),
    };
    if connections == 0 {
        return Err(TuskError::usage("--connections must be at least 1"));
    }

    let (version, version_note, in_use) = match around.server {
        Ok(server) => match server_facts(server).await {
            Ok((version, in_use)) => (Some(version), None, Some(in_use)),
            Err(err) => (None, Some(format!("{err:#}")), None),
        },
        Err(why) => (None, Some(why), None),
    };
    let postgres_major = version
        .as_ref()
        .map_or(DEFAULT_PG_MAJOR, |(major, _)| *major);

    let hardware = Hardware {
        memory_kb,
        cpus,
        storage,
        connections,
        pg_major: postgres_major,
    };
    let lines = pgtune::recommend(&hardware);
    let mut advice = Vec::new();
    if opts.storage.is_none() {
        advice.push(Advice::new(
            "inputs",
            "the storage type cannot be detected: assumed ssd (random_page_cost 1.1, \
             effective_io_concurrency 200); pass --storage hdd, san or nvme if the data \
             directory is elsewhere",
        ));
    }
    if let (Some(host), true) = (
        &around.remote_host,
        opts.memory_kb.is_none() || opts.cpus.is_none(),
    ) {
        advice.push(Advice::new(
            "inputs",
            format!(
                "the database is on {host}, but memory and CPUs were measured here: \
                 pass --memory and --cpus for the database's machine"
            ),
        ));
    }
    if let Some(note) = &version_note {
        advice.push(Advice::new(
            "postgres_version",
            format!(
                "could not read the server's version ({note}): parallel settings assume \
                 PostgreSQL {DEFAULT_PG_MAJOR} and the version check was skipped"
            ),
        ));
    }
    if let Some((major, text)) = &version {
        advice.extend(advice::version_check(*major, text));
    }
    if let Some(in_use) = &in_use {
        advice.push(advice::connections_in_use(connections, in_use));
    }
    if let Some(budget) = &budget {
        advice.extend(advice::pools(budget));
    }
    advice.push(advice::sidekiq_layout(cpus));
    advice.push(advice::pgbouncer(&hardware, &lines));

    Ok(TuneReport {
        settings: lines.iter().map(|s| (s.name, s.value.clone())).collect(),
        lines,
        advice,
        inputs: Inputs {
            memory: pgtune::format_kb(memory_kb),
            memory_kb,
            memory_source,
            cpus,
            cpus_source,
            storage,
            storage_source,
            connections,
            connections_source,
            postgres_version: version.map(|(_, text)| text),
            postgres_major,
            db_type: "web",
        },
        connection_budget: budget,
    })
}

/// The server's version, and the connections open now against its
/// `max_connections`.
async fn server_facts(server: &dyn PgServer) -> Result<((u32, String), ConnectionsInUse)> {
    let client = server.connect_maintenance().await?;
    let version = crate::postgres::server_version(&client).await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
             current_setting('max_connections')::int",
            &[],
        )
        .await
        .context("could not count the server's connections")?;
    let open: i64 = row.get(0);
    let max: i32 = row.get(1);
    Ok((
        version,
        ConnectionsInUse {
            open: open as u32,
            max_connections: max as u32,
        },
    ))
}

/// Client connections open now and the server's current limit.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionsInUse {
    pub open: u32,
    pub max_connections: u32,
}

/// Reads the compose file (given, from the container's labels, or beside
/// `.env.production`) and derives the connection count.
fn connection_budget(opts: &TuneOptions, around: &Surroundings<'_>) -> Result<ConnectionBudget> {
    let compose = match &opts.compose_file {
        Some(path) => {
            if !path.is_file() {
                return Err(TuskError::usage(format!(
                    "compose file {} does not exist",
                    path.display()
                )));
            }
            Some(path.clone())
        }
        None => around
            .compose_from_labels
            .iter()
            .find(|path| path.is_file())
            .cloned()
            .or_else(|| {
                let dir = around.env?.path.parent()?.to_path_buf();
                let dir = if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                };
                COMPOSE_FILE_NAMES
                    .iter()
                    .map(|name| dir.join(name))
                    .find(|path| path.is_file())
            }),
    };
    let text = compose
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read compose file {}", path.display()))
        })
        .transpose()?;
    pools::derive(around.env, compose.as_deref().zip(text.as_deref()))
}

fn describe_budget(budget: &ConnectionBudget, with_env_file: bool) -> String {
    let mut parts: Vec<String> = budget
        .processes
        .iter()
        .map(|p| format!("{} {}", p.service, p.connections))
        .collect();
    parts.push(format!("headroom {}", budget.headroom));
    let settings = if with_env_file {
        ".env.production"
    } else {
        "Mastodon's defaults (no .env.production)"
    };
    let origin = match &budget.compose_file {
        Some(path) => format!("{} and {settings}", path.display()),
        None => format!("Mastodon's systemd units and {settings}"),
    };
    format!("derived from {origin}: {}", parts.join(" + "))
}

/// This machine: `MemTotal` from /proc/meminfo and the CPUs this process
/// may use (which honours a cgroup CPU quota).
pub fn this_machine() -> Result<Machine> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .context("could not read /proc/meminfo; pass --memory")?;
    let total_kb =
        meminfo_total_kb(&meminfo).context("no MemTotal in /proc/meminfo; pass --memory")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Ok(Machine {
        memory_kb: round_memory_kb(total_kb),
        memory_source: format!("MemTotal {total_kb}kB in /proc/meminfo, rounded"),
        cpus,
        cpus_source: "CPUs available to this process".into(),
    })
}

/// The database container's limits, else the Engine host's resources.
pub fn container_machine(name: &str, res: &ContainerResources) -> Result<Machine> {
    let (bytes, memory_source) = match (res.memory_limit, res.host_memory) {
        (Some(limit), _) => (limit, format!("memory limit of container {name}")),
        (None, Some(host)) => (
            host,
            format!("Docker host's memory (container {name} has no limit), rounded"),
        ),
        (None, None) => {
            return Err(TuskError::usage(
                "the Docker Engine reports no memory size; pass --memory",
            ));
        }
    };
    let (cpus, cpus_source) = match (res.cpu_limit, res.host_cpus) {
        (Some(limit), _) => (
            (limit.floor() as u32).max(1),
            format!("CPU limit {limit} of container {name}"),
        ),
        (None, Some(host)) => (
            host,
            format!("Docker host's CPUs (container {name} has no limit)"),
        ),
        (None, None) => (1, "unknown: assumed 1".into()),
    };
    Ok(Machine {
        memory_kb: round_memory_kb(bytes / 1024),
        memory_source,
        cpus,
        cpus_source,
    })
}

fn meminfo_total_kb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Memory as a person types it into PgTune: whole GB from 1.5GB on (the
/// kernel keeps some of a 16GB machine for itself, MemTotal shows less),
/// else whole MB.
pub fn round_memory_kb(kb: u64) -> u64 {
    const GB: u64 = 1024 * 1024;
    if kb >= 2 * GB - GB / 2 {
        (kb + GB / 2) / GB * GB
    } else {
        kb / 1024 * 1024
    }
}

/// Parses `16GB`, `16G`, `16GiB`, `512MB`, `1TB` into kB (binary units, as
/// PgTune's); the unit is required, so nothing is guessed.
pub fn parse_memory(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let per_kb: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "K" => 1,
        "M" => 1024,
        "G" => 1024 * 1024,
        "T" => 1024 * 1024 * 1024,
        _ => 0,
    };
    let number: u64 = number.parse().unwrap_or(0);
    if per_kb == 0 || number == 0 {
        return Err(TuskError::usage(format!(
            "memory {text:?} is not a size: write a whole number with a unit, e.g. 16GB or 512MB"
        )));
    }
    Ok(number * per_kb)
}

/// What `--apply` did to one setting.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedSetting {
    pub name: &'static str,
    pub before: String,
    pub value: String,
    /// Whether the server's value differed from the recommendation.
    pub changed: bool,
    /// `pg_settings.context`.
    pub context: String,
    /// Written, but in force only after a restart (`pending_restart`).
    pub needs_restart: bool,
}

/// Writes each setting with ALTER SYSTEM (into postgresql.auto.conf),
/// reloads the configuration and reports which need a restart.
pub async fn apply(server: &dyn PgServer, settings: &[Setting]) -> Result<Vec<AppliedSetting>> {
    let client = server.connect_maintenance().await?;
    let names: Vec<String> = settings.iter().map(|s| s.name.to_string()).collect();
    let before = current_settings(&client, &names).await?;
    for setting in settings {
        if !before.contains_key(setting.name) {
            return Err(TuskError::usage(format!(
                "the server has no setting {}; nothing was changed after the settings before it",
                setting.name
            )));
        }
    }
    let loaded_before: String = client
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .await?
        .get(0);
    for setting in settings {
        let statement = format!(
            "ALTER SYSTEM SET {} = '{}'",
            crate::postgres::quote_ident(setting.name),
            setting.value.replace('\'', "''")
        );
        client.batch_execute(&statement).await.map_err(|err| {
            let hint = if err.code()
                == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
            {
                ": ALTER SYSTEM needs a superuser (or, from PostgreSQL 15, GRANT ALTER SYSTEM ON \
                 PARAMETER); connect as one with --database-url"
            } else {
                ""
            };
            anyhow::anyhow!("{statement} failed: {err}{hint}")
        })?;
    }
    client
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .context("pg_reload_conf() failed")?;
    // The session rereads the files when the reload signal reaches it.
    for _ in 0..50 {
        let loaded: String = client
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .await?
            .get(0);
        if loaded != loaded_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = current_settings(&client, &names).await?;
    Ok(settings
        .iter()
        .map(|setting| {
            let old = &before[setting.name];
            let new = &after[setting.name];
            AppliedSetting {
                name: setting.name,
                before: old.value.clone(),
                value: setting.value.clone(),
                changed: old.value != setting.value,
                context: new.context.clone(),
                needs_restart: new.pending_restart,
            }
        })
        .collect())
}

struct CurrentSetting {
    value: String,
    context: String,
    pending_restart: bool,
}

async fn current_settings(
    client: &tokio_postgres::Client,
    names: &[String],
) -> Result<BTreeMap<String, CurrentSetting>> {
    let rows = client
        .query(
            "SELECT name, current_setting(name), context, pending_restart \
             FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .context("could not read pg_settings")?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                CurrentSetting {
                    value: row.get(1),
                    context: row.get(2),
                    pending_restart: row.get(3),
                },
            )
        })
        .collect())
}

/// Whether `host` names this machine (or a socket on it).
pub fn is_local_host(host: &str) -> bool {
    host.is_empty()
        || host.starts_with('/')
        || host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_sizes() {
        assert_eq!(parse_memory("16GB").unwrap(), 16 * 1024 * 1024);
        assert_eq!(parse_memory("16G").unwrap(), 16 * 1024 * 1024);
        assert_eq!(parse_memory("16GiB").unwrap(), 16 * 1024 * 1024);
        assert_eq!(parse_memory("512MB").unwrap(), 512 * 1024);
        assert_eq!(parse_memory("1tb").unwrap(), 1024 * 1024 * 1024);
        for bad in ["16", "GB", "1.5GB", "16XB", "0GB"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rounds_measured_memory_as_a_person_would_type_it() {
        // A 16GB machine shows about 15.6GB as MemTotal.
        assert_eq!(round_memory_kb(16_369_040), 16 * 1024 * 1024);
        assert_eq!(round_memory_kb(4 * 1024 * 1024), 4 * 1024 * 1024);
        // Under 1.5GB: whole MB.
        assert_eq!(round_memory_kb(1_000_000), 976 * 1024);
    }

    #[test]
    fn reads_memtotal() {
        let text = "MemTotal:       16369040 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_total_kb(text), Some(16_369_040));
    }
}
