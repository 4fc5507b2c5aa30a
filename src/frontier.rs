//! The producer: claims due URLs from the store and sends them into the
//! bounded job channel that the workers drain.
//!
//! It claims in batches, so the store sees one statement per batch, and it
//! blocks on the channel when workers are busy (the channel's bound is the
//! backpressure). When nothing is due it sleeps until the earliest
//! not-before time, at most [`MAX_IDLE`], or until woken by new work (ingest)
//! or by a committed retry (writer). In batch mode it ends once the input is
//! read, nothing is in flight and nothing is queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::stats::CrawlStats;
use crate::store::{Job, Store, StoreError};

/// The longest sleep between looks at the store when nothing is due.
pub const MAX_IDLE: Duration = Duration::from_secs(1);

/// The current wall-clock time in Unix ms: not-before times outlive the
/// process, so they are wall-clock, not monotonic.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Everything the producer needs.
pub struct Producer<S> {
    pub store: Arc<S>,
    /// Where claimed jobs go; dropping it (when the producer ends) closes the
    /// channel once drained.
    pub jobs: async_channel::Sender<Job>,
    /// Stop claiming and return.
    pub stop: CancellationToken,
    /// Woken when new work may be due: URLs enqueued, retries committed.
    pub wake: Arc<Notify>,
    /// Set once the input has been read completely.
    pub input_done: Arc<AtomicBool>,
    pub stats: Arc<CrawlStats>,
    /// URLs claimed per store call.
    pub batch: u32,
    /// End when the frontier is empty (batch crawl) instead of waiting for
    /// more work (daemon).
    pub exit_when_idle: bool,
}

impl<S: Store> Producer<S> {
    /// Runs until stopped or, in batch mode, until the frontier is exhausted.
    /// Claimed jobs not yet sent when stopped stay in flight in the store; the
    /// crawl requeues them on its way out.
    ///
    /// Errors: a store failure while claiming.
    pub async fn run(self) -> Result<(), StoreError> {
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            let jobs = self.store.claim(now_ms(), self.batch).await?;
            if !jobs.is_empty() {
                self.stats.outstanding.fetch_add(jobs.len() as u64, Ordering::SeqCst);
                for job in jobs {
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return Ok(()),
                        sent = self.jobs.send(job) => if sent.is_err() { return Ok(()) },
                    }
                }
                continue;
            }
            // Read the flags before the store: if both say "idle", every
            // enqueue and completion is already committed, so `next_due`
            // sees the final state.
            let idle =
                self.input_done.load(Ordering::SeqCst) && self.stats.outstanding.load(Ordering::SeqCst) == 0;
            let next_due = self.store.next_due().await?;
            if idle && next_due.is_none() && self.exit_when_idle {
                return Ok(());
            }
            let wait = match next_due {
                Some(due) => {
                    Duration::from_millis((due - now_ms()).clamp(1, MAX_IDLE.as_millis() as i64) as u64)
                }
                None => MAX_IDLE,
            };
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
