//! Recovering the frontier before a crawl starts: what an earlier run left
//! in flight goes back in the queue, recrawl times follow the settings in
//! force, and URLs due for a recrawl are queued. The first step of a start:
//! nothing is built or spawned until it is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::frontier::requeue_due;
use crate::politeness::HostRules;
use crate::stats::CrawlStats;
use crate::store::{Backend, Store, StoreError};

/// What recovery hands to the build.
pub(super) struct Recovered {
    /// The per-host rules from the settings, which recrawl times were set by.
    pub rules: HostRules,
    /// The crawl's counters, starting from the store's counts after recovery.
    pub stats: Arc<CrawlStats>,
}

/// Recovers `store`'s frontier by `config`'s rules, logging what it put
/// back.
///
/// Errors: the store's.
pub(super) async fn recover(config: &Config, store: &Backend) -> Result<Recovered, StoreError> {
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
    Ok(Recovered { rules, stats })
}
