//! Settings from one precedence: flag > `TUSK_*` environment > YAML file >
//! Mastodon's `.env.production` > defaults.
//!
//! The binary merges flags and `TUSK_*` variables into [`Overrides`]; this
//! module lays the YAML file and `.env.production` under them. It sits at
//! the top of the library: it turns settings into the types of every layer
//! below (database logins, buckets, containers), and no operation reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::docker::ContainerSelector;
use crate::error::TuskError;
use crate::mastodon::env_file::{EnvFile, RedisRole};
use crate::notify::NotifySettings;
use crate::postgres::docker::DumpTransport;
use crate::postgres::{DbTarget, RootCert, SslMode, TlsOptions};
use crate::redis::RedisTarget;
use crate::set::destination::{Bucket, Destination, Place, normalize_prefix};
use crate::set::retention::{RetentionPolicy, parse_time_zone};
use crate::set::{Compression, LockPolicy};
use crate::storage::s3::S3Settings;

/// Where the config file is looked for when `--config`/`TUSK_CONFIG` is not given.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["./tusk.yaml", "/etc/tusk/tusk.yaml"];
pub const DEFAULT_BACKUP_DIR: &str = "/var/backups/tusk";

/// The YAML file, key for key. Unknown keys are errors so typos do not
/// silently fall back to defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub instance: Option<String>,
    pub backup_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub compression: Option<Compression>,
    pub compression_level: Option<i32>,
    pub temp_dir: Option<PathBuf>,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub docker: DockerSection,
    #[serde(default)]
    pub mastodon: MastodonSection,
    #[serde(default)]
    pub s3: S3Section,
    #[serde(default)]
    pub prune: crate::prune::PruneSettings,
    /// Where backup sets are kept; without it, `backup_dir` is the one
    /// destination, named `local`.
    pub destinations: Option<Vec<DestinationSection>>,
    /// The retention of `backup_dir` when no `destinations:` are listed.
    pub retention: Option<RetentionPolicy>,
    /// The IANA zone of retention's calendar buckets [default: UTC].
    pub time_zone: Option<String>,
    #[serde(default)]
    pub notify: NotifySection,
    /// node_exporter textfile metrics, rewritten after backup and verify.
    pub metrics_file: Option<PathBuf>,
    #[serde(default)]
    pub lock: LockSection,
    #[serde(default)]
    pub blocks: BlocksSection,
    #[serde(default)]
    pub redis: RedisSection,
    /// `tusk status`'s thresholds.
    #[serde(default)]
    pub status: crate::status::StatusSettings,
    #[serde(default)]
    pub encryption: EncryptionSection,
}

/// Encryption of backup sets with age ([`crate::set::encryption`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// Public keys to encrypt to: age X25519 (`age1...`) and SSH
    /// (`ssh-ed25519 ...`, `ssh-rsa ...`).
    pub recipients: Option<Vec<String>>,
    /// A file of public keys, one a line, as `age -R` reads it.
    pub recipients_file: Option<PathBuf>,
    /// Encrypt to a passphrase instead, read from `TUSK_PASSPHRASE_FILE` or
    /// asked on the terminal.
    pub passphrase: Option<bool>,
    /// Private keys that open sets (restore, verify, migrate, rehearse).
    pub identity_files: Option<Vec<PathBuf>>,
}

/// Encryption settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    /// Public keys new sets are encrypted to (`recipients` and the lines of
    /// `recipients_file`).
    pub recipients: Vec<String>,
    /// New sets are encrypted to a passphrase.
    pub passphrase: bool,
    /// Where a passphrase is read from without a terminal.
    pub passphrase_file: Option<PathBuf>,
    /// Private keys that open sets: `--identity`, else `identity_files`.
    pub identity_files: Vec<PathBuf>,
}

impl EncryptionSettings {
    /// Whether new sets must be encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase
    }
}

/// Mastodon's Redis servers; unset keys come from `.env.production`
/// (`SIDEKIQ_REDIS_*`, `CACHE_REDIS_*`, `REDIS_*`, `REDIS_NAMESPACE`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// Sidekiq's Redis: `redis://[:password@]host[:port][/db]`,
    /// `rediss://` for TLS, `unix:///path?db=n`.
    pub url: Option<String>,
    /// redis-namespace's key prefix (Mastodon before 4.4); `""` for none.
    pub namespace: Option<String>,
    /// The cache's Redis [default: as Mastodon reads it, else `url`'s server].
    pub cache_url: Option<String>,
    /// How long to wait for Redis to connect or answer [default: 5].
    pub timeout_seconds: Option<u64>,
    /// Put a snapshot of Sidekiq's Redis in every set [default: true when
    /// `redis.url`, `--redis-url` or `.env.production` (`REDIS_URL`,
    /// `REDIS_HOST`, `REDIS_PORT`, `SIDEKIQ_REDIS_URL`, `SIDEKIQ_REDIS_HOST`)
    /// names the instance's Redis].
    pub backup: Option<bool>,
    /// Also snapshot the cache's Redis [default: false: the app rebuilds it].
    pub backup_cache: Option<bool>,
    /// redis-cli on this machine (direct mode) [default: `redis-cli`].
    pub cli: Option<PathBuf>,
    /// redis-server on this machine, which loads a restored snapshot to
    /// check it [default: `redis-server`].
    pub server_bin: Option<PathBuf>,
    /// Docker mode: the Redis container's name or compose service
    /// [default: the compose service `redis`].
    pub container: Option<String>,
}

/// How Redis goes into sets and comes back out, resolved.
#[derive(Debug, Clone)]
pub struct RedisBackupSettings {
    /// Snapshot Sidekiq's Redis in every set.
    pub sidekiq: bool,
    /// Snapshot the cache's Redis too.
    pub cache: bool,
    pub cli: PathBuf,
    pub server_bin: PathBuf,
    /// The Redis container's name or compose service (Docker mode).
    pub container: String,
}

/// Alerts: a JSON POST and healthchecks.io-style pings ([`crate::notify`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    pub url: Option<String>,
    pub on_success: Option<bool>,
    pub ping_url: Option<String>,
    pub timeout_seconds: Option<u64>,
}

/// The backup directory's lock ([`crate::set::lock`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSection {
    /// Wait this long for another run's lock before exit 4.
    pub wait_seconds: Option<u64>,
    /// A lock record from another host older than this is taken over.
    pub stale_after_hours: Option<u64>,
}

/// `tusk blocks`: the admin API token and where runs keep their state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocksSection {
    /// A file holding the access token (mode 0600), with the
    /// `admin:read:domain_blocks` and `admin:write:domain_blocks` scopes.
    pub token_file: Option<PathBuf>,
    /// Where `blocks watch` remembers what it showed and a stopped import
    /// leaves its report [default: $XDG_STATE_HOME/tusk, else ~/.local/state/tusk].
    pub state_dir: Option<PathBuf>,
}

/// One entry of `destinations:`: a directory (`dir:`) or a bucket (`s3:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    pub name: String,
    pub dir: Option<PathBuf>,
    pub s3: Option<S3DestinationSection>,
    pub retention: Option<RetentionPolicy>,
}

/// A bucket destination, as the file writes it. Its credentials are never
/// in the file nor on the command line: `TUSK_S3_ACCESS_KEY_ID` and
/// `TUSK_S3_SECRET_ACCESS_KEY`, else `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, else a profile of the AWS shared credentials file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3DestinationSection {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style URLs; the default is on with an `endpoint`, off for AWS.
    pub path_style: Option<bool>,
    /// The store's part-count limit (S3: 10,000).
    pub max_parts: Option<u32>,
    pub storage_class: Option<String>,
    /// The profile in `~/.aws/credentials` (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// Send the SDK's extra checksum headers (default: only without an endpoint).
    pub sdk_checksums: Option<bool>,
}

/// The name of the destination `backup_dir` makes when no `destinations:`
/// are listed.
pub const DEFAULT_DESTINATION: &str = "local";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub mode: Option<PgMode>,
    pub bin_dir: Option<PathBuf>,
    pub sslmode: Option<SslMode>,
    pub sslrootcert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    pub host: Option<String>,
    pub container: Option<String>,
    pub compose_service: Option<String>,
    pub compose_project: Option<String>,
    pub transport: Option<DumpTransport>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MastodonSection {
    pub env_file: Option<PathBuf>,
    pub services: Option<Vec<String>>,
    pub media_root: Option<PathBuf>,
    pub media_store: Option<MediaStoreKind>,
    /// The server's address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN].
    pub url: Option<String>,
    /// A shell command that stops Mastodon's app processes of a non-Docker
    /// install (`tusk migrate`) [default: systemctl stop of the three units].
    pub stop_command: Option<String>,
    /// The shell command that starts them again.
    pub start_command: Option<String>,
}

/// The systemd units of a non-Docker install, as Mastodon's guide names them.
pub const DEFAULT_APP_UNITS: &str = "mastodon-web mastodon-sidekiq mastodon-streaming";

/// Where Mastodon keeps its media: `S3_ENABLED` in Mastodon's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaStoreKind {
    /// The media folder (`mastodon.media_root`).
    Local,
    /// The bucket (`s3:`).
    S3,
}

impl MediaStoreKind {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 2] = [
        ("local", "The media folder (`mastodon.media_root`)"),
        ("s3", "The bucket (`s3:`)"),
    ];
}

/// The bucket media go to; unset keys come from `.env.production`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub key_prefix: Option<String>,
    pub permission: Option<String>,
    pub path_style: Option<bool>,
    pub sdk_checksums: Option<bool>,
}

/// Where the PostgreSQL client tools run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgMode {
    /// On this machine, against the server's network address.
    Direct,
    /// Inside the database's container, through the Docker Engine.
    Docker,
}

impl PgMode {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 2] = [
        (
            "direct",
            "On this machine, against the server's network address",
        ),
        (
            "docker",
            "Inside the database's container, through the Docker Engine",
        ),
    ];

    pub fn name(self) -> &'static str {
        match self {
            PgMode::Direct => "direct",
            PgMode::Docker => "docker",
        }
    }
}

/// Mastodon's compose file calls its database service `db` and its app
/// services these.
pub const DEFAULT_COMPOSE_SERVICE: &str = "db";
pub const DEFAULT_SERVICES: [&str; 3] = ["web", "streaming", "sidekiq"];

impl FileSettings {
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(FileSettings::default());
        }
        // serde_yaml_ng's message names the key and its line:column.
        serde_yaml_ng::from_str(text)
            .map_err(|err| TuskError::usage(format!("{}: {err}", path.display())))
    }
}

/// Settings given on the command line or as `TUSK_*` variables: they win
/// over the YAML file and `.env.production`. `None` means "not given here".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub database_url: Option<String>,
    pub backup_dir: Option<PathBuf>,
    pub instance: Option<String>,
    pub compression: Option<Compression>,
    pub compression_level: Option<i32>,
    pub pg_bin_dir: Option<PathBuf>,
    pub pg_sslmode: Option<SslMode>,
    /// A PEM file, or `system`.
    pub pg_sslrootcert: Option<String>,
    pub temp_dir: Option<PathBuf>,
    pub postgres_mode: Option<PgMode>,
    pub docker_host: Option<String>,
    pub docker_transport: Option<DumpTransport>,
    pub container: Option<String>,
    pub compose_service: Option<String>,
    pub compose_project: Option<String>,
    pub services: Option<Vec<String>>,
    pub media_root: Option<PathBuf>,
    pub media_store: Option<MediaStoreKind>,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_key_prefix: Option<String>,
    pub s3_permission: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_sdk_checksums: Option<bool>,
    pub mastodon_env_file: Option<PathBuf>,
    pub notify_url: Option<String>,
    pub ping_url: Option<String>,
    pub metrics_file: Option<PathBuf>,
    /// `--wait SECONDS` for the backup directory's lock.
    pub lock_wait_seconds: Option<u64>,
    pub time_zone: Option<String>,
    pub mastodon_url: Option<String>,
    /// `TUSK_MASTODON_TOKEN`: the admin API token itself.
    pub mastodon_token: Option<String>,
    /// `--redis-url`/`TUSK_REDIS_URL`: Sidekiq's Redis.
    pub redis_url: Option<String>,
    /// `--identity FILE` (repeatable): keys that open encrypted sets.
    pub identity_files: Vec<PathBuf>,
    /// `TUSK_PASSPHRASE_FILE`: the passphrase of sets encrypted to one.
    pub passphrase_file: Option<PathBuf>,
}

/// Every setting, resolved.
#[derive(Debug)]
pub struct Settings {
    pub instance: String,
    pub backup_dir: PathBuf,
    database: Option<DbTarget>,
    /// `sslmode`/`sslrootcert` for every server reached directly, where its
    /// URL does not name its own.
    pub tls: TlsOptions,
    pub compression: Compression,
    pub compression_level: i32,
    pub pg_bin_dir: Option<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    pub mode: PgMode,
    /// The Engine address; `None` means `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// The database container (Docker mode).
    pub container: ContainerSelector,
    /// How pg_dump's output reaches tusk in Docker mode.
    pub transport: DumpTransport,
    /// Mastodon's app services, stopped around a dump with `--stop-services`.
    pub services: Vec<String>,
    /// The local media folder (`public/system`).
    pub media_root: PathBuf,
    /// The media bucket, when one is configured anywhere.
    s3: Option<S3Settings>,
    /// `S3_KEY_PREFIX`.
    pub s3_key_prefix: Option<String>,
    /// `S3_PERMISSION`; `None` when ACLs are off.
    pub s3_permission: Option<String>,
    /// Where Mastodon's media live now.
    pub media_store: MediaStoreKind,
    /// The `prune:` section as written.
    pub prune: crate::prune::PruneSettings,
    pub notify: NotifySettings,
    pub metrics_file: Option<PathBuf>,
    /// Waiting for and taking over the backup directory's lock.
    pub lock: LockPolicy,
    /// Where backup sets are kept, each with its retention; never empty.
    pub destinations: Vec<Destination>,
    /// The zone of retention's calendar buckets.
    pub time_zone: chrono_tz::Tz,
    /// Where the settings came from, for `-v` and error messages.
    pub config_file: Option<PathBuf>,
    /// Mastodon's `.env.production`, when one was found: its pool and
    /// process settings size the database (`tusk tune`).
    pub mastodon_env: Option<EnvFile>,
    /// The server's address for its API, when anything names it.
    pub mastodon_url: Option<String>,
    /// Where the admin API token comes from.
    mastodon_token: TokenSource,
    /// Where `tusk blocks` keeps its state and reports.
    pub blocks_state_dir: PathBuf,
    /// Sidekiq's Redis, or why the settings do not say (an error only for
    /// the commands that use it).
    sidekiq_redis: std::result::Result<RedisTarget, String>,
    /// The cache's Redis, likewise.
    cache_redis: std::result::Result<RedisTarget, String>,
    /// How long a Redis connection or command may take.
    pub redis_timeout: Duration,
    /// Redis snapshots in sets.
    pub redis_backup: RedisBackupSettings,
    /// Stops Mastodon's app processes of a non-Docker install (`mastodon.stop_command`).
    pub app_stop_command: String,
    /// Starts them again (`mastodon.start_command`).
    pub app_start_command: String,
    /// The `status:` section as written.
    pub status: crate::status::StatusSettings,
    /// Encryption of new sets and the keys that open them.
    pub encryption: EncryptionSettings,
}

/// The admin API token, never printed.
#[derive(Clone)]
enum TokenSource {
    None,
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Value(_) => f.write_str("Value(<redacted>)"),
            TokenSource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl Settings {
    pub fn resolve(args: &Overrides) -> Result<Self> {
        let config_file = find_config_file(args.config.as_deref())?;
        let file = match &config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("could not read config file {}", path.display()))?;
                FileSettings::parse(path, &text)?
            }
            None => FileSettings::default(),
        };

        let env_file = match args.mastodon_env_file.clone().or(file.mastodon.env_file) {
            Some(path) => Some(
                EnvFile::load(&path)
                    .map_err(|err| TuskError::usage(format!("{err:#}; check mastodon.env_file")))?,
            ),
            None if Path::new(".env.production").is_file() => {
                Some(EnvFile::load(Path::new(".env.production"))?)
            }
            None => None,
        };

        let tls = resolve_tls(args, &file.postgres, env_file.as_ref())?;
        let database = match args
            .database_url
            .as_deref()
            .or(file.database_url.as_deref())
        {
            Some(url) => Some(DbTarget::parse(url)?),
            None => env_file.as_ref().map(EnvFile::database).transpose()?,
        }
        .map(|target| target.with_tls_defaults(&tls));

        let compression = args
            .compression
            .or(file.compression)
            .unwrap_or(Compression::Zstd);
        let compression_level = args
            .compression_level
            .or(file.compression_level)
            .unwrap_or_else(|| compression.default_level());
        if !compression.level_range().contains(&compression_level) {
            return Err(TuskError::usage(format!(
                "compression_level {compression_level} is out of range for {}: use {}..={}",
                compression.name(),
                compression.level_range().start(),
                compression.level_range().end()
            )));
        }

        let instance = args
            .instance
            .clone()
            .or(file.instance)
            .or_else(|| env_file.as_ref()?.get("LOCAL_DOMAIN").map(str::to_string))
            .or_else(crate::creator::host_name)
            .unwrap_or_else(|| "mastodon".into());
        let instance = sanitize_instance(&instance)?;

        let mode = args
            .postgres_mode
            .or(file.postgres.mode)
            .unwrap_or(PgMode::Direct);
        let container = match args.container.clone().or(file.docker.container) {
            Some(name) => ContainerSelector::Name(name),
            None => ContainerSelector::ComposeService {
                service: args
                    .compose_service
                    .clone()
                    .or(file.docker.compose_service)
                    .unwrap_or_else(|| DEFAULT_COMPOSE_SERVICE.into()),
                project: args.compose_project.clone().or(file.docker.compose_project),
            },
        };
        let services = args
            .services
            .clone()
            .or(file.mastodon.services)
            .unwrap_or_else(|| DEFAULT_SERVICES.map(String::from).to_vec());

        let media_root = args
            .media_root
            .clone()
            .or(file.mastodon.media_root)
            .unwrap_or_else(|| {
                let live = env_file
                    .as_ref()
                    .and_then(|env| env.path.parent().map(Path::to_path_buf))
                    .unwrap_or_else(|| PathBuf::from("."));
                live.join("public/system")
            });
        let env_value = |key: &str| {
            env_file
                .as_ref()
                .and_then(|env| env.get(key))
                .map(str::to_string)
        };
        let s3_key_prefix = args
            .s3_key_prefix
            .clone()
            .or(file.s3.key_prefix.clone())
            .or_else(|| env_value("S3_KEY_PREFIX"))
            .map(|p| p.trim_matches('/').to_string())
            .filter(|p| !p.is_empty());
        // An empty S3_PERMISSION turns ACLs off, as in Mastodon.
        let s3_permission = args
            .s3_permission
            .clone()
            .or(file.s3.permission.clone())
            .or_else(|| {
                env_file
                    .as_ref()?
                    .get_raw("S3_PERMISSION")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "public-read".into());
        let s3_permission = (!s3_permission.is_empty()).then_some(s3_permission);
        let s3 = resolve_s3(args, &file.s3, env_file.as_ref())?;
        let media_store = args
            .media_store
            .or(file.mastodon.media_store)
            .unwrap_or_else(|| {
                if env_value("S3_ENABLED").as_deref() == Some("true") {
                    MediaStoreKind::S3
                } else {
                    MediaStoreKind::Local
                }
            });

        let notify = NotifySettings {
            url: args.notify_url.clone().or(file.notify.url),
            on_success: file.notify.on_success.unwrap_or(false),
            ping_url: args.ping_url.clone().or(file.notify.ping_url),
            timeout: file
                .notify
                .timeout_seconds
                .map_or(NotifySettings::DEFAULT_TIMEOUT, Duration::from_secs),
        };
        let lock = LockPolicy {
            wait: Duration::from_secs(
                args.lock_wait_seconds
                    .or(file.lock.wait_seconds)
                    .unwrap_or(0),
            ),
            stale_after: file
                .lock
                .stale_after_hours
                .map_or(LockPolicy::DEFAULT_STALE_AFTER, |hours| {
                    Duration::from_secs(hours * 3600)
                }),
        };
        let time_zone = match args.time_zone.as_deref().or(file.time_zone.as_deref()) {
            Some(name) => parse_time_zone(name).map_err(TuskError::usage)?,
            None => chrono_tz::Tz::UTC,
        };
        let explicit_backup_dir = args.backup_dir.clone().or(file.backup_dir);
        let destinations = resolve_destinations(
            file.destinations,
            file.retention,
            explicit_backup_dir.as_deref(),
        )?;
        // With destinations listed, the backup directory is the first
        // directory among them unless one is named.
        let backup_dir = explicit_backup_dir
            .or_else(|| destinations.iter().find_map(|d| d.dir().cloned()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BACKUP_DIR));
        let mastodon_url = args.mastodon_url.clone().or(file.mastodon.url).or_else(|| {
            let domain = env_value("WEB_DOMAIN").or_else(|| env_value("LOCAL_DOMAIN"))?;
            Some(format!("https://{domain}"))
        });
        let mastodon_token = match (args.mastodon_token.clone(), file.blocks.token_file) {
            (Some(token), _) if !token.trim().is_empty() => TokenSource::Value(token),
            (_, Some(path)) => TokenSource::File(path),
            _ => TokenSource::None,
        };
        let blocks_state_dir = file.blocks.state_dir.unwrap_or_else(default_state_dir);
        let redis_timeout = Duration::from_secs(
            file.redis
                .timeout_seconds
                .unwrap_or(DEFAULT_REDIS_TIMEOUT_SECONDS)
                .max(1),
        );
        let sidekiq_redis = resolve_redis(
            RedisRole::Sidekiq,
            args.redis_url.as_deref(),
            &file.redis,
            env_file.as_ref(),
        );
        let cache_redis = resolve_redis(RedisRole::Cache, None, &file.redis, env_file.as_ref());
        // Mastodon's setup writes REDIS_HOST and REDIS_PORT; an env file
        // without any Redis setting says nothing about this instance's Redis.
        let env_names_redis = env_file.as_ref().is_some_and(|env| {
            [
                "REDIS_URL",
                "REDIS_HOST",
                "REDIS_PORT",
                "SIDEKIQ_REDIS_URL",
                "SIDEKIQ_REDIS_HOST",
            ]
            .iter()
            .any(|key| env.get(key).is_some())
        });
        let redis_known = file.redis.url.is_some() || args.redis_url.is_some() || env_names_redis;
        let redis_backup = RedisBackupSettings {
            sidekiq: file.redis.backup.unwrap_or(redis_known),
            cache: file.redis.backup_cache.unwrap_or(false),
            cli: file.redis.cli.clone().unwrap_or_else(|| "redis-cli".into()),
            server_bin: file
                .redis
                .server_bin
                .clone()
                .unwrap_or_else(|| "redis-server".into()),
            container: file
                .redis
                .container
                .clone()
                .unwrap_or_else(|| "redis".into()),
        };

        let app_stop_command = file
            .mastodon
            .stop_command
            .unwrap_or_else(|| format!("systemctl stop {DEFAULT_APP_UNITS}"));
        let app_start_command = file
            .mastodon
            .start_command
            .unwrap_or_else(|| format!("systemctl start {DEFAULT_APP_UNITS}"));
        let encryption = resolve_encryption(args, file.encryption)?;

        Ok(Settings {
            encryption,
            sidekiq_redis,
            cache_redis,
            redis_timeout,
            redis_backup,
            app_stop_command,
            app_start_command,
            status: file.status,
            mastodon_url,
            mastodon_token,
            blocks_state_dir,
            media_store,
            prune: file.prune,
            notify,
            metrics_file: args.metrics_file.clone().or(file.metrics_file),
            lock,
            destinations,
            time_zone,
            media_root,
            s3,
            s3_key_prefix,
            s3_permission,
            mode,
            docker_host: args.docker_host.clone().or(file.docker.host),
            transport: args
                .docker_transport
                .or(file.docker.transport)
                .unwrap_or(DumpTransport::Auto),
            container,
            services,
            instance,
            backup_dir,
            database,
            tls,
            compression,
            compression_level,
            pg_bin_dir: args.pg_bin_dir.clone().or(file.postgres.bin_dir),
            temp_dir: args.temp_dir.clone().or(file.temp_dir),
            config_file,
            mastodon_env: env_file,
        })
    }

    /// The instance's database, or an error saying how to name one. In
    /// Docker mode the login defaults to Mastodon's compose setup
    /// (user and database `postgres`); the host is always the container.
    pub fn database(&self) -> Result<&DbTarget> {
        if self.database.is_none() && self.mode == PgMode::Docker {
            return Ok(&COMPOSE_LOGIN);
        }
        self.database.as_ref().ok_or_else(|| {
            TuskError::usage(
                "no database configured: pass --database-url, set TUSK_DATABASE_URL, \
                 add database_url to tusk.yaml, or point mastodon.env_file at .env.production",
            )
        })
    }
}

impl Settings {
    /// The Mastodon server's address and an admin API token, or an error
    /// saying how to give them.
    pub fn mastodon_api(&self) -> Result<(String, String)> {
        let url = self.mastodon_url.clone().ok_or_else(|| {
            TuskError::usage(
                "no Mastodon address configured: set mastodon.url in tusk.yaml, \
                 TUSK_MASTODON_URL or --mastodon-url, or point mastodon.env_file at \
                 .env.production (LOCAL_DOMAIN)",
            )
        })?;
        let token = match &self.mastodon_token {
            TokenSource::Value(token) => token.clone(),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|err| {
                    TuskError::usage(format!(
                        "could not read blocks.token_file {}: {err}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
            TokenSource::None => String::new(),
        };
        if token.is_empty() {
            return Err(TuskError::usage(
                "no admin API token: create an application in Mastodon (Preferences > \
                 Development) with the admin:read:domain_blocks and admin:write:domain_blocks \
                 scopes and put its access token in a file named by blocks.token_file, or in \
                 TUSK_MASTODON_TOKEN",
            ));
        }
        Ok((url, token))
    }

    /// The media bucket, or an error saying how to name one.
    pub fn s3(&self) -> Result<&S3Settings> {
        self.s3.as_ref().ok_or_else(|| {
            TuskError::usage(
                "no bucket configured: pass --s3-bucket, add s3.bucket to tusk.yaml, \
                 or set S3_BUCKET in .env.production",
            )
        })
    }
}

impl Settings {
    /// Sidekiq's Redis (its queues, retries, processes), or an error saying
    /// what in the settings is wrong.
    pub fn sidekiq_redis(&self) -> Result<&RedisTarget> {
        self.sidekiq_redis
            .as_ref()
            .map_err(|why| TuskError::usage(why.clone()))
    }

    /// The Rails cache's Redis, or an error saying what is wrong.
    pub fn cache_redis(&self) -> Result<&RedisTarget> {
        self.cache_redis
            .as_ref()
            .map_err(|why| TuskError::usage(why.clone()))
    }
}

pub const DEFAULT_REDIS_TIMEOUT_SECONDS: u64 = 5;

/// One of Mastodon's Redis servers: flag > `TUSK_REDIS_URL` > tusk.yaml's
/// `redis:` > `.env.production` as Mastodon reads it > localhost:6379/0.
/// The namespace is `redis.namespace` when the file says one (for the
/// cache `<ns>_cache`, else `cache`), else Mastodon's.
fn resolve_redis(
    role: RedisRole,
    url_override: Option<&str>,
    file: &RedisSection,
    env_file: Option<&EnvFile>,
) -> std::result::Result<RedisTarget, String> {
    let (file_url, key) = match role {
        RedisRole::Sidekiq => (file.url.as_deref(), "redis.url"),
        RedisRole::Cache => (file.cache_url.as_deref(), "redis.cache_url"),
    };
    let mastodon = || match env_file {
        Some(env) => env.redis(role),
        None => EnvFile::default().redis(role),
    };
    let target = match (url_override, file_url) {
        (Some(url), _) => RedisTarget::parse_url(url).context("--redis-url / TUSK_REDIS_URL"),
        (None, Some(url)) => {
            RedisTarget::parse_url(url).with_context(|| format!("{key} in tusk.yaml"))
        }
        (None, None) => mastodon(),
    }
    .map_err(|err| format!("{err:#}"))?;
    let namespace = match (&file.namespace, role) {
        (Some(ns), RedisRole::Sidekiq) => Some(ns.clone()),
        (Some(ns), RedisRole::Cache) if ns.is_empty() => Some("cache".to_string()),
        (Some(ns), RedisRole::Cache) => Some(format!("{ns}_cache")),
        // Mastodon's own namespace applies whichever server is used.
        (None, _) => mastodon().ok().and_then(|target| target.namespace),
    };
    Ok(target.with_namespace(namespace))
}

/// `sslmode` and `sslrootcert`: flag > environment > YAML > `.env.production`
/// (`DB_SSLMODE`, `PGSSLROOTCERT`); unset ones take libpq's defaults when a
/// connection is made.
fn resolve_tls(
    args: &Overrides,
    file: &PostgresSection,
    env_file: Option<&EnvFile>,
) -> Result<TlsOptions> {
    let mode = match args.pg_sslmode.or(file.sslmode) {
        Some(mode) => Some(mode),
        None => env_file.map(EnvFile::ssl_mode).transpose()?.flatten(),
    };
    let root_cert = args
        .pg_sslrootcert
        .as_deref()
        .or(file.sslrootcert.as_deref())
        .filter(|value| !value.is_empty())
        .map(RootCert::parse)
        .or_else(|| env_file.and_then(EnvFile::ssl_root_cert));
    Ok(TlsOptions { mode, root_cert })
}

/// The destinations of backup sets: the `destinations:` list, or else the
/// backup directory (flag > `TUSK_BACKUP_DIR` > `backup_dir`) as `local`
/// with the top-level `retention:`.
fn resolve_destinations(
    listed: Option<Vec<DestinationSection>>,
    retention: Option<RetentionPolicy>,
    backup_dir: Option<&Path>,
) -> Result<Vec<Destination>> {
    let Some(listed) = listed else {
        return Ok(vec![Destination {
            name: DEFAULT_DESTINATION.into(),
            place: Place::Dir(
                backup_dir
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_BACKUP_DIR)),
            ),
            retention: retention.unwrap_or_default(),
            unusable: None,
        }]);
    };
    if retention.is_some() {
        return Err(TuskError::usage(
            "tusk.yaml has both destinations: and a top-level retention:; the top-level one \
             only applies to backup_dir when no destinations are listed: move it into a \
             destination",
        ));
    }
    if listed.is_empty() {
        return Err(TuskError::usage(
            "destinations: is empty in tusk.yaml: list at least one, or remove the key to \
             keep sets in backup_dir",
        ));
    }
    let mut destinations: Vec<Destination> = Vec::new();
    for entry in listed {
        let name = entry.name.trim().to_string();
        if name.is_empty() {
            return Err(TuskError::usage(
                "a destination in tusk.yaml has an empty name: give each one a name",
            ));
        }
        if destinations.iter().any(|d| d.name == name) {
            return Err(TuskError::usage(format!(
                "two destinations in tusk.yaml are named {name:?}: names must differ"
            )));
        }
        let (place, unusable) = match (entry.dir, entry.s3) {
            (Some(_), Some(_)) => {
                return Err(TuskError::usage(format!(
                    "destination {name:?} has both dir: and s3:; give each destination one"
                )));
            }
            (None, Some(s3)) => {
                let (bucket, unusable) = resolve_bucket_destination(&name, s3)?;
                (Place::Bucket(bucket), unusable)
            }
            (None, None) => {
                return Err(TuskError::usage(format!(
                    "destination {name:?} says neither dir: nor s3:; add dir: /path/to/backups \
                     or s3: {{bucket: NAME}}"
                )));
            }
            (Some(dir), None) => (Place::Dir(dir), None),
        };
        destinations.push(Destination {
            name,
            place,
            retention: entry.retention.unwrap_or_default(),
            unusable,
        });
    }
    Ok(destinations)
}

/// A bucket destination's store, and why it cannot be used when its
/// credentials are missing (said when it is used, not by every command).
fn resolve_bucket_destination(
    name: &str,
    section: S3DestinationSection,
) -> Result<(Bucket, Option<String>)> {
    use crate::storage::multipart::{DEFAULT_MAX_PARTS, PartSizes};
    let Some(bucket) = section.bucket.filter(|b| !b.trim().is_empty()) else {
        return Err(TuskError::usage(format!(
            "destination {name:?} has s3: without a bucket: add s3: {{bucket: NAME}}"
        )));
    };
    let max_parts = section.max_parts.unwrap_or(DEFAULT_MAX_PARTS);
    if !(1..=DEFAULT_MAX_PARTS).contains(&max_parts) {
        return Err(TuskError::usage(format!(
            "destination {name:?}: max_parts must be between 1 and {DEFAULT_MAX_PARTS} \
             (S3's limit), not {max_parts}"
        )));
    }
    let mut parts = PartSizes {
        max_parts,
        ..PartSizes::default()
    };
    // For test servers only: S3 itself refuses parts under 5 MiB.
    if let Some(first) = std::env::var("TUSK_S3_FIRST_PART_BYTES")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|first| *first > 0)
    {
        parts.first = first;
    }
    let endpoint = section.endpoint.filter(|e| !e.trim().is_empty());
    let (credentials, unusable) = match bucket_credentials(section.profile.as_deref()) {
        Ok(credentials) => (credentials, None),
        Err(why) => (
            (String::new(), String::new()),
            Some(format!("destination {name:?} ({bucket}): {why}")),
        ),
    };
    let settings = S3Settings {
        bucket,
        region: section.region.unwrap_or_else(|| "us-east-1".into()),
        path_style: section.path_style.unwrap_or(endpoint.is_some()),
        sdk_checksums: section.sdk_checksums.unwrap_or(endpoint.is_none()),
        endpoint,
        access_key_id: credentials.0,
        secret_access_key: credentials.1,
        storage_class: section.storage_class.filter(|c| !c.trim().is_empty()),
    };
    let storage = crate::storage::retry::Retrying::new(
        crate::storage::s3::S3Storage::new(settings),
        STORAGE_ATTEMPTS,
        Duration::from_millis(200),
    );
    Ok((
        Bucket {
            storage: std::sync::Arc::new(storage),
            prefix: normalize_prefix(section.prefix.as_deref().unwrap_or("")),
            parts,
        },
        unusable,
    ))
}

/// Attempts per request to a bucket destination (transient failures only).
const STORAGE_ATTEMPTS: u32 = 5;

/// A bucket destination's keys: `TUSK_S3_*`, else `AWS_*`, else the
/// profile's static keys in the AWS shared credentials file.
fn bucket_credentials(profile: Option<&str>) -> std::result::Result<(String, String), String> {
    let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    for (id, secret) in [
        ("TUSK_S3_ACCESS_KEY_ID", "TUSK_S3_SECRET_ACCESS_KEY"),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ] {
        if let (Some(id), Some(secret)) = (var(id), var(secret)) {
            return Ok((id, secret));
        }
    }
    let profile = profile
        .map(str::to_string)
        .or_else(|| var("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")));
    let text = file
        .as_ref()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .unwrap_or_default();
    match profile_keys(&text, &profile) {
        Some(keys) => Ok(keys),
        None => Err(format!(
            "no credentials: set TUSK_S3_ACCESS_KEY_ID and TUSK_S3_SECRET_ACCESS_KEY (or \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or put aws_access_key_id and \
             aws_secret_access_key in profile [{profile}] of {}",
            file.map_or("~/.aws/credentials".into(), |f| f.display().to_string())
        )),
    }
}

/// The static keys of `[profile]` in an AWS credentials file.
fn profile_keys(text: &str, profile: &str) -> Option<(String, String)> {
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            in_profile = section == profile || section.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().to_string();
            match key.trim() {
                "aws_access_key_id" => id = Some(value),
                "aws_secret_access_key" => secret = Some(value),
                _ => {}
            }
        }
    }
    Some((id?, secret?))
}

/// The bucket settings: flag > environment > YAML > `.env.production`.
fn resolve_s3(
    args: &Overrides,
    file: &S3Section,
    env_file: Option<&EnvFile>,
) -> Result<Option<S3Settings>> {
    let env_value = |key: &str| env_file.and_then(|env| env.get(key)).map(str::to_string);
    let Some(bucket) = args
        .s3_bucket
        .clone()
        .or(file.bucket.clone())
        .or_else(|| env_value("S3_BUCKET"))
    else {
        return Ok(None);
    };
    let endpoint = args
        .s3_endpoint
        .clone()
        .or(file.endpoint.clone())
        .or_else(|| env_value("S3_ENDPOINT"))
        .or_else(|| {
            let host = env_value("S3_HOSTNAME")?;
            let protocol = env_value("S3_PROTOCOL").unwrap_or_else(|| "https".into());
            Some(format!("{protocol}://{host}"))
        });
    let process_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let access_key_id = file
        .access_key_id
        .clone()
        .or_else(|| process_env("AWS_ACCESS_KEY_ID"))
        .or_else(|| env_value("AWS_ACCESS_KEY_ID"));
    let secret_access_key = file
        .secret_access_key
        .clone()
        .or_else(|| process_env("AWS_SECRET_ACCESS_KEY"))
        .or_else(|| env_value("AWS_SECRET_ACCESS_KEY"));
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key) else {
        return Err(TuskError::usage(format!(
            "bucket {bucket} is configured but its credentials are not: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (environment or .env.production) or s3.access_key_id and \
             s3.secret_access_key in tusk.yaml"
        )));
    };
    // Mastodon uses path-style URLs whenever an endpoint is set, unless
    // S3_OVERRIDE_PATH_STYLE=true.
    let path_style = args.s3_path_style.or(file.path_style).unwrap_or_else(|| {
        endpoint.is_some() && env_value("S3_OVERRIDE_PATH_STYLE").as_deref() != Some("true")
    });
    let sdk_checksums = args
        .s3_sdk_checksums
        .or(file.sdk_checksums)
        .unwrap_or(endpoint.is_none());
    Ok(Some(S3Settings {
        bucket,
        region: args
            .s3_region
            .clone()
            .or(file.region.clone())
            .or_else(|| env_value("S3_REGION"))
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint,
        access_key_id,
        secret_access_key,
        path_style,
        sdk_checksums,
        storage_class: None,
    }))
}

static COMPOSE_LOGIN: std::sync::LazyLock<DbTarget> = std::sync::LazyLock::new(|| {
    DbTarget::parse("postgresql://postgres@localhost/postgres").expect("valid URL")
});

fn resolve_encryption(args: &Overrides, file: EncryptionSection) -> Result<EncryptionSettings> {
    let mut recipients: Vec<String> = file
        .recipients
        .unwrap_or_default()
        .into_iter()
        .map(|key| key.trim().to_string())
        .collect();
    if let Some(path) = &file.recipients_file {
        recipients.extend(crate::set::encryption::read_recipients_file(path)?);
    }
    // Each key is checked now: a typo found at 3 a.m. would cost a night's set.
    for key in &recipients {
        crate::set::encryption::parse_recipient(key)
            .map_err(|err| TuskError::usage(format!("encryption.recipients: {err:#}")))?;
    }
    let passphrase = file.passphrase.unwrap_or(false);
    if passphrase && !recipients.is_empty() {
        return Err(TuskError::usage(
            "encryption: a set is encrypted either to recipients or to a passphrase, not both \
             (age does not mix them); drop one",
        ));
    }
    let identity_files = if args.identity_files.is_empty() {
        file.identity_files.unwrap_or_default()
    } else {
        args.identity_files.clone()
    };
    Ok(EncryptionSettings {
        recipients,
        passphrase,
        passphrase_file: args.passphrase_file.clone(),
        identity_files,
    })
}

fn find_config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(TuskError::usage(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        return Ok(Some(path.to_path_buf()));
    }
    Ok(DEFAULT_CONFIG_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file()))
}

/// `$XDG_STATE_HOME/tusk`, else `~/.local/state/tusk`, else `/var/lib/tusk`.
fn default_state_dir() -> PathBuf {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(state) = non_empty("XDG_STATE_HOME") {
        return PathBuf::from(state).join("tusk");
    }
    match non_empty("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/tusk"),
        None => PathBuf::from("/var/lib/tusk"),
    }
}

/// Instance names become part of backup ids and directory names.
fn sanitize_instance(name: &str) -> Result<String> {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(['-', '.']).to_string();
    if clean.is_empty() {
        return Err(TuskError::usage(format!(
            "instance name {name:?} has no usable characters (letters, digits, . _ -)"
        )));
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_error_names_key_and_position() {
        let err = FileSettings::parse(Path::new("tusk.yaml"), "instance: a\nbackup_dri: /tmp\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backup_dri"), "{err}");
        assert!(err.contains("line 2 column 1"), "{err}");
    }

    #[test]
    fn bad_value_error_names_position() {
        let err = FileSettings::parse(Path::new("t.yaml"), "compression: lz4\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lz4") && err.contains("line 1 column 14"),
            "{err}"
        );
    }

    #[test]
    fn the_example_configs_parse() {
        for (name, text) in [
            ("examples/tusk.yaml", include_str!("../examples/tusk.yaml")),
            (
                "examples/tusk-docker.yaml",
                include_str!("../examples/tusk-docker.yaml"),
            ),
        ] {
            let parsed = FileSettings::parse(Path::new(name), text);
            assert!(parsed.is_ok(), "{name}: {:#}", parsed.unwrap_err());
        }
        let example = FileSettings::parse(
            Path::new("tusk.yaml"),
            include_str!("../examples/tusk.yaml"),
        )
        .unwrap();
        assert_eq!(example.prune.media_cache_days, Some(7));
        let destinations = example.destinations.unwrap();
        assert_eq!(destinations[0].name, "local");
        assert_eq!(
            destinations[0].retention.as_ref().unwrap().keep_weekly,
            Some(4)
        );
    }

    #[test]
    fn sanitizes_instance_names() {
        assert_eq!(
            sanitize_instance("social.example").unwrap(),
            "social.example"
        );
        assert_eq!(sanitize_instance("my host/x").unwrap(), "my-host-x");
        assert!(sanitize_instance("///").is_err());
    }

    /// A config file and an .env.production side by side, as an admin has them.
    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new(yaml: &str, env_production: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("tusk.yaml"), yaml).unwrap();
            std::fs::write(dir.path().join(".env.production"), env_production).unwrap();
            Setup { dir }
        }

        fn overrides(&self) -> Overrides {
            Overrides {
                config: Some(self.dir.path().join("tusk.yaml")),
                mastodon_env_file: Some(self.dir.path().join(".env.production")),
                ..Default::default()
            }
        }
    }

    const ENV_PRODUCTION: &str = "LOCAL_DOMAIN=social.example\nDB_HOST=db.internal\n\
        DB_USER=mastodon\nDB_NAME=mastodon_production\nS3_BUCKET=env-bucket\n\
        AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\nS3_KEY_PREFIX=/from-env/\n";

    #[test]
    fn flags_win_over_the_file_which_wins_over_env_production() {
        let setup = Setup::new(
            "instance: from-file\nbackup_dir: /srv/file-backups\n\
             database_url: postgresql://file@file-host/file_db\ns3:\n  bucket: file-bucket\n",
            ENV_PRODUCTION,
        );
        let from_file = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(from_file.instance, "from-file");
        assert_eq!(from_file.backup_dir, PathBuf::from("/srv/file-backups"));
        assert_eq!(
            from_file.database().unwrap().redacted(),
            "postgresql://file@file-host:5432/file_db"
        );
        assert_eq!(from_file.s3().unwrap().bucket, "file-bucket");
        // Not in the file: .env.production's value, trimmed as Mastodon does.
        assert_eq!(from_file.s3_key_prefix.as_deref(), Some("from-env"));

        let flags = Overrides {
            instance: Some("from-flag".into()),
            backup_dir: Some("/srv/flag-backups".into()),
            database_url: Some("postgresql://flag@flag-host/flag_db".into()),
            s3_bucket: Some("flag-bucket".into()),
            ..setup.overrides()
        };
        let from_flags = Settings::resolve(&flags).unwrap();
        assert_eq!(from_flags.instance, "from-flag");
        assert_eq!(from_flags.backup_dir, PathBuf::from("/srv/flag-backups"));
        assert_eq!(
            from_flags.database().unwrap().redacted(),
            "postgresql://flag@flag-host:5432/flag_db"
        );
        assert_eq!(from_flags.s3().unwrap().bucket, "flag-bucket");
    }

    #[test]
    fn env_production_fills_what_nothing_else_says_then_defaults() {
        let setup = Setup::new("", ENV_PRODUCTION);
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.instance, "social.example");
        assert_eq!(
            settings.database().unwrap().redacted(),
            "postgresql://mastodon@db.internal:5432/mastodon_production"
        );
        assert_eq!(settings.s3().unwrap().bucket, "env-bucket");
        assert_eq!(settings.backup_dir, PathBuf::from(DEFAULT_BACKUP_DIR));
        assert_eq!(settings.compression, Compression::Zstd);
        assert_eq!(settings.compression_level, 1);
        assert_eq!(settings.mode, PgMode::Direct);
        assert_eq!(
            settings.services,
            DEFAULT_SERVICES.map(String::from).to_vec()
        );
        assert_eq!(
            settings.media_root,
            setup.dir.path().join("public/system"),
            "public/system beside .env.production"
        );
        assert_eq!(settings.media_store, MediaStoreKind::Local);
    }

    #[test]
    fn a_level_follows_its_compression_and_is_checked() {
        let setup = Setup::new("compression: gzip\n", "");
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.compression_level, 6);
        let too_high = Overrides {
            compression_level: Some(12),
            ..setup.overrides()
        };
        let err = Settings::resolve(&too_high).unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_USAGE)
        );
        assert!(err.to_string().contains("1..=9"), "{err}");
    }

    #[test]
    fn tls_settings_follow_the_precedence_and_urls_win_over_them() {
        let env_production = "DB_HOST=db.internal\nDB_SSLMODE=require\nPGSSLROOTCERT=/env/ca.pem\n";
        // .env.production under nothing else.
        let setup = Setup::new("", env_production);
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.tls.mode, Some(SslMode::Require));
        assert_eq!(settings.tls.root_cert, Some(RootCert::parse("/env/ca.pem")));
        // The file over .env.production.
        let setup = Setup::new(
            "postgres:\n  sslmode: verify-ca\n  sslrootcert: /yaml/ca.pem\n",
            env_production,
        );
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.tls.mode, Some(SslMode::VerifyCa));
        assert_eq!(
            settings.tls.root_cert,
            Some(RootCert::parse("/yaml/ca.pem"))
        );
        // Flags (and TUSK_PG_SSL*) over both; the database from
        // .env.production takes them as defaults.
        let flags = Overrides {
            pg_sslmode: Some(SslMode::VerifyFull),
            pg_sslrootcert: Some("system".into()),
            ..setup.overrides()
        };
        let settings = Settings::resolve(&flags).unwrap();
        assert_eq!(settings.tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(settings.tls.root_cert, Some(RootCert::System));
        assert_eq!(settings.database().unwrap().tls(), &settings.tls);
        // A URL's own parameter wins over every setting.
        let url = Overrides {
            database_url: Some("postgresql://u@h/d?sslmode=disable".into()),
            ..flags
        };
        let settings = Settings::resolve(&url).unwrap();
        let target = settings.database().unwrap().tls();
        assert_eq!(target.effective_mode(), SslMode::Disable);
        assert_eq!(target.root_cert, Some(RootCert::System));
        // Nothing anywhere: libpq's default, prefer.
        let setup = Setup::new("", "DB_HOST=db.internal\n");
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.tls, TlsOptions::default());
        assert_eq!(settings.tls.effective_mode(), SslMode::Prefer);
    }

    #[test]
    fn bad_tls_settings_are_usage_errors_that_name_the_source() {
        let setup = Setup::new("postgres:\n  sslmode: on\n", "");
        let err = Settings::resolve(&setup.overrides()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let setup = Setup::new("", "DB_SSLMODE=yes\n");
        let err = Settings::resolve(&setup.overrides()).unwrap_err();
        assert!(err.to_string().contains("DB_SSLMODE"), "{err}");
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_USAGE)
        );
    }

    #[test]
    fn notify_metrics_and_lock_follow_the_precedence() {
        let setup = Setup::new(
            "notify:\n  url: http://file/hook\n  on_success: true\n  ping_url: http://file/ping\n\
             metrics_file: /file/tusk.prom\nlock:\n  wait_seconds: 60\n  stale_after_hours: 2\n",
            "",
        );
        let from_file = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(from_file.notify.url.as_deref(), Some("http://file/hook"));
        assert!(from_file.notify.on_success);
        assert_eq!(from_file.notify.timeout, NotifySettings::DEFAULT_TIMEOUT);
        assert_eq!(
            from_file.metrics_file,
            Some(PathBuf::from("/file/tusk.prom"))
        );
        assert_eq!(from_file.lock.wait, Duration::from_secs(60));
        assert_eq!(from_file.lock.stale_after, Duration::from_secs(2 * 3600));

        let flags = Overrides {
            notify_url: Some("http://flag/hook".into()),
            ping_url: Some("http://flag/ping".into()),
            metrics_file: Some("/flag/tusk.prom".into()),
            lock_wait_seconds: Some(5),
            ..setup.overrides()
        };
        let from_flags = Settings::resolve(&flags).unwrap();
        assert_eq!(from_flags.notify.url.as_deref(), Some("http://flag/hook"));
        assert_eq!(
            from_flags.notify.ping_url.as_deref(),
            Some("http://flag/ping")
        );
        assert_eq!(
            from_flags.metrics_file,
            Some(PathBuf::from("/flag/tusk.prom"))
        );
        assert_eq!(from_flags.lock.wait, Duration::from_secs(5));

        let none = Settings::resolve(&Setup::new("", "").overrides()).unwrap();
        assert_eq!(none.notify.url, None);
        assert_eq!(none.lock, LockPolicy::default());
    }

    #[test]
    fn backup_dir_is_the_local_destination_unless_destinations_are_listed() {
        let setup = Setup::new(
            "retention: {keep_last: 2}\ntime_zone: Europe/Berlin\n",
            ENV_PRODUCTION,
        );
        let settings = Settings::resolve(&Overrides {
            backup_dir: Some("/srv/flag".into()),
            ..setup.overrides()
        })
        .unwrap();
        assert_eq!(settings.destinations.len(), 1);
        let local = &settings.destinations[0];
        assert_eq!(
            (local.name.as_str(), local.dir().map(PathBuf::as_path)),
            ("local", Some(Path::new("/srv/flag")))
        );
        assert_eq!(local.retention.keep_last, Some(2));
        assert_eq!(settings.time_zone, chrono_tz::Europe::Berlin);

        let setup = Setup::new(
            "destinations:\n  - name: local\n    dir: /var/backups/tusk\n    \
             retention: {keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 6}\n  \
             - name: spare\n    dir: /mnt/spare\n",
            ENV_PRODUCTION,
        );
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        let names: Vec<&str> = settings
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["local", "spare"]);
        assert_eq!(settings.destinations[0].retention.keep_monthly, Some(6));
        assert!(settings.destinations[1].retention.is_empty());
        assert_eq!(settings.backup_dir, PathBuf::from("/var/backups/tusk"));
        assert_eq!(settings.time_zone, chrono_tz::Tz::UTC);
    }

    #[test]
    fn bucket_destinations_take_the_issues_shape() {
        let setup = Setup::new(
            "destinations:\n  - name: local\n    dir: /var/backups/tusk\n  - name: b2\n    \
             s3: {bucket: my-backups, prefix: mastodon/, endpoint: https://s3.eu-central-003.backblazeb2.com,\n         \
             region: eu-central-003, path_style: false, max_parts: 1000, storage_class: STANDARD}\n    \
             retention: {keep_daily: 14, keep_monthly: 12, keep_yearly: 3}\n",
            ENV_PRODUCTION,
        );
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        let b2 = &settings.destinations[1];
        let Place::Bucket(bucket) = &b2.place else {
            panic!("{b2:?}");
        };
        assert_eq!(bucket.prefix, "mastodon/");
        assert_eq!(bucket.parts.max_parts, 1000);
        assert_eq!(b2.retention.keep_yearly, Some(3));
        assert!(
            bucket.storage.describe().contains("my-backups"),
            "{}",
            bucket.storage.describe()
        );
        // The backup directory is the listed directory.
        assert_eq!(settings.backup_dir, PathBuf::from("/var/backups/tusk"));
    }

    #[test]
    fn profile_keys_come_from_the_named_section_only() {
        let text = "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
                    # comment\n[profile backups]\naws_access_key_id=B\naws_secret_access_key=BS\n\
                    [half]\naws_access_key_id = H\n";
        assert_eq!(
            profile_keys(text, "default"),
            Some(("D".into(), "DS".into()))
        );
        assert_eq!(
            profile_keys(text, "backups"),
            Some(("B".into(), "BS".into()))
        );
        assert_eq!(profile_keys(text, "half"), None);
        assert_eq!(profile_keys(text, "missing"), None);
    }

    #[test]
    fn unusable_destinations_are_usage_errors() {
        for (yaml, expected) in [
            (
                "destinations:\n  - name: b2\n    s3: {bucket: my-backups, prefix: mastodon/, \
                 max_parts: 20000}\n    retention: {keep_daily: 14}\n",
                "max_parts must be between 1 and 10000",
            ),
            (
                "destinations:\n  - name: b2\n    s3: {prefix: mastodon/}\n",
                "s3: without a bucket",
            ),
            (
                "destinations:\n  - {name: a, dir: /a}\n  - {name: a, dir: /b}\n",
                "named \"a\"",
            ),
            (
                "retention: {keep_last: 1}\ndestinations:\n  - {name: a, dir: /a}\n",
                "move it into a destination",
            ),
            ("time_zone: Mars/Olympus\n", "unknown time zone"),
            ("retention: {keep_within: 5w}\n", "2y5m7d3h"),
        ] {
            let setup = Setup::new(yaml, "");
            let err = Settings::resolve(&setup.overrides()).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{yaml}: {err:#}");
            assert_eq!(
                crate::error::exit_code_for(&err),
                std::process::ExitCode::from(crate::error::EXIT_USAGE),
                "{yaml}"
            );
        }
    }

    #[test]
    fn the_mastodon_address_and_token_follow_the_precedence() {
        let setup = Setup::new("", "LOCAL_DOMAIN=social.example\nWEB_DOMAIN=web.example\n");
        let no_token = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(
            no_token.mastodon_url.as_deref(),
            Some("https://web.example")
        );
        let err = no_token.mastodon_api().unwrap_err();
        assert!(err.to_string().contains("TUSK_MASTODON_TOKEN"), "{err}");

        let token_file = setup.dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let yaml = format!(
            "mastodon:\n  url: https://yaml.example\nblocks:\n  token_file: {}\n",
            token_file.display()
        );
        std::fs::write(setup.dir.path().join("tusk.yaml"), yaml).unwrap();
        let from_file = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(
            from_file.mastodon_api().unwrap(),
            ("https://yaml.example".to_string(), "from-file".to_string())
        );
        let from_env = Settings::resolve(&Overrides {
            mastodon_url: Some("https://flag.example".into()),
            mastodon_token: Some("from-env".into()),
            ..setup.overrides()
        })
        .unwrap();
        assert_eq!(
            from_env.mastodon_api().unwrap(),
            ("https://flag.example".to_string(), "from-env".to_string())
        );
        assert!(
            !format!("{from_env:?}").contains("from-env"),
            "the token is never printed"
        );
    }

    #[test]
    fn redis_follows_the_precedence() {
        let env_production = "REDIS_HOST=env-redis\nREDIS_NAMESPACE=mastodon\n\
            SIDEKIQ_REDIS_URL=redis://:q@env-sidekiq:6390/2\n";
        // .env.production alone: Mastodon's reading, namespaces included.
        let setup = Setup::new("", env_production);
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        let sidekiq = settings.sidekiq_redis().unwrap();
        assert_eq!(sidekiq.redacted(), "redis://:***@env-sidekiq:6390/2");
        assert_eq!(sidekiq.namespace.as_deref(), Some("mastodon"));
        let cache = settings.cache_redis().unwrap();
        assert_eq!(cache.redacted(), "redis://env-redis:6379/0");
        assert_eq!(cache.namespace.as_deref(), Some("mastodon_cache"));
        assert_eq!(settings.redis_timeout, Duration::from_secs(5));

        // The file over it; an empty namespace turns Mastodon's off.
        let setup = Setup::new(
            "redis:\n  url: redis://file-redis/5\n  cache_url: unix:///run/redis.sock\n  \
             namespace: \"\"\n  timeout_seconds: 2\n",
            env_production,
        );
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        let sidekiq = settings.sidekiq_redis().unwrap();
        assert_eq!(sidekiq.redacted(), "redis://file-redis:6379/5");
        assert_eq!(sidekiq.namespace, None);
        let cache = settings.cache_redis().unwrap();
        assert_eq!(cache.redacted(), "unix:///run/redis.sock?db=0");
        assert_eq!(cache.namespace.as_deref(), Some("cache"));
        assert_eq!(settings.redis_timeout, Duration::from_secs(2));

        // The flag (TUSK_REDIS_URL) over both.
        let settings = Settings::resolve(&Overrides {
            redis_url: Some("rediss://flag:6000/1".into()),
            ..setup.overrides()
        })
        .unwrap();
        assert_eq!(
            settings.sidekiq_redis().unwrap().redacted(),
            "rediss://flag:6000/1"
        );

        // Nothing anywhere: Mastodon's default.
        let setup = Setup::new("", "");
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(
            settings.sidekiq_redis().unwrap().redacted(),
            "redis://localhost:6379/0"
        );
    }

    #[test]
    fn a_bad_redis_setting_fails_only_what_uses_redis() {
        let setup = Setup::new("redis:\n  url: http://nope\n", "REDIS_PORT=x\n");
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        let err = settings.sidekiq_redis().unwrap_err();
        assert!(err.to_string().contains("redis.url in tusk.yaml"), "{err}");
        assert_eq!(
            crate::error::exit_status_for(&err),
            crate::error::EXIT_USAGE
        );
        let err = settings.cache_redis().unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"), "{err}");
    }

    #[test]
    fn encryption_recipients_come_from_the_list_and_the_file_identities_from_the_flag_first() {
        let setup = Setup::new("", "");
        let admin = "age1x23t6rf903faft88lf7f9pdwegu2lq5hgmkndzq0a70zvvwvhcxq5ckz25";
        let recovery = "age1ajvetwj7qt7ll8pcaxhfa4du3ql38y8ey02tdfpawltkh92wzczqpu9dx4";
        let recipients_file = setup.dir.path().join("recipients.txt");
        std::fs::write(&recipients_file, format!("# offline\n{recovery}\n")).unwrap();
        let yaml = format!(
            "encryption:\n  recipients: [\"{admin}\"]\n  recipients_file: {}\n  \
             identity_files: [/etc/tusk/age.key]\n",
            recipients_file.display()
        );
        std::fs::write(setup.dir.path().join("tusk.yaml"), yaml).unwrap();
        let settings = Settings::resolve(&setup.overrides()).unwrap();
        assert_eq!(settings.encryption.recipients, vec![admin, recovery]);
        assert!(settings.encryption.encrypts());
        assert_eq!(
            settings.encryption.identity_files,
            vec![PathBuf::from("/etc/tusk/age.key")]
        );
        let flagged = Settings::resolve(&Overrides {
            identity_files: vec!["/root/key".into()],
            ..setup.overrides()
        })
        .unwrap();
        assert_eq!(
            flagged.encryption.identity_files,
            vec![PathBuf::from("/root/key")]
        );

        for bad in [
            "encryption:\n  recipients: [age1typo]\n".to_string(),
            format!("encryption:\n  recipients: [\"{admin}\"]\n  passphrase: true\n"),
            "encryption:\n  recipients_file: /nonexistent/recipients.txt\n".to_string(),
        ] {
            std::fs::write(setup.dir.path().join("tusk.yaml"), &bad).unwrap();
            let err = Settings::resolve(&setup.overrides()).unwrap_err();
            assert_eq!(crate::error::exit_status_for(&err), 2, "{bad}: {err:#}");
        }
        std::fs::write(setup.dir.path().join("tusk.yaml"), "").unwrap();
        assert!(
            !Settings::resolve(&setup.overrides())
                .unwrap()
                .encryption
                .encrypts()
        );
    }

    #[test]
    fn a_missing_config_file_is_a_usage_error() {
        let overrides = Overrides {
            config: Some("/nonexistent/tusk.yaml".into()),
            ..Default::default()
        };
        let err = Settings::resolve(&overrides).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tusk.yaml"), "{err}");
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_USAGE)
        );
    }
}
