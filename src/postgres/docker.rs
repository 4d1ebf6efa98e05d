//! Docker mode: the client tools run inside the database container through
//! the Engine's exec API, so they always match the server's major version;
//! SQL sessions reach the container's address. pg_dump's large output may
//! take a faster way out instead ([`super::docker_pipe`]).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::StartExecOptions;
use bollard::models::ExecConfig;
use bollard::query_parameters::UploadToContainerOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::docker_pipe::{self, PipeError};
use super::{BoxReader, DbTarget, PgServer, StagedArchive, ToolCommand, ToolProcess};
use crate::cleanup;
use crate::creator::Creator;
use crate::docker::{Container, exec};
use crate::error::TuskError;

/// The port PostgreSQL listens on inside its container.
const CONTAINER_PORT: u16 = 5432;
/// Where archives are staged inside the container, each in its own
/// `tusk-restore-<random>` directory beside a file naming its creator.
const STAGED_PARENT: &str = "/tmp";
const STAGED_CREATOR_FILE: &str = "creator";

/// How a dump leaves the database container in Docker mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpTransport {
    /// `pipe` when the Engine runs on this machine, else `exec`; falls back
    /// to `exec` when the helper container cannot deliver.
    Auto,
    /// pg_dump runs in a helper container from the same image and writes
    /// into a named pipe on this machine.
    Pipe,
    /// pg_dump's output streams through the Engine's exec API.
    Exec,
}

impl DumpTransport {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 3] = [
        (
            "auto",
            "`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` \
             when the helper container cannot deliver",
        ),
        (
            "pipe",
            "pg_dump runs in a helper container from the same image and writes into a named \
             pipe on this machine",
        ),
        (
            "exec",
            "pg_dump's output streams through the Engine's exec API",
        ),
    ];
}

/// A server in a container, tools run by `docker exec`.
pub struct DockerServer {
    docker: Docker,
    container: Container,
    target: DbTarget,
    dump_transport: Transport,
    temp_dir: Option<PathBuf>,
}

/// How pg_dump's output leaves the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Exec,
    /// Through a helper container and a named pipe; `fallback` allows the
    /// exec stream when the helper delivered nothing.
    Pipe {
        fallback: bool,
    },
}

impl Transport {
    fn choose(setting: DumpTransport, engine_is_local: bool) -> Result<Self> {
        Ok(match setting {
            DumpTransport::Exec => Transport::Exec,
            DumpTransport::Auto if engine_is_local => Transport::Pipe { fallback: true },
            DumpTransport::Auto => Transport::Exec,
            DumpTransport::Pipe if engine_is_local => Transport::Pipe { fallback: false },
            DumpTransport::Pipe => {
                return Err(TuskError::usage(
                    "docker.transport: pipe needs the Docker Engine on this machine \
                     (a unix socket); use exec for a remote Engine",
                ));
            }
        })
    }
}

impl DockerServer {
    /// `login` gives the user, password and database; the host is the container.
    pub fn new(docker: Docker, container: Container, login: &DbTarget) -> Result<Self> {
        let address = container.address.clone().with_context(|| {
            format!(
                "container {} has no network address for SQL sessions; attach it to a bridge network",
                container.name
            )
        })?;
        let target = login.with_host(&address, CONTAINER_PORT);
        Ok(DockerServer {
            docker,
            container,
            target,
            dump_transport: Transport::Exec,
            temp_dir: None,
        })
    }

    /// Chooses how pg_dump's output leaves the container. The pipe needs the
    /// Engine on this machine (`engine_is_local`), since the helper mounts a
    /// directory from here.
    pub fn with_dump_transport(
        mut self,
        transport: DumpTransport,
        engine_is_local: bool,
        temp_dir: Option<PathBuf>,
    ) -> Result<Self> {
        self.dump_transport = Transport::choose(transport, engine_is_local)?;
        self.temp_dir = temp_dir;
        Ok(self)
    }

    /// The libpq environment inside the container: its local socket, the
    /// configured login. The password travels in the exec's environment.
    /// No TLS settings: libpq ignores `sslmode` on a socket, and a root
    /// certificate's path on this machine means nothing in the container.
    fn exec_env(&self, command: &ToolCommand) -> Vec<String> {
        let mut env: Vec<String> = self
            .target
            .libpq_env()
            .into_iter()
            .filter(|(key, _)| !matches!(*key, "PGHOST" | "PGPORT" | "PGSSLMODE" | "PGSSLROOTCERT"))
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if let Some(database) = &command.database {
            env.push(format!("PGDATABASE={database}"));
        }
        env.extend(command.env.iter().map(|(k, v)| format!("{k}={v}")));
        env
    }

    /// Runs a plain command in the container and checks its exit status.
    async fn exec_simple(&self, cmd: Vec<String>) -> Result<()> {
        let process = self.exec(cmd, Vec::new(), false, None).await?;
        process.wait().await.map(drop)
    }

    async fn exec(
        &self,
        cmd: Vec<String>,
        mut env: Vec<String>,
        stdin: bool,
        stderr_lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<ToolProcess> {
        let label = format!("{} (in container {})", cmd[0], self.container.name);
        // Names the process and its server sessions, so a cancelled run can
        // end it: the Engine lets an exec run on when its client is gone.
        let marker = format!("tusk-exec-{}", crate::names::random_hex());
        env.push(format!("PGAPPNAME={marker}"));
        let request = exec::ExecRequest {
            label: label.clone(),
            cmd,
            env,
            stdin,
            stderr_lines,
        };
        exec::spawn(&self.docker, &self.container.id, request, |exec_id| {
            let (docker, container, login) = (
                self.docker.clone(),
                self.container.clone(),
                self.target.clone(),
            );
            cleanup::defer(format!("end {label}"), move || {
                end_exec(docker, container, login, exec_id, marker)
            })
        })
        .await
    }
}

/// How long a cancelled exec may take to end.
const END_EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Ends a tool started by exec whose run was cancelled: the processes
/// carrying its marker are sent SIGTERM inside the container, its server
/// sessions are terminated (for an image without a shell), and the exec is
/// awaited.
async fn end_exec(
    docker: Docker,
    container: Container,
    server_target: DbTarget,
    exec_id: String,
    marker: String,
) -> Result<()> {
    let running = |docker: &Docker| {
        let exec_id = exec_id.clone();
        let docker = docker.clone();
        async move {
            docker
                .inspect_exec(&exec_id)
                .await
                .map(|info| info.running == Some(true))
                .unwrap_or(false)
        }
    };
    if !running(&docker).await {
        return Ok(());
    }
    let script = format!(
        "for d in /proc/[0-9]*; do \
           if tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx 'PGAPPNAME={marker}'; \
           then kill -TERM \"${{d#/proc/}}\" 2>/dev/null; fi; \
         done; true"
    );
    if let Err(err) = run_detached(&docker, &container.id, script).await {
        tracing::debug!("could not signal {marker} in {}: {err:#}", container.name);
    }
    let deadline = std::time::Instant::now() + END_EXEC_TIMEOUT;
    loop {
        if let Ok(session) = server_target.connect_maintenance().await {
            let _ = session
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&marker],
                )
                .await;
        }
        if !running(&docker).await {
            tracing::info!("ended the cancelled tool in container {}", container.name);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "a tool run by exec in container {} is still running; \
                 end the processes with PGAPPNAME={marker} there",
                container.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Runs a shell script in the container without attaching to it, and
/// waits (briefly) for it to end.
async fn run_detached(docker: &Docker, container_id: &str, script: String) -> Result<()> {
    let exec = docker
        .create_exec(
            container_id,
            ExecConfig {
                cmd: Some(vec!["sh".into(), "-c".into(), script]),
                ..Default::default()
            },
        )
        .await?;
    docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await?;
    for _ in 0..100 {
        if docker.inspect_exec(&exec.id).await?.running != Some(true) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bail!("the script did not end")
}

#[async_trait]
impl PgServer for DockerServer {
    fn target(&self) -> &DbTarget {
        &self.target
    }

    /// `df` inside the container: its view of the volume under `path`.
    async fn free_bytes(&self, path: &str) -> Result<Option<u64>> {
        let mut process = self
            .exec(
                vec!["df".into(), "-P".into(), "-k".into(), path.to_string()],
                Vec::new(),
                false,
                None,
            )
            .await?;
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut process.take_stdout(), &mut text).await?;
        process.wait().await?;
        Ok(super::parse_df_available(&text))
    }

    fn describe_tools(&self) -> String {
        format!("tools inside container {}", self.container.name)
    }

    fn temp_dir(&self) -> PathBuf {
        self.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    fn engine(&self) -> Option<&Docker> {
        Some(&self.docker)
    }

    async fn spawn(&self, command: ToolCommand) -> Result<ToolProcess> {
        if let Transport::Pipe { fallback } = self.dump_transport
            && command.bulk_output
            && !command.stdin
        {
            let env = self
                .exec_env(&command)
                .into_iter()
                .filter(|var| !var.starts_with("PGPASSWORD="))
                .collect();
            let password = self.target.password();
            match docker_pipe::spawn(
                &self.docker,
                &self.container,
                self.temp_dir.as_deref(),
                env,
                password.as_deref(),
                &command,
            )
            .await
            {
                Ok(process) => return Ok(process),
                Err(PipeError::NothingDelivered(err)) if fallback => {
                    tracing::warn!(
                        "the helper container could not dump ({err:#}); \
                         streaming through docker exec instead (set docker.transport: exec \
                         to skip this attempt)"
                    );
                }
                Err(err) => return Err(err.into()),
            }
        }
        let mut cmd = vec![command.tool.program().to_string()];
        cmd.extend(command.args.iter().cloned());
        self.exec(
            cmd,
            self.exec_env(&command),
            command.stdin,
            command.stderr_lines.clone(),
        )
        .await
    }

    async fn stage_archive(&self, archive: BoxReader, size: u64) -> Result<StagedArchive> {
        let dir = format!("tusk-restore-{}", crate::names::random_hex());
        let path = format!("{STAGED_PARENT}/{dir}/database.dump");

        let mut dir_header = tar::Header::new_gnu();
        dir_header.set_path(format!("{dir}/"))?;
        dir_header.set_entry_type(tar::EntryType::Directory);
        dir_header.set_mode(0o700);
        dir_header.set_size(0);
        dir_header.set_cksum();
        // Names the run that staged it, for the janitor should it be killed.
        let creator = Creator::current().record();
        let mut creator_header = tar::Header::new_gnu();
        creator_header.set_path(format!("{dir}/{STAGED_CREATOR_FILE}"))?;
        creator_header.set_mode(0o600);
        creator_header.set_size(creator.len() as u64);
        creator_header.set_cksum();
        let mut file_header = tar::Header::new_gnu();
        file_header.set_path(format!("{dir}/database.dump"))?;
        file_header.set_mode(0o600);
        file_header.set_size(size);
        file_header.set_cksum();
        let padding = (512 - size % 512) % 512;
        let mut head = Vec::with_capacity(2048);
        head.extend_from_slice(dir_header.as_bytes());
        head.extend_from_slice(creator_header.as_bytes());
        head.extend_from_slice(creator.as_bytes());
        head.resize(head.len().next_multiple_of(512), 0);
        head.extend_from_slice(file_header.as_bytes());
        let tail = vec![0u8; padding as usize + 1024];

        let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(ReaderStream::with_capacity(archive, 1 << 20))
            .chain(futures_util::stream::once(
                async move { Ok(Bytes::from(tail)) },
            ));

        // Registered before the upload, so a failed upload is cleaned up too.
        let docker = self.docker.clone();
        let container = self.container.clone();
        let login = self.target.clone();
        let remove_dir = format!("{STAGED_PARENT}/{dir}");
        let cleanup = cleanup::defer(
            format!("remove {remove_dir} in {}", container.name),
            move || async move {
                let server = DockerServer::new(docker, container, &login)?;
                server
                    .exec_simple(vec!["rm".into(), "-rf".into(), remove_dir])
                    .await
            },
        );
        self.docker
            .upload_to_container(
                &self.container.id,
                Some(UploadToContainerOptions {
                    path: STAGED_PARENT.into(),
                    ..Default::default()
                }),
                bollard::body_try_stream(body),
            )
            .await
            .with_context(|| {
                format!(
                    "could not copy the dump into container {}",
                    self.container.name
                )
            })?;
        Ok(StagedArchive {
            path,
            local_file: None,
            cleanup,
        })
    }

    async fn staged_archives_elsewhere(&self) -> Result<Vec<(String, Creator)>> {
        let script = format!(
            "for f in {STAGED_PARENT}/tusk-restore-*/{STAGED_CREATOR_FILE}; do \
               [ -f \"$f\" ] && echo \"${{f%/{STAGED_CREATOR_FILE}}} $(cat \"$f\")\"; \
             done; true"
        );
        let mut process = self
            .exec(
                vec!["sh".into(), "-c".into(), script],
                Vec::new(),
                false,
                None,
            )
            .await?;
        let mut listing = String::new();
        process
            .take_stdout()
            .read_to_string(&mut listing)
            .await
            .context("could not list the staged archives")?;
        process.wait().await?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let (dir, record) = line.split_once(' ')?;
                let staged = dir.starts_with(&format!("{STAGED_PARENT}/tusk-restore-"));
                Some((
                    dir.to_string(),
                    Creator::from_record(record).filter(|_| staged)?,
                ))
            })
            .collect())
    }

    async fn remove_staged_archive(&self, path: &str) -> Result<()> {
        if !path.starts_with(&format!("{STAGED_PARENT}/tusk-restore-")) || path.contains("..") {
            bail!("{path} is not a staged archive");
        }
        self.exec_simple(vec!["rm".into(), "-rf".into(), path.to_string()])
            .await
            .with_context(|| format!("could not remove {path} in {}", self.container.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_needs_a_local_engine_and_auto_may_fall_back() {
        use DumpTransport::*;
        let choose = |setting, local| Transport::choose(setting, local).ok();
        assert_eq!(choose(Auto, true), Some(Transport::Pipe { fallback: true }));
        assert_eq!(choose(Auto, false), Some(Transport::Exec));
        assert_eq!(
            choose(Pipe, true),
            Some(Transport::Pipe { fallback: false })
        );
        assert_eq!(choose(Pipe, false), None);
        assert_eq!(choose(Exec, true), Some(Transport::Exec));
        let err = Transport::choose(Pipe, false).unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&err),
            std::process::ExitCode::from(crate::error::EXIT_USAGE)
        );
    }

    #[test]
    fn tools_in_the_container_get_the_login_but_no_tls_settings() {
        let login = DbTarget::parse(
            "postgresql://mastodon:pw@db.example/mastodon?sslmode=verify-full&sslrootcert=/host/ca.pem",
        )
        .unwrap();
        let docker = Docker::connect_with_local_defaults().unwrap();
        let container = Container {
            id: "c0ffee".into(),
            name: "db".into(),
            image: "postgres:15".into(),
            project: None,
            working_dir: None,
            address: Some("172.17.0.2".into()),
        };
        let server = DockerServer::new(docker, container, &login).unwrap();
        let env = server.exec_env(&ToolCommand::new(crate::postgres::Tool::PgDump));
        assert!(env.contains(&"PGUSER=mastodon".to_string()), "{env:?}");
        assert!(
            env.iter()
                .all(|var| !var.starts_with("PGSSL") && !var.starts_with("PGHOST")),
            "{env:?}"
        );
        // tusk's own sessions to the container's address: libpq's default.
        assert_eq!(server.target.tls(), &crate::postgres::TlsOptions::default());
    }
}
