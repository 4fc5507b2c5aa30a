//! A batch crawl's budgets: a side task that stops the crawl, as the first
//! SIGTERM does, once `crawl.max_duration` or `crawl.max_bytes` is reached.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::stats::CrawlStats;

/// A batch crawl's budgets (`crawl.max_duration`, `crawl.max_bytes`), as
/// Scrapy's `CLOSESPIDER_TIMEOUT` and friends: the first one reached stops
/// the crawl as the first SIGTERM does, and says which in `reached`.
pub(super) struct Budget {
    max_duration: Option<std::time::Duration>,
    /// Body bytes committed (`CrawlStats::bytes`).
    max_bytes: Option<u64>,
    stats: Arc<CrawlStats>,
    /// Why a budget stopped the crawl, once one has: for the summary.
    pub(super) reached: Arc<OnceLock<String>>,
}

impl Budget {
    /// The budgets `config` sets for a crawl counting in `stats`, if any.
    pub(super) fn of(config: &Config, stats: &Arc<CrawlStats>) -> Option<Self> {
        let crawl = &config.crawl;
        (crawl.max_duration.is_some() || crawl.max_bytes.is_some()).then(|| Self {
            max_duration: crawl.max_duration,
            max_bytes: crawl.max_bytes,
            stats: stats.clone(),
            reached: Arc::default(),
        })
    }

    /// How often committed bytes are looked at: a few pages' worth of
    /// overshoot at most, for nothing measurable.
    const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

    /// Watches from `started` until a budget is reached (then stops
    /// `shutdown`), the crawl stops, or `done`.
    pub(super) async fn run(self, started: Instant, shutdown: Shutdown, done: CancellationToken) {
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
