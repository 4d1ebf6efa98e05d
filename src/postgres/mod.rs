//! Access to a PostgreSQL server: SQL sessions and the server's client tools.
//!
//! Backup, restore and verify are written once against [`PgServer`]. Its
//! implementations differ only in where `pg_dump` and friends run: on this
//! machine ([`direct::DirectServer`]) or inside the database's container.

pub mod direct;
pub mod docker;
mod docker_pipe;
pub mod target;
pub mod temporary;
pub mod tls;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio_postgres::Client;

use crate::creator::Creator;
pub use direct::STAGED_ARCHIVE_KIND;
pub use docker_pipe::TEMP_KIND as PIPE_DIR_KIND;
pub use target::{DbTarget, quote_ident};
pub use tls::{RootCert, SslMode, TlsOptions};
// A running tool is not PostgreSQL's own; the names stay reachable here.
pub use crate::process::{BoxReader, BoxWriter, StderrCollector, ToolExit, ToolProcess};

/// The PostgreSQL client programs tusk drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    PgDump,
    PgDumpall,
    PgRestore,
    Psql,
}

impl Tool {
    pub fn program(self) -> &'static str {
        match self {
            Tool::PgDump => "pg_dump",
            Tool::PgDumpall => "pg_dumpall",
            Tool::PgRestore => "pg_restore",
            Tool::Psql => "psql",
        }
    }
}

/// One run of a client tool. Connection settings (host, user, password)
/// come from the server's [`DbTarget`] through the libpq environment, never
/// from `args`, so no secret reaches a command line.
#[derive(Debug, Clone)]
pub struct ToolCommand {
    pub tool: Tool,
    pub args: Vec<String>,
    /// Sets `PGDATABASE`.
    pub database: Option<String>,
    /// Extra environment, e.g. `PGOPTIONS`.
    pub env: Vec<(String, String)>,
    /// Whether the caller writes to the tool's standard input.
    pub stdin: bool,
    /// Receives every stderr line as it comes (pg_restore's `--verbose`
    /// progress); those progress lines stay out of the error message.
    pub stderr_lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Whether stdout carries a whole database, worth a faster way out of a
    /// container than the exec stream.
    pub bulk_output: bool,
}

impl ToolCommand {
    pub fn new(tool: Tool) -> Self {
        ToolCommand {
            tool,
            args: Vec::new(),
            database: None,
            env: Vec::new(),
            stdin: false,
            stderr_lines: None,
            bulk_output: false,
        }
    }

    /// Marks stdout as carrying a whole database (pg_dump's archive).
    pub fn bulk_output(mut self) -> Self {
        self.bulk_output = true;
        self
    }

    /// Sends each stderr line to `lines` while the tool runs.
    pub fn observe_stderr(mut self, lines: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.stderr_lines = Some(lines);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn database(mut self, database: &str) -> Self {
        self.database = Some(database.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }
}

/// The major version of a PostgreSQL release (`150018` or `"15.18"` -> 15).
pub fn major_of_version_num(version_num: i32) -> u32 {
    (version_num / 10_000) as u32
}

/// Parses `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> (15, "15.18").
pub fn parse_tool_version(output: &str) -> Option<(u32, String)> {
    let version = output
        .split_whitespace()
        .find(|word| word.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().ok()?;
    Some((major, version.to_string()))
}

/// A PostgreSQL server as tusk reaches it.
#[async_trait]
pub trait PgServer: Send + Sync {
    /// Login and default database for SQL sessions.
    fn target(&self) -> &DbTarget;

    /// Where the client tools run, for messages ("local tools in /usr/lib/...").
    fn describe_tools(&self) -> String;

    /// The directory on this machine for temporary files: staged archives
    /// ([`STAGED_ARCHIVE_KIND`]) and the pipe transport's directories
    /// ([`PIPE_DIR_KIND`]), named by their creator.
    fn temp_dir(&self) -> PathBuf;

    /// The Docker Engine the tools run through, if any; it also holds the
    /// helper containers tusk makes.
    fn engine(&self) -> Option<&bollard::Docker> {
        None
    }

    /// Starts a client tool with its stdout piped (and stdin when asked).
    async fn spawn(&self, command: ToolCommand) -> Result<ToolProcess>;

    /// Opens a SQL session to `database` on this server.
    async fn connect(&self, database: &str) -> Result<Client> {
        self.target().with_database(database).connect().await
    }

    /// Opens a SQL session on the server's maintenance database.
    async fn connect_maintenance(&self) -> Result<Client> {
        self.target().connect_maintenance().await
    }

    /// Version of a client tool as (major, full version string).
    async fn tool_version(&self, tool: Tool) -> Result<(u32, String)> {
        let mut process = self.spawn(ToolCommand::new(tool).arg("--version")).await?;
        let mut text = String::new();
        process.take_stdout().read_to_string(&mut text).await?;
        process.wait().await?;
        parse_tool_version(&text)
            .with_context(|| format!("could not read the version of {}: {text:?}", tool.program()))
    }

    /// Copies an archive of `size` bytes into a file the tools can seek in
    /// (parallel pg_restore needs one). The caller runs `cleanup` when done;
    /// after a failure or Ctrl-C, `main` does.
    async fn stage_archive(&self, archive: BoxReader, size: u64) -> Result<StagedArchive>;

    /// Staged archives that runs left where the tools run, when that is not
    /// [`PgServer::temp_dir`] (which the janitor reads itself): each one's
    /// path and creator.
    async fn staged_archives_elsewhere(&self) -> Result<Vec<(String, Creator)>> {
        Ok(Vec::new())
    }

    /// Removes a staged archive listed by [`PgServer::staged_archives_elsewhere`].
    async fn remove_staged_archive(&self, path: &str) -> Result<()> {
        bail!("no staged archive {path} here")
    }

    /// Free bytes on the file system holding `path` (a directory of the
    /// server, such as its `data_directory`), when tusk can see that file
    /// system: `None` when it cannot.
    async fn free_bytes(&self, path: &str) -> Result<Option<u64>> {
        let _ = path;
        Ok(None)
    }
}

/// The available bytes in `df -P -k` output (its second line, fourth column).
pub fn parse_df_available(output: &str) -> Option<u64> {
    let line = output.lines().nth(1)?;
    let kilobytes: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// A seekable copy of an archive, as the tools see it.
pub struct StagedArchive {
    /// The path to hand to the tool.
    pub path: String,
    /// The same file, when it is on this machine (direct mode) and tusk may
    /// improve it before the tool reads it.
    pub local_file: Option<std::path::PathBuf>,
    /// Removes the copy.
    pub cleanup: crate::cleanup::Deferred,
}

/// The server's version as (major, `server_version`).
pub async fn server_version(client: &Client) -> Result<(u32, String)> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .context("could not read the server version")?;
    Ok((major_of_version_num(row.get(0)), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_available_bytes_from_df() {
        let df = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n\
                  overlay          102687672  51228124  46200836      53% /\n";
        assert_eq!(parse_df_available(df), Some(46_200_836 * 1024));
        assert_eq!(parse_df_available("df: /nowhere: No such file\n"), None);
    }

    #[test]
    fn parses_tool_versions() {
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some((15, "15.18".into()))
        );
        assert_eq!(
            parse_tool_version("psql (PostgreSQL) 17beta1"),
            Some((17, "17beta1".into()))
        );
        assert_eq!(major_of_version_num(150018), 15);
        assert_eq!(major_of_version_num(90624), 9);
    }
}
