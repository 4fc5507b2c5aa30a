//! One crawl from start to summary: open the store, recover, start the tasks,
//! wait for them in order, requeue what did not finish.
//!
//! ```text
//! seeds ─▶ store ─▶ producer ─▶ async_channel<Job> (bounded) ─▶ N workers
//!                                                                  │
//!           store ◀── writer (one transaction per batch) ◀── mpsc<Completion>
//! ```
//!
//! [`start`] builds everything that can fail, then spawns every task on one
//! supervised tracker ([`Tasks`]) and returns them as a [`Running`];
//! [`Running::drain`] takes them down. Teardown order is what makes a stop
//! lose nothing: the producer ends (and drops the job sender), the workers
//! end (finishing or, on abort, dropping their fetch), their completion
//! senders drop, the writer drains and commits the rest, and only then are
//! URLs still in flight put back in the queue. A task that fails (or
//! panics) stops all the others this same way, and the crawl ends with its
//! error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::CrawlError;
use crate::fetch::{Fetcher, Pool};
use crate::frontier::{Producer, requeue_due};
use crate::gate::{Credentials, Gate, Leasing, RateLimit};
use crate::links::Discovery;
use crate::politeness::{HostRules, Politeness};
use crate::reload::{Live, Reloader};
use crate::robots::Robots;
use crate::seeds::{IngestReport, SeedSource, ingest};
use crate::service::Service;
use crate::shutdown::Shutdown;
use crate::sitemaps::{MAX_SITEMAP_BYTES, Origin, SitemapQueue, SitemapTask};
use crate::stats::{CrawlStats, Summary};
use crate::store::{Backend, PageLimits, StateCounts, Store};
use crate::systemd::{Heartbeat, Notifier};
use crate::tasks::Tasks;
use crate::worker::WorkerContext;
use crate::writer::Writer;
use crate::{progress, worker};

use budget::Budget;
use memory::release_free_memory;
use stall::StallGuard;
use stopping::{grace_timer, notify_stopping};
use upkeep::{checkpoints, keep_leases, watch_lock_waits};

mod budget;
mod memory;
mod stall;
mod stopping;
mod upkeep;

/// Completions buffered between workers and the writer.
const RESULTS_CAPACITY: usize = 8_192;

/// The least room in the job channel: with one fast host (no delay), the
/// producer claims up to this many per round.
const CHANNEL_MIN: usize = 512;

/// Runs a crawl of the store at `config.store.path`, first adding the URLs in
/// `seeds` (if any), until every URL is finished (returns the summary) or
/// `shutdown` stops it (the summary says `stopped`; unfinished URLs are queued
/// again for the next run).
///
/// Errors: [`CrawlError`] when the input cannot be read, the database cannot
/// be opened or written, the HTTP client cannot be built, or any task fails
/// (which stops the others the graceful way first).
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
/// only when `shutdown` stops it, or a task fails.
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
    let limit = crate::descriptors::ensure(config, matches!(mode, Mode::Service(_)))?;
    tracing::debug!(limit, "open files allowed (RLIMIT_NOFILE)");
    let input = match &seeds {
        Some(source) => Some(source.open().await?),
        None => None,
    };
    let store = Arc::new(Backend::open(&config.store, config.fetch.timeout).await?);
    let tasks = Tasks::new(shutdown.clone());
    let (result, last_starts) = match start(config, &store, &tasks, seeds.zip(input), shutdown, mode).await {
        Ok(running) => {
            let politeness = running.politeness.clone();
            let result = running.drain(started).await;
            (result, politeness.last_starts(tokio::time::Instant::now()))
        }
        Err(e) => (Err(e), Vec::new()),
    };
    // Whatever happened, claims that did not finish go back to the queue,
    // and other daemons may take this one's hosts at once.
    match store.release(&last_starts).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(urls = n, "returned unfinished URLs to the frontier"),
        Err(e) => tracing::warn!("unfinished URLs stay in flight, for the next run to requeue: {e}"),
    }
    let mut summary = result?;
    summary.counts = store.counts().await?;
    store.close().await;
    Ok(summary)
}

/// A running crawl, as [`start`] left it: every task on one supervised
/// tracker, the handles that the teardown waits for in order, and the tokens
/// that end the rest. See [`Running::drain`].
struct Running {
    tasks: Tasks,
    /// Claims due URLs into the job channel. Ends when stopped, when a batch
    /// crawl's frontier is exhausted, or on failure; its end drops the job
    /// sender, so the channel closes once drained.
    producer: JoinHandle<Option<()>>,
    /// Reads the input into the frontier (a batch crawl given input); ends
    /// at the input's end or on stop.
    ingest: Option<JoinHandle<Option<IngestReport>>>,
    /// Fetches sitemaps into the frontier; ends with `sitemaps_done`.
    sitemaps: JoinHandle<Option<()>>,
    /// Ends the sitemap task once the producer is done.
    sitemaps_done: CancellationToken,
    /// The fetch workers: each ends when the job channel is closed and
    /// empty, when stopped between jobs, or when the writer is gone.
    workers: Vec<JoinHandle<Option<()>>>,
    /// Commits completions; ends once every worker dropped its sender, with
    /// the latency histogram of what it committed.
    writer: JoinHandle<Option<Histogram<u64>>>,
    /// Ends the side tasks once the pipeline has drained: the grace timer,
    /// progress, stop notification, and the service's endpoints, gauges,
    /// recrawl sweep, reloads and watchdog.
    side_done: CancellationToken,
    stats: Arc<CrawlStats>,
    /// Per-host politeness: when each host's last request started is handed
    /// on with its lease when the crawl ends.
    politeness: Arc<Politeness>,
    shutdown: Shutdown,
    /// Why a budget stopped the crawl, once one has (a batch crawl with a
    /// budget).
    budget: Option<Arc<OnceLock<String>>>,
}

/// Recovers the store, builds everything that can fail, then starts every
/// task of the crawl on `tasks`. Nothing is spawned until nothing more can
/// fail, so an error here leaves no task behind.
///
/// Errors: the store cannot be recovered, the HTTP client or the discovery
/// rules cannot be built, or an address (admin, API) cannot be bound.
async fn start(
    config: &Config,
    store: &Arc<Backend>,
    tasks: &Tasks,
    input: Option<Input>,
    shutdown: &Shutdown,
    mode: Mode,
) -> Result<Running, CrawlError> {
    let recovered = store.requeue_abandoned().await?;
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
    let stats = Arc::new(CrawlStats::default());
    stats.known.store(counts.total(), Ordering::Relaxed);
    stats.finished.store(counts.finished(), Ordering::Relaxed);

    let concurrency = config.crawl.concurrency.get() as usize;
    let politeness_config = &config.politeness;
    let pool = Pool::for_politeness(
        concurrency as u32,
        config
            .hosts
            .values()
            .filter_map(|h| h.concurrency)
            .chain([politeness_config.per_host_concurrency])
            .map(|n| n.get()),
        config.hosts.values().filter_map(|h| h.delay).chain([politeness_config.per_host_delay]),
    );
    tracing::debug!(?pool, "idle HTTP connections kept");
    let mut fetcher = Fetcher::with_hosts(
        &config.fetch,
        &config.hosts,
        config.store.save_headers,
        config.store.save_body,
        pool,
    )?
    .with_robots_token(&config.robots.user_agent_token);
    let discovery = match config.discovery.follow {
        true => Some(Discovery::new(config.discovery.clone()).obeying_robots(config.robots.obey)),
        false => None,
    };
    if let Some(discovery) = &discovery {
        fetcher = fetcher.with_link_extraction(discovery.max_links_per_page());
    }
    let politeness = Arc::new(Politeness::new(rules, config.retry.retry_after_max));
    let (sitemap_queue, sitemap_rx) = SitemapQueue::new();
    config.discovery.sitemaps.iter().for_each(|s| sitemap_queue.submit(s.clone(), Origin::User));
    config.discovery.feeds.iter().for_each(|f| sitemap_queue.submit_feed(f.clone()));
    let robots = robots(config, store, &politeness, &sitemap_queue);
    let gate = Arc::new(Gate {
        politeness: politeness.clone(),
        rate: RateLimit::new(config.crawl.rate),
        robots,
        robots_fetcher: Robots::fetcher(&fetcher),
        scope: config.discovery.scope,
        following: config.discovery.follow,
        leasing: Leasing::of(store),
        credentials: Credentials::from_config(&config.hosts)?,
    });
    let service = match mode {
        Mode::Batch => None,
        Mode::Service(reloader) => Some(Service::bind(config, store, tasks, reloader).await?),
    };
    // Budgets end a batch crawl; the service has no end to bring forward.
    let service_is_none = service.is_none();

    // Nothing below fails: start the tasks.
    let wake = Arc::new(Notify::new());
    let input_done = Arc::new(AtomicBool::new(input.is_none()));
    let stop = shutdown.stop_token().clone();
    let abort = shutdown.abort_token().clone();
    let side_done = CancellationToken::new();
    let notifier = Arc::new(Notifier::from_env());
    let daemon = service.is_some();
    let (producer_beat, writer_beat) =
        (Arc::new(Heartbeat::new("producer")), Arc::new(Heartbeat::new("writer")));

    // The channel holds enough claimed jobs to keep every worker busy while the
    // producer's next claim waits behind a commit on the one write connection.
    // Politeness lets at most one job per host with a delay wait in it.
    let (job_tx, job_rx) = async_channel::bounded((concurrency * 4).max(CHANNEL_MIN));
    let (result_tx, result_rx) = mpsc::channel(RESULTS_CAPACITY);

    let limits = PageLimits {
        total: config.discovery.max_pages,
        per_host: config.discovery.max_pages_per_host,
        max_depth: config.discovery.max_depth,
    };
    let writer = Writer {
        store: store.clone(),
        stats: stats.clone(),
        wake: wake.clone(),
        limits,
        heartbeat: writer_beat.clone(),
        politeness: politeness.clone(),
    };
    let writer = tasks.spawn("writer", writer.run(result_rx));
    let sitemaps_done = CancellationToken::new();
    let sitemaps = {
        let task = SitemapTask {
            store: store.clone(),
            queue: sitemap_queue.clone(),
            gate: gate.clone(),
            discovery: Discovery::new(config.discovery.clone()),
            stats: stats.clone(),
            wake: wake.clone(),
            done: sitemaps_done.clone(),
        };
        let fetcher = fetcher.sibling(config.fetch.max_redirects, MAX_SITEMAP_BYTES, true);
        tasks.spawn("sitemaps", async move { task.run(fetcher, sitemap_rx).await })
    };
    let ctx = Arc::new(WorkerContext {
        fetcher,
        retry: config.retry.clone(),
        gate,
        discovery,
        wake: wake.clone(),
        stop: stop.clone(),
        abort: abort.clone(),
        bodies: config.store.save_body.then(|| store.clone()),
        working: stats.working.clone(),
        parked: job_tx.downgrade(),
    });
    let workers = (0..concurrency)
        .map(|_| tasks.spawn("worker", worker::run(ctx.clone(), job_rx.clone(), result_tx.clone())))
        .collect();
    drop((job_rx, result_tx));
    let ingest = input.map(|(source, reader)| {
        let (store, stop, wake, stats, done) =
            (store.clone(), stop.clone(), wake.clone(), stats.clone(), input_done.clone());
        let strip = config.discovery.strip_query_params.clone();
        tasks.spawn("input", async move {
            let report = ingest(&*store, &source, reader, &stop, &wake, &stats, &strip).await;
            done.store(true, Ordering::SeqCst);
            wake.notify_one();
            report
        })
    });
    tasks.spawn_infallible("progress", progress::report(stats.clone(), side_done.clone()));
    tasks.spawn("checkpoints", checkpoints(store.clone(), config.store.checkpoint_every, side_done.clone()));
    tasks.spawn_infallible("memory", release_free_memory(side_done.clone()));
    let (relay, done) = (store.clone(), side_done.clone());
    let woken = wake.clone();
    tasks.spawn_infallible(
        "work notifications",
        async move { relay.relay_work_notifications(woken, done).await },
    );
    let (guard, stall_timeout) = StallGuard::new(config, store, &stats);
    tasks.spawn("stall guard", guard.run_or_exit(config.shutdown.grace, side_done.clone()));
    tasks.spawn_infallible(
        "grace timer",
        grace_timer(shutdown.clone(), config.shutdown.grace, store.clone(), side_done.clone()),
    );
    if let Some(service) = service {
        let live = Live {
            config: config.clone(),
            ctx: ctx.clone(),
            store: store.clone(),
            notifier: notifier.clone(),
            wake: wake.clone(),
            stall_timeout,
        };
        let beats = [producer_beat.clone(), writer_beat];
        service.spawn(tasks, live, &stats, &politeness, beats, &side_done);
    }
    let kept_politeness = politeness.clone();
    tasks.spawn_infallible("leases", keep_leases(store.clone(), politeness.clone(), side_done.clone()));
    tasks.spawn_infallible("lock waits", watch_lock_waits(store.clone(), side_done.clone()));
    let producer = Producer {
        store: store.clone(),
        jobs: job_tx,
        stop: stop.clone(),
        wake: wake.clone(),
        input_done,
        sitemaps: sitemap_queue,
        stats: stats.clone(),
        politeness,
        heartbeat: producer_beat,
        exit_when_idle: !daemon,
        max_hosts: concurrency,
    };
    let producer = tasks.spawn("producer", producer.run());

    // Start-up is over: the database is open and recovered, every task runs.
    notifier.ready();
    let stopping = notify_stopping(notifier.clone(), stop.clone(), side_done.clone());
    tasks.spawn_infallible("stop notification", stopping);
    let budget = if service_is_none { Budget::of(config, &stats) } else { None };
    let reached = budget.as_ref().map(|budget| budget.reached.clone());
    if let Some(budget) = budget {
        tasks.spawn_infallible("budget", budget.run(Instant::now(), shutdown.clone(), side_done.clone()));
    }
    Ok(Running {
        tasks: tasks.clone(),
        producer,
        ingest,
        sitemaps,
        sitemaps_done,
        workers,
        writer,
        side_done,
        stats,
        politeness: kept_politeness,
        shutdown: shutdown.clone(),
        budget: reached,
    })
}

impl Running {
    /// Waits for the crawl to end and takes it down in the order that loses
    /// nothing: the producer ends (and closes the job channel), then the
    /// input and sitemap tasks, the workers (finishing their fetches, or
    /// dropping them on abort), and the writer, which commits everything
    /// they finished; then the side tasks. A failed task has already stopped
    /// the others; its error is returned once everything has ended.
    ///
    /// Errors: the first task failure.
    async fn drain(self, started: Instant) -> Result<Summary, CrawlError> {
        let _ = self.producer.await;
        self.sitemaps_done.cancel();
        let report = match self.ingest {
            Some(ingest) => ingest.await.ok().flatten().unwrap_or_default(),
            None => IngestReport::default(),
        };
        let _ = self.sitemaps.await;
        for worker in self.workers {
            let _ = worker.await;
        }
        let latency = self.writer.await.ok().flatten();
        self.side_done.cancel();
        self.tasks.wait().await;
        if let Some(failure) = self.tasks.take_failure() {
            return Err(failure);
        }
        let latency = latency.unwrap_or_else(crate::stats::latency_histogram);
        let (stats, get) = (&self.stats, CrawlStats::get);
        Ok(Summary {
            elapsed: started.elapsed(),
            // The end state is only known after unfinished claims are
            // requeued: `run` fills it in.
            counts: StateCounts::default(),
            done: get(&stats.done),
            failed: get(&stats.failed),
            done_statuses: CrawlStats::snapshot(&stats.done_statuses),
            dropped_links: CrawlStats::snapshot(&stats.dropped_links),
            attempts: get(&stats.attempts),
            retries: get(&stats.retries),
            deferred: get(&stats.deferred),
            bytes: get(&stats.bytes),
            input_lines: report.lines,
            input_invalid: report.invalid,
            latency_p50_us: if latency.is_empty() { 0 } else { latency.value_at_quantile(0.50) },
            latency_p95_us: if latency.is_empty() { 0 } else { latency.value_at_quantile(0.95) },
            latency_max_us: latency.max(),
            stopped: self.shutdown.is_stopping(),
            forced: self.shutdown.is_forced(),
            budget: self.budget.and_then(|reached| reached.get().cloned()),
        })
    }
}

/// Adds the URLs read from `input` (named `source` in reports) to the
/// database, as `trawler enqueue` does. Works while a crawler owns the
/// database: then it opens it without the owner's lock
/// ([`Backend::open_to_enqueue`]) and the crawler picks the URLs up within a
/// second.
///
/// Errors: the database cannot be opened or written, or the input read.
pub async fn enqueue(
    config: &Config,
    source: &SeedSource,
    input: impl tokio::io::AsyncRead + Unpin,
) -> Result<IngestReport, CrawlError> {
    let store = Backend::open_to_enqueue(&config.store).await?;
    let stats = Arc::new(CrawlStats::default());
    let strip = &config.discovery.strip_query_params;
    let report =
        ingest(&store, source, input, &CancellationToken::new(), &Notify::new(), &stats, strip).await;
    store.close().await;
    Ok(report?)
}

/// The robots.txt cache, or `None` (with a loud warning) when told to ignore
/// it. When following links, its `Sitemap:` lines go to `sitemaps`.
fn robots(
    config: &Config,
    store: &Arc<Backend>,
    politeness: &Arc<Politeness>,
    sitemaps: &SitemapQueue,
) -> Option<Arc<Robots>> {
    if !config.robots.obey {
        tracing::warn!(
            "robots.txt is IGNORED (robots.obey = false / --ignore-robots): only do this for sites you run"
        );
        return None;
    }
    let sitemaps = config.discovery.follow.then(|| sitemaps.clone());
    let robots = Robots::new(config.robots.clone(), politeness.clone(), sitemaps);
    // Daemons sharing a database share robots.txt too (PostgreSQL).
    let robots = match store.host_leases() {
        Some(_) => robots.sharing(store.clone()),
        None => robots,
    };
    Some(Arc::new(robots))
}

type Input = (SeedSource, Box<dyn tokio::io::AsyncRead + Send + Unpin>);
