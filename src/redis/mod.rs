//! Reaching a Redis server: where it is ([`RedisTarget`]), and a session on
//! it with deadlines ([`RedisSession`]).
//!
//! Mastodon uses Redis twice: Sidekiq's queues (and the streaming server's
//! pub/sub) and the Rails cache, possibly on two servers. Which is which is
//! decided by the settings (`redis:` in tusk.yaml, Mastodon's `REDIS_*`,
//! `SIDEKIQ_REDIS_*` and `CACHE_REDIS_*` variables); this module only knows
//! an address, a login, a database number and a key namespace.
//!
//! A session never waits without end: connecting and every command have a
//! deadline, so a caller that serves a scrape (`tusk status --listen`) or
//! answers a timer is not hung by a stuck server.

pub mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::error::TuskError;

/// Where a Redis server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAddress {
    /// Host and port; `tls` for a `rediss://` URL.
    Tcp { host: String, port: u16, tls: bool },
    /// A Unix socket (`unix:///run/redis/redis.sock`).
    Unix(PathBuf),
}

/// One Redis database as a client reaches it: address, login, database
/// number and the key namespace every key is prefixed with.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub address: RedisAddress,
    /// The logical database (`SELECT n`).
    pub db: i64,
    /// An ACL user (Redis 6+); `None` is the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    /// redis-namespace's prefix: every key `k` is `<namespace>:k`
    /// (Mastodon before 4.4 with `REDIS_NAMESPACE` set).
    pub namespace: Option<String>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &self.redacted())
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Redis' own default port.
pub const DEFAULT_PORT: u16 = 6379;

impl RedisTarget {
    /// A server on `host:port`, database 0, no login, no namespace.
    pub fn tcp(host: &str, port: u16) -> Self {
        RedisTarget {
            address: RedisAddress::Tcp {
                host: host.to_string(),
                port,
                tls: false,
            },
            db: 0,
            username: None,
            password: None,
            namespace: None,
        }
    }

    /// Parses a URL as Mastodon's Redis client accepts it:
    /// `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS),
    /// or `unix:///path/to/socket[?db=n]`. Percent-escapes in the login
    /// are decoded.
    pub fn parse_url(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            TuskError::usage(format!(
                "Redis URL {} {why}: use redis://[:password@]host[:port][/db], \
                 rediss://... for TLS, or unix:///path/to/redis.sock",
                redact_url_text(url)
            ))
        };
        let parsed = url::Url::parse(url).map_err(|err| bad(&format!("is not a URL ({err})")))?;
        let username = Some(percent_decode(parsed.username())).filter(|u| !u.is_empty());
        let password = parsed
            .password()
            .map(percent_decode)
            .filter(|p| !p.is_empty());
        let query_db = parsed
            .query_pairs()
            .find(|(key, _)| key == "db")
            .map(|(_, value)| value.into_owned());
        let (address, path_db) = match parsed.scheme() {
            "redis" | "rediss" => {
                let host = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("names no host"))?;
                // An IPv6 host keeps its brackets in the URL only.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let path = parsed.path().trim_matches('/');
                (
                    RedisAddress::Tcp {
                        host: host.to_string(),
                        port: parsed.port().unwrap_or(DEFAULT_PORT),
                        tls: parsed.scheme() == "rediss",
                    },
                    (!path.is_empty()).then(|| path.to_string()),
                )
            }
            "unix" | "redis+unix" => {
                if parsed.path().is_empty() {
                    return Err(bad("names no socket path"));
                }
                (RedisAddress::Unix(PathBuf::from(parsed.path())), None)
            }
            other => return Err(bad(&format!("has the scheme {other}:"))),
        };
        let db = match path_db.or(query_db) {
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| bad(&format!("names database {text:?}, not a number")))?,
            None => 0,
        };
        Ok(RedisTarget {
            address,
            db,
            username,
            password,
            namespace: None,
        })
    }

    /// The same target with keys under `namespace` (none when empty).
    pub fn with_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace.filter(|ns| !ns.is_empty());
        self
    }

    /// The URL without the password, for logs and reports.
    pub fn redacted(&self) -> String {
        let login = match (&self.username, &self.password) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (Some(user), None) => format!("{user}@"),
            (None, Some(_)) => ":***@".to_string(),
            (None, None) => String::new(),
        };
        match &self.address {
            RedisAddress::Tcp { host, port, tls } => {
                let scheme = if *tls { "rediss" } else { "redis" };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("{scheme}://{login}{host}:{port}/{}", self.db)
            }
            RedisAddress::Unix(path) => {
                format!("unix://{login}{}?db={}", path.display(), self.db)
            }
        }
    }

    /// The key as stored: `key` under the namespace, if any.
    pub fn key(&self, key: &str) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}:{key}"),
            None => key.to_string(),
        }
    }

    /// Opens a session; connecting and each later command give up after
    /// `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<RedisSession> {
        let address = match &self.address {
            RedisAddress::Tcp {
                host,
                port,
                tls: false,
            } => ConnectionAddr::Tcp(host.clone(), *port),
            RedisAddress::Tcp {
                host,
                port,
                tls: true,
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            RedisAddress::Unix(path) => ConnectionAddr::Unix(path.clone()),
        };
        let mut login = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            login = login.set_username(username);
        }
        if let Some(password) = &self.password {
            login = login.set_password(password);
        }
        let info = address
            .into_connection_info()
            .map(|info| info.set_redis_settings(login))
            .with_context(|| format!("bad Redis address {}", self.redacted()))?;
        let client = redis::Client::open(info)
            .with_context(|| format!("bad Redis address {}", self.redacted()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        // The client's own timeouts cover each step; the outer one bounds
        // the whole handshake (TLS, AUTH, SELECT) as well.
        let connection = tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", timeout.as_secs_f64()))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| format!("could not connect to Redis at {}", self.redacted()))?;
        Ok(RedisSession {
            connection,
            target: self.clone(),
            timeout,
        })
    }
}

/// A connected session. Commands name keys without the namespace;
/// [`RedisSession::key`] adds it.
pub struct RedisSession {
    connection: MultiplexedConnection,
    target: RedisTarget,
    timeout: Duration,
}

impl RedisSession {
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The stored name of `key` (namespace applied).
    pub fn key(&self, key: &str) -> String {
        self.target.key(key)
    }

    /// Runs one command (or a pipeline via [`RedisSession::pipeline`])
    /// within the session's deadline.
    pub async fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> Result<T> {
        let name = command
            .args_iter()
            .next()
            .and_then(|arg| match arg {
                redis::Arg::Simple(bytes) => std::str::from_utf8(bytes).ok(),
                _ => None,
            })
            .unwrap_or("command")
            .to_string();
        let run = command.query_async(&mut self.connection);
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} s", self.timeout.as_secs_f64()))
            .and_then(|answer| answer.map_err(anyhow::Error::from))
            .with_context(|| format!("Redis {name} on {}", self.target.redacted()))
    }

    /// Runs a pipeline within the session's deadline.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipeline: &redis::Pipeline,
    ) -> Result<T> {
        let run = pipeline.query_async(&mut self.connection);
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} s", self.timeout.as_secs_f64()))
            .and_then(|answer| answer.map_err(anyhow::Error::from))
            .with_context(|| format!("Redis pipeline on {}", self.target.redacted()))
    }

    /// Each database that holds keys: how many, and how many of them
    /// have an expiry (`INFO keyspace`).
    pub async fn keyspace(&mut self) -> Result<BTreeMap<i64, KeyCounts>> {
        Ok(parse_keyspace(&self.info("keyspace").await?))
    }

    /// `INFO section` as its `key:value` lines.
    pub async fn info(&mut self, section: &str) -> Result<Vec<(String, String)>> {
        let text: String = self.query(redis::cmd("INFO").arg(section)).await?;
        Ok(parse_info(&text))
    }
}

/// The `key:value` lines of an `INFO` answer (comments and blanks skipped).
pub fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The keys of one database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub keys: u64,
    /// Of those, the keys with a time to live.
    pub expires: u64,
}

/// `db0:keys=12,expires=1,avg_ttl=0` lines as database -> counts.
pub fn parse_keyspace(info: &[(String, String)]) -> BTreeMap<i64, KeyCounts> {
    info.iter()
        .filter_map(|(key, value)| {
            let db = key.strip_prefix("db")?.parse().ok()?;
            let field = |name: &str| -> Option<u64> {
                value
                    .split(',')
                    .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((
                db,
                KeyCounts {
                    keys: field("keys")?,
                    expires: field("expires").unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// `%XX` escapes decoded (a `+` stays a plus: this is a URL's login, not a
/// form).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL as given, with any password replaced, for an error message about
/// a URL that did not parse.
fn redact_url_text(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((login, host)) => match login.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_url_forms_mastodon_accepts() {
        let plain = RedisTarget::parse_url("redis://localhost:6379/0").unwrap();
        assert_eq!(plain, RedisTarget::tcp("localhost", 6379));

        let full = RedisTarget::parse_url("rediss://mastodon:p%40ss%3Aw0rd+@redis.internal:6380/4")
            .unwrap();
        assert_eq!(
            full.address,
            RedisAddress::Tcp {
                host: "redis.internal".into(),
                port: 6380,
                tls: true
            }
        );
        assert_eq!(full.db, 4);
        assert_eq!(full.username.as_deref(), Some("mastodon"));
        assert_eq!(full.password.as_deref(), Some("p@ss:w0rd+"));
        assert_eq!(
            full.redacted(),
            "rediss://mastodon:***@redis.internal:6380/4"
        );
        assert!(!format!("{full:?}").contains("w0rd"));

        // Password only, default port, no database: Mastodon's own form.
        let password_only = RedisTarget::parse_url("redis://:secret@redis").unwrap();
        assert_eq!(password_only.username, None);
        assert_eq!(password_only.password.as_deref(), Some("secret"));
        assert_eq!(password_only.db, 0);
        assert_eq!(password_only.redacted(), "redis://:***@redis:6379/0");

        let socket = RedisTarget::parse_url("unix:///run/redis/redis.sock?db=2").unwrap();
        assert_eq!(
            socket.address,
            RedisAddress::Unix("/run/redis/redis.sock".into())
        );
        assert_eq!(socket.db, 2);

        let ipv6 = RedisTarget::parse_url("redis://[::1]:7000/1").unwrap();
        assert_eq!(ipv6.redacted(), "redis://[::1]:7000/1");
    }

    #[test]
    fn bad_urls_are_usage_errors_without_the_password() {
        for url in [
            "http://redis:6379",
            "redis://:secret@redis/zero",
            "redis://",
            "not a url",
        ] {
            let err = RedisTarget::parse_url(url).unwrap_err();
            assert_eq!(
                crate::error::exit_status_for(&err),
                crate::error::EXIT_USAGE,
                "{url}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn a_namespace_prefixes_every_key() {
        let target = RedisTarget::tcp("localhost", 6379);
        assert_eq!(target.key("queue:default"), "queue:default");
        let namespaced = target.with_namespace(Some("mastodon".into()));
        assert_eq!(namespaced.key("queue:default"), "mastodon:queue:default");
        let empty = RedisTarget::tcp("h", 1).with_namespace(Some(String::new()));
        assert_eq!(empty.namespace, None);
    }

    #[test]
    fn the_keyspace_counts_keys_per_database() {
        let info = parse_info(
            "# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=5\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n",
        );
        let counts = |keys, expires| KeyCounts { keys, expires };
        assert_eq!(
            parse_keyspace(&info),
            BTreeMap::from([(0, counts(12, 1)), (3, counts(4, 0))])
        );
    }

    #[test]
    fn info_lines_become_pairs() {
        let pairs = parse_info("# Server\r\nredis_version:7.0.15\r\n\r\nused_memory:1024\r\n");
        assert_eq!(
            pairs,
            vec![
                ("redis_version".to_string(), "7.0.15".to_string()),
                ("used_memory".to_string(), "1024".to_string())
            ]
        );
    }
}
