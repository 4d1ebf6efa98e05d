//! Docker mode's `pipe` transport for large tool output (pg_dump).
//!
//! The Engine's exec stream costs as much as the dump itself (about 2× a
//! dump over TCP here, docs/performance.md). So pg_dump runs instead in a
//! short-lived helper container made from the database container's image
//! (same tools, same major version), inside the database container's network
//! namespace (it reaches the server on 127.0.0.1), and writes into a named
//! pipe on this machine that is bind-mounted into the helper. The bytes then
//! cross the kernel only. This needs the Engine on this machine; the helper
//! runs as tusk's own user with no capabilities.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, StartContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{StderrCollector, ToolCommand, ToolExit, ToolProcess};
use crate::cleanup;
use crate::creator::Creator;
use crate::docker::Container;

/// The shared directory is `tusk-pipe-<creator>-<random>` in the temporary directory.
pub const TEMP_KIND: &str = "pipe";

/// Where the helper sees the shared directory.
const MOUNT_POINT: &str = "/tusk";

/// Why the pipe transport did not deliver.
#[derive(Debug)]
pub enum PipeError {
    /// The helper ended before a byte reached the pipe: nothing was dumped,
    /// so the exec transport may try instead.
    NothingDelivered(anyhow::Error),
    /// Anything later.
    Failed(anyhow::Error),
}

impl From<PipeError> for anyhow::Error {
    fn from(err: PipeError) -> Self {
        match err {
            PipeError::NothingDelivered(err) | PipeError::Failed(err) => err,
        }
    }
}

/// Starts `command` in a helper container beside `database` and returns
/// the tool with its output arriving through the pipe.
///
/// `env` is the tool's libpq environment without host, port or password;
/// the password, if any, goes to a 0600 password file in the shared directory
/// (a container's environment is visible to `docker inspect`).
pub async fn spawn(
    docker: &Docker,
    database: &Container,
    temp_dir: Option<&Path>,
    env: Vec<String>,
    password: Option<&str>,
    command: &ToolCommand,
) -> Result<ToolProcess, PipeError> {
    let program = command.tool.program();
    let name = format!("tusk-{program}-{}", crate::names::random_hex()).replace('_', "-");
    let label = format!("{program} (in helper container {name})");
    let failed = |err: anyhow::Error| PipeError::NothingDelivered(err);

    let parent = temp_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    // tempfile creates the directory 0700.
    let dir = tempfile::Builder::new()
        .prefix(&Creator::current().temp_prefix(TEMP_KIND))
        .tempdir_in(&parent)
        .with_context(|| format!("could not create a directory in {}", parent.display()))
        .map_err(failed)?
        .keep();
    // Registered first, so every way out removes the helper and the directory.
    let guard = cleanup::defer(
        format!("remove helper container {name} and {}", dir.display()),
        {
            let (docker, name, dir) = (docker.clone(), name.clone(), dir.clone());
            move || remove_helper(docker, name, dir)
        },
    );
    match start(docker, database, &dir, &name, env, password, command).await {
        Ok(stderr) => deliver(docker.clone(), stderr, dir, name, label, guard).await,
        Err(err) => {
            let _ = guard.run().await;
            Err(failed(err))
        }
    }
}

/// Creates and starts the helper; returns the task collecting its stderr.
async fn start(
    docker: &Docker,
    database: &Container,
    dir: &Path,
    name: &str,
    mut env: Vec<String>,
    password: Option<&str>,
    command: &ToolCommand,
) -> Result<tokio::task::JoinHandle<String>> {
    make_fifo(&dir.join("pipe"))?;
    if let Some(password) = password {
        write_private(&dir.join("pgpass"), &pgpass_line(password))?;
        env.push(format!("PGPASSFILE={MOUNT_POINT}/pgpass"));
    }
    env.push("PGHOST=127.0.0.1".into());
    env.push("PGPORT=5432".into());
    let mut cmd = command.args.clone();
    cmd.push(format!("--file={MOUNT_POINT}/pipe"));
    // pg_dump fsyncs a file it wrote, and fsync on a pipe fails; tusk syncs
    // what it writes itself.
    cmd.push("--no-sync".into());
    // SAFETY: these calls only read the process's credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let config = ContainerCreateBody {
        image: Some(database.image.clone()),
        entrypoint: Some(vec![command.tool.program().to_string()]),
        cmd: Some(cmd),
        env: Some(env),
        user: Some(format!("{uid}:{gid}")),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some({
            let mut labels = crate::docker::creator_labels("dump");
            labels.insert("tusk.for".into(), database.name.clone());
            labels
        }),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{}", database.id)),
            // A missing source is an error with `Mounts` (with `Binds` the
            // Engine would create an empty directory and pg_dump would write
            // a regular file there).
            mounts: Some(vec![Mount {
                target: Some(MOUNT_POINT.into()),
                source: Some(dir.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            config,
        )
        .await
        .with_context(|| format!("could not create helper container {name}"))?;
    let attached = docker
        .attach_container(
            name,
            Some(AttachContainerOptions {
                stream: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .await
        .with_context(|| format!("could not attach to helper container {name}"))?;
    let mut output = attached.output;
    let mut collector =
        StderrCollector::new(command.stderr_lines.clone(), crate::process::STDERR_TAIL);
    let stderr = tokio::spawn(async move {
        while let Some(Ok(chunk)) = output.next().await {
            collector.push(&chunk.into_bytes());
        }
        collector.finish()
    });
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await
        .with_context(|| format!("could not start helper container {name}"))?;
    tracing::info!(
        "{} runs in helper container {name} beside {} and writes into a pipe",
        command.tool.program(),
        database.name
    );
    Ok(stderr)
}

/// Opens the pipe once the helper does (or unblocks it when the helper ended
/// without opening it) and waits for the first bytes.
async fn deliver(
    docker: Docker,
    stderr: tokio::task::JoinHandle<String>,
    dir: PathBuf,
    name: String,
    label: String,
    guard: cleanup::Deferred,
) -> Result<ToolProcess, PipeError> {
    let fifo = dir.join("pipe");
    let mut opening = {
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(fifo))
    };
    let mut exited = Box::pin(wait_exit(docker, name));
    let mut exit_code = None;
    let opened = tokio::select! {
        biased;
        opened = &mut opening => opened,
        code = &mut exited => {
            exit_code = Some(code);
            // The helper never opened its end: open it here so the blocked
            // open above returns (and reads end of file at once). Until that
            // open has begun there is no reader and this one fails; retry.
            while std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .is_err()
                && !opening.is_finished()
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            opening.await
        }
    };
    let file = match opened
        .map_err(anyhow::Error::from)
        .and_then(|opened| opened.with_context(|| format!("could not open {}", fifo.display())))
    {
        Ok(file) => file,
        Err(err) => {
            let _ = guard.run().await;
            return Err(PipeError::Failed(err));
        }
    };
    let mut first = vec![0u8; 1 << 16];
    let read = read_first(file, &mut first)
        .await
        .with_context(|| format!("could not read {}", fifo.display()));
    let (receiver, first_len) = match read {
        Ok(read) => read,
        Err(err) => {
            let _ = guard.run().await;
            return Err(PipeError::Failed(err));
        }
    };
    first.truncate(first_len);

    let exit = async move {
        let code = match exit_code {
            Some(code) => code,
            None => exited.await,
        };
        let stderr = stderr.await.unwrap_or_default();
        guard.run().await?;
        let code = code?;
        if !stderr.trim().is_empty() {
            tracing::debug!(target: "tusk::tools", "{}", stderr.trim_end());
        }
        Ok(ToolExit { code, stderr })
    };
    if first_len == 0 {
        // Nothing came: if the tool failed, nothing was dumped either.
        let ended = exit.await.map_err(PipeError::Failed)?;
        if ended.code != 0 {
            return Err(PipeError::NothingDelivered(anyhow!(
                "{label} exited with status {} before writing anything{}",
                ended.code,
                crate::process::describe_stderr(&ended.stderr)
            )));
        }
        let empty: Box<dyn AsyncRead + Send + Unpin> = Box::new(tokio::io::empty());
        return Ok(ToolProcess::new(
            label,
            None,
            empty,
            async move { Ok(ended) },
        ));
    }
    let stdout = Box::new(std::io::Cursor::new(first).chain(receiver));
    Ok(ToolProcess::new(label, None, stdout, exit))
}

/// Reads the first bytes from the opened pipe.
async fn read_first(
    file: std::fs::File,
    buffer: &mut [u8],
) -> Result<(tokio::net::unix::pipe::Receiver, usize)> {
    crate::process::widen_pipe(&file);
    let mut receiver = tokio::net::unix::pipe::Receiver::from_file(file)?;
    let read = receiver.read(buffer).await?;
    Ok((receiver, read))
}

/// The helper's exit status.
async fn wait_exit(docker: Docker, name: String) -> Result<i64> {
    let mut waits = docker.wait_container(&name, None);
    match waits.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(err)) => Err(err).with_context(|| format!("could not wait for {name}")),
        None => Err(anyhow!("the Docker Engine did not report how {name} ended")),
    }
}

/// Removes the helper (if it was created) and the shared directory.
async fn remove_helper(docker: Docker, name: String, dir: PathBuf) -> Result<()> {
    let removed = crate::docker::remove_container(&docker, &name).await;
    let dir_removed = tokio::fs::remove_dir_all(&dir)
        .await
        .with_context(|| format!("could not remove {}", dir.display()));
    removed.and(dir_removed)
}

fn make_fifo(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not create the named pipe {}", path.display()));
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// A `.pgpass` line matching every server, database and user.
fn pgpass_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_pgpass_separators() {
        assert_eq!(pgpass_line(r"a:b\c"), "*:*:*:*:a\\:b\\\\c\n");
    }
}
