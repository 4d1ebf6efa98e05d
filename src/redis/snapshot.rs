//! A Redis server's data as one RDB file, and proof that a file loads.
//!
//! The snapshot is the one a replica receives: `redis-cli --rdb -` asks the
//! server for a full sync and writes the RDB it sends to stdout. It is
//! consistent at one moment (the server forks to write it), works against a
//! remote server, and needs no access to the server's disk. In Docker mode
//! redis-cli runs inside the Redis container, against its own server.
//!
//! A written file is proven by loading it into a throwaway `redis-server`
//! that listens on a socket in a private directory, never saves, and is
//! shut down without saving ([`ThrowawayServer`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use tokio::process::Command;

use super::{RedisAddress, RedisSession, RedisTarget};
use crate::cleanup;
use crate::docker::{Container, exec};
use crate::process::ToolProcess;

/// The first bytes of every RDB file.
pub const RDB_MAGIC: &[u8] = b"REDIS";

/// Where redis-cli runs to take the snapshot.
#[derive(Debug, Clone)]
pub enum CliRunner {
    /// On this machine, reaching the server over the network or a socket.
    Local { cli: PathBuf },
    /// Inside the Redis container, reaching its own server on 127.0.0.1.
    Container {
        docker: Docker,
        container: Box<Container>,
    },
}

/// A Redis server to snapshot: how to reach it and where redis-cli runs.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    pub target: RedisTarget,
    pub runner: CliRunner,
}

impl SnapshotSource {
    /// For logs and the manifest: the server, never its password.
    pub fn describe(&self) -> String {
        match &self.runner {
            CliRunner::Local { .. } => self.target.redacted(),
            CliRunner::Container { container, .. } => {
                format!("container {}", container.name)
            }
        }
    }

    /// Starts `redis-cli --rdb -`; its stdout is the RDB file. The password
    /// travels in `REDISCLI_AUTH`, never on the command line.
    pub async fn spawn(&self) -> Result<ToolProcess> {
        let in_container = matches!(self.runner, CliRunner::Container { .. });
        let (args, env) = cli_invocation(&self.target, in_container);
        match &self.runner {
            CliRunner::Local { cli } => {
                let mut command = Command::new(cli);
                command.args(&args).envs(env);
                crate::process::spawn_local(
                    command,
                    "redis-cli".into(),
                    false,
                    None,
                    "install Redis' client (Debian's redis-tools) or set redis.cli",
                )
            }
            CliRunner::Container { docker, container } => {
                let label = format!("redis-cli (in container {})", container.name);
                let mut cmd = vec!["redis-cli".to_string()];
                cmd.extend(args);
                let request = exec::ExecRequest {
                    label: label.clone(),
                    cmd,
                    env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    stdin: false,
                    stderr_lines: None,
                };
                // redis-cli ends when its connection does: the Engine's
                // exec ends with tusk's side of the stream.
                exec::spawn(docker, &container.id, request, |_| {
                    cleanup::defer(format!("end {label}"), || async { Ok(()) })
                })
                .await
            }
        }
    }
}

/// redis-cli's arguments and environment for a snapshot of `target`.
fn cli_invocation(
    target: &RedisTarget,
    in_container: bool,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = Vec::new();
    match &target.address {
        RedisAddress::Tcp { host, port, tls } => {
            let host = if in_container { "127.0.0.1" } else { host };
            args.extend(["-h".into(), host.to_string(), "-p".into(), port.to_string()]);
            if *tls {
                args.push("--tls".into());
            }
        }
        RedisAddress::Unix(path) => {
            args.extend(["-s".into(), path.display().to_string()]);
        }
    }
    if let Some(user) = &target.username {
        args.extend(["--user".into(), user.clone()]);
    }
    args.extend(["--rdb".into(), "-".into()]);
    let env = target
        .password
        .iter()
        .map(|password| ("REDISCLI_AUTH".to_string(), password.clone()))
        .collect();
    (args, env)
}

/// A `redis-server` of tusk's own that has loaded one RDB file: on a Unix
/// socket in a private directory, with saving off, so the file it reads is
/// never written. Shut down without saving when dropped.
pub struct ThrowawayServer {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl ThrowawayServer {
    /// Starts `server_bin` on `rdb` (read through a link, so a large file
    /// is not copied) and waits until the data is loaded. `timeout` bounds
    /// the load.
    pub async fn load(server_bin: &Path, rdb: &Path, timeout: Duration) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tusk-redis-check-")
            .tempdir()
            .context("could not create a directory for the check server")?;
        let rdb = std::path::absolute(rdb)?;
        std::os::unix::fs::symlink(&rdb, dir.path().join("dump.rdb"))
            .context("could not link the snapshot for the check server")?;
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let mut command = Command::new(server_bin);
        command
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .args([
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--logfile")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!(
                "could not start {} to check the snapshot; install Redis' server \
                 (Debian's redis-server) or set redis.server_bin",
                server_bin.display()
            )
        })?;
        let mut server = ThrowawayServer { child, dir };
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "redis-server could not load the snapshot ({status}): {}",
                    last_lines(&log, 4)
                );
            }
            if socket.exists()
                && let Ok(mut session) = server.target().connect(Duration::from_secs(5)).await
                // A server still loading answers LOADING to most commands,
                // but INFO tells how far it is.
                && let Ok(info) = session.info("persistence").await
                && info.iter().any(|(key, value)| key == "loading" && value == "0")
            {
                return Ok(server);
            }
            if started.elapsed() > timeout {
                bail!(
                    "redis-server did not finish loading the snapshot within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's address: its socket, database 0.
    pub fn target(&self) -> RedisTarget {
        RedisTarget {
            address: RedisAddress::Unix(self.dir.path().join("redis.sock")),
            db: 0,
            username: None,
            password: None,
            namespace: None,
        }
    }

    /// A session on database `db` with keys under `namespace`.
    pub async fn session(&self, db: i64, namespace: Option<String>) -> Result<RedisSession> {
        let mut target = self.target().with_namespace(namespace);
        target.db = db;
        target.connect(Duration::from_secs(30)).await
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        // Saving is off and nothing writes to it: SIGKILL loses nothing,
        // and the file it read is left exactly as it was.
        let _ = self.child.start_kill();
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_the_command_line() {
        let target =
            RedisTarget::parse_url("rediss://sidekiq:s3cret@redis.internal:6380/2").unwrap();
        let (args, env) = cli_invocation(&target, false);
        assert_eq!(
            args,
            [
                "-h",
                "redis.internal",
                "-p",
                "6380",
                "--tls",
                "--user",
                "sidekiq",
                "--rdb",
                "-"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("s3cret")));
        assert_eq!(env, [("REDISCLI_AUTH".to_string(), "s3cret".to_string())]);

        // In its container, redis-cli reaches its own server.
        let (args, _) =
            cli_invocation(&RedisTarget::parse_url("redis://redis:6379").unwrap(), true);
        assert_eq!(args[..4], ["-h", "127.0.0.1", "-p", "6379"]);

        let socket = RedisTarget::parse_url("unix:///run/redis/redis.sock").unwrap();
        let (args, env) = cli_invocation(&socket, false);
        assert_eq!(args, ["-s", "/run/redis/redis.sock", "--rdb", "-"]);
        assert!(env.is_empty());
    }
}
