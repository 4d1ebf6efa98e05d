//! Connection parameters of one PostgreSQL database.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::config::{Host, SslMode as WireSslMode};
use tokio_postgres::{Client, Connection, Socket};

use super::tls::{self, RootCert, RustlsConnector, RustlsStream, SslMode, TlsOptions};
use crate::error::TuskError;

/// Where a database lives and how to log in to it.
///
/// The password is kept inside and only ever leaves as `PGPASSWORD` in a
/// child's environment or in the connection handshake; `Display` and
/// [`DbTarget::redacted`] never show it.
#[derive(Clone)]
pub struct DbTarget {
    config: tokio_postgres::Config,
    /// `sslmode`/`sslrootcert` as far as they are known: the URL's own,
    /// then the configured defaults ([`DbTarget::with_tls_defaults`]).
    tls: TlsOptions,
}

/// Connection parameters about TLS that tokio-postgres' parser does not
/// know (or knows only in part) and tusk handles itself.
const TLS_PARAMS: [&str; 2] = ["sslmode", "sslrootcert"];
/// libpq parameters for client certificates, which tusk does not support.
const CLIENT_CERT_PARAMS: [&str; 3] = ["sslcert", "sslkey", "sslpassword"];

impl DbTarget {
    /// Parses a libpq URL (`postgresql://user:pass@host:port/db?sslmode=...`)
    /// or a key/value connection string (`host=... dbname=... sslmode=...`).
    pub fn parse(url: &str) -> Result<Self> {
        let (rest, params) = split_tls_params(url);
        let mut tls = TlsOptions::default();
        for (key, value) in params {
            match key.as_str() {
                "sslmode" => {
                    tls.mode =
                        Some(value.parse().map_err(|err| {
                            TuskError::usage(format!("invalid database URL: {err}"))
                        })?)
                }
                "sslrootcert" => tls.root_cert = Some(RootCert::parse(&value)),
                other => {
                    return Err(TuskError::usage(format!(
                        "invalid database URL: {other} (a client certificate) is not supported; \
                         log in with a password"
                    )));
                }
            }
        }
        let config = tokio_postgres::Config::from_str(&rest).map_err(|err| {
            // The error text never echoes the URL, so the password stays out of it.
            TuskError::usage(format!("invalid database URL: {err}"))
        })?;
        let mut target = Self::from_config(config);
        target.tls = tls;
        Ok(target)
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
        DbTarget {
            config,
            tls: TlsOptions::default(),
        }
    }

    /// This target with `defaults` for the TLS choices its URL left out,
    /// as libpq lays a connection string over `PGSSLMODE`/`PGSSLROOTCERT`.
    pub fn with_tls_defaults(&self, defaults: &TlsOptions) -> Self {
        DbTarget {
            config: self.config.clone(),
            tls: self.tls.or(defaults),
        }
    }

    /// The TLS choices of this target, unresolved.
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The hosts the login names; a Unix socket directory as its path.
    pub fn host_names(&self) -> Vec<String> {
        self.config
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect()
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
        DbTarget {
            config,
            tls: self.tls.clone(),
        }
    }

    /// The same login and database on another host (a container's address).
    ///
    /// The TLS choices are not carried over: they describe the configured
    /// server, and a container's bridge address is on this machine, where a
    /// certificate would not name it. Such sessions use libpq's default,
    /// `prefer`, and the tools in a container use its local socket, where
    /// libpq ignores `sslmode`.
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
        // Always set, so that the tools make the same TLS choice as tusk's
        // sessions whatever the caller's environment says.
        env.push(("PGSSLMODE", self.tls.effective_mode().as_str().to_string()));
        let root_cert = self
            .tls
            .root_cert
            .as_ref()
            .map(RootCert::libpq_value)
            .or_else(|| RootCert::libpq_default().map(|path| path.display().to_string()));
        if let Some(root_cert) = root_cert {
            env.push(("PGSSLROOTCERT", root_cert));
        }
        env
    }

    fn is_unix_socket(&self) -> bool {
        matches!(self.config.get_hosts().first(), Some(Host::Unix(_)))
    }

    /// Opens a SQL session. The connection task runs until the client is dropped.
    ///
    /// TLS follows libpq: `prefer` retries without TLS when the handshake
    /// fails, `allow` retries with TLS when the server refuses a plain
    /// session, and a Unix socket never uses TLS.
    pub async fn connect(&self) -> Result<Client> {
        let could_not_connect = || format!("could not connect to {self}");
        self.tls.validate().with_context(could_not_connect)?;
        // libpq ignores sslmode on a Unix socket, root certificate and all.
        let tls = if self.is_unix_socket() {
            TlsOptions {
                mode: Some(SslMode::Disable),
                root_cert: None,
            }
        } else {
            self.tls.clone()
        };
        let mode = tls.effective_mode();
        let connector = tls::connector(&tls).with_context(could_not_connect)?;
        let attempt = |wire| self.connect_once(wire, connector.clone());
        let mut plain_failure_after_tls = None;
        let result = match mode {
            SslMode::Disable => attempt(WireSslMode::Disable).await,
            SslMode::Allow => match attempt(WireSslMode::Disable).await {
                Err(err) if err.as_db_error().is_some() => {
                    tracing::debug!("{self} refused a plain session ({err}); trying TLS");
                    attempt(WireSslMode::Require).await
                }
                other => other,
            },
            SslMode::Prefer => match attempt(WireSslMode::Prefer).await {
                Err(tls_err) if tls::is_handshake_failure(&tls_err) => {
                    let why = tls::explain_failure(&tls_err, &self.host(), &self.tls)
                        .unwrap_or_else(|| tls_err.to_string());
                    tracing::debug!("TLS to {self} failed ({why}); trying without TLS");
                    // When plain fails as well, the TLS failure is the news.
                    attempt(WireSslMode::Disable)
                        .await
                        .inspect_err(|_| plain_failure_after_tls = Some(why))
                }
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                attempt(WireSslMode::Require).await
            }
        };
        let (client, connection) = result.map_err(|err| {
            let explanation = tls::explain_failure(&err, &self.host(), &self.tls);
            let err = anyhow::Error::new(err);
            let err = match explanation {
                Some(explanation) => err.context(explanation),
                None => err,
            };
            match plain_failure_after_tls {
                Some(why) => err.context(format!(
                    "sslmode=prefer: TLS failed ({why}), and so did the retry without TLS"
                )),
                None => err,
            }
            .context(could_not_connect())
        })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("postgres connection closed: {err}");
            }
        });
        Ok(client)
    }

    async fn connect_once(
        &self,
        wire: WireSslMode,
        connector: RustlsConnector,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), tokio_postgres::Error> {
        let mut config = self.config.clone();
        config.ssl_mode(wire);
        config.connect(connector).await
    }
}

/// Takes the TLS parameters out of a connection string (URL query or
/// key/value pairs), returning the rest for tokio-postgres and the taken
/// `(key, value)` pairs. A string this cannot read is returned whole, for
/// tokio-postgres to report.
fn split_tls_params(conn: &str) -> (String, Vec<(String, String)>) {
    let is_ours = |key: &str| TLS_PARAMS.contains(&key) || CLIENT_CERT_PARAMS.contains(&key);
    let mut taken = Vec::new();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return (conn.to_string(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if is_ours(&key) {
                taken.push((key, percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, taken);
    }
    let Some(pairs) = key_value_pairs(conn) else {
        return (conn.to_string(), taken);
    };
    let mut kept = Vec::new();
    for pair in pairs {
        if is_ours(&pair.key) {
            taken.push((pair.key, pair.value));
        } else {
            kept.push(&conn[pair.span]);
        }
    }
    (kept.join(" "), taken)
}

/// One `key = value` of a libpq key/value string, with where it stands.
struct KeyValue {
    key: String,
    value: String,
    span: std::ops::Range<usize>,
}

/// libpq's key/value syntax: pairs separated by whitespace, spaces allowed
/// around `=`, values single-quoted or bare, `\` escaping the next character.
fn key_value_pairs(conn: &str) -> Option<Vec<KeyValue>> {
    let bytes = conn.as_bytes();
    let mut pairs = Vec::new();
    let mut at = 0;
    let skip_space = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    loop {
        at = skip_space(at);
        if at == bytes.len() {
            return Some(pairs);
        }
        let start = at;
        while at < bytes.len() && bytes[at] != b'=' && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let key = conn[start..at].to_string();
        at = skip_space(at);
        if bytes.get(at) != Some(&b'=') || key.is_empty() {
            return None;
        }
        at = skip_space(at + 1);
        let quoted = bytes.get(at) == Some(&b'\'');
        if quoted {
            at += 1;
        }
        let mut value = Vec::new();
        loop {
            match bytes.get(at) {
                None if quoted => return None,
                None => break,
                Some(b'\'') if quoted => {
                    at += 1;
                    break;
                }
                Some(byte) if !quoted && byte.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    value.push(*bytes.get(at + 1)?);
                    at += 2;
                }
                Some(&byte) => {
                    value.push(byte);
                    at += 1;
                }
            }
        }
        pairs.push(KeyValue {
            key,
            value: String::from_utf8(value).ok()?,
            span: start..at,
        });
    }
}

/// `%XX` decoding of a URL query part, as libpq does.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn takes_tls_params_out_of_a_url() {
        let target = DbTarget::parse(
            "postgresql://u:p@db.example:6543/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.crt&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(target.tls().mode, Some(SslMode::VerifyFull));
        assert_eq!(
            target.tls().root_cert,
            Some(RootCert::File("/etc/ca x.crt".into()))
        );
        assert_eq!(target.redacted(), "postgresql://u@db.example:6543/d");
        assert_eq!(
            target.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let env = target.libpq_env();
        assert!(env.contains(&("PGSSLMODE", "verify-full".to_string())));
        assert!(env.contains(&("PGSSLROOTCERT", "/etc/ca x.crt".to_string())));
    }

    #[test]
    fn takes_tls_params_out_of_key_value_pairs() {
        let target = DbTarget::parse(
            "host=db.example sslmode = require  password='a b\\'c' sslrootcert='/etc/my ca.crt' dbname=d",
        )
        .unwrap();
        assert_eq!(target.tls().mode, Some(SslMode::Require));
        assert_eq!(
            target.tls().root_cert,
            Some(RootCert::File("/etc/my ca.crt".into()))
        );
        assert_eq!(target.password().as_deref(), Some("a b'c"));
        assert_eq!(target.database(), Some("d"));
    }

    #[test]
    fn url_tls_params_win_over_the_configured_defaults() {
        let defaults = TlsOptions {
            mode: Some(SslMode::Disable),
            root_cert: Some(RootCert::parse("/default/ca.crt")),
        };
        let target = DbTarget::parse("postgresql://u@h/d?sslmode=require")
            .unwrap()
            .with_tls_defaults(&defaults);
        assert_eq!(target.tls().effective_mode(), SslMode::Require);
        assert_eq!(
            target.tls().root_cert,
            Some(RootCert::File("/default/ca.crt".into()))
        );
        let plain = DbTarget::parse("postgresql://u@h/d").unwrap();
        assert_eq!(plain.tls().effective_mode(), SslMode::Prefer);
        assert!(
            plain
                .libpq_env()
                .contains(&("PGSSLMODE", "prefer".to_string()))
        );
        // A container's address keeps the login, not the TLS choices.
        let container = target.with_host("172.17.0.2", 5432);
        assert_eq!(container.tls(), &TlsOptions::default());
        assert_eq!(target.with_database("x").tls(), target.tls());
    }

    #[test]
    fn bad_tls_params_are_usage_errors_without_the_password() {
        for url in [
            "postgresql://u:hunter2@h/d?sslmode=verify",
            "postgresql://u:hunter2@h/d?sslcert=/c.crt",
            "host=h password=hunter2 sslmode=on",
        ] {
            let err = DbTarget::parse(url).unwrap_err();
            let text = format!("{err:#}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(
                matches!(err.downcast_ref::<TuskError>(), Some(TuskError::Usage(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
