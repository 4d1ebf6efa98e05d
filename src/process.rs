//! A client tool running on this machine or in a container: its standard
//! streams, how it ended, and the tail of its stderr for the error message.
//!
//! PostgreSQL's tools (`pg_dump`, `pg_restore`, `psql`) and Redis'
//! `redis-cli` run the same way: tusk reads their stdout as a stream and
//! judges them by their exit status, so one [`ToolProcess`] serves both.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

/// How much of a tool's stderr an error message keeps (the tail).
pub const STDERR_TAIL: usize = 16 * 1024;

/// Grows a pipe's kernel buffer to 1 MiB: with the default 64 KiB, pg_dump
/// waits whenever tusk is busy compressing, and every 64 KiB costs a
/// wake-up. Failure only costs speed.
pub fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
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

pub fn describe_stderr(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(":\n{trimmed}")
    }
}

/// Starts `command` on this machine with piped stdout and stderr (stdin
/// piped when `stdin`), killed with tusk: also when tusk itself is killed.
/// `missing` says how to get the program when it cannot be started.
pub fn spawn_local(
    mut command: Command,
    label: String,
    stdin: bool,
    stderr_lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    missing: &str,
) -> Result<ToolProcess> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A run killed by SIGKILL cannot end its tools; the kernel does. The
    // signal follows the thread that spawned the tool, so spawn from
    // async code (runtime threads live as long as the process), never
    // from a blocking-pool thread, which ends when idle.
    let parent = std::process::id();
    // SAFETY: prctl, getppid and _exit are async-signal-safe, and the
    // closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the request took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {program}; {missing}"))?;
    let stdin = child.stdin.take().map(|s| Box::new(s) as BoxWriter);
    let stdout = child.stdout.take().expect("piped stdout");
    widen_pipe(&stdout);
    let stdout = Box::new(stdout);
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut collector = StderrCollector::new(stderr_lines, STDERR_TAIL);
    let stderr_task = tokio::spawn(async move {
        let mut chunk = vec![0u8; 8192];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => collector.push(&chunk[..n]),
            }
        }
        collector.finish()
    });
    let exit = async move {
        let status = child.wait().await?;
        let stderr = stderr_task.await.unwrap_or_default();
        if !stderr.trim().is_empty() {
            tracing::debug!(target: "tusk::tools", "{}", stderr.trim_end());
        }
        Ok(ToolExit {
            code: status.code().map_or(-1, i64::from),
            stderr,
        })
    };
    Ok(ToolProcess::new(label, stdin, stdout, exit))
}
