//! What only the service (`trawler run`) has beside the crawl's pipeline:
//! the admin endpoints and the HTTP API, the frontier gauges, the recrawl
//! sweep, `SIGHUP` reloads and systemd's watchdog. Each is a task on the
//! crawl's supervised tracker, ended by the crawl's side token.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::api::{self, Api};
use crate::config::Config;
use crate::error::CrawlError;
use crate::frontier::requeue_due;
use crate::job::UrlState;
use crate::politeness::Politeness;
use crate::reload::{Live, Reloader};
use crate::stats::CrawlStats;
use crate::store::{Backend, Store, StoreError};
use crate::systemd::{self, Heartbeat};
use crate::tasks::Tasks;

/// How often the service looks for URLs due for a recrawl (one index probe).
const RECRAWL_EVERY: Duration = Duration::from_secs(1);

/// The service's parts that can fail to start (addresses bound, the metrics
/// recorder installed), ready to be spawned.
pub(crate) struct Service {
    store: Arc<Backend>,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    admin: tokio::net::TcpListener,
    /// The API's bound address, when `api.listen` is set.
    api: Option<tokio::net::TcpListener>,
    api_config: crate::config::ApiConfig,
    reloader: Option<Reloader>,
}

impl Service {
    /// Installs the metrics recorder and binds the admin and API addresses,
    /// so that a taken port fails the start.
    ///
    /// Errors: an address does not parse or cannot be bound, or a recorder
    /// is installed already.
    pub(crate) async fn bind(
        config: &Config,
        store: &Arc<Backend>,
        tasks: &Tasks,
        reloader: Option<Reloader>,
    ) -> Result<Self, CrawlError> {
        let admin = admin::bind(config.admin.listen).await?;
        let api = match config.api.listen {
            Some(listen) => Some(api::bind(listen).await?),
            None => None,
        };
        let metrics = admin::install_recorder().map_err(CrawlError::Config)?;
        let health = Arc::new(Health {
            ready: Default::default(),
            failed: tasks.failed_flag(),
            lock_waits: store.lock_waits(),
            outage: store.outage(),
        });
        let api_config = config.api.clone();
        Ok(Self { store: store.clone(), health, metrics, admin, api, api_config, reloader })
    }

    /// Starts the service's tasks on `tasks`, all ending with `done`, and
    /// reports the service ready on `/readyz`.
    pub(crate) fn spawn(
        self,
        tasks: &Tasks,
        live: Live,
        stats: &Arc<CrawlStats>,
        politeness: &Arc<Politeness>,
        beats: [Arc<Heartbeat>; 2],
        done: &CancellationToken,
    ) {
        let (store, wake, notifier) = (self.store, live.wake.clone(), live.notifier.clone());
        tasks.spawn(
            "admin endpoints",
            admin::serve(self.admin, self.metrics, self.health.clone(), done.clone()),
        );
        if let Some(listener) = self.api {
            let api = Api {
                store: store.clone(),
                wake: wake.clone(),
                stats: stats.clone(),
                strip_query_params: live.config.discovery.strip_query_params.clone(),
            };
            let (config, done) = (self.api_config, done.clone());
            tasks.spawn("API", async move { api::serve(listener, api, &config, done).await });
        }
        tasks.spawn_infallible(
            "gauges",
            refresh_gauges(store.clone(), stats.clone(), politeness.clone(), done.clone()),
        );
        tasks.spawn("recrawl sweep", recrawl_due(store.clone(), stats.clone(), wake, done.clone()));
        if let Some(reloader) = self.reloader {
            tasks.spawn_infallible("reload", reloader.run(live, done.clone()));
        }
        let pause = store.known_pause();
        let excused = move || pause.now();
        tasks.spawn_infallible("watchdog", systemd::watchdog(notifier, beats.into(), excused, done.clone()));
        self.health.ready.store(true, Ordering::SeqCst);
    }
}

/// Refreshes the frontier gauges every [`admin::GAUGE_EVERY`] until `done`.
async fn refresh_gauges(
    store: Arc<Backend>,
    stats: Arc<CrawlStats>,
    politeness: Arc<Politeness>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(admin::GAUGE_EVERY);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(counts) = store.counts().await {
            for state in UrlState::ALL {
                metrics::gauge!("trawler_frontier_urls", "state" => state.as_str())
                    .set(counts.of(state) as f64);
            }
        }
        metrics::gauge!("trawler_in_flight").set(CrawlStats::get(&stats.working) as f64);
        metrics::gauge!("trawler_claimed").set(CrawlStats::get(&stats.outstanding) as f64);
        let backoff = politeness.hosts_in_backoff(tokio::time::Instant::now());
        metrics::gauge!("trawler_hosts_in_backoff").set(backoff as f64);
        let age = match store.oldest_lease_ms().await {
            Ok(Some(at)) => (crate::clock::now_ms() - at).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        metrics::gauge!("trawler_oldest_lease_seconds").set(age);
        if let Some(coordination) = store.coordination()
            && let Ok(health) = coordination.queue_health().await
        {
            for (table, dead) in health.dead_tuples {
                metrics::gauge!("trawler_pg_dead_tuples", "table" => table).set(dead as f64);
            }
            metrics::gauge!("trawler_pg_oldest_transaction_seconds").set(health.oldest_transaction_s);
        }
    }
}

/// The service's recrawl loop: every [`RECRAWL_EVERY`], due URLs go back in
/// the frontier and the producer is woken.
///
/// Errors: a store failure (a locked database, and one away within
/// `store.outage_grace`, are waited out by the store).
async fn recrawl_due(
    store: Arc<Backend>,
    stats: Arc<CrawlStats>,
    wake: Arc<Notify>,
    done: CancellationToken,
) -> Result<(), StoreError> {
    let mut tick = tokio::time::interval(RECRAWL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let n = requeue_due(&store).await?;
        if n > 0 {
            tracing::debug!(urls = n, "due for a recrawl: back in the frontier");
            metrics::counter!("trawler_recrawls_total").increment(n);
            stats.reopened(n);
            wake.notify_one();
        }
    }
}
