//! A command run in a container through the Engine's exec API, with its
//! output as a stream: the container's side of [`crate::process::spawn_local`].

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::cleanup;
use crate::process::{BoxReader, BoxWriter, STDERR_TAIL, StderrCollector, ToolExit, ToolProcess};

/// Read buffer for an exec's multiplexed output stream.
const OUTPUT_CAPACITY: usize = 1 << 20;

/// What to run in the container.
pub struct ExecRequest {
    /// Names the process in messages: `redis-cli (in container redis)`.
    pub label: String,
    pub cmd: Vec<String>,
    /// `KEY=value` pairs: secrets go here, never into `cmd`.
    pub env: Vec<String>,
    /// Whether the caller writes to the process's stdin.
    pub stdin: bool,
    /// Receives every stderr line as it comes.
    pub stderr_lines: Option<mpsc::UnboundedSender<String>>,
}

/// Starts `request` in the container. `ender` gets the exec's id and
/// returns the cleanup that ends the process should tusk stop before it
/// does (the Engine lets an exec run on when its client is gone); it is
/// dismissed once the process has ended by itself.
pub async fn spawn(
    docker: &Docker,
    container_id: &str,
    request: ExecRequest,
    ender: impl FnOnce(String) -> cleanup::Deferred,
) -> Result<ToolProcess> {
    let ExecRequest {
        label,
        cmd,
        env,
        stdin,
        stderr_lines,
    } = request;
    let exec = docker
        .create_exec(
            container_id,
            ExecConfig {
                attach_stdin: Some(stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                env: Some(env),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("could not start {label}"))?;
    let ender = ender(exec.id.clone());
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(OUTPUT_CAPACITY),
            }),
        )
        .await
        .with_context(|| format!("could not start {label}"))?;
    let StartExecResults::Attached { mut output, input } = started else {
        bail!("the Docker Engine did not attach to {label}");
    };

    // Demultiplex: stdout into a bounded channel (backpressure reaches
    // the Engine), stderr into a buffer for the error message.
    let (stdout_tx, mut stdout_rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let mut stderr = StderrCollector::new(stderr_lines, STDERR_TAIL);
    let pump = tokio::spawn(async move {
        let mut reader_gone = false;
        while let Some(item) = output.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    if !reader_gone && stdout_tx.send(Ok(message)).await.is_err() {
                        reader_gone = true;
                    }
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    stderr.push(&message);
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = stdout_tx
                        .send(Err(std::io::Error::other(err.to_string())))
                        .await;
                    break;
                }
            }
        }
        stderr.finish()
    });
    // Dropped unfinished (the run was cancelled), the connection closes,
    // which closes the process's stdin.
    let pump_guard = AbortOnDrop(pump.abort_handle());
    let stdout_stream = futures_util::stream::poll_fn(move |cx| stdout_rx.poll_recv(cx));
    let stdout: BoxReader = Box::new(StreamReader::new(stdout_stream));
    let stdin = stdin.then(|| Box::new(input) as BoxWriter);

    let docker = docker.clone();
    let exec_id = exec.id;
    let exit = async move {
        let _pump_guard = pump_guard;
        let stderr = pump.await.unwrap_or_default();
        // The stream ends when the process closes its output; the exit
        // code is recorded a moment later.
        for _ in 0..200 {
            let info = docker.inspect_exec(&exec_id).await?;
            if info.running != Some(true) {
                ender.dismiss();
                if !stderr.trim().is_empty() {
                    tracing::debug!(target: "tusk::tools", "{}", stderr.trim_end());
                }
                return Ok(ToolExit {
                    code: info.exit_code.unwrap_or(-1),
                    stderr,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        bail!("the exec did not finish after its output ended")
    };
    Ok(ToolProcess::new(label, stdin, stdout, exit))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
