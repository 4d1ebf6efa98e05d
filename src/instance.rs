//! The instance as the settings describe it: where its database server is
//! and how to reach it, its containers, its media folder and bucket. The
//! commands and the operations that combine others (a migration is a backup,
//! a restore and a verification) get their servers and stores from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bollard::Docker;

use crate::backup::redis::RedisSnapshot;
use crate::config::{MediaStoreKind, PgMode, Settings};
use crate::docker::services::AppServices;
use crate::docker::{Container, ContainerSelector};
use crate::error::TuskError;
use crate::mastodon::api::AdminApi;
use crate::media::MediaLayout;
use crate::output::Output;
use crate::postgres::docker::DockerServer;
use crate::postgres::{DbTarget, PgServer, direct::DirectServer};
use crate::prune::MediaStore;
use crate::redis::snapshot::{CliRunner, SnapshotSource};
use crate::redis::{RedisAddress, RedisTarget};
use crate::set::BackupSet;
use crate::set::destination::{Destination, Place};
use crate::set::encryption::{Encryption, EncryptionInfo, Identities, read_passphrase_file};
use crate::set::redis::RedisRole;
use crate::storage::Storage;
use crate::storage::local::LocalStorage;
use crate::storage::retry::Retrying;
use crate::storage::s3::S3Storage;

/// Tries per storage request; uploads and batch deletes are safe to repeat.
const STORAGE_ATTEMPTS: u32 = 5;

/// The configured instance.
pub struct Instance {
    pub settings: Settings,
}

impl Instance {
    pub fn new(settings: Settings) -> Self {
        Instance { settings }
    }

    /// The PostgreSQL server holding the instance's database, reached as
    /// `postgres.mode` says.
    pub async fn database_server(&self) -> Result<Box<dyn PgServer>> {
        let login = self.settings.database()?;
        match self.settings.mode {
            PgMode::Direct => Ok(self.direct_server(login.clone())),
            PgMode::Docker => {
                let (docker, container) = self.database_container().await?;
                let engine_is_local =
                    crate::docker::engine_is_local(self.settings.docker_host.as_deref());
                let server = DockerServer::new(docker, container, login)?.with_dump_transport(
                    self.settings.transport,
                    engine_is_local,
                    self.settings.temp_dir.clone(),
                )?;
                Ok(Box::new(server))
            }
        }
    }

    /// The Engine and the running database container (Docker mode).
    pub async fn database_container(&self) -> Result<(Docker, Container)> {
        let docker = crate::docker::connect(self.settings.docker_host.as_deref())?;
        let container = crate::docker::find_running(&docker, &self.settings.container).await?;
        Ok((docker, container))
    }

    /// A server reached over the network with the local tools; TLS as its
    /// URL says, else as configured.
    pub fn direct_server(&self, target: DbTarget) -> Box<dyn PgServer> {
        Box::new(DirectServer::new(
            target.with_tls_defaults(&self.settings.tls),
            self.settings.pg_bin_dir.clone(),
            self.settings.temp_dir.clone(),
        ))
    }

    /// A server in the named container on the configured Engine, logging in
    /// as configured.
    pub async fn container_server(&self, name: &str) -> Result<Box<dyn PgServer>> {
        let docker = crate::docker::connect(self.settings.docker_host.as_deref())?;
        let selector = ContainerSelector::Name(name.to_string());
        let container = crate::docker::find_running(&docker, &selector).await?;
        Ok(Box::new(DockerServer::new(
            docker,
            container,
            self.settings.database()?,
        )?))
    }

    /// The app services to stop around a dump; only Docker mode can.
    pub async fn app_services(&self) -> Result<AppServices> {
        if self.settings.mode != PgMode::Docker {
            return Err(TuskError::usage(
                "--stop-services needs Docker mode (--postgres-mode docker or postgres.mode: docker)",
            ));
        }
        let (docker, database) = self.database_container().await?;
        Ok(AppServices {
            docker,
            database,
            services: self.settings.services.clone(),
        })
    }

    /// The Redis servers a backup snapshots: Sidekiq's (unless
    /// `sidekiq` is false) and the cache's when `cache` and it is another
    /// server. In Docker mode redis-cli runs in the Redis container, found
    /// like the app's containers, and the keys are counted through the
    /// container's address.
    pub async fn redis_snapshots(&self, sidekiq: bool, cache: bool) -> Result<Vec<RedisSnapshot>> {
        let settings = &self.settings.redis_backup;
        let mut snapshots = Vec::new();
        let mut seen: Vec<RedisTarget> = Vec::new();
        for (role, wanted) in [(RedisRole::Sidekiq, sidekiq), (RedisRole::Cache, cache)] {
            if !wanted {
                continue;
            }
            let target = match role {
                RedisRole::Sidekiq => self.settings.sidekiq_redis()?,
                RedisRole::Cache => self.settings.cache_redis()?,
            }
            .clone();
            // One snapshot holds every database of its server.
            if seen.iter().any(|other| other.address == target.address) {
                continue;
            }
            seen.push(target.clone());
            let (runner, counted_at) = match self.settings.mode {
                PgMode::Direct => (
                    CliRunner::Local {
                        cli: settings.cli.clone(),
                    },
                    Some(target.clone()),
                ),
                PgMode::Docker => {
                    let (docker, database) = self.database_container().await?;
                    let container = crate::docker::services::find(
                        &docker,
                        &database,
                        std::slice::from_ref(&settings.container),
                    )
                    .await?
                    .into_iter()
                    .next();
                    match container {
                        Some(container) => {
                            let counted_at = container
                                .address
                                .clone()
                                .map(|ip| at_container_address(&target, ip));
                            (
                                CliRunner::Container {
                                    docker,
                                    container: Box::new(container),
                                },
                                counted_at,
                            )
                        }
                        // A Redis outside the deployment (a managed one):
                        // reached from here like in direct mode.
                        None if !names_container(&target, &settings.container) => (
                            CliRunner::Local {
                                cli: settings.cli.clone(),
                            },
                            Some(target.clone()),
                        ),
                        None => {
                            return Err(TuskError::usage(format!(
                                "no running Redis container (compose service or container {}) \
                                 beside {}: start it, set redis.container, or pass --no-redis",
                                settings.container, database.name
                            )));
                        }
                    }
                }
            };
            snapshots.push(RedisSnapshot {
                role,
                source: SnapshotSource { target, runner },
                counted_at,
                timeout: self.settings.redis_timeout,
            });
        }
        Ok(snapshots)
    }

    /// The instance's database name (libpq's default, `postgres`, if the
    /// login names none).
    pub fn database_name(&self) -> Result<String> {
        Ok(self
            .settings
            .database()?
            .database()
            .unwrap_or("postgres")
            .to_string())
    }

    /// The database name the login names, for a backup (which must know it).
    pub fn named_database(&self) -> Result<String> {
        Ok(self
            .settings
            .database()?
            .database()
            .context("the database URL names no database")?
            .to_string())
    }

    /// The server's admin API with the configured token.
    pub fn mastodon_admin_api(&self) -> Result<AdminApi> {
        let (url, token) = self.settings.mastodon_api()?;
        AdminApi::new(&url, &token)
    }

    /// How new sets are encrypted: `None` when no recipient or passphrase
    /// is configured. A passphrase comes from `TUSK_PASSPHRASE_FILE`, else
    /// from the terminal (asked twice).
    pub fn backup_encryption(&self, output: &Output) -> Result<Option<Encryption>> {
        let settings = &self.settings.encryption;
        if !settings.recipients.is_empty() {
            return Encryption::to_recipients(settings.recipients.clone()).map(Some);
        }
        if settings.passphrase {
            let passphrase = self.passphrase(output, true)?;
            return Ok(Some(Encryption::to_passphrase(passphrase)));
        }
        Ok(None)
    }

    /// The keys that open a set encrypted as `info` says: the identity
    /// files (`--identity`, else `encryption.identity_files`) and, for a
    /// set encrypted to a passphrase, the passphrase.
    pub fn identities_for(&self, info: &EncryptionInfo, output: &Output) -> Result<Identities> {
        let mut identities = Identities::from_files(&self.settings.encryption.identity_files)?;
        if info.passphrase {
            identities.add_passphrase(self.passphrase(output, false)?);
        }
        Ok(identities)
    }

    /// The keys an operation that writes and then opens sets (migrate,
    /// rehearse) needs: the identity files and, when the sets are
    /// encrypted to a passphrase, the passphrase. `None` without any.
    pub fn configured_identities(
        &self,
        output: &Output,
    ) -> Result<Option<std::sync::Arc<Identities>>> {
        let settings = &self.settings.encryption;
        let mut identities = Identities::from_files(&settings.identity_files)?;
        if settings.passphrase || settings.passphrase_file.is_some() {
            identities.add_passphrase(self.passphrase(output, false)?);
        }
        if settings.encrypts() && identities.is_empty() {
            return Err(TuskError::usage(
                "the sets are encrypted (encryption: in tusk.yaml) and this command opens the set \
                 it uses: pass --identity FILE with a recipient's private key, or set \
                 encryption.identity_files",
            ));
        }
        Ok((!identities.is_empty()).then(|| std::sync::Arc::new(identities)))
    }

    fn passphrase(&self, output: &Output, new: bool) -> Result<age::secrecy::SecretString> {
        if let Some(path) = &self.settings.encryption.passphrase_file {
            return read_passphrase_file(path);
        }
        let question = if new {
            "Passphrase to encrypt the backup set with"
        } else {
            "Passphrase of the backup set"
        };
        let text = output.secret(
            question,
            new,
            "set TUSK_PASSPHRASE_FILE to a file holding it (mode 0600)",
        )?;
        if text.is_empty() {
            return Err(TuskError::usage("an empty passphrase protects nothing"));
        }
        Ok(age::secrecy::SecretString::from(text))
    }

    /// The compose files that started the database container and the
    /// compose project's `.env` (Docker mode; nothing in direct mode).
    /// Files not on this machine (a remote Engine) are left out with a warning.
    pub async fn deployment_files(&self) -> Result<crate::backup::files::DeploymentFiles> {
        let mut found = crate::backup::files::DeploymentFiles::default();
        if self.settings.mode != PgMode::Docker {
            return Ok(found);
        }
        let (docker, database) = self.database_container().await?;
        let compose = crate::docker::limits::resources(&docker, &database.id).await?;
        for file in compose.compose_config_files {
            if file.is_file() {
                found.compose_files.push(file);
            } else {
                tracing::warn!(
                    "compose file {} is not on this machine: not in the set",
                    file.display()
                );
            }
        }
        if let Some(dir) = compose.compose_working_dir {
            let env = dir.join(".env");
            if env.is_file() {
                found.compose_env = Some(env);
            }
        }
        Ok(found)
    }

    /// The Mastodon version the web container runs (Docker mode): its
    /// image tag, else `tootctl version` in it. `None` in direct mode or
    /// when neither tells; the backup then reads the schema.
    pub async fn mastodon_version(&self) -> Option<crate::set::manifest::MastodonInfo> {
        use crate::mastodon::secrets::{version_from_image, version_from_text};
        if self.settings.mode != PgMode::Docker {
            return None;
        }
        let (docker, database) = self.database_container().await.ok()?;
        let web = crate::docker::services::find(&docker, &database, &["web".to_string()])
            .await
            .ok()?
            .into_iter()
            .next()?;
        let image = crate::docker::app::image_reference(&docker, &web.id)
            .await
            .ok()
            .flatten();
        if let Some(version) = image.as_deref().and_then(version_from_image) {
            return Some(crate::set::manifest::MastodonInfo {
                version: Some(version),
                source: "image".into(),
                image,
            });
        }
        let said = crate::docker::app::exec_output(
            &docker,
            &web.id,
            vec!["tootctl".into(), "version".into()],
            Duration::from_secs(90),
        )
        .await;
        match said {
            Ok(text) => text
                .lines()
                .rev()
                .find_map(version_from_text)
                .map(|version| crate::set::manifest::MastodonInfo {
                    version: Some(version),
                    source: "tootctl".into(),
                    image: image.clone(),
                }),
            Err(err) => {
                tracing::debug!("no version from tootctl in {}: {err:#}", web.name);
                None
            }
        }
        .or(Some(crate::set::manifest::MastodonInfo {
            version: None,
            source: "schema".into(),
            image,
        }))
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.settings.backup_dir.clone()
    }

    /// The configured destinations: all, or the one named
    /// (`--destination`). A destination that cannot be used (a bucket
    /// without credentials) is refused here, when it is about to be used.
    pub fn destinations(&self, name: Option<&str>) -> Result<Vec<Destination>> {
        let all = &self.settings.destinations;
        let chosen = match name {
            None => all.clone(),
            Some(name) => match all.iter().find(|d| d.name == name) {
                Some(found) => vec![found.clone()],
                None => {
                    return Err(TuskError::usage(format!(
                        "no destination named {name:?}; configured: {}",
                        all.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
        };
        if let Some(why) = chosen.iter().find_map(|d| d.unusable.as_ref()) {
            return Err(TuskError::usage(why.clone()));
        }
        Ok(chosen)
    }

    /// The backup directory as a destination: the configured one whose
    /// directory it is (with its retention), else `local` (a migration's
    /// set, which stays on this machine).
    pub fn local_destination(&self) -> Destination {
        let dir = &self.settings.backup_dir;
        self.settings
            .destinations
            .iter()
            .find(|d| d.dir() == Some(dir))
            .cloned()
            .unwrap_or_else(|| Destination {
                name: crate::config::DEFAULT_DESTINATION.into(),
                retention: Default::default(),
                place: Place::Dir(dir.clone()),
                unusable: None,
            })
    }

    /// Where sets are looked for: the destinations (or the one named),
    /// and the backup directory when no destination is that directory.
    fn set_sources(&self, name: Option<&str>) -> Result<Vec<Destination>> {
        let mut sources = self.destinations(name)?;
        let dir = &self.settings.backup_dir;
        if name.is_none() && !sources.iter().any(|d| d.dir() == Some(dir)) {
            sources.push(Destination {
                name: crate::config::DEFAULT_DESTINATION.into(),
                retention: Default::default(),
                place: Place::Dir(dir.clone()),
                unusable: None,
            });
        }
        Ok(sources)
    }

    /// Every complete set of each destination (or the one named), oldest
    /// first per destination.
    pub async fn list_sets(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<(Destination, Vec<BackupSet>)>> {
        let mut listed = Vec::new();
        for destination in self.set_sources(name)? {
            let sets = match &destination.place {
                Place::Dir(dir) => BackupSet::list(dir)?,
                Place::Bucket(bucket) => crate::set::bucket::list_sets(bucket)
                    .await
                    .with_context(|| format!("could not list destination {}", destination.name))?,
            };
            listed.push((destination, sets));
        }
        Ok(listed)
    }

    /// A set by id (`latest` for the newest), looked for in each
    /// destination in order (or the one named), or by the path of its
    /// directory.
    pub async fn find_set(&self, id_or_path: &str, name: Option<&str>) -> Result<BackupSet> {
        let as_path = std::path::Path::new(id_or_path);
        if name.is_none() && as_path.join(crate::set::manifest::MANIFEST_FILE).is_file() {
            return BackupSet::open(as_path);
        }
        if id_or_path == "latest" {
            let newest = self
                .list_sets(name)
                .await?
                .into_iter()
                .flat_map(|(_, sets)| sets)
                .max_by(|a, b| {
                    (a.manifest.started_at, &a.manifest.id)
                        .cmp(&(b.manifest.started_at, &b.manifest.id))
                });
            return newest.ok_or_else(|| TuskError::usage("no backup sets in any destination"));
        }
        let sources = self.set_sources(name)?;
        for destination in &sources {
            let found = match &destination.place {
                Place::Dir(dir) => {
                    let set_dir = dir.join(id_or_path);
                    match set_dir.join(crate::set::manifest::MANIFEST_FILE).is_file() {
                        true => Some(BackupSet::open(&set_dir)?),
                        false => None,
                    }
                }
                Place::Bucket(bucket) => {
                    if crate::set::parse_id(id_or_path).is_none() {
                        continue;
                    }
                    crate::set::bucket::open_set(bucket, id_or_path).await?
                }
            };
            if let Some(set) = found {
                return Ok(set);
            }
        }
        Err(TuskError::usage(format!(
            "no backup set {id_or_path:?} in {} (see `tusk backups list`)",
            sources
                .iter()
                .map(|d| format!("{} ({})", d.name, d.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// The local media folder and how its files map to keys.
    pub fn media_layout(&self) -> MediaLayout {
        MediaLayout {
            root: self.settings.media_root.clone(),
            key_prefix: self.settings.s3_key_prefix.clone(),
            permission: self.settings.s3_permission.clone(),
        }
    }

    /// The media bucket, retrying failed requests.
    pub fn media_bucket(&self) -> Result<Retrying<S3Storage>> {
        let s3 = S3Storage::new(self.settings.s3()?.clone());
        Ok(Retrying::new(
            s3,
            STORAGE_ATTEMPTS,
            Duration::from_millis(200),
        ))
    }

    /// The store Mastodon reads its media from now (`S3_ENABLED`).
    pub fn media_store(&self) -> Result<MediaStore> {
        let storage: Arc<dyn Storage> = match self.settings.media_store {
            MediaStoreKind::Local => {
                let root = self.settings.media_root.clone();
                if !root.is_dir() {
                    return Err(TuskError::usage(format!(
                        "media root {} is not a directory; set mastodon.media_root or --media-root \
                         (or --media-store s3 if Mastodon stores media in a bucket)",
                        root.display()
                    )));
                }
                Arc::new(LocalStorage::new(root))
            }
            MediaStoreKind::S3 => Arc::new(self.media_bucket()?),
        };
        let key_prefix = match self.settings.media_store {
            MediaStoreKind::Local => None,
            MediaStoreKind::S3 => self.settings.s3_key_prefix.clone(),
        };
        Ok(MediaStore {
            storage,
            key_prefix,
        })
    }
}

/// `target` reached at a container's address on its network (the host
/// reaches it on Linux), with its port, login and database.
fn at_container_address(target: &RedisTarget, ip: String) -> RedisTarget {
    let port = match &target.address {
        RedisAddress::Tcp { port, .. } => *port,
        RedisAddress::Unix(_) => crate::redis::DEFAULT_PORT,
    };
    RedisTarget {
        address: RedisAddress::Tcp {
            host: ip,
            port,
            tls: false,
        },
        ..target.clone()
    }
}

/// Whether `target` names the container (`REDIS_HOST=redis`, a socket, or
/// a loopback address only the container's network means), rather than a
/// server outside the deployment.
fn names_container(target: &RedisTarget, container: &str) -> bool {
    match &target.address {
        RedisAddress::Tcp { host, .. } => {
            host == container || host == "localhost" || host.starts_with("127.") || host == "::1"
        }
        RedisAddress::Unix(_) => true,
    }
}
