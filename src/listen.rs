//! Serving the service's HTTP endpoints (the API, the admin endpoints) so
//! that no client can take the service down: at most `max_connections`
//! connections at once (more wait in the kernel's backlog, holding no file
//! descriptor of ours, so fetches are never starved of descriptors by a
//! listener), headers read within `header_timeout` (hyper's
//! `header_read_timeout`: a slowloris client is cut off), and each request,
//! its body included, handled within `request_timeout` (tower-http's
//! `TimeoutLayer`, answering 408).
//!
//! axum's own `serve` offers none of these knobs, so connections are served
//! with hyper's HTTP/1 connection builder, as axum's "serve with hyper"
//! example does.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How much of the process one listener may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for a client to send a request's headers.
    pub header_timeout: Duration,
    /// Time to handle one request, reading its body included.
    pub request_timeout: Duration,
}

impl ListenLimits {
    /// The admin endpoints': scrapes and health checks are small and quick.
    pub const ADMIN: Self = Self {
        max_connections: 32,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
    };
}

/// Binds `addr` for the listener configured as `key` (`admin.listen`,
/// `api.listen`), so that a taken address fails the start, before anything
/// runs, with an error that names the key.
///
/// Errors: the address cannot be bound.
pub async fn bind(key: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("{key} {addr}: {e}")))
}

/// How long to wait after an accept fails (out of descriptors, say) before
/// accepting again, as axum's `serve` does.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` within `limits` until `stop`; requests under
/// way then finish (within `request_timeout`).
///
/// Errors: none so far (accept errors are logged and retried); the type
/// leaves room for the supervisor.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // Take a connection only when there is room for it.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (service, stop) = (TowerToHyperService::new(app.clone()), stop.clone());
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
