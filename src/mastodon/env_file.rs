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
    fn rejects_lines_without_equals() {
        let err = EnvFile::parse(Path::new("x"), "A=1\nnonsense\n").unwrap_err();
        assert!(err.to_string().contains("x:2"), "{err}");
    }
}
