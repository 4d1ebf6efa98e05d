//! Mastodon's `.env.production`: the dotenv file its processes load.
//!
//! Only the subset of dotenv syntax that Mastodon's own setup wizard and the
//! documentation produce is accepted: `KEY=value` lines, optional `export `,
//! single or double quotes, `#` comments and blank lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::TuskError;
use crate::postgres::{DbTarget, RootCert, SslMode};
use crate::redis::RedisTarget;

/// The variables of one `.env.production` file.
#[derive(Debug, Clone, Default)]
pub struct EnvFile {
    pub path: PathBuf,
    vars: BTreeMap<String, String>,
}

impl EnvFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read Mastodon env file {}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(TuskError::usage(format!(
                    "{}:{}: expected KEY=value, found {raw:?}",
                    path.display(),
                    index + 1
                )));
            };
            vars.insert(key.trim().to_string(), unquote(value.trim()));
        }
        Ok(EnvFile {
            path: path.to_path_buf(),
            vars,
        })
    }

    /// The value even when empty: for Mastodon an empty `S3_PERMISSION`
    /// means something (no ACLs), unlike a missing one.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The value, treating an empty one as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The database Mastodon connects to, with Mastodon's own defaults
    /// (config/database.yml, production): `DATABASE_URL` wins over the
    /// `DB_*` variables.
    pub fn database(&self) -> Result<DbTarget> {
        if let Some(url) = self.get("DATABASE_URL") {
            return DbTarget::parse(url)
                .with_context(|| format!("DATABASE_URL in {}", self.path.display()));
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.get("DB_HOST").unwrap_or("localhost"))
            .port(parse_port(
                self.get("DB_PORT").unwrap_or("5432"),
                &self.path,
            )?)
            .user(self.get("DB_USER").unwrap_or("mastodon"))
            .dbname(self.get("DB_NAME").unwrap_or("mastodon_production"));
        if let Some(password) = self.get("DB_PASS") {
            config.password(password);
        }
        Ok(DbTarget::from_config(config))
    }
}

impl EnvFile {
    /// `DB_SSLMODE`, which Mastodon's config/database.yml passes to libpq
    /// (Mastodon defaults it to `prefer`, as tusk does).
    pub fn ssl_mode(&self) -> Result<Option<SslMode>> {
        self.get("DB_SSLMODE")
            .map(|value| {
                value.parse().map_err(|err| {
                    TuskError::usage(format!("DB_SSLMODE in {}: {err:#}", self.path.display()))
                })
            })
            .transpose()
    }

    /// `PGSSLROOTCERT`: Mastodon loads this file into its environment, where
    /// libpq reads it, so a CA named there is the one Mastodon trusts.
    pub fn ssl_root_cert(&self) -> Option<RootCert> {
        self.get("PGSSLROOTCERT").map(RootCert::parse)
    }
}

/// Mastodon's two uses of Redis, each of which may have its own server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisRole {
    /// Sidekiq's queues (`SIDEKIQ_REDIS_*`, else `REDIS_*`).
    Sidekiq,
    /// The Rails cache (`CACHE_REDIS_*`, else `REDIS_*`).
    Cache,
}

impl RedisRole {
    pub fn name(self) -> &'static str {
        match self {
            RedisRole::Sidekiq => "sidekiq",
            RedisRole::Cache => "cache",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RedisRole::Sidekiq => "SIDEKIQ_",
            RedisRole::Cache => "CACHE_",
        }
    }
}

impl EnvFile {
    /// The Redis Mastodon uses for `role`, read as
    /// lib/mastodon/redis_configuration.rb (4.3+) reads its environment:
    /// `<P>REDIS_URL` wins; else `<P>REDIS_HOST` with `<P>REDIS_PORT`,
    /// `<P>REDIS_DB`, `<P>REDIS_USER`, `<P>REDIS_PASSWORD`; without
    /// `<P>REDIS_HOST` the role uses the base settings (`REDIS_URL`, else
    /// `REDIS_HOST` [localhost], `REDIS_PORT` [6379], `REDIS_DB` [0], ...).
    /// The namespace is `REDIS_NAMESPACE` for Sidekiq (redis-namespace,
    /// before 4.4) and `<REDIS_NAMESPACE>_cache` or `cache` for the cache.
    /// Sentinel setups are refused with a way out: name the master in
    /// tusk.yaml.
    pub fn redis(&self, role: RedisRole) -> Result<RedisTarget> {
        let target = match self.redis_with_prefix(role.prefix())? {
            Some(target) => target,
            None => self
                .redis_with_prefix("")?
                .expect("the base settings have a default host"),
        };
        let namespace = self.get("REDIS_NAMESPACE").map(str::to_string);
        let namespace = match role {
            RedisRole::Sidekiq => namespace,
            RedisRole::Cache => Some(namespace.map_or("cache".into(), |ns| format!("{ns}_cache"))),
        };
        Ok(target.with_namespace(namespace))
    }

    /// The settings under one prefix (`""` is the base, with defaults);
    /// `None` when a prefixed role names no host of its own.
    fn redis_with_prefix(&self, prefix: &str) -> Result<Option<RedisTarget>> {
        let var = |name: &str| format!("{prefix}REDIS_{name}");
        let get = |name: &str| self.get(&var(name));
        if let Some(url) = get("URL") {
            return RedisTarget::parse_url(url)
                .map(Some)
                .with_context(|| format!("{} in {}", var("URL"), self.path.display()));
        }
        if get("SENTINEL_MASTER").is_some() && get("SENTINELS").is_some() {
            return Err(TuskError::usage(format!(
                "{} sets Redis Sentinel ({}), which tusk does not follow: give the master's                  address as redis.url (Sidekiq) or redis.cache_url in tusk.yaml",
                self.path.display(),
                var("SENTINEL_MASTER")
            )));
        }
        let host = match (get("HOST"), prefix.is_empty()) {
            (Some(host), _) => host,
            (None, true) => "localhost",
            (None, false) => return Ok(None),
        };
        let port = match get("PORT") {
            Some(text) => text.parse().map_err(|_| {
                TuskError::usage(format!(
                    "{}={text:?} in {} is not a port number",
                    var("PORT"),
                    self.path.display()
                ))
            })?,
            None => crate::redis::DEFAULT_PORT,
        };
        let db = match get("DB") {
            Some(text) => text
                .parse()
                .ok()
                .filter(|db: &i64| *db >= 0)
                .ok_or_else(|| {
                    TuskError::usage(format!(
                        "{}={text:?} in {} is not a database number",
                        var("DB"),
                        self.path.display()
                    ))
                })?,
            None => 0,
        };
        let mut target = RedisTarget::tcp(host, port);
        target.db = db;
        target.username = get("USER").map(str::to_string);
        target.password = get("PASSWORD").map(str::to_string);
        Ok(Some(target))
    }
}

fn parse_port(value: &str, path: &Path) -> Result<u16> {
    value.parse().map_err(|_| {
        TuskError::usage(format!(
            "DB_PORT={value:?} in {} is not a port number",
            path.display()
        ))
    })
}

fn unquote(value: &str) -> String {
    let bytes = value.as_bytes();
    if bytes.len() >= 2 {
        let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
        if first == last && (first == b'"' || first == b'\'') {
            let inner = &value[1..value.len() - 1];
            return if first == b'"' {
                inner.replace("\\n", "\n").replace("\\\"", "\"")
            } else {
                inner.to_string()
            };
        }
    }
    // An unquoted value ends at an inline comment.
    match value.find(" #") {
        Some(cut) => value[..cut].trim_end().to_string(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_db_settings_with_mastodon_defaults() {
        let env = EnvFile::parse(
            Path::new(".env.production"),
            "# comment\nLOCAL_DOMAIN=example.social\nDB_HOST=db\nDB_PASS='s3cr#t'\nexport DB_NAME=\"mastodon\"\n",
        )
        .unwrap();
        let db = env.database().unwrap();
        assert_eq!(db.database(), Some("mastodon"));
        assert_eq!(db.user(), Some("mastodon"));
        assert_eq!(db.redacted(), "postgresql://mastodon@db:5432/mastodon");
        assert_eq!(env.get("LOCAL_DOMAIN"), Some("example.social"));
    }

    #[test]
    fn database_url_wins() {
        let env = EnvFile::parse(
            Path::new("x"),
            "DB_HOST=db\nDATABASE_URL=postgresql://u:p@h:6000/d\n",
        )
        .unwrap();
        assert_eq!(
            env.database().unwrap().redacted(),
            "postgresql://u@h:6000/d"
        );
    }

    #[test]
    fn reads_db_sslmode_and_the_root_certificate() {
        let env = EnvFile::parse(
            Path::new(".env.production"),
            "DB_SSLMODE=verify-full\nPGSSLROOTCERT=/etc/ssl/db-ca.pem\n",
        )
        .unwrap();
        assert_eq!(env.ssl_mode().unwrap(), Some(SslMode::VerifyFull));
        assert_eq!(
            env.ssl_root_cert(),
            Some(RootCert::File("/etc/ssl/db-ca.pem".into()))
        );
        let unset = EnvFile::parse(Path::new("x"), "DB_SSLMODE=\n").unwrap();
        assert_eq!(unset.ssl_mode().unwrap(), None);
        let bad = EnvFile::parse(Path::new("/srv/.env.production"), "DB_SSLMODE=yes\n").unwrap();
        let err = bad.ssl_mode().unwrap_err().to_string();
        assert!(
            err.contains("DB_SSLMODE") && err.contains("/srv/.env.production"),
            "{err}"
        );
    }

    #[test]
    fn redis_follows_mastodons_configuration() {
        let env = |text: &str| EnvFile::parse(Path::new(".env.production"), text).unwrap();
        // Nothing set: localhost, both roles; the cache has its namespace.
        let none = env("");
        let sidekiq = none.redis(RedisRole::Sidekiq).unwrap();
        assert_eq!(sidekiq.redacted(), "redis://localhost:6379/0");
        assert_eq!(sidekiq.namespace, None);
        let cache = none.redis(RedisRole::Cache).unwrap();
        assert_eq!(cache.namespace.as_deref(), Some("cache"));

        // The base settings, with a namespace (Mastodon before 4.4).
        let base = env(
            "REDIS_HOST=redis\nREDIS_PORT=6380\nREDIS_DB=3\nREDIS_PASSWORD=pw\n\
             REDIS_NAMESPACE=mastodon\n",
        );
        let sidekiq = base.redis(RedisRole::Sidekiq).unwrap();
        assert_eq!(sidekiq.redacted(), "redis://:***@redis:6380/3");
        assert_eq!(sidekiq.password.as_deref(), Some("pw"));
        assert_eq!(sidekiq.key("queues"), "mastodon:queues");
        let cache = base.redis(RedisRole::Cache).unwrap();
        assert_eq!(cache.namespace.as_deref(), Some("mastodon_cache"));

        // REDIS_URL wins over REDIS_HOST; SIDEKIQ_REDIS_URL over both.
        let urls = env("REDIS_HOST=ignored\nREDIS_URL=redis://base:1/1\n\
             SIDEKIQ_REDIS_URL=redis://:s@sidekiq:2/2\n");
        assert_eq!(
            urls.redis(RedisRole::Sidekiq).unwrap().redacted(),
            "redis://:***@sidekiq:2/2"
        );
        assert_eq!(
            urls.redis(RedisRole::Cache).unwrap().redacted(),
            "redis://base:1/1"
        );

        // A prefixed role needs its own host; its port and db default.
        let prefixed = env(
            "REDIS_HOST=base\nSIDEKIQ_REDIS_HOST=queues\nSIDEKIQ_REDIS_PASSWORD=q\n\
             CACHE_REDIS_PORT=7000\n",
        );
        assert_eq!(
            prefixed.redis(RedisRole::Sidekiq).unwrap().redacted(),
            "redis://:***@queues:6379/0"
        );
        assert_eq!(
            prefixed.redis(RedisRole::Cache).unwrap().redacted(),
            "redis://base:6379/0",
            "CACHE_REDIS_PORT alone is ignored, as in Mastodon"
        );
    }

    #[test]
    fn redis_settings_tusk_cannot_follow_are_usage_errors() {
        for (text, expected) in [
            ("REDIS_PORT=sixty\n", "REDIS_PORT"),
            (
                "SIDEKIQ_REDIS_HOST=q\nSIDEKIQ_REDIS_DB=-1\n",
                "SIDEKIQ_REDIS_DB",
            ),
            ("REDIS_URL=http://x\n", "REDIS_URL"),
            (
                "REDIS_SENTINEL_MASTER=mymaster\nREDIS_SENTINELS=a:26379,b\n",
                "Sentinel",
            ),
        ] {
            let env = EnvFile::parse(Path::new(".env.production"), text).unwrap();
            let err = env.redis(RedisRole::Sidekiq).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
            assert_eq!(
                crate::error::exit_status_for(&err),
                crate::error::EXIT_USAGE,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_lines_without_equals() {
        let err = EnvFile::parse(Path::new("x"), "A=1\nnonsense\n").unwrap_err();
        assert!(err.to_string().contains("x:2"), "{err}");
    }
}
