//! Plain HTTP(S) requests out of tusk: notifications and health-check pings.
//!
//! hyper with rustls and the system's CA certificates, the stack the AWS SDK
//! already builds. Every request has a deadline, and anything but a 2xx
//! answer is an error; what to do with an error is the caller's business.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for short requests, each bounded by `timeout`.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        // Without any CA certificate only https fails, with an error that
        // says so; plain http still works.
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("could not set up TLS for HTTP requests")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// POSTs `body` to `url`; an error unless the answer is 2xx within the
    /// timeout.
    pub async fn post(&self, url: &str, content_type: &str, body: Vec<u8>) -> Result<()> {
        let request = Request::post(url)
            .header(CONTENT_TYPE, content_type)
            .header(USER_AGENT, concat!("tusk/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("{} is not a usable URL", redact(url)))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read the answer to its end so the connection is reusable.
            let _ = response.into_body().collect().await;
            Ok::<_, anyhow::Error>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {}s", self.timeout.as_secs()))?
            .map_err(|err| anyhow!("{}", error_chain(&*err)))?;
        if !status.is_success() {
            bail!("answered {status}");
        }
        Ok(())
    }
}

/// hyper's errors say little at the top ("client error (Connect)"); the
/// cause underneath says what happened ("Connection refused").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
    match url.parse::<hyper::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}/…")
            }
            _ => "(a URL without scheme or host)".into(),
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
