//! The writer task: the one place results are committed.
//!
//! Workers send completions over a bounded mpsc channel and never wait on the
//! database themselves. The writer takes everything waiting (up to
//! [`MAX_BATCH`]) and commits it in one transaction, so batches grow with
//! load: one commit per result at a trickle, hundreds per commit at full
//! speed. Counters are updated only after the commit, so they count what is
//! durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use tokio::sync::{Notify, mpsc};

use crate::admin::{self, status_class};
use crate::clock::now_ms;
use crate::job::{Completion, Next};
use crate::politeness::Politeness;
use crate::stats::{CrawlStats, latency_histogram};
use crate::store::{Committed, PageLimits, Store, StoreError};
use crate::systemd::Heartbeat;

/// The most completions committed in one transaction.
pub const MAX_BATCH: usize = 2_048;

/// How often the writer beats its heartbeat while no completion comes.
const IDLE_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer task's handles and settings: [`run`](Writer::run) commits.
pub struct Writer<S> {
    pub store: Arc<S>,
    /// Counted after each commit, so the counters count what is durable.
    pub stats: Arc<CrawlStats>,
    /// Wakes the producer after a commit that may have given it work.
    pub wake: Arc<Notify>,
    /// `discovery.max_pages` and friends, applied as links are added.
    pub limits: PageLimits,
    /// Beaten after every commit and every [`IDLE_BEAT`] while idle.
    pub heartbeat: Arc<Heartbeat>,
    /// Where a host backoff's end is read at the commit.
    pub politeness: Arc<Politeness>,
}

impl<S: Store> Writer<S> {
    /// Commits completions from `results` until every sender is dropped,
    /// then returns the latency histogram (µs) of what it committed. Beats
    /// the heartbeat after every commit and every [`IDLE_BEAT`] while idle,
    /// so only a commit that does not return silences it (one waiting for
    /// another process's lock, or for the database to come back, is reported
    /// by the store instead, which systemd's watchdog is told). A host
    /// backoff a completion changed is stored as politeness has it at the
    /// commit (see [`Completion`]'s `host_backoff_until_ms`).
    ///
    /// While the store waits (a lock; the database away, within
    /// `store.outage_grace`), the batch stays here and later completions wait
    /// in the channel, whose bound holds the workers back: all are committed
    /// once the database answers, as `stale_lease` where a lease was lost
    /// meanwhile.
    ///
    /// Errors: the first store failure (an outage past its grace is one);
    /// completions not yet committed are lost from memory, and their URLs
    /// stay claimed until the crawl lets go of them (or, after a crash, the
    /// next start does).
    pub async fn run(self, mut results: mpsc::Receiver<Completion>) -> Result<Histogram<u64>, StoreError> {
        let mut latency = latency_histogram();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            self.heartbeat.beat();
            // recv_many is cancel safe: nothing is taken from the channel unless
            // it returns.
            let received = tokio::select! {
                n = results.recv_many(&mut batch, MAX_BATCH) => n,
                _ = tokio::time::sleep(IDLE_BEAT) => continue,
            };
            if received == 0 {
                break;
            }
            self.commit(&mut batch, &mut latency).await?;
            batch.clear();
        }
        Ok(latency)
    }

    /// Commits `batch` in one transaction, counts what took effect, and
    /// wakes the producer if the commit may have given it work.
    ///
    /// Errors: the store's.
    async fn commit(&self, batch: &mut [Completion], latency: &mut Histogram<u64>) -> Result<(), StoreError> {
        self.stamp_backoffs(batch);
        let committed = self.store.complete(batch, self.limits).await?;
        self.count_urls(&committed);
        let retried = self.count_completions(batch, &committed, latency);
        let stats = &self.stats;
        let before = stats.outstanding.fetch_sub(batch.len() as u64, Ordering::SeqCst);
        let backoff_changed = batch.iter().any(|c| c.host_backoff_changed);
        if retried || committed.new_urls > 0 || before == batch.len() as u64 || backoff_changed {
            // A retry may be due before the producer's next look, a host's
            // backoff cut short lets its URLs be claimed now, or the
            // frontier may just have become idle.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sets the end of each host backoff a completion changed as
    /// politeness has it now, not as it was when the completion was made:
    /// a success that cut a backoff short may reach the writer before the
    /// throttle that began it, and the later commit must store the later
    /// decision. The one place a stored backoff end is computed.
    fn stamp_backoffs(&self, batch: &mut [Completion]) {
        let (now, now_ms) = (tokio::time::Instant::now(), now_ms());
        for c in batch.iter_mut().filter(|c| c.host_backoff_changed) {
            let left = self.politeness.backoff_left(&c.host, now);
            c.host_backoff_until_ms = Some(now_ms + left.as_millis() as i64);
        }
    }

    /// Counts what a commit did to the frontier: new URLs, links dropped,
    /// and finished pages that a shorter path put back in the queue (no
    /// longer finished).
    fn count_urls(&self, committed: &Committed) {
        let stats = &self.stats;
        if committed.new_urls > 0 {
            stats.known.fetch_add(committed.new_urls, Ordering::Relaxed);
        }
        for (&reason, &n) in &committed.dropped_links {
            CrawlStats::add(&stats.dropped_links, reason, n);
            if admin::recording() {
                metrics::counter!("trawler_links_dropped_total", "reason" => reason.as_str()).increment(n);
            }
        }
        stats.reopened(committed.reopened);
    }

    /// Counts each committed completion by what it did, records its latency
    /// in `latency`, and returns whether any was deferred or retried (the
    /// producer may have a URL due soon).
    fn count_completions(
        &self,
        batch: &[Completion],
        committed: &Committed,
        latency: &mut Histogram<u64>,
    ) -> bool {
        let stats = &self.stats;
        let mut retried = false;
        // Folded per batch: one lock for the batch, not one per page.
        let mut done_statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for c in batch {
            // A stale completion (its URL taken back meanwhile) finished and
            // scheduled nothing: its URL is fetched again, and counted then.
            let live = committed.took_effect(c);
            match c.next {
                Next::Requeue(_) => {
                    // Not an attempt: nothing was fetched.
                    stats.deferred.fetch_add(1, Ordering::Relaxed);
                    if admin::recording() {
                        metrics::counter!("trawler_requests_deferred_total").increment(1);
                    }
                    retried = true;
                    continue;
                }
                Next::Done | Next::NotModified | Next::Skipped | Next::Failed | Next::RetryAt(_) if !live => {
                }
                Next::Done | Next::NotModified | Next::Skipped => {
                    stats.done.fetch_add(1, Ordering::Relaxed);
                    *done_statuses.entry(c.record.http_status.unwrap_or(0)).or_default() += 1;
                    stats.finished.fetch_add(1, Ordering::Relaxed);
                }
                Next::Failed => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    stats.finished.fetch_add(1, Ordering::Relaxed);
                }
                Next::RetryAt(_) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    retried = true;
                }
            }
            latency.saturating_record(c.record.elapsed_us.max(1));
            if admin::recording() {
                record_metrics(c);
            }
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(c.record.body_bytes.unwrap_or(0), Ordering::Relaxed);
        }
        for (status, n) in done_statuses {
            CrawlStats::add(&stats.done_statuses, status, n);
        }
        retried
    }
}

/// Prometheus counters for one committed attempt (no-ops unless a recorder
/// is installed, as `trawler run` does).
fn record_metrics(c: &Completion) {
    let r = &c.record;
    metrics::counter!("trawler_fetches_total", "outcome" => c.next.outcome(), "status" => status_class(r.http_status))
        .increment(1);
    if let Some(kind) = r.error_kind {
        metrics::counter!("trawler_fetch_errors_total", "kind" => kind.as_str()).increment(1);
    }
    metrics::histogram!("trawler_fetch_duration_seconds").record(r.elapsed_us as f64 / 1e6);
    metrics::counter!("trawler_body_bytes_total").increment(r.body_bytes.unwrap_or(0));
}
