//! The stall guard: a side task that ends a crawl which has stopped making
//! progress (URLs in flight, nothing committed), which the watchdog's
//! heartbeats cannot see, and exits the process if even the stop that
//! follows hangs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::CrawlError;
use crate::stats::CrawlStats;
use crate::store::{Backend, KnownPause};

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
pub(super) struct StallGuard {
    stats: Arc<CrawlStats>,
    /// Another process's lock, or the database away: reported (and an
    /// outage bounded) by the store, and no stall.
    pause: KnownPause,
    /// `crawl.stall_timeout`, raised to the longest legitimate wait
    /// ([`Config::stall_timeout`]), as the last reload left it.
    after: watch::Receiver<std::time::Duration>,
}

impl StallGuard {
    /// A guard of `store`'s crawl, counting in `stats`, and the sender that
    /// a reload lengthens its timeout through: a reload that lengthens the
    /// waits (a slower rate, a longer delay or backoff) lengthens the
    /// timeout too.
    pub(super) fn new(
        config: &Config,
        store: &Backend,
        stats: &Arc<CrawlStats>,
    ) -> (Self, watch::Sender<std::time::Duration>) {
        let (stall_timeout, after) = watch::channel(config.stall_timeout());
        if *after.borrow() > config.crawl.stall_timeout {
            tracing::debug!(
                stall_timeout = %humantime::format_duration(*after.borrow()),
                "crawl.stall_timeout raised to the longest legitimate wait"
            );
        }
        let guard = Self { stats: stats.clone(), pause: store.known_pause(), after };
        (guard, stall_timeout)
    }

    /// [`run`](Self::run), and on a stall, exits the process unless the stop
    /// that follows ends within `grace` (`shutdown.grace`) and
    /// [`STALL_EXIT_MARGIN`]: that stop may wait for the very task that is
    /// stuck.
    ///
    /// Errors: as [`run`](Self::run).
    pub(super) async fn run_or_exit(
        self,
        grace: std::time::Duration,
        done: CancellationToken,
    ) -> Result<(), CrawlError> {
        let stalled = self.run(done).await;
        if stalled.is_err() {
            exit_unless_stopped_within(grace + STALL_EXIT_MARGIN);
        }
        stalled
    }

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
            if committed != last.0 || in_flight == 0 || self.pause.now() {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{Blocker, LockWaits, Outage};

    fn guard(in_flight: u64) -> StallGuard {
        let stats = Arc::new(CrawlStats::default());
        stats.outstanding.store(in_flight, Ordering::SeqCst);
        StallGuard {
            stats,
            pause: KnownPause::new(
                Arc::new(LockWaits::new(Duration::from_secs(5))),
                Arc::new(Outage::new(Duration::from_secs(120), Duration::from_secs(5))),
            ),
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
        locked.pause.waits.busy(Blocker::AnotherProcess, "test");
        assert!(run_for_ten_minutes(locked).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_of_its_own_that_hangs_is_a_stall_and_an_outage_is_not() {
        let hung = guard(3);
        hung.pause.waits.busy(Blocker::ThisProcess, "claim");
        assert!(matches!(run_for_ten_minutes(hung).await, Err(CrawlError::Stalled { .. })));

        // The store bounds an outage by its grace; the guard leaves it be.
        let away = guard(3);
        away.pause.outage.failed("connection refused".into());
        assert!(run_for_ten_minutes(away).await.is_ok());
    }
}
