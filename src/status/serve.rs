//! `tusk status --listen ADDR`: an HTTP endpoint for Prometheus, so tusk
//! can stand in for a Sidekiq exporter container. `GET /metrics` reads a
//! fresh report per scrape (each source has its deadline, so a slow Redis
//! makes its `_up` gauge 0 instead of hanging the scrape); `GET /healthz`
//! answers `ok` while the server runs. Every connection is driven inside
//! the server's own future, so dropping it (the binary does on SIGINT,
//! SIGTERM or SIGHUP) closes the listener and every connection at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Renders the metrics page once.
pub type Snapshot<'a> = &'a (dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send + 'a>> + Sync);

/// The Content-Type of Prometheus' text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client gets this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address` (`127.0.0.1:9394`, `[::1]:9394`).
pub async fn bind(address: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address}"))
}

/// Serves `/metrics` and `/healthz` on `listener` until dropped.
pub async fn serve(listener: TcpListener, snapshot: Snapshot<'_>) -> Result<()> {
    let mut connections = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("could not accept a connection: {err}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let service = hyper::service::service_fn(move |request| async move {
                    Ok::<_, Infallible>(answer(request, snapshot).await)
                });
                connections.push(async move {
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(err) = served {
                        tracing::debug!("connection from {peer}: {err}");
                    }
                });
            }
            Some(()) = connections.next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(request: Request<Incoming>, snapshot: Snapshot<'_>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "only GET\n".to_string(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, METRICS_TYPE, snapshot().await),
        "/healthz" => reply(StatusCode::OK, text, "ok\n".to_string()),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body><h1>tusk status</h1><p><a href=\"/metrics\">/metrics</a></p>\
             </body></html>\n"
                .to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n".to_string()),
    }
}
