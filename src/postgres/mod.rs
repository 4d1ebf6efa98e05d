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

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::Client;

use crate::creator::Creator;
pub use direct::STAGED_ARCHIVE_KIND;
pub use docker_pipe::TEMP_KIND as PIPE_DIR_KIND;
pub use target::{DbTarget, quote_ident};
pub use tls::{RootCert, SslMode, TlsOptions};

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

/// How much of a tool's stderr an error message keeps (the tail).
const STDERR_TAIL: usize = 16 * 1024;

/// Grows a pipe's kernel buffer to 1 MiB: with the default 64 KiB, pg_dump
/// waits whenever tusk is busy compressing, and every 64 KiB costs a
/// wake-up. Failure only costs speed.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    const PIPE_BYTES: libc::c_int = 1 << 20;
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own changes only its capacity.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
}

pub type BoxReader = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;
type ExitFuture = Pin<Box<dyn Future<Output = Result<ToolExit>> + Send>>;

/// How a tool ended.
#[derive(Debug)]
pub struct ToolExit {
    pub code: i64,
    /// The tail of what it printed on stderr.
    pub stderr: String,
}

/// A running client tool with its standard streams.
pub struct ToolProcess {
    pub label: String,
    pub stdin: Option<BoxWriter>,
    pub stdout: Option<BoxReader>,
    exit: ExitFuture,
}

impl ToolProcess {
    pub fn new(
        label: String,
        stdin: Option<BoxWriter>,
        stdout: BoxReader,
        exit: impl Future<Output = Result<ToolExit>> + Send + 'static,
    ) -> Self {
        ToolProcess {
            label,
            stdin,
            stdout: Some(stdout),
            exit: Box::pin(exit),
        }
    }

    pub fn take_stdout(&mut self) -> BoxReader {
        self.stdout.take().expect("stdout taken once")
    }

    /// Writes `input` to the tool's stdin (discarding its stdout) and waits
    /// for it. A failed tool's own error wins over the broken pipe it causes.
    pub async fn feed(mut self, input: &mut (dyn AsyncRead + Send + Unpin)) -> Result<ToolExit> {
        let mut stdin = self
            .stdin
            .take()
            .context("the tool was started without stdin")?;
        let mut stdout = self.take_stdout();
        let feed = async {
            let copied = tokio::io::copy(input, &mut stdin).await;
            let closed = stdin.shutdown().await;
            drop(stdin);
            copied.and(closed)
        };
        let mut sink = tokio::io::sink();
        let (fed, _) = tokio::join!(feed, tokio::io::copy(&mut stdout, &mut sink));
        let label = self.label.clone();
        let exit = self.wait().await?;
        fed.with_context(|| format!("could not write to {label}"))?;
        Ok(exit)
    }

    /// Waits for the tool to end; a non-zero status is an error carrying its stderr.
    pub async fn wait(self) -> Result<ToolExit> {
        drop(self.stdin);
        let label = self.label;
        let exit = self.exit.await.with_context(|| format!("{label} failed"))?;
        if exit.code != 0 {
            bail!(
                "{label} exited with status {}{}",
                exit.code,
                describe_stderr(&exit.stderr)
            );
        }
        Ok(exit)
    }
}

/// A tool's stderr as it arrives: whole lines go to the observer, if any,
/// and the tail worth showing in an error message is kept.
pub struct StderrCollector {
    observer: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    partial: Vec<u8>,
    kept: Vec<u8>,
    limit: usize,
}

impl StderrCollector {
    pub fn new(observer: Option<tokio::sync::mpsc::UnboundedSender<String>>, limit: usize) -> Self {
        StderrCollector {
            observer,
            partial: Vec::new(),
            kept: Vec::new(),
            limit,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if let Some(observer) = &self.observer {
            let _ = observer.send(text.to_string());
            if is_progress(text) {
                return;
            }
        }
        self.kept.extend_from_slice(line);
        if self.kept.len() > 2 * self.limit {
            self.kept.drain(..self.kept.len() - self.limit);
        }
    }

    /// The kept tail, including an unfinished last line.
    pub fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(&rest);
        }
        let start = self.kept.len().saturating_sub(self.limit);
        String::from_utf8_lossy(&self.kept[start..]).into_owned()
    }
}

/// `pg_restore: finished item ...`, not `pg_restore: error: ...`.
fn is_progress(line: &str) -> bool {
    let Some((_, message)) = line.split_once(": ") else {
        return false;
    };
    line.starts_with("pg_")
        && !["error:", "warning:", "detail:", "hint:"]
            .iter()
            .any(|level| message.starts_with(level))
}

fn describe_stderr(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(":\n{trimmed}")
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
