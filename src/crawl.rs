//! One crawl from start to summary: open the store, recover, start the tasks,
//! wait for them in order, requeue what did not finish.
//!
//! ```text
//! seeds ─▶ store ─▶ producer ─▶ async_channel<Job> (bounded) ─▶ N workers
//!                                                                  │
//!           store ◀── writer (one transaction per batch) ◀── mpsc<Completion>
//! ```
//!
//! Teardown order is what makes a stop lose nothing: the producer ends (and
//! drops the job sender), the workers end (finishing or, on abort, dropping
//! their fetch), their completion senders drop, the writer drains and commits
//! the rest, and only then are URLs still in flight put back in the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Health};
use crate::api::{self, Api};
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::frontier::Producer;
use crate::links::Discovery;
use crate::politeness::{HostRules, Politeness};
use crate::reload::{Live, Reloader};
use crate::robots::Robots;
use crate::seeds::{IngestError, IngestReport, SeedSource, ingest};
use crate::shutdown::Shutdown;
use crate::sitemaps::{SitemapQueue, SitemapTask};
use crate::stats::{CrawlStats, Summary};
use crate::store::{PageLimits, SqliteStore, StateCounts, Store, StoreError};
use crate::systemd::Notifier;
use crate::worker::{RateLimit, WorkerContext};
use crate::{progress, worker, writer};

/// Completions buffered between workers and the writer.
const RESULTS_CAPACITY: usize = 8_192;

/// The least room in the job channel: with one fast host (no delay), the
/// producer claims up to this many per round.
const CHANNEL_MIN: usize = 512;

/// An operational failure: the crawl could not run or could not record.
/// (Failed fetches are not errors: they are rows in `attempts`.)
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Input(#[from] IngestError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("setting up the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid setting: {0}")]
    Config(String),
}

/// Runs a crawl of the store at `config.store.path`, first adding the URLs in
/// `seeds` (if any), until every URL is finished (returns the summary) or
/// `shutdown` stops it (the summary says `stopped`; unfinished URLs are queued
/// again for the next run).
///
/// Errors: [`CrawlError`] when the input cannot be read, the database cannot
/// be opened or written, or the HTTP client cannot be built.
pub async fn crawl(
    config: &Config,
    seeds: Option<SeedSource>,
    shutdown: &Shutdown,
) -> Result<Summary, CrawlError> {
    run(config, seeds, shutdown, Mode::Batch).await
}

/// Runs the crawler as a service: like [`crawl`] without input, but an empty
/// frontier does not end it; it waits for URLs that `trawler enqueue` (or
/// anything else) adds to the database, and sees them within a second. Ends
/// only when `shutdown` stops it.
///
/// Errors: as [`crawl`].
///
/// With `reloader`, `SIGHUP` reloads the configuration (see [`crate::reload`]).
pub async fn serve(
    config: &Config,
    shutdown: &Shutdown,
    reloader: Option<Reloader>,
) -> Result<Summary, CrawlError> {
    run(config, None, shutdown, Mode::Service(reloader)).await
}

/// A batch crawl ends when the frontier is empty; the service waits for more
/// work, serves its endpoints, recrawls and reloads.
enum Mode {
    Batch,
    Service(Option<Reloader>),
}

async fn run(
    config: &Config,
    seeds: Option<SeedSource>,
    shutdown: &Shutdown,
    mode: Mode,
) -> Result<Summary, CrawlError> {
    let started = Instant::now();
    let daemon = matches!(mode, Mode::Service(_));
    let input = match &seeds {
        Some(source) => Some(source.open().await?),
        None => None,
    };
    let store = Arc::new(SqliteStore::open(&config.store).await?);
    let health = Arc::new(Health::default());
    let admin_stop = CancellationToken::new();
    let admin = match daemon {
        true => Some(start_admin(config, &health, &admin_stop).await?),
        false => None,
    };
    let api = match (daemon, &config.api.listen) {
        (true, Some(listen)) => Some(api::bind(listen).await?),
        _ => None,
    };
    let service = match mode {
        Mode::Batch => None,
        Mode::Service(reloader) => Some(Service { health: health.clone(), reloader, api }),
    };
    let result = run_tasks(config, &store, seeds.zip(input), shutdown, started, service).await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Whatever happened, claims that did not finish go back to the queue.
    match store.requeue_in_flight().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(urls = n, "returned unfinished URLs to the frontier"),
        Err(e) => tracing::error!("could not requeue unfinished URLs: {e}"),
    }
    let mut summary = result?;
    summary.counts = store.counts().await?;
    store.close().await;
    Ok(summary)
}

/// Installs the metrics recorder and serves the admin endpoints.
async fn start_admin(
    config: &Config,
    health: &Arc<Health>,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CrawlError> {
    let addr: std::net::SocketAddr = config.admin.listen.parse().map_err(|_| {
        CrawlError::Config(format!("admin.listen {:?} is not an address and port", config.admin.listen))
    })?;
    let handle = admin::install_recorder().map_err(CrawlError::Config)?;
    admin::serve(addr, handle, health.clone(), stop.clone())
        .await
        .map_err(|e| CrawlError::Io(std::io::Error::new(e.kind(), format!("admin.listen {addr}: {e}"))))
}

/// Refreshes the frontier gauges every [`admin::GAUGE_EVERY`] until `done`.
async fn refresh_gauges(
    store: Arc<SqliteStore>,
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
            for (state, n) in [
                ("queued", counts.queued),
                ("in_flight", counts.in_flight),
                ("done", counts.done),
                ("failed", counts.failed),
            ] {
                metrics::gauge!("trawler_frontier_urls", "state" => state).set(n as f64);
            }
        }
        metrics::gauge!("trawler_in_flight").set(CrawlStats::get(&stats.outstanding) as f64);
        let backoff = politeness.hosts_in_backoff(tokio::time::Instant::now());
        metrics::gauge!("trawler_hosts_in_backoff").set(backoff as f64);
        let age = match store.oldest_lease_ms().await {
            Ok(Some(at)) => (crate::frontier::now_ms() - at).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        metrics::gauge!("trawler_oldest_lease_seconds").set(age);
    }
}

/// Adds the URLs read from `input` (named `source` in reports) to the
/// database, as `trawler enqueue` does. Works while a crawler owns the
/// database: then it opens it without the owner's lock
/// ([`SqliteStore::open_shared`]) and the crawler picks the URLs up within a
/// second.
///
/// Errors: the database cannot be opened or written, or the input read.
pub async fn enqueue(
    config: &Config,
    source: &SeedSource,
    input: impl tokio::io::AsyncRead + Unpin,
) -> Result<IngestReport, CrawlError> {
    let store = match SqliteStore::open(&config.store).await {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => SqliteStore::open_shared(&config.store).await?,
        Err(e) => return Err(e.into()),
    };
    let stats = Arc::new(CrawlStats::default());
    let report = ingest(&store, source, input, &CancellationToken::new(), &Notify::new(), &stats).await;
    store.close().await;
    Ok(report?)
}

/// The robots.txt cache, or `None` (with a loud warning) when told to ignore
/// it. When following links, its `Sitemap:` lines go to `sitemaps`.
fn robots(
    config: &Config,
    politeness: &Arc<Politeness>,
    sitemaps: &SitemapQueue,
) -> Result<Option<Robots>, CrawlError> {
    if !config.robots.obey {
        tracing::warn!(
            "robots.txt is IGNORED (robots.obey = false / --ignore-robots): only do this for sites you run"
        );
        return Ok(None);
    }
    let sitemaps = config.discovery.follow.then(|| sitemaps.clone());
    Ok(Some(Robots::new(config.robots.clone(), &config.fetch, politeness.clone(), sitemaps)?))
}

type Input = (SeedSource, Box<dyn tokio::io::AsyncRead + Send + Unpin>);

/// What only the service has.
struct Service {
    health: Arc<Health>,
    reloader: Option<Reloader>,
    /// The API's bound address, when `api.listen` is set.
    api: Option<tokio::net::TcpListener>,
}

/// URLs put back for a recrawl per statement.
const RECRAWL_BATCH: u32 = 10_000;

/// How often the service looks for URLs due for a recrawl (one index probe).
const RECRAWL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Puts every URL due for a recrawl back in the frontier, in batches.
/// Returns how many.
async fn requeue_due(store: &SqliteStore) -> Result<u64, StoreError> {
    let mut requeued = 0;
    loop {
        let n = store.requeue_recrawls(crate::frontier::now_ms(), RECRAWL_BATCH).await?;
        requeued += n;
        if n < u64::from(RECRAWL_BATCH) {
            return Ok(requeued);
        }
    }
}

/// The service's recrawl loop: every [`RECRAWL_EVERY`], due URLs go back in
/// the frontier and the producer is woken.
async fn recrawl_due(
    store: Arc<SqliteStore>,
    stats: Arc<CrawlStats>,
    wake: Arc<Notify>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(RECRAWL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        match requeue_due(&store).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(urls = n, "due for a recrawl: back in the frontier");
                metrics::counter!("trawler_recrawls_total").increment(n);
                stats.finished.fetch_sub(n.min(CrawlStats::get(&stats.finished)), Ordering::Relaxed);
                wake.notify_one();
            }
            Err(e) => tracing::error!("could not requeue URLs due for a recrawl: {e}"),
        }
    }
}

async fn run_tasks(
    config: &Config,
    store: &Arc<SqliteStore>,
    input: Option<Input>,
    shutdown: &Shutdown,
    started: Instant,
    service: Option<Service>,
) -> Result<Summary, CrawlError> {
    let daemon = service.is_some();
    let (health, reloader, api_listener) = match service {
        Some(Service { health, reloader, api }) => (Some(health), reloader, api),
        None => (None, None, None),
    };
    let recovered = store.requeue_in_flight().await?;
    if recovered > 0 {
        tracing::info!(urls = recovered, "requeued URLs left in flight by an earlier run");
    }
    let rules = HostRules::from_config(config);
    // recrawl_after may have changed since the last run.
    let rescheduled = store.schedule_recrawls(&rules.recrawl_policy()).await?;
    if rescheduled > 0 {
        tracing::info!(urls = rescheduled, "recrawl times set from recrawl_after");
    }
    let recrawled = requeue_due(store).await?;
    if recrawled > 0 {
        tracing::info!(urls = recrawled, "due for a recrawl: back in the frontier");
    }
    let counts = store.counts().await?;
    let notifier = Arc::new(Notifier::from_env());
    let stats = Arc::new(CrawlStats::default());
    stats.known.store(counts.total(), Ordering::Relaxed);
    stats.finished.store(counts.finished(), Ordering::Relaxed);

    let concurrency = config.crawl.concurrency as usize;
    let mut fetcher =
        Fetcher::new(&config.fetch, config.store.save_headers, config.store.save_body, concurrency)?;
    let discovery = match config.discovery.follow {
        true => {
            Some(Discovery::new(config.discovery.clone()).map_err(|e| CrawlError::Config(e.to_string()))?)
        }
        false => None,
    };
    if let Some(discovery) = &discovery {
        fetcher = fetcher.with_link_extraction(discovery.max_links_per_page());
    }
    let wake = Arc::new(Notify::new());
    let input_done = Arc::new(AtomicBool::new(input.is_none()));
    let stop = shutdown.stop_token().clone();
    let abort = shutdown.abort_token().clone();

    // The channel holds enough claimed jobs to keep every worker busy while the
    // producer's next claim waits behind a commit on the one write connection.
    // Politeness lets at most one job per host with a delay wait in it.
    let (job_tx, job_rx) = async_channel::bounded((concurrency * 4).max(CHANNEL_MIN));
    let (result_tx, result_rx) = mpsc::channel(RESULTS_CAPACITY);

    let limits =
        PageLimits { total: config.discovery.max_pages, per_host: config.discovery.max_pages_per_host };
    let writer = tokio::spawn(writer::run(store.clone(), result_rx, stats.clone(), wake.clone(), limits));

    let politeness = Arc::new(Politeness::new(rules, config.retry.retry_after_max));
    // Ends the service's side tasks: gauges, recrawl sweep, reloads, the API.
    let service_done = CancellationToken::new();
    if daemon {
        tokio::spawn(refresh_gauges(store.clone(), stats.clone(), politeness.clone(), service_done.clone()));
        tokio::spawn(recrawl_due(store.clone(), stats.clone(), wake.clone(), service_done.clone()));
    }
    let (sitemap_queue, sitemap_rx) = SitemapQueue::new();
    config.discovery.sitemaps.iter().for_each(|s| sitemap_queue.submit(s.clone()));
    let sitemaps_done = CancellationToken::new();
    let sitemap_task = {
        let task = SitemapTask {
            store: store.clone(),
            queue: sitemap_queue.clone(),
            politeness: politeness.clone(),
            stats: stats.clone(),
            wake: wake.clone(),
            done: sitemaps_done.clone(),
        };
        let fetch = config.fetch.clone();
        tokio::spawn(async move { task.run(&fetch, sitemap_rx).await })
    };
    let ctx = Arc::new(WorkerContext {
        fetcher,
        retry: config.retry.clone(),
        rate: RateLimit::new(config.crawl.rate),
        robots: robots(config, &politeness, &sitemap_queue)?,
        discovery,
        politeness: politeness.clone(),
        wake: wake.clone(),
        stop: stop.clone(),
        abort: abort.clone(),
    });
    let workers = TaskTracker::new();
    for _ in 0..concurrency {
        workers.spawn(worker::run(ctx.clone(), job_rx.clone(), result_tx.clone()));
    }
    workers.close();
    drop((job_rx, result_tx));
    if let Some(reloader) = reloader {
        let live = Live {
            config: config.clone(),
            ctx: ctx.clone(),
            store: store.clone(),
            notifier: notifier.clone(),
            wake: wake.clone(),
        };
        tokio::spawn(reloader.run(live, service_done.clone()));
    }
    let api_task = api_listener.map(|listener| {
        let api = Api { store: store.clone(), wake: wake.clone(), stats: stats.clone() };
        api::serve(listener, api, service_done.clone())
    });

    let ingest_task = input.map(|(source, reader)| {
        let (store, stop, wake, stats, done) =
            (store.clone(), stop.clone(), wake.clone(), stats.clone(), input_done.clone());
        tokio::spawn(async move {
            let report = ingest(&*store, &source, reader, &stop, &wake, &stats).await;
            done.store(true, Ordering::SeqCst);
            wake.notify_one();
            report
        })
    });

    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(progress::report(stats.clone(), progress_done.clone()));

    // After the first stop, fetches in flight get `grace`, then are dropped.
    let grace = config.shutdown.grace;
    let grace_timer = {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
            shutdown.abort(false);
        })
    };

    // Start-up is over: the database is open and recovered, every task runs.
    notifier.ready();
    if let Some(health) = &health {
        health.ready.store(true, Ordering::SeqCst);
    }
    let stopping = {
        let (notifier, stop) = (notifier.clone(), shutdown.stop_token().clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            notifier.stopping();
        })
    };
    let producer = Producer {
        store: store.clone(),
        jobs: job_tx,
        stop: stop.clone(),
        wake: wake.clone(),
        input_done: input_done.clone(),
        sitemaps: sitemap_queue.clone(),
        stats: stats.clone(),
        politeness,
        notifier: notifier.clone(),
        exit_when_idle: !daemon,
    };
    let produced = producer.run().await;
    // A fatal error in any task stops the others the graceful way.
    if produced.is_err() {
        shutdown.stop();
    }

    // The ingest task first: a failure there must stop the workers too.
    let ingested = match ingest_task {
        Some(task) => Some(task.await.expect("ingest task panicked")),
        None => None,
    };
    if matches!(ingested, Some(Err(_))) {
        shutdown.stop();
    }
    sitemaps_done.cancel();
    let sitemapped = sitemap_task.await.expect("sitemap task panicked");
    workers.wait().await;
    let written = writer.await.expect("writer task panicked");
    if let (Err(_), Some(health)) = (&written, &health) {
        health.store_failed.store(true, Ordering::SeqCst);
    }
    grace_timer.abort();
    service_done.cancel();
    if let Some(api_task) = api_task {
        let _ = api_task.await;
    }
    stopping.abort();
    progress_done.cancel();
    let _ = progress.await;

    produced?;
    sitemapped?;
    let report: IngestReport = ingested.transpose()?.unwrap_or_default();
    let latency = written?;
    let get = CrawlStats::get;
    Ok(Summary {
        elapsed: started.elapsed(),
        // The end state is only known after unfinished claims are requeued:
        // `run` fills it in.
        counts: StateCounts::default(),
        done: get(&stats.done),
        failed: get(&stats.failed),
        attempts: get(&stats.attempts),
        retries: get(&stats.retries),
        bytes: get(&stats.bytes),
        input_lines: report.lines,
        input_invalid: report.invalid,
        latency_p50_us: if latency.is_empty() { 0 } else { latency.value_at_quantile(0.50) },
        latency_p95_us: if latency.is_empty() { 0 } else { latency.value_at_quantile(0.95) },
        latency_max_us: latency.max(),
        stopped: shutdown.is_stopping(),
        forced: shutdown.is_forced(),
    })
}
