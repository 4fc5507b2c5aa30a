//! A running crawl: [`Running::spawn`] starts the built
//! [`Pieces`](super::builder::Pieces) on one supervised tracker, and
//! [`Running::drain`] takes them down in the order that loses nothing, as
//! vector's running topology does.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::builder::{Pieces, Shared};
use super::memory::release_free_memory;
use super::stall::StallGuard;
use super::stopping::{grace_timer, notify_stopping};
use super::upkeep::{checkpoints, keep_leases, watch_lock_waits};
use crate::config::Config;
use crate::error::CrawlError;
use crate::politeness::Politeness;
use crate::seeds::IngestReport;
use crate::shutdown::Shutdown;
use crate::stats::{CrawlStats, Summary};
use crate::store::StateCounts;
use crate::tasks::Tasks;
use crate::{progress, worker};

/// A running crawl, as [`Running::spawn`] left it: every task on one
/// supervised tracker, the handles that the teardown waits for in order,
/// and the tokens that end the rest. See [`Running::drain`].
pub(super) struct Running {
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
    /// Ends the side tasks once the pipeline has drained: those of
    /// [`spawn_side_tasks`], the stop notification, the budget, and the
    /// service's endpoints, gauges, recrawl sweep, reloads and watchdog.
    side_done: CancellationToken,
    stats: Arc<CrawlStats>,
    /// Per-host politeness: when each host's last request started is handed
    /// on with its lease when the crawl ends.
    pub(super) politeness: Arc<Politeness>,
    shutdown: Shutdown,
    /// Why a budget stopped the crawl, once one has (a batch crawl with a
    /// budget).
    budget: Option<Arc<OnceLock<String>>>,
}

impl Running {
    /// Spawns `pieces` on `tasks`: the writer first and the producer last,
    /// so that nothing is claimed before there is somewhere for it to go,
    /// then tells systemd the crawl is ready. `config` gives the side tasks
    /// their periods; `shutdown` is what they watch and what a budget stops.
    pub(super) fn spawn(pieces: Pieces, config: &Config, tasks: &Tasks, shutdown: &Shutdown) -> Self {
        let side_done = CancellationToken::new();
        let beats = [pieces.producer.heartbeat.clone(), pieces.writer.heartbeat.clone()];
        let writer = tasks.spawn("writer", pieces.writer.run(pieces.results));
        let sitemaps_done = pieces.sitemaps.done.clone();
        let sitemaps =
            tasks.spawn("sitemaps", pieces.sitemaps.run(pieces.sitemap_fetcher, pieces.sitemap_rx));
        let (ctx, jobs, completions) = (&pieces.workers, &pieces.jobs, &pieces.completions);
        let workers = (0..pieces.concurrency)
            .map(|_| tasks.spawn("worker", worker::run(ctx.clone(), jobs.clone(), completions.clone())))
            .collect();
        // The workers hold the only receivers of jobs and senders of results.
        drop((pieces.jobs, pieces.completions));
        let ingest = pieces.input.map(|input| tasks.spawn("input", input.run()));
        let shared = pieces.shared;
        spawn_side_tasks(config, tasks, shutdown, &shared, pieces.stall_guard, &side_done);
        if let Some((service, live)) = pieces.service {
            service.spawn(tasks, live, &shared.stats, &shared.politeness, beats, &side_done);
        }
        let producer = tasks.spawn("producer", pieces.producer.run());

        // Start-up is over: the database is open and recovered, every task runs.
        pieces.notifier.ready();
        let stopping = notify_stopping(pieces.notifier, shutdown.stop_token().clone(), side_done.clone());
        tasks.spawn_infallible("stop notification", stopping);
        let reached = pieces.budget.as_ref().map(|budget| budget.reached.clone());
        if let Some(budget) = pieces.budget {
            tasks.spawn_infallible("budget", budget.run(Instant::now(), shutdown.clone(), side_done.clone()));
        }
        Self {
            tasks: tasks.clone(),
            producer,
            ingest,
            sitemaps,
            sitemaps_done,
            workers,
            writer,
            side_done,
            stats: shared.stats,
            politeness: shared.politeness,
            shutdown: shutdown.clone(),
            budget: reached,
        }
    }

    /// Waits for the crawl to end and takes it down in the order that loses
    /// nothing: the producer ends (and closes the job channel), then the
    /// input and sitemap tasks, the workers (finishing their fetches, or
    /// dropping them on abort), and the writer, which commits everything
    /// they finished; then the side tasks. A failed task has already stopped
    /// the others; its error is returned once everything has ended.
    ///
    /// Errors: the first task failure.
    pub(super) async fn drain(self, started: Instant) -> Result<Summary, CrawlError> {
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

/// Spawns the side tasks, which run beside the pipeline until `done`:
/// progress, WAL checkpoints, memory release, work notifications (another
/// process's enqueues), the stall guard, the grace timer, host leases and
/// lock waits.
fn spawn_side_tasks(
    config: &Config,
    tasks: &Tasks,
    shutdown: &Shutdown,
    shared: &Shared,
    stall_guard: StallGuard,
    done: &CancellationToken,
) {
    let store = &shared.store;
    tasks.spawn_infallible("progress", progress::report(shared.stats.clone(), done.clone()));
    tasks.spawn("checkpoints", checkpoints(store.clone(), config.store.checkpoint_every, done.clone()));
    tasks.spawn_infallible("memory", release_free_memory(done.clone()));
    let (relay, woken, until) = (store.clone(), shared.wake.clone(), done.clone());
    tasks.spawn_infallible("work notifications", async move {
        // Another process's writes are news only where the database says
        // so (PostgreSQL); on SQLite the producer's poll finds new URLs.
        match relay.coordination() {
            Some(coordination) => coordination.relay_work_notifications(woken, until).await,
            None => until.cancelled().await,
        }
    });
    tasks.spawn("stall guard", stall_guard.run_or_exit(config.shutdown.grace, done.clone()));
    tasks.spawn_infallible(
        "grace timer",
        grace_timer(shutdown.clone(), config.shutdown.grace, store.clone(), done.clone()),
    );
    tasks.spawn_infallible("leases", keep_leases(store.clone(), shared.politeness.clone(), done.clone()));
    tasks.spawn_infallible("lock waits", watch_lock_waits(store.clone(), done.clone()));
}
