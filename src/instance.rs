//! The instance as the settings describe it: where its database server is
//! and how to reach it, its containers, its media folder and bucket. The
//! commands and the operations that combine others (a migration is a backup,
//! a restore and a verification) get their servers and stores from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bollard::Docker;

use crate::config::{MediaStoreKind, PgMode, Settings};
use crate::docker::services::AppServices;
use crate::docker::{Container, ContainerSelector};
use crate::error::TuskError;
use crate::mastodon::api::AdminApi;
use crate::media::MediaLayout;
use crate::postgres::docker::DockerServer;
use crate::postgres::{DbTarget, PgServer, direct::DirectServer};
use crate::prune::MediaStore;
use crate::prune_sets::DirDestination;
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

    pub fn backup_dir(&self) -> PathBuf {
        self.settings.backup_dir.clone()
    }

    /// The destination `tusk backup` writes to: the one whose directory is
    /// the backup directory.
    pub fn backup_destination(&self) -> Result<DirDestination> {
        let dir = &self.settings.backup_dir;
        self.settings
            .destinations
            .iter()
            .find(|d| &d.dir == dir)
            .cloned()
            .ok_or_else(|| {
                TuskError::usage(format!(
                    "no destination in tusk.yaml has dir: {}, so --prune has no retention \
                     policy to apply: add it under destinations: with its retention:",
                    dir.display()
                ))
            })
    }

    /// The destinations `tusk backups prune` works on: all, or the one named.
    pub fn destinations(&self, name: Option<&str>) -> Result<Vec<DirDestination>> {
        let all = &self.settings.destinations;
        let Some(name) = name else {
            return Ok(all.clone());
        };
        match all.iter().find(|d| d.name == name) {
            Some(found) => Ok(vec![found.clone()]),
            None => Err(TuskError::usage(format!(
                "no destination named {name:?}; configured: {}",
                all.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
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
