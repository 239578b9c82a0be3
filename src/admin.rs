//! The admin HTTP server (hyper 1.x) on `admin.listen`.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text format
//! - `GET /healthz`: 200 while the process runs
//! - `GET /readyz`: 200 while listeners serve, 503 before and while stopping
//! - `GET /status`: the facts of `baton status`, as JSON
//!
//! Unknown paths answer 404, other methods on known paths 405.
//!
//! Under abuse: at most `admin.max_connections` open at once (past it a
//! connection is accepted and closed at once), no keep-alive once half of
//! them are in use (an answered client gives its place back), a request
//! must arrive within 10 s, and a response the client does not take within
//! 10 s is abandoned.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
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
/// How long a client may take to send a request, and to take a response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `stop` fires, then lets open requests finish (bounded) and
/// closes idle keep-alive connections.
pub async fn serve(listener: TcpListener, context: AdminContext, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    let open = Arc::new(AtomicUsize::new(0));
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
        let max = context.proxy.snapshot.load().config.admin_max_connections;
        let in_use = open.load(Ordering::Acquire);
        if in_use >= max {
            tracing::debug!(max, "admin.max_connections reached: connection closed");
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let place = Place(open.clone());
        let mut builder = http.clone();
        builder.keep_alive(in_use < max / 2);
        let context = context.clone();
        let service = hyper::service::service_fn(move |req| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(answer(&context, &req)) }
        });
        let io = TokioIo::new(WriteDeadline::new(stream));
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// One admin connection's place in the count.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection whose writes fail once they have waited [`CLIENT_TIMEOUT`]
/// for a client that does not read: the answer is abandoned, not held.
struct WriteDeadline {
    stream: TcpStream,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: TcpStream) -> WriteDeadline {
        WriteDeadline {
            stream,
            waiting: None,
        }
    }

    /// `poll` of the inner write, with the deadline running while it waits.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll(Pin::new(&mut self.stream), cx) {
            Poll::Ready(r) => {
                self.waiting = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let sleep = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLIENT_TIMEOUT)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client did not take the response",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().deadline(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().deadline(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().deadline(cx, |s, cx| s.poll_shutdown(cx))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_never_takes_is_abandoned() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut writer = WriteDeadline::new(server);
        let chunk = vec![0u8; 64 * 1024];
        // The client never reads: the buffers fill, then the write waits
        // until the deadline passes (the paused clock jumps to it).
        let result: std::io::Result<()> = async {
            loop {
                writer.write_all(&chunk).await?;
            }
        }
        .await;
        let e = result.expect_err("the write gives up");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
    }
}
