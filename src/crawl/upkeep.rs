//! The database's upkeep while a crawl runs, as side tasks: WAL checkpoints
//! (SQLite), this daemon's host leases and the watch for lock waits
//! (PostgreSQL). Each returns at once on the engine it has nothing to do on.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::politeness::Politeness;
use crate::store::{Backend, PinnedWal, StoreError};

/// Checkpoints and truncates the WAL every `every` until `done`, warning
/// when a reader in another process keeps it from being truncated (at
/// first, and again at each doubling of the WAL: [`PinnedWal`]), and
/// reporting what is left as `trawler_wal_bytes`.
///
/// Errors: the database cannot be written (a lock is waited out).
pub(super) async fn checkpoints(
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

/// How soon a lease-keeping round that failed is tried again.
const LEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often, between lease rounds, a daemon looks for one that holds no
/// host ([`Coordination::rebalance`](crate::store::Coordination::rebalance)):
/// a daemon that joins a running crawl waits about this long for the
/// others to begin handing it hosts, not a third of a lease.
const REBALANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a daemon that is handing hosts over looks for those that have
/// become idle, to give them up: each waits this long at most.
const HAND_OVER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps this daemon's host leases (PostgreSQL) until `done`: a round of
/// [`Coordination::keep_leases`](crate::store::Coordination::keep_leases)
/// every third of the lease, or a second after a round that failed, and
/// between rounds a [`Coordination::rebalance`](crate::store::Coordination::rebalance)
/// every [`REBALANCE_EVERY`] ([`HAND_OVER_CHECK`] while it is handing hosts
/// over). Says what it could not do: a failed round leaves requests to
/// each host to stop at their deadline, and a lost lease means another
/// daemon has the host now. Returns at once on SQLite.
pub(super) async fn keep_leases(store: Arc<Backend>, politeness: Arc<Politeness>, done: CancellationToken) {
    let Some(coordination) = store.coordination() else { return };
    let mut round_at = tokio::time::Instant::now() + coordination.host_leases().renew_every();
    let mut handing_over = 0;
    loop {
        let look_in = if handing_over > 0 { HAND_OVER_CHECK } else { REBALANCE_EVERY };
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(round_at.min(tokio::time::Instant::now() + look_in)) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= round_at {
            let wait;
            (wait, handing_over) = lease_round(&coordination, &politeness, now).await;
            round_at = now + wait;
            continue;
        }
        let (last_starts, keeping) = (politeness.last_starts(now), politeness.hosts_to_keep(now));
        match coordination.rebalance(&last_starts, &keeping).await {
            Ok(n) => handing_over = n,
            Err(e) => tracing::debug!("cannot look for a daemon that holds no host: {e}"),
        }
    }
}

/// One lease round ([`keep_leases`]): logs what it did. Returns how long
/// until the next, and how many hosts this daemon is handing over.
async fn lease_round(
    coordination: &crate::store::Coordination,
    politeness: &Politeness,
    now: tokio::time::Instant,
) -> (std::time::Duration, usize) {
    let leases = coordination.host_leases();
    let last_starts = politeness.last_starts(now);
    match coordination.keep_leases(&last_starts, &politeness.hosts_to_keep(now)).await {
        Ok(round) => {
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
            tracing::debug!(
                renewed = round.renewed,
                released = round.released,
                handing_over = round.handing_over,
                "host leases kept"
            );
            (leases.renew_every(), round.handing_over)
        }
        Err(e) => {
            tracing::warn!(
                "cannot renew host leases ({e}); no request starts to a host later than \
                 {} after its last renewal",
                humantime::format_duration(leases.length().saturating_sub(leases.request_timeout()))
            );
            (LEASE_RETRY, 0)
        }
    }
}

/// [`Coordination::watch_lock_waits`](crate::store::Coordination::watch_lock_waits) every [`LOCK_WATCH_EVERY`] until `done`
/// (PostgreSQL; returns at once on SQLite). A failed look is logged at
/// debug level and tried again: the loops that write report a database
/// that cannot be reached.
pub(super) async fn watch_lock_waits(store: Arc<Backend>, done: CancellationToken) {
    let Some(coordination) = store.coordination() else { return };
    let mut tick = tokio::time::interval(LOCK_WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = coordination.watch_lock_waits().await {
            tracing::debug!("cannot look for lock waits: {e}");
        }
    }
}

/// How often a PostgreSQL crawler looks for statements of its waiting on
/// another session's lock: often enough that the warnings every
/// `store.busy_warning` (at least 1 s) come on time.
const LOCK_WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
