//! Plain HTTP(S) requests out of tusk: notifications, health-check pings,
//! Mastodon's admin API and shared blocklists all go through the one client
//! built here.
//!
//! reqwest over rustls with the aws-lc-rs provider and the system's CA
//! certificates, the TLS stack the AWS SDK already builds. Every request has
//! a deadline; what to do with an error is the caller's business.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// What tusk calls itself in requests.
const USER_AGENT: &str = concat!("tusk/", env!("CARGO_PKG_VERSION"));

/// A reqwest client whose requests each end within `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    // Without any CA certificate only https fails, with an error that says
    // so; plain http still works.
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("could not set up TLS for HTTP requests")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .build()
        .context("could not set up the HTTP client")
}

/// A client for short fire-and-forget requests (notifications, pings).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Result<Self> {
        Ok(HttpClient {
            client: client(timeout)?,
            timeout,
        })
    }

    /// POSTs `body` to `url`; an error unless the answer is 2xx within the
    /// timeout.
    pub async fn post(&self, url: &str, content_type: &str, body: Vec<u8>) -> Result<()> {
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    anyhow!("no answer within {}s", self.timeout.as_secs())
                } else if err.is_builder() {
                    anyhow!("{} is not a usable URL", redact(url))
                } else {
                    anyhow!("{}", error_chain(&err))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            bail!("answered {status}");
        }
        Ok(())
    }
}

/// An HTTP client's errors say little at the top ("error sending
/// request"); the causes underneath say what happened ("Connection
/// refused").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// A URL fit for a log line: ping and webhook URLs carry their secret in
/// the path, so only the scheme and host are shown.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match parsed.host_str() {
            Some(host) => match parsed.port() {
                Some(port) => format!("{}://{host}:{port}/…", parsed.scheme()),
                None => format!("{}://{host}/…", parsed.scheme()),
            },
            None => "(a URL without scheme or host)".into(),
        },
        Err(_) => "(an unparsable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_scheme_and_host_only() {
        assert_eq!(
            redact("https://hc-ping.com/0f7c-secret-uuid"),
            "https://hc-ping.com/…"
        );
        assert_eq!(
            redact("http://user:pass@127.0.0.1:8080/hook?token=x"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact("not a url"), "(an unparsable URL)");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_that_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let err = client
            .post(&format!("http://127.0.0.1:{port}/x"), "text/plain", vec![])
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }
}
