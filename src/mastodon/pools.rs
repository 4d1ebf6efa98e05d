//! How many PostgreSQL connections a Mastodon instance's processes can open,
//! read from `.env.production` and the compose file as Mastodon reads them.
//!
//! Each Rails process has one ActiveRecord pool (config/database.yml:
//! `DB_POOL`, else Sidekiq's concurrency in a Sidekiq process, else
//! `MAX_THREADS`), and each thread holds at most one connection, so a
//! process opens at most `min(pool, threads)`. Puma runs `WEB_CONCURRENCY`
//! workers (default 2) of `MAX_THREADS` threads (default 5)
//! (config/puma.rb). The streaming server (Node) has one pool of `DB_POOL`
//! connections, default 10 (streaming/database.js), not bounded by threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::TuskError;
use crate::mastodon::env_file::EnvFile;

/// Puma's defaults (config/puma.rb).
pub const DEFAULT_WEB_CONCURRENCY: u32 = 2;
pub const DEFAULT_MAX_THREADS: u32 = 5;
/// Sidekiq's concurrency when neither `-c` nor `SIDEKIQ_CONCURRENCY` is
/// given (config/sidekiq.yml).
pub const DEFAULT_SIDEKIQ_CONCURRENCY: u32 = 5;
/// The streaming server's pool when `DB_POOL` is unset (streaming/database.js).
pub const DEFAULT_STREAMING_POOL: u32 = 10;
/// Mastodon's systemd unit for Sidekiq (dist/mastodon-sidekiq.service)
/// runs `sidekiq -c 25` with `DB_POOL=25`: the layout of an install
/// without a compose file.
pub const SYSTEMD_SIDEKIQ_CONCURRENCY: u32 = 25;

/// Connections kept free for what runs beside the app: a `tootctl` command
/// (5 threads by default, plus its main connection), a backup or a
/// verification (2), and PostgreSQL's `superuser_reserved_connections`
/// (3), which count against `max_connections`.
pub const HEADROOM: u32 = 6 + 1 + 3;

/// Compose files looked for beside `.env.production`, in Compose's order.
pub const COMPOSE_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessKind {
    Web,
    Sidekiq,
    Streaming,
}

/// One kind of app process as configured (a compose service, or the
/// standard systemd unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppProcess {
    /// The compose service, or the systemd unit's name.
    pub service: String,
    pub kind: ProcessKind,
    /// Copies of the process: `scale`/`deploy.replicas`, times Puma's workers.
    pub processes: u32,
    /// Threads per process (Puma's MAX_THREADS, Sidekiq's concurrency); the
    /// streaming server's pool is not bounded by threads.
    pub threads: Option<u32>,
    /// The ActiveRecord (or node-postgres) pool per process.
    pub pool: u32,
    /// Whether `DB_POOL` set the pool (else Mastodon's default did).
    pub pool_from_db_pool: bool,
    /// Sidekiq's `-q` queues, as written.
    pub queues: Vec<String>,
    /// Connections these processes can hold together.
    pub connections: u32,
    /// How the numbers were read, for the output.
    pub derivation: String,
}

/// The connection count of the whole instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionBudget {
    pub processes: Vec<AppProcess>,
    pub headroom: u32,
    pub total: u32,
    /// The compose file read, if any.
    pub compose_file: Option<PathBuf>,
}

/// The variables one service sees: `.env.production`, with the compose
/// service's own `environment:` on top.
struct ServiceEnv<'a> {
    file: Option<&'a EnvFile>,
    own: BTreeMap<String, String>,
}

impl ServiceEnv<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.own
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .or_else(|| self.file.and_then(|env| env.get(key)))
    }

    fn number(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|value| {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| TuskError::usage(format!("{key}={value:?} is not a whole number")))
            })
            .transpose()
    }
}

/// Derives the budget from a compose file's text (if any) and
/// `.env.production` (if any).
pub fn derive(env: Option<&EnvFile>, compose: Option<(&Path, &str)>) -> Result<ConnectionBudget> {
    let processes = match compose {
        Some((path, text)) => from_compose(env, path, text)
            .with_context(|| format!("could not read the compose file {}", path.display()))?,
        None => systemd_layout(env)?,
    };
    let total = processes.iter().map(|p| p.connections).sum::<u32>() + HEADROOM;
    Ok(ConnectionBudget {
        processes,
        headroom: HEADROOM,
        total,
        compose_file: compose.map(|(path, _)| path.to_path_buf()),
    })
}

/// Mastodon's own systemd units: one web, one Sidekiq (`-c 25`,
/// `DB_POOL=25`), one streaming service.
fn systemd_layout(env: Option<&EnvFile>) -> Result<Vec<AppProcess>> {
    let plain = ServiceEnv {
        file: env,
        own: BTreeMap::new(),
    };
    let sidekiq_env = ServiceEnv {
        file: env,
        own: BTreeMap::from([(
            "DB_POOL".to_string(),
            SYSTEMD_SIDEKIQ_CONCURRENCY.to_string(),
        )]),
    };
    Ok(vec![
        web("mastodon-web", &plain, 1)?,
        sidekiq(
            "mastodon-sidekiq",
            &sidekiq_env,
            1,
            &[
                "sidekiq".to_string(),
                "-c".to_string(),
                SYSTEMD_SIDEKIQ_CONCURRENCY.to_string(),
            ],
        )?,
        streaming("mastodon-streaming", &plain, 1)?,
    ])
}

fn web(service: &str, env: &ServiceEnv, replicas: u32) -> Result<AppProcess> {
    let workers = env
        .number("WEB_CONCURRENCY")?
        .unwrap_or(DEFAULT_WEB_CONCURRENCY)
        .max(1);
    let threads = env.number("MAX_THREADS")?.unwrap_or(DEFAULT_MAX_THREADS);
    let db_pool = env.number("DB_POOL")?;
    let pool = db_pool.unwrap_or(threads);
    let per_process = pool.min(threads);
    let processes = workers * replicas;
    Ok(AppProcess {
        service: service.to_string(),
        kind: ProcessKind::Web,
        processes,
        threads: Some(threads),
        pool,
        pool_from_db_pool: db_pool.is_some(),
        queues: Vec::new(),
        connections: processes * per_process,
        derivation: format!(
            "{}WEB_CONCURRENCY {workers} x min(pool {pool}{}, MAX_THREADS {threads})",
            replicas_text(replicas),
            if db_pool.is_some() {
                " from DB_POOL"
            } else {
                ""
            }
        ),
    })
}

fn sidekiq(
    service: &str,
    env: &ServiceEnv,
    replicas: u32,
    command: &[String],
) -> Result<AppProcess> {
    let from_flag = concurrency_flag(command);
    let (concurrency, source) = match (from_flag, env.number("SIDEKIQ_CONCURRENCY")?) {
        (Some(n), _) => (n, "-c"),
        (None, Some(n)) => (n, "SIDEKIQ_CONCURRENCY"),
        (None, None) => (DEFAULT_SIDEKIQ_CONCURRENCY, "default concurrency"),
    };
    let db_pool = env.number("DB_POOL")?;
    let pool = db_pool.unwrap_or(concurrency);
    Ok(AppProcess {
        service: service.to_string(),
        kind: ProcessKind::Sidekiq,
        processes: replicas,
        threads: Some(concurrency),
        pool,
        pool_from_db_pool: db_pool.is_some(),
        queues: queue_flags(command),
        connections: replicas * pool.min(concurrency),
        derivation: format!(
            "{}min(pool {pool}{}, {source} {concurrency})",
            replicas_text(replicas),
            if db_pool.is_some() {
                " from DB_POOL"
            } else {
                ""
            }
        ),
    })
}

fn streaming(service: &str, env: &ServiceEnv, replicas: u32) -> Result<AppProcess> {
    let db_pool = env.number("DB_POOL")?;
    let pool = db_pool.unwrap_or(DEFAULT_STREAMING_POOL);
    Ok(AppProcess {
        service: service.to_string(),
        kind: ProcessKind::Streaming,
        processes: replicas,
        threads: None,
        pool,
        pool_from_db_pool: db_pool.is_some(),
        queues: Vec::new(),
        connections: replicas * pool,
        derivation: format!(
            "{}pool {pool}{}",
            replicas_text(replicas),
            if db_pool.is_some() {
                " from DB_POOL"
            } else {
                " (streaming's default)"
            }
        ),
    })
}

fn replicas_text(replicas: u32) -> String {
    if replicas == 1 {
        String::new()
    } else {
        format!("{replicas} replicas x ")
    }
}

/// Sidekiq's `-c N`, `-cN`, `--concurrency N` or `--concurrency=N`; a
/// `-c` followed by no number is someone else's (`sh -c "..."`).
fn concurrency_flag(command: &[String]) -> Option<u32> {
    let mut found = None;
    let mut words = command.iter();
    while let Some(word) = words.next() {
        let value = match word.as_str() {
            "-c" | "--concurrency" => words.next().map(String::as_str),
            other => other
                .strip_prefix("--concurrency=")
                .or_else(|| other.strip_prefix("-c").filter(|rest| !rest.is_empty())),
        };
        if let Some(n) = value.and_then(|v| v.trim_matches(['"', '\'']).parse::<u32>().ok()) {
            found = Some(n);
        }
    }
    found
}

/// Sidekiq's `-q NAME[,WEIGHT]` / `--queue` arguments.
fn queue_flags(command: &[String]) -> Vec<String> {
    let mut queues = Vec::new();
    let mut words = command.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "-q" | "--queue" => queues.extend(words.next().cloned()),
            other => queues.extend(other.strip_prefix("--queue=").map(str::to_string)),
        }
    }
    queues
}

/// The app services of a compose file, classified by their command.
fn from_compose(env: Option<&EnvFile>, path: &Path, text: &str) -> Result<Vec<AppProcess>> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|err| TuskError::usage(format!("{}: {err}", path.display())))?;
    let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
        return Err(TuskError::usage(format!(
            "{} has no services: section",
            path.display()
        )));
    };
    let mut processes = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let command = words_of(service.get("command"));
        let entrypoint = words_of(service.get("entrypoint"));
        let image = service
            .get("image")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let all = [entrypoint.as_slice(), command.as_slice()].concat();
        let joined = all.join(" ");
        let service_env = ServiceEnv {
            file: env,
            own: environment_of(service.get("environment")),
        };
        let replicas = replicas_of(service);
        if replicas == 0 {
            continue;
        }
        let process = if joined.contains("sidekiq") {
            sidekiq(name, &service_env, replicas, &all)?
        } else if joined.contains("puma") || joined.contains("rails s") {
            web(name, &service_env, replicas)?
        } else if joined.contains("streaming") || image.contains("mastodon-streaming") {
            streaming(name, &service_env, replicas)?
        } else {
            continue;
        };
        processes.push(process);
    }
    if processes.is_empty() {
        return Err(TuskError::usage(format!(
            "{} runs no Mastodon process (no service runs puma, sidekiq or the streaming server); \
             pass --connections, or --compose-file with Mastodon's compose file",
            path.display()
        )));
    }
    Ok(processes)
}

/// A compose `command:`/`entrypoint:`: a string split on blanks, or a list.
fn words_of(value: Option<&serde_yaml_ng::Value>) -> Vec<String> {
    match value {
        Some(serde_yaml_ng::Value::String(line)) => {
            line.split_whitespace().map(str::to_string).collect()
        }
        Some(serde_yaml_ng::Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| match item {
                serde_yaml_ng::Value::String(s) => Some(s.clone()),
                serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .flat_map(|word| {
                // `sh -c "bundle exec sidekiq -c 10"` keeps its line in one item.
                word.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A compose `environment:`: a list of `KEY=value` or a map.
fn environment_of(value: Option<&serde_yaml_ng::Value>) -> BTreeMap<String, String> {
    let scalar = |v: &serde_yaml_ng::Value| match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Some(serde_yaml_ng::Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| item.as_str()?.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
        Some(serde_yaml_ng::Value::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `scale:` or `deploy.replicas`, else 1.
fn replicas_of(service: &serde_yaml_ng::Value) -> u32 {
    service
        .get("scale")
        .or_else(|| service.get("deploy").and_then(|d| d.get("replicas")))
        .and_then(|v| v.as_u64())
        .map_or(1, |n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> EnvFile {
        EnvFile::parse(Path::new(".env.production"), text).unwrap()
    }

    const MASTODON_COMPOSE: &str = r#"
services:
  db:
    image: postgres:14-alpine
  redis:
    image: redis:7-alpine
  web:
    image: ghcr.io/mastodon/mastodon:v4.3.17
    env_file: .env.production
    command: bundle exec puma -C config/puma.rb
  streaming:
    image: ghcr.io/mastodon/mastodon-streaming:v4.3.17
    env_file: .env.production
    command: node ./streaming/index.js
  sidekiq:
    image: ghcr.io/mastodon/mastodon:v4.3.17
    env_file: .env.production
    command: bundle exec sidekiq
"#;

    #[test]
    fn mastodons_compose_file_with_defaults() {
        let budget = derive(
            None,
            Some((Path::new("docker-compose.yml"), MASTODON_COMPOSE)),
        )
        .unwrap();
        let counts: Vec<(&str, ProcessKind, u32)> = budget
            .processes
            .iter()
            .map(|p| (p.service.as_str(), p.kind, p.connections))
            .collect();
        assert_eq!(
            counts,
            [
                ("web", ProcessKind::Web, 10),
                ("streaming", ProcessKind::Streaming, 10),
                ("sidekiq", ProcessKind::Sidekiq, 5),
            ]
        );
        assert_eq!(budget.total, 10 + 10 + 5 + HEADROOM);
    }

    #[test]
    fn split_sidekiq_with_db_pool_and_own_environment() {
        let compose = r#"
services:
  web:
    command: ["bundle", "exec", "puma", "-C", "config/puma.rb"]
  sidekiq_default:
    command: bundle exec sidekiq -c 20 -q default -q scheduler
  sidekiq_pull:
    command: bundle exec sidekiq --concurrency=40 -q pull
    environment:
      - DB_POOL=30
    deploy:
      replicas: 2
  streaming:
    image: ghcr.io/mastodon/mastodon-streaming:v4.4.0
"#;
        let env = env("WEB_CONCURRENCY=3\nMAX_THREADS=8\nDB_POOL=15\n");
        let budget = derive(Some(&env), Some((Path::new("compose.yaml"), compose))).unwrap();
        let by_name = |name: &str| budget.processes.iter().find(|p| p.service == name).unwrap();
        // web: 3 workers x min(15, 8)
        assert_eq!(by_name("web").connections, 24);
        // DB_POOL 15 < -c 20: the pool caps the threads' connections.
        assert_eq!(by_name("sidekiq_default").connections, 15);
        assert_eq!(by_name("sidekiq_default").queues, ["default", "scheduler"]);
        // 2 replicas x min(30, 40)
        assert_eq!(by_name("sidekiq_pull").connections, 60);
        assert_eq!(by_name("streaming").connections, 15);
        assert_eq!(budget.total, 24 + 15 + 60 + 15 + HEADROOM);
    }

    #[test]
    fn without_compose_file_the_systemd_units() {
        let budget = derive(Some(&env("MAX_THREADS=10\n")), None).unwrap();
        let counts: Vec<u32> = budget.processes.iter().map(|p| p.connections).collect();
        // web 2 x 10, sidekiq -c 25 with DB_POOL=25, streaming 10
        assert_eq!(counts, [20, 25, 10]);
    }

    #[test]
    fn a_bad_number_names_the_variable() {
        let err = derive(Some(&env("WEB_CONCURRENCY=two\n")), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("WEB_CONCURRENCY"), "{err}");
    }

    #[test]
    fn reads_concurrency_flags() {
        let words = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(concurrency_flag(&words("sidekiq -c 7")), Some(7));
        assert_eq!(concurrency_flag(&words("sidekiq -c7")), Some(7));
        assert_eq!(concurrency_flag(&words("sidekiq --concurrency 9")), Some(9));
        assert_eq!(concurrency_flag(&words("sidekiq -q default")), None);
        assert_eq!(
            concurrency_flag(&words("sh -c \"bundle exec sidekiq -c 12\"")),
            Some(12)
        );
    }
}
