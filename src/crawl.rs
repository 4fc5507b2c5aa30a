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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::{Notify, mpsc, watch};
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
use crate::store::{Backend, LockWaits, Outage, PageLimits, PinnedWal, StateCounts, Store, StoreError};
use crate::systemd::{Heartbeat, Notifier};
use crate::tasks::Tasks;
use crate::worker::WorkerContext;
use crate::writer::Writer;
use crate::{progress, worker};

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
    /// Why a budget stopped the crawl, once one has.
    budget: Arc<std::sync::OnceLock<String>>,
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
    // A reload that lengthens the waits (a slower rate, a longer delay or
    // backoff) lengthens the timeout too.
    let (stall_timeout, after) = watch::channel(config.stall_timeout());
    if *after.borrow() > config.crawl.stall_timeout {
        tracing::debug!(
            stall_timeout = %humantime::format_duration(*after.borrow()),
            "crawl.stall_timeout raised to the longest legitimate wait"
        );
    }
    let guard = StallGuard { stats: stats.clone(), waits: store.lock_waits(), outage: store.outage(), after };
    let (done, exit_after) = (side_done.clone(), config.shutdown.grace + STALL_EXIT_MARGIN);
    tasks.spawn("stall guard", async move {
        let stalled = guard.run(done).await;
        if stalled.is_err() {
            // The stop that follows may wait for the very task that is stuck.
            exit_unless_stopped_within(exit_after);
        }
        stalled
    });
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
    let stopping = {
        let (notifier, stop, done) = (notifier.clone(), stop.clone(), side_done.clone());
        async move {
            tokio::select! {
                _ = done.cancelled() => {}
                _ = stop.cancelled() => notifier.stopping(),
            }
        }
    };
    tasks.spawn_infallible("stop notification", stopping);
    let budget = Arc::new(std::sync::OnceLock::new());
    let budgeted = config.crawl.max_duration.is_some() || config.crawl.max_bytes.is_some();
    if service_is_none && budgeted {
        let watch = Budget {
            max_duration: config.crawl.max_duration,
            max_bytes: config.crawl.max_bytes,
            stats: stats.clone(),
            reached: budget.clone(),
        };
        tasks.spawn_infallible("budget", watch.run(Instant::now(), shutdown.clone(), side_done.clone()));
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
        budget,
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
            budget: self.budget.get().cloned(),
        })
    }
}

/// How soon a lease-keeping round that failed is tried again.
const LEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps this daemon's host leases (PostgreSQL) until `done`: a round of
/// [`Backend::keep_leases`] every third of the lease, or a second after a
/// round that failed. Says what it could not do: a failed round leaves
/// requests to each host to stop at its deadline, and a lost lease means
/// another daemon has the host now. Returns at once on SQLite.
async fn keep_leases(store: Arc<Backend>, politeness: Arc<Politeness>, done: CancellationToken) {
    let Some(leases) = store.host_leases() else { return };
    let mut wait = leases.renew_every();
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = tokio::time::Instant::now();
        let last_starts = politeness.last_starts(now);
        match store.keep_leases(&last_starts, &politeness.hosts_to_keep(now)).await {
            Ok(Some(round)) => {
                wait = leases.renew_every();
                if !round.lost.is_empty() {
                    tracing::warn!(
                        hosts = round.lost.len(),
                        first = %round.lost[0],
                        "host leases lapsed and were taken over by another daemon: requests to them stopped"
                    );
                }
                if round.recovered_hosts > 0 {
                    tracing::info!(
                        hosts = round.recovered_hosts,
                        urls = round.recovered_urls,
                        "lapsed host leases ended (a daemon stopped renewing): their URLs are back in the frontier"
                    );
                }
                tracing::debug!(renewed = round.renewed, released = round.released, "host leases kept");
            }
            Ok(None) => return,
            Err(e) => {
                wait = LEASE_RETRY;
                tracing::warn!(
                    "cannot renew host leases ({e}); no request starts to a host later than \
                     {} after its last renewal",
                    humantime::format_duration(leases.length().saturating_sub(leases.request_timeout()))
                );
            }
        }
    }
}

/// [`Backend::watch_lock_waits`] every [`LOCK_WATCH_EVERY`] until `done`
/// (PostgreSQL; returns at once on SQLite). A failed look is logged at
/// debug level and tried again: the loops that write report a database
/// that cannot be reached.
async fn watch_lock_waits(store: Arc<Backend>, done: CancellationToken) {
    let mut tick = tokio::time::interval(LOCK_WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.watch_lock_waits().await {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::debug!("cannot look for lock waits: {e}"),
        }
    }
}

/// How often a PostgreSQL crawler looks for statements of its waiting on
/// another session's lock: often enough that the warnings every
/// `store.busy_warning` (at least 1 s) come on time.
const LOCK_WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a stalled crawl may take to stop gracefully beyond
/// `shutdown.grace` before the process exits without finishing its stop.
const STALL_EXIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Ends a crawl that has stopped making progress: URLs are in flight (claimed,
/// not committed) but the writer has committed nothing for `after`, and
/// neither another process's lock nor the database away explains it (the
/// store reports those itself, and bounds an outage by
/// `store.outage_grace`). A write of trawler's own that does not return is
/// a stall.
/// Every loop may still be beating, so systemd's watchdog alone cannot see
/// this (a robots.txt cache that evicted what it still needed once kept every
/// worker busy and nothing finished).
struct StallGuard {
    stats: Arc<CrawlStats>,
    /// The store's lock waits: time blocked by another process's lock is
    /// reported by the store, and is no stall.
    waits: Arc<LockWaits>,
    /// The database away: reported, and bounded, by the store.
    outage: Arc<Outage>,
    /// `crawl.stall_timeout`, raised to the longest legitimate wait
    /// ([`Config::stall_timeout`]), as the last reload left it.
    after: watch::Receiver<std::time::Duration>,
}

impl StallGuard {
    /// Checks every tenth of `after` as it was at start (1 s to 1 min)
    /// until `done`.
    ///
    /// Errors: [`CrawlError::Stalled`], which stops the crawl.
    async fn run(self, done: CancellationToken) -> Result<(), CrawlError> {
        let every = (*self.after.borrow() / 10)
            .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (self.committed(), tokio::time::Instant::now());
        loop {
            tokio::select! {
                _ = done.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = tokio::time::Instant::now();
            let committed = self.committed();
            let in_flight = self.stats.outstanding.load(Ordering::SeqCst);
            let excused = self.waits.blocked_by_another().is_some() || self.outage.down_for().is_some();
            if committed != last.0 || in_flight == 0 || excused {
                last = (committed, now);
                continue;
            }
            // Whole seconds: the error message shows it.
            let quiet = std::time::Duration::from_secs((now - last.1).as_secs());
            if quiet >= *self.after.borrow() {
                return Err(CrawlError::Stalled { quiet, in_flight });
            }
        }
    }

    /// Completions committed so far: attempts and deferred requests.
    fn committed(&self) -> u64 {
        self.stats.attempts.load(Ordering::Relaxed) + self.stats.deferred.load(Ordering::Relaxed)
    }
}

/// Exits the process with status 1 if it is still running after `limit`,
/// from a thread of its own (the async runtime may be what is stuck).
/// Committed results are durable; URLs left in flight are queued again by
/// the next start.
fn exit_unless_stopped_within(limit: std::time::Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            "the stalled crawl did not stop within {}: exiting without finishing the stop",
            humantime::format_duration(limit)
        );
        std::process::exit(1);
    });
}

/// A batch crawl's budgets (`crawl.max_duration`, `crawl.max_bytes`), as
/// Scrapy's `CLOSESPIDER_TIMEOUT` and friends: the first one reached stops
/// the crawl as the first SIGTERM does, and says which in `reached`.
struct Budget {
    max_duration: Option<std::time::Duration>,
    /// Body bytes committed (`CrawlStats::bytes`).
    max_bytes: Option<u64>,
    stats: Arc<CrawlStats>,
    reached: Arc<std::sync::OnceLock<String>>,
}

impl Budget {
    /// How often committed bytes are looked at: a few pages' worth of
    /// overshoot at most, for nothing measurable.
    const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

    /// Watches from `started` until a budget is reached (then stops
    /// `shutdown`), the crawl stops, or `done`.
    async fn run(self, started: Instant, shutdown: Shutdown, done: CancellationToken) {
        let deadline = self.max_duration.map(|d| tokio::time::Instant::from_std(started) + d);
        let mut look = tokio::time::interval(Self::LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = shutdown.stop_token().cancelled() => return,
                _ = sleep_until(deadline) => {
                    let limit = humantime::format_duration(self.max_duration.unwrap_or_default());
                    break format!("crawl.max_duration ({limit}) reached");
                }
                _ = look.tick(), if self.max_bytes.is_some() => {
                    let read = self.stats.bytes.load(Ordering::Relaxed);
                    if let Some(max) = self.max_bytes.filter(|max| read >= *max) {
                        break format!("crawl.max_bytes ({max} bytes) reached");
                    }
                }
            }
        };
        tracing::info!("{why}: stopping; fetches in flight may finish within the grace period");
        let _ = self.reached.set(why);
        shutdown.stop();
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// After the first stop, fetches in flight get `grace`, then are dropped
/// (unless a second signal dropped them first); from then on the store stops
/// waiting for a lock another process holds, so that no lock can keep the
/// process from exiting. Ends early with `done`.
async fn grace_timer(
    shutdown: Shutdown,
    grace: std::time::Duration,
    store: Arc<Backend>,
    done: CancellationToken,
) {
    tokio::select! {
        _ = done.cancelled() => return,
        _ = shutdown.stop_token().cancelled() => {}
    }
    tokio::select! {
        _ = done.cancelled() => return,
        _ = shutdown.abort_token().cancelled() => {}
        _ = tokio::time::sleep(grace) => shutdown.abort(false),
    }
    store.give_up_waiting();
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

/// Checkpoints and truncates the WAL every `every` until `done`, warning
/// when a reader in another process keeps it from being truncated (at
/// first, and again at each doubling of the WAL: [`PinnedWal`]), and
/// reporting what is left as `trawler_wal_bytes`.
///
/// Errors: the database cannot be written (a lock is waited out).
async fn checkpoints(
    store: Arc<Backend>,
    every: std::time::Duration,
    done: CancellationToken,
) -> Result<(), StoreError> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut pinned = PinnedWal::default();
    let mut was_pinned = false;
    loop {
        tokio::select! {
            _ = done.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let Some(checkpoint) = store.checkpoint().await? else {
            return Ok(());
        };
        metrics::gauge!("trawler_wal_bytes").set(checkpoint.wal_bytes_left() as f64);
        let warn = pinned.observe(&checkpoint);
        if !checkpoint.pinned() {
            if was_pinned {
                tracing::info!("WAL checkpointed and truncated again");
            }
            was_pinned = false;
            continue;
        }
        was_pinned = true;
        metrics::counter!("trawler_wal_pinned_total").increment(1);
        if warn {
            tracing::warn!(
                wal_mib = checkpoint.wal_bytes_left() / (1024 * 1024),
                "a reader is keeping the WAL from being truncated (a long query or an open transaction in \
                 another process): it grows until that reader finishes"
            );
        }
    }
}

/// How often freed heap memory is handed back to the kernel.
const RELEASE_MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands the whole free pages inside the allocator's heaps back to the
/// kernel every [`RELEASE_MEMORY_EVERY`] until `done`. glibc gives back only
/// the top of a heap (past `M_TRIM_THRESHOLD`, mallopt(3)) and keeps memory
/// freed below it mapped; with thousands of hosts, connections (about
/// 30 KiB each in hyper) come and go by the thousand, and peak RSS grew well
/// past the live heap. malloc_trim(3) with no padding releases every whole
/// free page. Measured on the many-hosts benchmark: peak RSS at 100,000
/// hosts 126-133 -> 115-129 MiB, at 10,000 hosts 111 -> 104 MiB, CPU per
/// page unchanged within noise (every second instead gave 92 MiB at 10,000
/// hosts but cost 10 % more CPU). Elsewhere than glibc it only waits.
async fn release_free_memory(done: CancellationToken) {
    let mut tick = tokio::time::interval(RELEASE_MEMORY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes no pointer; it walks glibc's own arenas
        // under their locks, so it is safe to call from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::Blocker;

    fn guard(in_flight: u64) -> StallGuard {
        let stats = Arc::new(CrawlStats::default());
        stats.outstanding.store(in_flight, Ordering::SeqCst);
        StallGuard {
            stats,
            waits: Arc::new(LockWaits::new(Duration::from_secs(5))),
            outage: Arc::new(Outage::new(Duration::from_secs(120), Duration::from_secs(5))),
            after: watch::channel(Duration::from_secs(60)).1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn urls_in_flight_and_nothing_committed_is_a_stall() {
        let started = tokio::time::Instant::now();
        let stalled = guard(3).run(CancellationToken::new()).await;
        let Err(CrawlError::Stalled { quiet, in_flight: 3 }) = stalled else { panic!("{stalled:?}") };
        assert!(quiet >= Duration::from_secs(60), "{quiet:?}");
        // Checked every tenth of the timeout: found within one check of it.
        assert!(started.elapsed() <= Duration::from_secs(66), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_lengthens_the_waits_lengthens_the_timeout() {
        let (timeout, after) = watch::channel(Duration::from_secs(60));
        let guard = StallGuard { after, ..guard(3) };
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            timeout.send_replace(Duration::from_secs(600));
        });
        let stalled = guard.run(CancellationToken::new()).await;
        assert!(matches!(stalled, Err(CrawlError::Stalled { .. })), "{stalled:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(600) && waited <= Duration::from_secs(606), "{waited:?}");
    }

    /// Runs `guard` for 10 minutes of (paused) time, or until it fails.
    async fn run_for_ten_minutes(guard: StallGuard) -> Result<(), CrawlError> {
        let done = CancellationToken::new();
        let stop = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            stop.cancel();
        });
        guard.run(done).await
    }

    #[tokio::test(start_paused = true)]
    async fn commits_nothing_in_flight_or_a_locked_database_are_no_stall() {
        // A result every 50 s: slow, but never quiet for the 60 s.
        let committing = guard(3);
        let stats = committing.stats.clone();
        let results = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(50)).await;
                stats.attempts.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(run_for_ten_minutes(committing).await.is_ok());
        results.abort();

        // Nothing in flight: a service waiting for URLs.
        assert!(run_for_ten_minutes(guard(0)).await.is_ok());

        // Writes waiting for another process's lock, which the store reports.
        let locked = guard(3);
        locked.waits.busy(Blocker::AnotherProcess, "test");
        assert!(run_for_ten_minutes(locked).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_of_its_own_that_hangs_is_a_stall_and_an_outage_is_not() {
        let hung = guard(3);
        hung.waits.busy(Blocker::ThisProcess, "claim");
        assert!(matches!(run_for_ten_minutes(hung).await, Err(CrawlError::Stalled { .. })));

        // The store bounds an outage by its grace; the guard leaves it be.
        let away = guard(3);
        away.outage.failed("connection refused".into());
        assert!(run_for_ten_minutes(away).await.is_ok());
    }
}
