//! Connection parameters of one PostgreSQL database.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use crate::error::TuskError;

/// Where a database lives and how to log in to it.
///
/// The password is kept inside and only ever leaves as `PGPASSWORD` in a
/// child's environment or in the connection handshake; `Display` and
/// [`DbTarget::redacted`] never show it.
#[derive(Clone)]
pub struct DbTarget {
    config: tokio_postgres::Config,
}

impl DbTarget {
    /// Parses a libpq URL (`postgresql://user:pass@host:port/db`) or a
    /// key/value connection string (`host=... dbname=...`).
    pub fn parse(url: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(url).map_err(|err| {
            // The error text never echoes the URL, so the password stays out of it.
            TuskError::usage(format!("invalid database URL: {err}"))
        })?;
        Ok(Self::from_config(config))
    }

    pub fn from_config(mut config: tokio_postgres::Config) -> Self {
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_user().is_none() {
            // libpq's default: the operating-system user.
            let user = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        config.application_name("tusk");
        DbTarget { config }
    }

    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// The same server and login, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(database);
        DbTarget { config }
    }

    /// The same login and database on another host (a container's address).
    pub fn with_host(&self, host: &str, port: u16) -> Self {
        // Config::host appends to the host list, so start from a fresh one.
        let mut fresh = tokio_postgres::Config::new();
        fresh.host(host).port(port);
        if let Some(user) = self.user() {
            fresh.user(user);
        }
        if let Some(db) = self.database() {
            fresh.dbname(db);
        }
        if let Some(password) = self.config.get_password() {
            fresh.password(password);
        }
        Self::from_config(fresh)
    }

    /// The password, for a password file only a helper container reads.
    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|password| String::from_utf8_lossy(password).into_owned())
    }

    fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        }
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// `postgresql://user@host:port/db`, safe for logs, errors and manifests.
    pub fn redacted(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user().unwrap_or(""),
            self.host(),
            self.port(),
            self.database().unwrap_or("")
        )
    }

    /// The libpq environment for a child process (`pg_dump`, `psql`, ...).
    /// The database itself is passed separately, by the caller.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host()),
            ("PGPORT", self.port().to_string()),
            ("PGUSER", self.user().unwrap_or_default().to_string()),
            ("PGAPPNAME", "tusk".to_string()),
            ("PGCONNECT_TIMEOUT", "15".to_string()),
        ];
        if let Some(password) = self.password() {
            env.push(("PGPASSWORD", password));
        }
        env
    }

    /// Opens a SQL session. The connection task runs until the client is dropped.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .with_context(|| format!("could not connect to {self}"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("postgres connection closed: {err}");
            }
        });
        Ok(client)
    }
}

impl DbTarget {
    /// A session on the server's maintenance database: `postgres`, else
    /// `template1` (which every cluster has), as createdb and dropdb choose.
    pub async fn connect_maintenance(&self) -> Result<Client> {
        match self.with_database("postgres").connect().await {
            Ok(client) => Ok(client),
            Err(first) => self
                .with_database("template1")
                .connect()
                .await
                .map_err(|_| first),
        }
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbTarget({})", self.redacted())
    }
}

/// Quotes an SQL identifier (`"my ""db"""`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_everywhere_but_the_env() {
        let target = DbTarget::parse("postgresql://alice:hunter2@db.local:6543/mastodon").unwrap();
        assert_eq!(
            target.redacted(),
            "postgresql://alice@db.local:6543/mastodon"
        );
        assert!(!format!("{target} {target:?}").contains("hunter2"));
        assert!(
            target
                .libpq_env()
                .contains(&("PGPASSWORD", "hunter2".to_string()))
        );
    }

    #[test]
    fn bad_url_error_does_not_echo_the_password() {
        let err = DbTarget::parse("postgresql://alice:hunter2@host:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
