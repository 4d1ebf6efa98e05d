//! Command-line types: the only part of tusk that knows clap. Every setting
//! is a global flag with a `TUSK_*` variable; clap applies flag > environment,
//! the library's `config` lays the YAML file and `.env.production` under them.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Args, Parser, Subcommand};

use tusk::config::{MediaStoreKind, Overrides, PgMode};
use tusk::mastodon::blocklist::{ListFormat, Severity};
use tusk::postgres::SslMode;
use tusk::postgres::docker::DumpTransport;
use tusk::prune::{CacheSemantics, PruneRule};
use tusk::set::Compression;
use tusk::tune::StorageKind;

/// Parses one of a library enum's names into the enum, through the same
/// serde names the YAML file uses, so a flag and a setting always agree.
fn choice<T>(choices: &'static [(&'static str, &'static str)]) -> impl TypedValueParser<Value = T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let values = choices.iter().map(|(name, help)| match *help {
        "" => PossibleValue::new(*name),
        help => PossibleValue::new(*name).help(help),
    });
    PossibleValuesParser::new(values).map(|name| {
        use serde::de::value::{Error, StrDeserializer};
        T::deserialize(StrDeserializer::<Error>::new(&name))
            .expect("every listed name is one of the enum's")
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "tusk",
    version,
    about = "Back up, restore, verify and maintain a Mastodon instance",
    long_about = "tusk operates a Mastodon instance from the outside: it dumps the PostgreSQL \
roles and database into checksummed backup sets, restores them on a new or existing server, \
and proves that a backup restores.\n\n\
Settings come from flags, TUSK_* environment variables, a YAML file (--config, \
./tusk.yaml or /etc/tusk/tusk.yaml) and Mastodon's .env.production, in that order.",
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage or configuration error, \
3 verification failed, 4 another run holds the lock, 5 the command given to `rehearse --run` failed, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]
    #[arg(long, global = true, env = "TUSK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db)
    /// [default: from .env.production]
    #[arg(
        long,
        global = true,
        env = "TUSK_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// IANA time zone of retention's calendar days, weeks, months and years
    /// [default: UTC]
    #[arg(long, global = true, env = "TUSK_TIME_ZONE", value_name = "ZONE")]
    pub time_zone: Option<String>,

    /// Directory holding backup sets [default: /var/backups/tusk]
    #[arg(long, global = true, env = "TUSK_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]
    #[arg(long, global = true, env = "TUSK_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,

    /// Compression of backup artefacts [default: zstd]
    #[arg(long, global = true, env = "TUSK_COMPRESSION", value_parser = choice::<Compression>(&Compression::CHOICES))]
    pub compression: Option<Compression>,

    /// Compression level (zstd 1-19, default 1; gzip 1-9, default 6)
    #[arg(long, global = true, env = "TUSK_COMPRESSION_LEVEL", value_name = "N")]
    pub compression_level: Option<i32>,

    /// Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]
    #[arg(long, global = true, env = "TUSK_PG_BIN_DIR", value_name = "DIR")]
    pub pg_bin_dir: Option<PathBuf>,

    /// TLS to the database, as libpq's sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]
    #[arg(
        long,
        global = true,
        env = "TUSK_PG_SSLMODE",
        value_name = "MODE",
        value_parser = choice::<SslMode>(&SslMode::CHOICES)
    )]
    pub pg_sslmode: Option<SslMode>,

    /// CA certificate(s) (PEM) the database's certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]
    #[arg(long, global = true, env = "TUSK_PG_SSLROOTCERT", value_name = "FILE")]
    pub pg_sslrootcert: Option<String>,

    /// Directory for temporary files, such as a seekable copy for parallel restore
    #[arg(long, global = true, env = "TUSK_TEMP_DIR", value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,

    /// Where pg_dump and friends run: on this machine, or inside the database container
    #[arg(
        long,
        global = true,
        env = "TUSK_POSTGRES_MODE",
        value_parser = choice::<PgMode>(&PgMode::CHOICES),
        value_name = "MODE"
    )]
    pub postgres_mode: Option<PgMode>,

    /// Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]
    #[arg(long, global = true, env = "TUSK_DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,

    /// How pg_dump's output leaves the container (Docker mode) [default: auto]
    #[arg(
        long,
        global = true,
        env = "TUSK_DOCKER_TRANSPORT",
        value_parser = choice::<DumpTransport>(&DumpTransport::CHOICES),
        value_name = "HOW"
    )]
    pub docker_transport: Option<DumpTransport>,

    /// PostgreSQL container by name (Docker mode)
    #[arg(long, global = true, env = "TUSK_CONTAINER", value_name = "NAME")]
    pub container: Option<String>,

    /// PostgreSQL container by compose service label (Docker mode) [default: db]
    #[arg(
        long,
        global = true,
        env = "TUSK_COMPOSE_SERVICE",
        value_name = "SERVICE"
    )]
    pub compose_service: Option<String>,

    /// Compose project of the containers (Docker mode)
    #[arg(
        long,
        global = true,
        env = "TUSK_COMPOSE_PROJECT",
        value_name = "PROJECT"
    )]
    pub compose_project: Option<String>,

    /// Mastodon's app services, stopped by --stop-services [default: web,streaming,sidekiq]
    #[arg(
        long,
        global = true,
        env = "TUSK_SERVICES",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub services: Option<Vec<String>>,

    /// Mastodon's local media folder [default: public/system beside .env.production]
    #[arg(long, global = true, env = "TUSK_MEDIA_ROOT", value_name = "DIR")]
    pub media_root: Option<PathBuf>,

    /// Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]
    #[arg(
        long,
        global = true,
        env = "TUSK_MEDIA_STORE",
        value_name = "STORE",
        value_parser = choice::<MediaStoreKind>(&MediaStoreKind::CHOICES)
    )]
    pub media_store: Option<MediaStoreKind>,

    /// Media bucket [default: S3_BUCKET from .env.production]
    #[arg(long, global = true, env = "TUSK_S3_BUCKET", value_name = "NAME")]
    pub s3_bucket: Option<String>,

    /// S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]
    #[arg(long, global = true, env = "TUSK_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region [default: S3_REGION, else us-east-1]
    #[arg(long, global = true, env = "TUSK_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Prefix of every media key [default: S3_KEY_PREFIX]
    #[arg(long, global = true, env = "TUSK_S3_KEY_PREFIX", value_name = "PREFIX")]
    pub s3_key_prefix: Option<String>,

    /// Canned ACL for public media; empty for stores without ACLs (B2, R2)
    /// [default: S3_PERMISSION, else public-read]
    #[arg(long, global = true, env = "TUSK_S3_PERMISSION", value_name = "ACL")]
    pub s3_permission: Option<String>,

    /// Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]
    #[arg(long, global = true, env = "TUSK_S3_PATH_STYLE", value_name = "BOOL")]
    pub s3_path_style: Option<bool>,

    /// Also send the SDK's CRC32 checksum headers (some stores such as B2 reject them)
    /// [default: only for AWS itself]
    #[arg(
        long,
        global = true,
        env = "TUSK_S3_SDK_CHECKSUMS",
        value_name = "BOOL"
    )]
    pub s3_sdk_checksums: Option<bool>,

    /// Mastodon's .env.production [default: ./.env.production if present]
    #[arg(
        long,
        global = true,
        env = "TUSK_MASTODON_ENV_FILE",
        value_name = "FILE",
        visible_alias = "env-file"
    )]
    pub mastodon_env_file: Option<PathBuf>,

    /// POST a JSON report here when a backup or verify fails (and on success
    /// with notify.on_success)
    #[arg(
        long,
        global = true,
        env = "TUSK_NOTIFY_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub notify_url: Option<String>,

    /// healthchecks.io-style check: <URL>/start, <URL> on success, <URL>/fail
    /// with the last log lines
    #[arg(
        long,
        global = true,
        env = "TUSK_PING_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub ping_url: Option<String>,

    /// Write Prometheus textfile metrics here after backup and verify
    #[arg(long, global = true, env = "TUSK_METRICS_FILE", value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Wait up to SECONDS for another run's lock on the backup directory
    /// instead of exiting 4 at once [default: 0]
    #[arg(long, global = true, env = "TUSK_WAIT", value_name = "SECONDS")]
    pub wait: Option<u64>,

    /// Mastodon's address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]
    #[arg(long, global = true, env = "TUSK_MASTODON_URL", value_name = "URL")]
    pub mastodon_url: Option<String>,

    /// Sidekiq's Redis as redis://[:password@]host[:port][/db], rediss:// or unix://
    /// [default: from .env.production, else redis://localhost:6379/0]
    #[arg(
        long,
        global = true,
        env = "TUSK_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// A private key that opens encrypted sets: an age identity file or an
    /// SSH private key (repeatable) [default: encryption.identity_files]
    #[arg(long = "identity", short = 'i', global = true, value_name = "FILE", action = ArgAction::Append)]
    pub identity: Vec<PathBuf>,

    /// The passphrase of sets encrypted to one, in a file (its first line);
    /// without it tusk asks on a terminal
    #[arg(long, global = true, env = "TUSK_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true, env = "TUSK_JSON")]
    pub json: bool,

    /// Answer yes to confirmations (does not imply --force)
    #[arg(long, short = 'y', global = true, env = "TUSK_YES")]
    pub yes: bool,

    /// More detail in logs (-v debug, -vv trace)
    #[arg(long, short = 'v', global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl GlobalArgs {
    /// The settings given here, for the library's precedence.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            database_url: self.database_url.clone(),
            backup_dir: self.backup_dir.clone(),
            instance: self.instance.clone(),
            compression: self.compression,
            compression_level: self.compression_level,
            pg_bin_dir: self.pg_bin_dir.clone(),
            pg_sslmode: self.pg_sslmode,
            pg_sslrootcert: self.pg_sslrootcert.clone(),
            temp_dir: self.temp_dir.clone(),
            postgres_mode: self.postgres_mode,
            docker_host: self.docker_host.clone(),
            docker_transport: self.docker_transport,
            container: self.container.clone(),
            compose_service: self.compose_service.clone(),
            compose_project: self.compose_project.clone(),
            services: self.services.clone(),
            media_root: self.media_root.clone(),
            media_store: self.media_store,
            s3_bucket: self.s3_bucket.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_key_prefix: self.s3_key_prefix.clone(),
            s3_permission: self.s3_permission.clone(),
            s3_path_style: self.s3_path_style,
            s3_sdk_checksums: self.s3_sdk_checksums,
            mastodon_env_file: self.mastodon_env_file.clone(),
            notify_url: self.notify_url.clone(),
            ping_url: self.ping_url.clone(),
            metrics_file: self.metrics_file.clone(),
            lock_wait_seconds: self.wait,
            time_zone: self.time_zone.clone(),
            mastodon_url: self.mastodon_url.clone(),
            // A secret: only from the environment, never a flag.
            mastodon_token: std::env::var("TUSK_MASTODON_TOKEN").ok(),
            redis_url: self.redis_url.clone(),
            identity_files: self.identity.clone(),
            passphrase_file: self.passphrase_file.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a first tusk.yaml: find Mastodon, ask what is left, check the connections
    Init(InitArgs),
    /// Dump the roles and the database into a new backup set
    Backup(BackupArgs),
    /// Inspect backup sets
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Restore a backup set onto a server
    Restore(RestoreArgs),
    /// Prove a backup set: checksums, then a test restore compared with the manifest
    Verify(VerifyArgs),
    /// Move the local media folder to S3-compatible storage, and check it
    #[command(subcommand)]
    Media(MediaCommand),
    /// Remove cached media, avatars, headers, preview card images, user archives and orphaned files on retention rules
    Prune(PruneArgs),
    /// Recommend PostgreSQL settings for the instance (as PgTune computes them) and apply them
    Tune(TuneArgs),
    /// Export, import and watch the instance's domain blocks (admin API)
    #[command(subcommand)]
    Blocks(BlocksCommand),
    /// Move the database to another server: preflight, stop writes, backup, restore, verify, cut-over report
    Migrate(MigrateArgs),
    /// Rehearse a migration: restore the latest set into a throwaway target, verify it, run a command against it
    Rehearse(RehearseArgs),
    /// Is the instance healthy? Sidekiq, PostgreSQL, Redis, backups and disk, with
    /// Nagios exit codes, Prometheus metrics and a /metrics server
    #[command(
        after_help = "Exit codes (Nagios): 0 ok, 1 warning, 2 critical, 3 unknown \
(also for a configuration error); --listen exits like other commands."
    )]
    Status(StatusArgs),
    /// Print the script that makes a shell complete tusk's commands, flags and set ids
    Completions(CompletionsArgs),
    /// Write man pages into a directory
    #[command(hide = true)]
    Man(ManArgs),
}

/// The answers the wizard would ask for come from the global flags
/// --env-file, --postgres-mode, --container, --backup-dir and --docker-host.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Ask nothing: take the flags, and what is found for the rest (for scripts)
    #[arg(long)]
    pub non_interactive: bool,

    /// The file to write
    #[arg(long, short = 'o', value_name = "FILE", default_value = "tusk.yaml")]
    pub output: PathBuf,

    /// Replace the file if it exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Stop Mastodon's app containers (never PostgreSQL) during the dump and
    /// start them again afterwards, also on failure or Ctrl-C (Docker mode)
    #[arg(long)]
    pub stop_services: bool,

    /// Once the new set is complete, remove the sets each destination's
    /// retention policy no longer keeps (as `tusk backups prune`, without
    /// asking)
    #[arg(long)]
    pub prune: bool,

    /// Write only to this destination [default: every destination]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// Include `.env.production` (and the compose project's `.env`) even
    /// though the set is not encrypted
    #[arg(long)]
    pub include_secrets_unencrypted: bool,

    /// Leave Sidekiq's Redis out of the set [default: snapshot it when the
    /// settings name the instance's Redis; `redis.backup`]
    #[arg(long, conflicts_with = "redis_cache")]
    pub no_redis: bool,

    /// Also snapshot the cache's Redis, when it is another server
    /// [default: `redis.backup_cache`, else no]
    #[arg(long)]
    pub redis_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// List complete backup sets of every destination, oldest first
    List(BackupsListArgs),
    /// Copy a set to another destination, checking every checksum
    Copy(BackupsCopyArgs),
    /// Abort the multipart uploads a failed or killed backup left open in
    /// the buckets (their parts are billed until then)
    Cleanup(BackupsCleanupArgs),
    /// Remove the sets each destination's retention policy no longer keeps
    /// (restic's `forget` rules); asks first on a terminal, `--yes` for cron
    Prune(BackupsPruneArgs),
}

#[derive(Debug, Args)]
pub struct BackupsListArgs {
    /// List only this destination [default: every destination]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupsCopyArgs {
    /// Backup id, or `latest`
    #[arg(add = crate::commands::completions::backup_set_completer())]
    pub set: String,

    /// The destination to copy to
    #[arg(long, value_name = "NAME")]
    pub to: String,

    /// The destination to copy from [default: the first that has the set]
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupsCleanupArgs {
    /// Clean up only this destination [default: every bucket destination]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// List the open uploads; abort nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct BackupsPruneArgs {
    /// Prune only this destination [default: every destination]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// List every set with keep or remove and the rules that keep it;
    /// remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id (in any destination), path of a backup set, or `latest`
    #[arg(add = crate::commands::completions::backup_set_completer())]
    pub set: String,

    /// Server and database to restore into, with local tools (the database
    /// name defaults to the source's)
    #[arg(
        long,
        env = "TUSK_TARGET_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub target_url: Option<String>,

    /// Restore into this PostgreSQL container, with its own tools
    /// [default in Docker mode: the configured container]
    #[arg(
        long,
        env = "TUSK_TARGET_CONTAINER",
        value_name = "NAME",
        conflicts_with = "target_url"
    )]
    pub target_container: Option<String>,

    /// Database name on the target [default: from --target-url, else the source's]
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,

    /// Replace a target database that already holds tables
    #[arg(long)]
    pub force: bool,

    /// Parallel pg_restore jobs
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
    pub jobs: u32,

    /// Do not set object owners from the dump (Mastodon's cross-server form)
    #[arg(long)]
    pub no_owner: bool,

    /// Role that owns the restored objects (with --no-owner)
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,

    /// Leave out the grants: the objects' and the database's own
    #[arg(long)]
    pub no_acl: bool,

    /// Skip the roles (globals) and restore only the database
    #[arg(long)]
    pub no_globals: bool,

    /// Look for the set only in this destination [default: each in turn]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,

    /// Write the set's files (`.env.production`, the compose file and its
    /// `.env`) into DIR, mode 0600; an existing file only with --force
    #[arg(long, value_name = "DIR")]
    pub files_to: Option<PathBuf>,

    /// Load the set's Redis snapshot into DIR, the data directory of a
    /// stopped Redis (e.g. /var/lib/redis), after checking that it loads and
    /// holds the keys the set recorded; an existing dump.rdb is kept beside it
    #[arg(long, value_name = "DIR")]
    pub redis_to: Option<PathBuf>,

    /// The file name Redis loads (its `dbfilename`)
    #[arg(
        long,
        value_name = "NAME",
        default_value = "dump.rdb",
        requires = "redis_to"
    )]
    pub redis_dbfilename: String,

    /// Restore no database (with --files-to or --redis-to: only those)
    #[arg(long)]
    pub no_database: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id (in any destination), path of a backup set, or `latest`
    #[arg(add = crate::commands::completions::backup_set_completer())]
    pub set: String,

    /// Only re-hash the artefacts; no test restore
    #[arg(long)]
    pub checksums_only: bool,

    /// After the test restore compare row counts, migrations and objects
    /// only, not every table's content, the sequences and large objects
    #[arg(long, conflicts_with = "checksums_only")]
    pub counts_only: bool,

    /// Server for the scratch restore [default: the source database's server]
    #[arg(
        long,
        env = "TUSK_VERIFY_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub verify_url: Option<String>,

    /// Restore into a throwaway container from the source container's image
    /// (`auto`; Docker mode), removed afterwards
    #[arg(long, value_name = "auto", value_parser = ["auto"], conflicts_with = "verify_url")]
    pub verify_container: Option<String>,

    /// Parallel pg_restore jobs for the scratch restore
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub jobs: u32,

    /// Look for the set only in this destination [default: each in turn]
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

/// Stages: preflight (changes nothing), stop writes (the app, never
/// PostgreSQL), backup (a normal set, the rollback point), restore into the
/// target with its roles, content verification against the set's manifest,
/// cut-over report. A re-run after a failure resumes at the first stage that
/// did not complete, reusing the set.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The target server and database, reached with the local tools; with
    /// --to-container, the login (user, password, database) for the container
    #[arg(long, env = "TUSK_TO_URL", value_name = "URL", hide_env_values = true)]
    pub to_url: Option<String>,

    /// The target PostgreSQL container, with its own tools
    #[arg(long, env = "TUSK_TO_CONTAINER", value_name = "NAME")]
    pub to_container: Option<String>,

    /// The Docker Engine of --to-container: unix:///path or tcp://host:2375
    /// [default: the configured Engine]
    #[arg(
        long,
        env = "TUSK_TO_DOCKER_HOST",
        value_name = "URL",
        requires = "to_container"
    )]
    pub to_docker_host: Option<String>,

    /// Database name on the target [default: from --to-url, else the source's]
    #[arg(long, value_name = "NAME")]
    pub to_database: Option<String>,

    /// Only the preflight: exit 0 when the migration may go ahead, 2 when not
    #[arg(long)]
    pub check: bool,

    /// Replace a target database that already holds tables
    #[arg(long)]
    pub force: bool,

    /// Start the old app again at the end (it stays stopped otherwise)
    #[arg(long)]
    pub restart_source: bool,

    /// Forget a saved migration and start over
    #[arg(long)]
    pub restart: bool,

    /// Parallel pg_restore jobs
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub jobs: u32,
}

/// Exit codes: 0 rehearsal passed, 1 it could not run, 2 usage, 3 the set
/// did not restore to the data it recorded (or is damaged), 5 the --run
/// command failed.
#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// Backup id, path of a backup set, or `latest` [default: the newest set
    /// whose last verification, if any, passed]
    #[arg(long, add = crate::commands::completions::backup_set_completer(), conflicts_with = "fresh")]
    pub set: Option<String>,

    /// Dump the database now (read-only) instead of taking a set
    #[arg(long)]
    pub fresh: bool,

    /// Restore into a new, throwaway database on this server
    #[arg(
        long,
        env = "TUSK_REHEARSE_TARGET_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub target_url: Option<String>,

    /// Restore into a throwaway container from this image (e.g. the next
    /// PostgreSQL major) [default in Docker mode: the database container's image]
    #[arg(long, value_name = "IMAGE", conflicts_with = "target_url")]
    pub image: Option<String>,

    /// A shell command run against the restored copy, with DATABASE_URL,
    /// DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASS (and PG*) set
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,

    /// Write a JUnit XML report here
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Write the JSON report here (--json prints it on stdout)
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Parallel pg_restore jobs
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub jobs: u32,
}

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Upload public/system to the bucket with Mastodon's keys, headers and ACLs
    Push(MediaPushArgs),
    /// Compare the local media folder with the bucket (exit 3 on differences)
    Verify(MediaVerifyArgs),
    /// Media sizes as the database records them beside what storage holds
    Usage(MediaUsageArgs),
}

#[derive(Debug, Args)]
pub struct MediaPushArgs {
    /// Show what would be uploaded; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// After the upload, delete local files that a verification proves stored and identical
    #[arg(long)]
    pub delete_local: bool,

    /// Uploads in flight
    #[arg(long, short = 'c', default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
}

/// Rules given here replace the `prune:` rules of the config for this run;
/// without any, every configured rule runs.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Clear cached remote media attachments created more than N days ago
    #[arg(long, value_name = "DAYS", help_heading = "Rules")]
    pub media_cache_days: Option<u32>,

    /// Remote avatars/headers of accounts neither webfingered nor updated for N days
    #[arg(long, value_name = "DAYS", help_heading = "Rules")]
    pub profiles_days: Option<u32>,

    /// Preview card images not updated for N days (Mastodon refetches only after 14)
    #[arg(long, value_name = "DAYS", help_heading = "Rules")]
    pub preview_cards_days: Option<u32>,

    /// Delete attachments never posted, older than a day (rows and files)
    #[arg(long, help_heading = "Rules")]
    pub unattached_media: bool,

    /// Delete user archives (rows and files) created more than N days ago, as Mastodon's vacuum
    #[arg(long, value_name = "DAYS", help_heading = "Rules")]
    pub user_archives_days: Option<u32>,

    /// Delete stored files that no database row points at
    #[arg(long, help_heading = "Rules")]
    pub orphans: bool,

    /// Run only these of the configured rules
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "RULE",
        help_heading = "Rules",
        value_parser = choice::<PruneRule>(&PruneRule::CHOICES)
    )]
    pub only: Vec<PruneRule>,

    /// tootctl (created before the cutoff) or vacuum (created and updated before it)
    #[arg(long, value_name = "SEMANTICS", value_parser = choice::<CacheSemantics>(&CacheSemantics::CHOICES))]
    pub media_cache_semantics: Option<CacheSemantics>,

    /// With --profiles-days: prune avatars [default: avatars and headers]
    #[arg(long)]
    pub avatars: bool,

    /// With --profiles-days: prune headers [default: avatars and headers]
    #[arg(long)]
    pub headers: bool,

    /// With --profiles-days: also accounts that follow or are followed
    #[arg(long)]
    pub include_follows: bool,

    /// Keep orphan candidates written less than this many minutes ago [default: 60]
    #[arg(long, value_name = "MINUTES")]
    pub orphans_min_age: Option<u64>,

    /// Resume an orphan scan after this key (printed when a scan stops)
    #[arg(long, value_name = "KEY")]
    pub start_after: Option<String>,

    /// Report what would be freed; change nothing (-v lists the keys)
    #[arg(long)]
    pub dry_run: bool,

    /// Batches in flight, each with its own database session [default: 4]
    #[arg(long, short = 'c', value_name = "N")]
    pub concurrency: Option<usize>,

    /// Rows per batch [default: 1000]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
}

#[derive(Debug, Args)]
pub struct MediaVerifyArgs {
    /// Checks in flight
    #[arg(long, short = 'c', default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct MediaUsageArgs {
    /// Measure the bucket instead of the local folder
    #[arg(long)]
    pub bucket: bool,
}

/// Inputs not given are detected: memory and CPUs of this machine, or of
/// the database container (its limits, else the Docker host's), and the
/// connection count from .env.production and the compose file.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Memory of the database server, e.g. 16GB or 512MB [default: detected]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,

    /// CPUs of the database server [default: detected]
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,

    /// What the data directory is on [default: ssd]
    #[arg(long, value_name = "KIND", value_parser = choice::<StorageKind>(&StorageKind::CHOICES))]
    pub storage: Option<StorageKind>,

    /// Connections the server must accept [default: derived from Mastodon's settings]
    #[arg(long, value_name = "N")]
    pub connections: Option<u32>,

    /// Mastodon's compose file, for the processes' pools [default: from the
    /// database container's labels, else beside .env.production]
    #[arg(long, value_name = "FILE")]
    pub compose_file: Option<PathBuf>,

    /// Write the settings with ALTER SYSTEM and reload (asks first; --yes for scripts)
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Subcommand)]
pub enum BlocksCommand {
    /// Print the domain blocks as Mastodon's CSV or one domain per line
    Export(BlocksExportArgs),
    /// Compare a blocklist with the blocks in place, show the impact of new
    /// blocks, and apply them (--yes or --review)
    Import(BlocksImportArgs),
    /// List domains a hashtag's RSS feed names that are not blocked yet
    Watch(BlocksWatchArgs),
}

#[derive(Debug, Args)]
pub struct BlocksExportArgs {
    /// List format
    #[arg(
        long,
        default_value = "mastodon-csv",
        value_name = "FORMAT",
        value_parser = choice::<ListFormat>(&ListFormat::CHOICES)
    )]
    pub format: ListFormat,

    /// Write to this file instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BlocksImportArgs {
    /// Mastodon's CSV export or a plain list (one domain per line): a file or an https:// URL
    #[arg(value_name = "FILE|URL")]
    pub source: String,

    /// Show the difference and the impact; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Ask about each new block on the terminal: block, limit, skip or quit
    #[arg(long)]
    pub review: bool,

    /// Also apply listed blocks that are looser than the block in place
    #[arg(long)]
    pub allow_loosen: bool,

    /// Severity where the list gives none (plain lists; CSV without #severity)
    #[arg(
        long,
        default_value = "suspend",
        value_name = "SEVERITY",
        value_parser = choice::<Severity>(&Severity::CHOICES)
    )]
    pub severity: Severity,
}

#[derive(Debug, Args)]
pub struct BlocksWatchArgs {
    /// RSS feed of a hashtag (https://SERVER/tags/NAME.rss) or a saved copy
    #[arg(value_name = "FEED")]
    pub feed: String,

    /// Where the domains already shown are remembered
    /// [default: blocks-watch.json in blocks.state_dir]
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell whose registration script to print (load it from the shell's
    /// startup file, e.g. `source <(tusk completions bash)`)
    #[arg(required_unless_present = "dir")]
    pub shell: Option<clap_complete::Shell>,

    /// Write the scripts of every shell into this directory instead (tusk.bash,
    /// _tusk, tusk.fish, tusk.elv, tusk.ps1)
    #[arg(long, value_name = "DIR", conflicts_with = "shell")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write tusk.1 and one page per subcommand into
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["tusk"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_or_else(|err| panic!("{args:?}: {err}"))
    }

    #[test]
    fn every_listed_choice_parses_into_the_library_enum() {
        for (name, _) in Compression::CHOICES {
            parse(&["--compression", name, "backups", "list"]);
        }
        for (name, _) in PgMode::CHOICES {
            parse(&["--postgres-mode", name, "backups", "list"]);
        }
        for (name, _) in DumpTransport::CHOICES {
            parse(&["--docker-transport", name, "backups", "list"]);
        }
        for (name, _) in MediaStoreKind::CHOICES {
            parse(&["--media-store", name, "backups", "list"]);
        }
        for (name, _) in SslMode::CHOICES {
            parse(&["--pg-sslmode", name, "backups", "list"]);
        }
        for (name, _) in CacheSemantics::CHOICES {
            parse(&["prune", "--media-cache-semantics", name]);
        }
        for (name, _) in PruneRule::CHOICES {
            parse(&["prune", "--only", name]);
        }
        for (name, _) in StorageKind::CHOICES {
            parse(&["tune", "--storage", name]);
        }
        for (name, _) in ListFormat::CHOICES {
            parse(&["blocks", "export", "--format", name]);
        }
        for (name, _) in Severity::CHOICES {
            parse(&["blocks", "import", "--severity", name, "list.csv"]);
        }
    }

    #[test]
    fn flags_become_overrides() {
        let cli = parse(&[
            "--compression",
            "gzip",
            "--postgres-mode",
            "docker",
            "--services",
            "web,sidekiq",
            "backups",
            "list",
        ]);
        let overrides = cli.global.overrides();
        assert_eq!(overrides.compression, Some(Compression::Gzip));
        assert_eq!(overrides.postgres_mode, Some(PgMode::Docker));
        assert_eq!(
            overrides.services,
            Some(vec!["web".to_string(), "sidekiq".to_string()])
        );
        assert_eq!(overrides.backup_dir, None);
    }

    #[test]
    fn an_unknown_choice_is_refused_with_the_valid_ones() {
        let err = Cli::try_parse_from(["tusk", "--compression", "lz4", "backups", "list"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("zstd") && err.contains("gzip"), "{err}");
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Run only this check (repeat for more); see docs/status.md
    #[arg(long = "check", value_name = "NAME", value_parser = check_names())]
    pub checks: Vec<String>,

    /// Serve /metrics and /healthz on ADDRESS (e.g. 127.0.0.1:9394) until stopped,
    /// reading fresh figures per scrape
    #[arg(long, value_name = "ADDRESS", env = "TUSK_STATUS_LISTEN")]
    pub listen: Option<String>,
}

/// `--check`'s names, with what each checks.
fn check_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        tusk::status::CHECKS
            .iter()
            .map(|(name, help)| PossibleValue::new(*name).help(*help)),
    )
}
