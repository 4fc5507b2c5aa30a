//! The service's admin HTTP server (`trawler run`, `admin.listen`, default
//! 127.0.0.1:9187): Prometheus metrics at `/metrics` (the `metrics` crate's
//! facade, rendered by `metrics-exporter-prometheus`), `/healthz` (alive:
//! no task has failed, the database is not away, and writes have not been
//! waiting for a lock or a slow write for longer than `store.busy_warning`;
//! the 503's text says which) and `/readyz` (start-up finished).
//!
//! Metrics recorded by the crawl (names follow Prometheus conventions):
//! - `trawler_fetches_total{outcome, status}`: committed attempts by outcome
//!   (`done`, `retry`, `failed`) and status class (`2xx` ... `5xx`, `none`);
//! - `trawler_fetch_errors_total{kind}`: attempts by error kind;
//! - `trawler_requests_deferred_total`: requests not made for lack of file
//!   descriptors (their URLs requeued, no attempt counted);
//! - `trawler_fetch_duration_seconds`: attempt latency histogram;
//! - `trawler_body_bytes_total`: decoded body bytes read;
//! - `trawler_recrawls_total`: finished URLs put back by `recrawl_after`;
//! - `trawler_frontier_urls{state}`, `trawler_in_flight`,
//!   `trawler_hosts_in_backoff`, `trawler_oldest_lease_seconds`: gauges,
//!   refreshed every [`GAUGE_EVERY`];
//! - `trawler_wal_bytes` (gauge) and `trawler_wal_pinned_total`: the WAL left
//!   after each checkpoint, and checkpoints a reader kept from truncating it;
//! - on PostgreSQL, `trawler_pg_dead_tuples{table}` and
//!   `trawler_pg_oldest_transaction_seconds`: gauges of the queue tables'
//!   health (`store::PgStore::queue_health`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::store::{Blocker, LockWaits, Outage};

/// How often the gauges are refreshed from the store.
pub const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Latency buckets, in seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    /// Start-up finished: the database is open and recovered.
    pub ready: AtomicBool,
    /// Set when a task failed for good: the service is stopping.
    pub failed: Arc<AtomicBool>,
    /// How long the store's statements have waited, and for what.
    pub lock_waits: Arc<LockWaits>,
    /// Whether the database is away, since when and why.
    pub outage: Arc<Outage>,
}

/// Set once a recorder is installed. Without one the `metrics` macros are
/// no-ops, but building their labelled keys still costs on the hot path.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Whether metrics are being recorded (only `trawler run` installs a recorder).
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Installs the process-wide Prometheus recorder. Call once.
///
/// Errors: a recorder is already installed, or the buckets are invalid.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("trawler_fetch_duration_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .inspect(|_| RECORDING.store(true, Ordering::Relaxed))
        .map_err(|e| e.to_string())
}

/// Binds the admin address (`admin.listen`) before anything runs.
///
/// Errors: the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = crate::listen::bind("admin.listen", addr).await?;
    tracing::info!(address = %listener.local_addr()?, "admin endpoints: /metrics /healthz /readyz");
    Ok(listener)
}

/// Serves the admin endpoints on `listener` until `stop`.
///
/// Errors: accepting connections failed for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    crate::listen::serve(listener, app, crate::listen::ListenLimits::ADMIN, stop).await
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    if health.failed.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "a task failed: stopping\n".to_owned());
    }
    if let Some((down, cause)) = health.outage.describe() {
        let grace = humantime::format_duration(health.outage.grace());
        let text = format!(
            "database unreachable for {} s ({cause}); waiting for it up to store.outage_grace ({grace})\n",
            down.as_secs()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, text);
    }
    if health.lock_waits.is_stalled()
        && let Some((blocker, waited)) = health.lock_waits.waiting()
    {
        let text = match blocker {
            Blocker::AnotherProcess => {
                format!("database writes blocked by another process's lock for {} s\n", waited.as_secs())
            }
            Blocker::ThisProcess => format!(
                "database writes waiting {} s for a write of this process's own that is still running \
                 (a slow or hung disk?)\n",
                waited.as_secs()
            ),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, text);
    }
    (StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// The `status` label of an HTTP status: `2xx` ... `5xx`, or `none`.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}
