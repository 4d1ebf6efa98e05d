//! Telling the outside world how a run went, for the nights nobody reads
//! cron's mail: a JSON POST to `notify.url` when a run fails (and when it
//! succeeds, with `notify.on_success`), and healthchecks.io-style pings to
//! `notify.ping_url` (`<url>/start` when the run starts, `<url>` on success,
//! `<url>/fail` with the last log lines on failure).
//!
//! A notification that cannot be delivered is logged as a warning and never
//! changes the run's outcome: a good backup stays good when the alerting
//! service is down. The binary wraps a command's operation between
//! [`Notifier::start`] and [`Notifier::finish`]; any command can opt in.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::http::{self, HttpClient};
use crate::output::LogTail;

/// The `notify:` settings, resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NotifySettings {
    /// Receives a JSON POST on failure (and success with `on_success`).
    pub url: Option<String>,
    pub on_success: bool,
    /// healthchecks.io-style check URL: `/start`, success, `/fail`.
    pub ping_url: Option<String>,
    /// Per request; a slow alerting service must not hold up cron.
    pub timeout: Duration,
}

impl NotifySettings {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Sends the notifications of the runs of one tusk process.
pub struct Notifier {
    settings: NotifySettings,
    /// `None` when nothing is configured (or the client could not be built).
    client: Option<HttpClient>,
    instance: String,
    log_tail: LogTail,
}

/// A run between [`Notifier::start`] and [`Notifier::finish`].
pub struct StartedRun {
    command: String,
    started_at: DateTime<Utc>,
}

/// What a run produced, as far as it got.
#[derive(Debug, Clone, Default)]
pub struct RunDetails {
    pub set_id: Option<String>,
    /// A backup's set size; the verified set's size for verify.
    pub bytes: Option<u64>,
    /// Seconds per stage, as the operation's report has them.
    pub durations: BTreeMap<String, f64>,
}

/// The JSON body POSTed to `notify.url`.
#[derive(Debug, Serialize)]
pub struct Notification {
    /// `success` or `failure`.
    pub event: &'static str,
    pub command: String,
    pub instance: String,
    pub host: String,
    pub set_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub durations: BTreeMap<String, f64>,
    pub bytes: Option<u64>,
    /// The error, one line per cause; `null` on success.
    pub error: Option<String>,
    /// tusk's exit code for this run (docs/exit-codes.md).
    pub exit_code: u8,
    pub tusk_version: &'static str,
}

impl Notifier {
    pub fn new(settings: NotifySettings, instance: String, log_tail: LogTail) -> Self {
        let wanted = settings.url.is_some() || settings.ping_url.is_some();
        let client = match wanted.then(|| HttpClient::new(settings.timeout)) {
            Some(Ok(client)) => Some(client),
            Some(Err(err)) => {
                tracing::warn!("notifications are off: {err:#}");
                None
            }
            None => None,
        };
        Notifier {
            settings,
            client,
            instance,
            log_tail,
        }
    }

    /// Marks the start of `command`: pings `<ping_url>/start`.
    pub async fn start(&self, command: &str) -> StartedRun {
        let run = StartedRun {
            command: command.to_string(),
            started_at: Utc::now(),
        };
        if let (Some(client), Some(ping)) = (&self.client, &self.settings.ping_url) {
            deliver(client, &ping_url(ping, "/start"), "text/plain", Vec::new()).await;
        }
        run
    }

    /// Reports how `run` ended: the ping, and the POST on failure (or on
    /// success with `on_success`). Never fails: a delivery problem is a
    /// warning in the log.
    pub async fn finish(
        &self,
        run: StartedRun,
        details: RunDetails,
        outcome: Result<(), &anyhow::Error>,
    ) {
        let Some(client) = &self.client else {
            return;
        };
        let notification = self.notification(run, details, outcome);
        let failed = notification.error.is_some();
        let ping = async {
            let Some(ping) = &self.settings.ping_url else {
                return;
            };
            let (url, body) = match &notification.error {
                None => (ping_url(ping, ""), self.success_line(&notification)),
                Some(error) => {
                    // The error itself is logged only after the command
                    // returns, so it is added to the lines logged so far.
                    let mut lines = self.log_tail.lines();
                    lines.push(format!("error: {error}"));
                    (ping_url(ping, "/fail"), lines.join("\n") + "\n")
                }
            };
            deliver(client, &url, "text/plain; charset=utf-8", body.into_bytes()).await;
        };
        let post = async {
            let Some(url) = &self.settings.url else {
                return;
            };
            if failed || self.settings.on_success {
                match serde_json::to_vec(&notification) {
                    Ok(json) => deliver(client, url, "application/json", json).await,
                    Err(err) => tracing::warn!("could not encode the notification: {err}"),
                }
            }
        };
        tokio::join!(ping, post);
    }

    fn notification(
        &self,
        run: StartedRun,
        details: RunDetails,
        outcome: Result<(), &anyhow::Error>,
    ) -> Notification {
        let finished_at = Utc::now();
        let (event, error, exit_code) = match outcome {
            Ok(()) => ("success", None, 0),
            Err(err) => (
                "failure",
                Some(format!("{err:#}")),
                crate::error::exit_status_for(err),
            ),
        };
        Notification {
            event,
            command: run.command,
            instance: self.instance.clone(),
            host: crate::creator::Creator::current().host.clone(),
            set_id: details.set_id,
            started_at: run.started_at,
            finished_at,
            duration_seconds: (finished_at - run.started_at).num_milliseconds() as f64 / 1000.0,
            durations: details.durations,
            bytes: details.bytes,
            error,
            exit_code,
            tusk_version: env!("CARGO_PKG_VERSION"),
        }
    }

    fn success_line(&self, notification: &Notification) -> String {
        let mut line = format!(
            "tusk {} on {} ok in {:.1}s",
            notification.command, notification.instance, notification.duration_seconds
        );
        if let Some(id) = &notification.set_id {
            line.push_str(&format!(": {id}"));
        }
        if let Some(bytes) = notification.bytes {
            line.push_str(&format!(", {bytes} bytes"));
        }
        line + "\n"
    }
}

/// `<base>` + `suffix`, whether or not the configured URL ends in `/`.
fn ping_url(base: &str, suffix: &str) -> String {
    format!("{}{suffix}", base.trim_end_matches('/'))
}

async fn deliver(client: &HttpClient, url: &str, content_type: &str, body: Vec<u8>) {
    match client.post(url, content_type, body).await {
        Ok(()) => tracing::debug!("notified {}", http::redact(url)),
        Err(err) => tracing::warn!(
            "could not notify {}: {err:#} (the run's outcome stands)",
            http::redact(url)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_urls_take_their_suffix_with_one_slash() {
        assert_eq!(
            ping_url("https://hc-ping.com/abc/", "/fail"),
            "https://hc-ping.com/abc/fail"
        );
        assert_eq!(
            ping_url("https://hc-ping.com/abc", ""),
            "https://hc-ping.com/abc"
        );
    }

    #[test]
    fn a_failure_carries_its_error_and_exit_code() {
        let notifier = Notifier::new(
            NotifySettings::default(),
            "social.example".into(),
            LogTail::new(5),
        );
        let run = StartedRun {
            command: "backup".into(),
            started_at: Utc::now(),
        };
        let err = crate::error::TuskError::Locked("held".into());
        let err = anyhow::Error::from(err).context("could not start");
        let notification = notifier.notification(run, RunDetails::default(), Err(&err));
        assert_eq!(notification.event, "failure");
        assert_eq!(notification.exit_code, crate::error::EXIT_LOCKED);
        assert_eq!(notification.error.as_deref(), Some("could not start: held"));
        assert_eq!(notification.instance, "social.example");
    }
}
