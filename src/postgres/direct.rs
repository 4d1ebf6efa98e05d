//! Direct mode: SQL over the network and the client tools installed on this machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::cleanup;
use crate::creator::Creator;
use tokio::process::Command;

use super::{BoxReader, DbTarget, PgServer, StagedArchive, Tool, ToolCommand, ToolProcess};

/// A staged archive is `tusk-restore-<creator>-<random>.dump` in the temporary directory.
pub const STAGED_ARCHIVE_KIND: &str = "restore";

/// A server reached over the network, with local pg_* tools.
pub struct DirectServer {
    target: DbTarget,
    bin_dir: Option<PathBuf>,
    temp_dir: Option<PathBuf>,
}

impl DirectServer {
    /// `bin_dir` pins the tools; without it the newest
    /// `/usr/lib/postgresql/<major>/bin` is used, then `PATH`.
    pub fn new(target: DbTarget, bin_dir: Option<PathBuf>, temp_dir: Option<PathBuf>) -> Self {
        DirectServer {
            target,
            bin_dir: bin_dir.or_else(newest_debian_bin_dir),
            temp_dir,
        }
    }

    fn program_path(&self, tool: Tool) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(tool.program()),
            None => PathBuf::from(tool.program()),
        }
    }
}

/// Debian installs each major side by side; the newest can dump every older server.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_dump").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

#[async_trait]
impl PgServer for DirectServer {
    fn target(&self) -> &DbTarget {
        &self.target
    }

    fn describe_tools(&self) -> String {
        match &self.bin_dir {
            Some(dir) => format!("local tools in {}", dir.display()),
            None => "local tools on PATH".into(),
        }
    }

    fn temp_dir(&self) -> PathBuf {
        self.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Only a server on this machine shares its file systems with tusk.
    async fn free_bytes(&self, path: &str) -> Result<Option<u64>> {
        let local = self.target.host_names().iter().all(|host| {
            host.starts_with('/') || matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1")
        });
        if !local || !std::path::Path::new(path).is_dir() {
            return Ok(None);
        }
        let Ok(c_path) = std::ffi::CString::new(path) else {
            return Ok(None);
        };
        // SAFETY: statvfs writes only into the zeroed struct we own.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
            return Ok(None);
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        let free = stats.f_bavail as u64 * stats.f_frsize as u64;
        Ok(Some(free))
    }

    async fn spawn(&self, command: ToolCommand) -> Result<ToolProcess> {
        let program = self.program_path(command.tool);
        let mut child_command = Command::new(&program);
        child_command
            .args(&command.args)
            .envs(self.target.libpq_env())
            .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(database) = &command.database {
            child_command.env("PGDATABASE", database);
        }
        crate::process::spawn_local(
            child_command,
            command.tool.program().to_string(),
            command.stdin,
            command.stderr_lines.clone(),
            "install the PostgreSQL client tools or set postgres.bin_dir",
        )
    }

    async fn stage_archive(&self, archive: BoxReader, _size: u64) -> Result<StagedArchive> {
        let dir = PgServer::temp_dir(self);
        let (file, path) = tempfile::Builder::new()
            .prefix(&Creator::current().temp_prefix(STAGED_ARCHIVE_KIND))
            .suffix(".dump")
            .tempfile_in(&dir)
            .with_context(|| format!("could not create a temporary file in {}", dir.display()))?
            .keep()
            .context("could not keep the temporary file")?;
        // Registered before the copy, so a failed copy is removed too.
        let removed = path.clone();
        let cleanup = cleanup::defer(format!("remove {}", path.display()), move || async move {
            tokio::fs::remove_file(&removed)
                .await
                .with_context(|| format!("could not remove {}", removed.display()))
        });
        let mut writer =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut reader = tokio::io::BufReader::with_capacity(1 << 20, archive);
        tokio::io::copy_buf(&mut reader, &mut writer)
            .await
            .with_context(|| format!("could not write {}", path.display()))?;
        writer.flush().await?;
        Ok(StagedArchive {
            path: path_string(&path),
            local_file: Some(path),
            cleanup,
        })
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
