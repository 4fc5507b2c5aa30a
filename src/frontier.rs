//! The producer: hands workers URLs whose host may be fetched now.
//!
//! Each round it asks [`Politeness`] which hosts are busy (at their
//! concurrency, within their delay, in backoff), asks the store for other
//! hosts with due URLs, claims up to each host's free slots in one
//! transaction, and sends the jobs into the bounded job channel. It never
//! claims more than the channel has room for, so claimed jobs do not pile up
//! behind a busy host and workers are never held by one (no head-of-line
//! blocking). When nothing can be handed out it sleeps until the earliest of:
//! a host's delay or backoff ending, a queued URL becoming due, at most
//! [`MAX_IDLE`], or a wake-up (a fetch finished, URLs were enqueued, a retry
//! was committed). In batch mode it ends once the input is read, nothing is in
//! flight and nothing is queued. If every worker is gone (the job channel
//! closed while the crawl is not stopping) it fails rather than claim URLs
//! that nobody will fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The wall-clock time in Unix ms: not-before times outlive the process, so
/// they are wall-clock, not monotonic. Here too, for callers that know it
/// as the frontier's.
pub use crate::clock::now_ms;
use crate::job::Job;
use crate::politeness::Politeness;
use crate::sitemaps::SitemapQueue;
use crate::stats::CrawlStats;
use crate::store::{Backend, Claim, Store, StoreError};
use crate::systemd::Heartbeat;

/// The longest sleep between looks at the store when nothing is due.
pub const MAX_IDLE: Duration = Duration::from_secs(1);

/// The sleep of a look at the store with nothing else to wait for: between
/// three quarters of [`MAX_IDLE`] and all of it, at random, so that daemons
/// sharing one database do not poll it in step.
fn idle_poll() -> Duration {
    MAX_IDLE.mul_f64(0.75 + rand::random::<f64>() / 4.0)
}

/// Whether the job channel is low enough that the producer should refill it:
/// at most half full. Below that mark claims come in large batches instead
/// of one per finished fetch (each claim is a transaction competing with the
/// writer); workers use the same mark to decide whether to wake the producer.
pub fn wants_refill(queued: usize, capacity: usize) -> bool {
    queued <= capacity / 2
}

/// Why the producer stopped before its time.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job channel closed while the crawl was not stopping.
    #[error("every worker has exited: claimed URLs could not be handed out")]
    NoWorkers,
}

/// Hosts asked for per round.
const HOSTS_PER_ROUND: usize = 256;

/// Everything the producer needs.
pub struct Producer {
    pub store: Arc<Backend>,
    /// Where claimed jobs go; dropping it (when the producer ends) closes the
    /// channel once drained.
    pub jobs: async_channel::Sender<Job>,
    /// Stop claiming and return.
    pub stop: CancellationToken,
    /// Woken when work may be possible: a fetch finished, URLs were enqueued,
    /// a retry was committed.
    pub wake: Arc<Notify>,
    /// Set once the input has been read completely.
    pub input_done: Arc<AtomicBool>,
    /// Sitemaps waiting to be read: more seeds may come.
    pub sitemaps: SitemapQueue,
    pub stats: Arc<CrawlStats>,
    /// Per-host limits, shared with the workers.
    pub politeness: Arc<Politeness>,
    /// Beaten every round (at least every [`MAX_IDLE`]), for systemd's
    /// watchdog.
    pub heartbeat: Arc<Heartbeat>,
    /// End when the frontier is empty (batch crawl) instead of waiting for
    /// more work (daemon).
    pub exit_when_idle: bool,
    /// The workers (`crawl.concurrency`): new hosts are taken on for those
    /// with nothing to do.
    pub max_hosts: usize,
}

impl Producer {
    /// Runs until stopped or, in batch mode, until the frontier is exhausted.
    /// Claimed jobs not yet sent when stopped stay claimed (in the store's
    /// memory on SQLite, rows in flight on PostgreSQL); the crawl lets go of
    /// them on its way out.
    ///
    /// Errors: a store failure while claiming, or no worker left to take
    /// the jobs.
    pub async fn run(self) -> Result<(), ProducerError> {
        let capacity = self.jobs.capacity().unwrap_or(1024);
        let mut last_prune = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            self.heartbeat.beat();
            if self.jobs.is_closed() {
                // Workers leave when told to stop; otherwise they are gone.
                return if self.stop.is_cancelled() { Ok(()) } else { Err(ProducerError::NoWorkers) };
            }
            let now = Instant::now();
            if now - last_prune >= PRUNE_EVERY {
                self.politeness.prune(now);
                last_prune = now;
            }
            let queued = self.jobs.len();
            if !wants_refill(queued, capacity) {
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(idle_poll()) => {}
                }
                continue;
            }
            if self.hand_out(capacity - queued, now).await? {
                continue;
            }
            // Read the flags before the store, and `outstanding` first: a
            // worker submits a robots.txt sitemap before its completion, so
            // if nothing is outstanding, every such submission is counted in
            // `pending`; if all say "idle", everything is already committed.
            let idle = self.stats.outstanding.load(Ordering::SeqCst) == 0
                && self.sitemaps.pending() == 0
                && self.input_done.load(Ordering::SeqCst);
            if idle && self.exit_when_idle && !self.store.has_queued().await? {
                return Ok(());
            }
            let wait = self.idle_wait(now).await?;
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims and sends up to `room` jobs for hosts that may be fetched now.
    /// Returns whether any job was sent.
    async fn hand_out(&self, room: usize, now: Instant) -> Result<bool, StoreError> {
        let busy = self.politeness.busy_hosts(now);
        // New hosts only for idle workers (PostgreSQL: hosts are leased):
        // the first daemon up would otherwise lease every host it has room
        // for while the others idle. A daemon whose hosts keep its workers
        // waiting (delays) has idle workers, and so takes on more.
        let working = self.stats.working.load(Ordering::Relaxed) as usize;
        let new_hosts = self.max_hosts.saturating_sub(working + self.jobs.len());
        let limit = room.min(HOSTS_PER_ROUND) as u32;
        let hosts = self.store.ready_hosts(now_ms(), &busy, limit, new_hosts as u32).await?;
        let mut budget = room as u32;
        let mut picks = Vec::with_capacity(hosts.len());
        for host in hosts {
            let n = self.politeness.slots(&host, now).min(budget);
            if n > 0 {
                budget -= n;
                picks.push((host, n));
            }
        }
        if picks.is_empty() {
            return Ok(false);
        }
        let Claim { jobs, handed_over } = self.store.claim(now_ms(), &picks).await?;
        // Hosts another daemon had: their delay counts from its last start.
        for (host, ago) in handed_over {
            self.politeness.handed_over(&host, ago);
        }
        let sent = !jobs.is_empty();
        self.stats.outstanding.fetch_add(jobs.len() as u64, Ordering::SeqCst);
        for job in jobs {
            self.politeness.dispatched(&job.host);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(sent),
                result = self.jobs.send(job) => if result.is_err() { return Ok(sent) },
            }
        }
        Ok(sent)
    }

    /// How long to sleep when nothing could be handed out.
    async fn idle_wait(&self, now: Instant) -> Result<Duration, StoreError> {
        let politeness = self.politeness.next_free_in(now);
        let store = self.store.next_ready().await?.map(|at| at - now_ms());
        let wait = match store {
            // The store has a host ready now, so it is busy here: its delay
            // or backoff ending (or a fetch finishing) is what to wait for.
            Some(ms) if ms <= 0 => politeness.unwrap_or_else(idle_poll),
            Some(ms) => politeness.unwrap_or_else(idle_poll).min(Duration::from_millis(ms as u64)),
            None => politeness.unwrap_or_else(idle_poll),
        };
        Ok(wait.clamp(Duration::from_millis(1), MAX_IDLE))
    }
}

/// How often idle hosts are dropped from the politeness state.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// URLs put back for a recrawl per statement.
const RECRAWL_BATCH: u32 = 10_000;

/// Puts every URL due for a recrawl back in the frontier, in batches: at
/// start (the crawl) and every second (the service's recrawl sweep).
/// Returns how many.
///
/// Errors: a store failure.
pub(crate) async fn requeue_due(store: &Backend) -> Result<u64, StoreError> {
    let mut requeued = 0;
    loop {
        let n = store.requeue_recrawls(now_ms(), RECRAWL_BATCH).await?;
        requeued += n;
        if n < u64::from(RECRAWL_BATCH) {
            return Ok(requeued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polls_spread_over_the_last_quarter_of_max_idle() {
        let polls: Vec<Duration> = (0..1000).map(|_| idle_poll()).collect();
        assert!(polls.iter().all(|p| *p >= MAX_IDLE.mul_f64(0.75) && *p <= MAX_IDLE));
        let (least, most) = (polls.iter().min().unwrap(), polls.iter().max().unwrap());
        assert!(*most - *least > MAX_IDLE / 8, "spread, not in step: {least:?}..{most:?}");
    }
}
