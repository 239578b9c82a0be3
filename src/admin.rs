//! The admin HTTP server (hyper 1.x) on `admin.listen`.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text format
//! - `GET /healthz`: 200 while the process runs
//! - `GET /readyz`: 200 while listeners serve, 503 before and while stopping
//! - `GET /status`: the facts of `baton status`, as JSON
//!
//! Unknown paths answer 404, other methods on known paths 405.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::state::State;
use crate::status::StatusSource;

/// What admin reads: the metrics, the published state, the status. Never
/// the app.
#[derive(Clone)]
pub struct AdminContext {
    pub proxy: Arc<Proxy>,
    pub state: tokio::sync::watch::Receiver<State>,
    pub status: Arc<dyn StatusSource>,
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long open admin connections get to finish when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves until `stop` fires, then lets open requests finish (bounded) and
/// closes idle keep-alive connections.
pub async fn serve(listener: TcpListener, context: AdminContext, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let context = context.clone();
        let service = hyper::service::service_fn(move |req| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(answer(&context, &req)) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

fn answer(context: &AdminContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let body = context.proxy.metrics.encode();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(PROMETHEUS_TEXT),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match *context.state.borrow() {
            state if state.accepting() => text(StatusCode::OK, "ready\n"),
            other => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}\n", other.as_str()),
            ),
        },
        _ => {
            let body = serde_json::to_vec_pretty(&context.status.status())
                .expect("status serializes: it holds only strings and numbers");
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
