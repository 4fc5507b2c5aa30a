//! What a failed store operation means, and how every task waits it out.
//!
//! One classification of the engines' errors ([`postgres_kind`],
//! [`sqlite_kind`]) into [`StoreError`] variants, and one loop ([`ride`])
//! that every operation of a crawl goes through (`Backend` calls it), so no
//! task gives up on an error that another task rides out:
//!
//! - a lock another process holds ([`Blocker::AnotherProcess`]): waited
//!   out however long it is held ([`LockWaits`] warns, `/healthz` answers
//!   503, systemd's watchdog is excused: a restart would not help);
//! - this process's own statement still running ([`Blocker::ThisProcess`]:
//!   a slow or hung disk): waited for too, and reported as what it is, but
//!   the watchdog is not excused, so `WatchdogSec=` restarts a daemon whose
//!   own write hangs;
//! - the database away ([`StoreError::Unreachable`]: a server restart or
//!   failover, `pg_terminate_backend`, a database refusing connections, a
//!   network cut): an outage, tried again with backoff for up to
//!   `store.outage_grace` ([`Outage`] warns, `/healthz` answers 503), then
//!   [`StoreError::Outage`] ends the crawl naming the cause;
//! - anything else: a failure, returned at once.
//!
//! Only the crawl's teardown, past its grace period, stops the waiting
//! ([`Watch::give_up`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{PgStore, StoreError};

/// What a statement that cannot go on now is waiting for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Blocker {
    /// A lock another process holds (SQLite: `SQLITE_BUSY`; PostgreSQL: a
    /// lock held by a session that is not this daemon's). Its holder
    /// releases it when done; restarting trawler would not help.
    #[default]
    AnotherProcess,
    /// A statement of this process's own that is still running (SQLite:
    /// the one write connection is held by a write that has not returned;
    /// PostgreSQL: a lock held by one of this daemon's own sessions): a
    /// slow or hung disk, or a statement that does not end.
    ThisProcess,
}

impl Blocker {
    /// What is waited for, for warnings and errors.
    pub fn waiting_for(self) -> &'static str {
        match self {
            Blocker::AnotherProcess => "locked by another writer",
            Blocker::ThisProcess => {
                "waiting for a write of this process's own that is still running \
                 (not another process's lock: a long write, or a slow or hung disk)"
            }
        }
    }
}

/// How long the store's statements have been waiting on a lock or a
/// statement that is still running, and for which ([`Blocker`]): the store
/// waits for as long as it takes, logging a warning every `warn_after`;
/// `/healthz`, the stall guard and systemd's watchdog read it. Shared
/// between the store and those.
#[derive(Debug)]
pub struct LockWaits {
    /// How long statements may wait before it is reported
    /// (`store.busy_warning`).
    pub warn_after: Duration,
    state: Mutex<WaitState>,
}

#[derive(Debug, Default)]
struct WaitState {
    /// When the statements now waiting started to (the earliest of them).
    since: Option<Instant>,
    /// When the last warning about it was logged.
    warned_at: Option<Instant>,
    /// What the wait was last found to be for.
    blocker: Blocker,
}

impl LockWaits {
    /// Nothing waiting; report waits longer than `warn_after`.
    pub fn new(warn_after: Duration) -> Self {
        Self { warn_after, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long statements have been waiting, for whatever reason, if they
    /// are now.
    pub fn blocked_for(&self) -> Option<Duration> {
        self.lock().since.map(|since| since.elapsed())
    }

    /// What statements are waiting for and how long they have, if they are.
    pub fn waiting(&self) -> Option<(Blocker, Duration)> {
        let state = self.lock();
        state.since.map(|since| (state.blocker, since.elapsed()))
    }

    /// How long statements have been waiting for another process's lock,
    /// if that is what they wait for: the one wait that excuses systemd's
    /// watchdog and the stall guard (a restart would not end it). A write
    /// of this process's own that does not return is not excused.
    pub fn blocked_by_another(&self) -> Option<Duration> {
        self.waiting().filter(|(blocker, _)| *blocker == Blocker::AnotherProcess).map(|(_, d)| d)
    }

    /// Whether statements have been waiting for longer than `warn_after`:
    /// the service reports itself unhealthy then.
    pub fn is_stalled(&self) -> bool {
        self.blocked_for().is_some_and(|waited| waited >= self.warn_after)
    }

    /// Records that a statement found the database locked by `blocker`
    /// (`context` names the operation, or what holds the lock) and returns
    /// how long statements have been waiting. Logs a warning once they
    /// have waited `warn_after`, and again every `warn_after` after that.
    pub fn busy(&self, blocker: Blocker, context: &str) -> Duration {
        self.busy_for(blocker, context, Duration::ZERO)
    }

    /// [`busy`](Self::busy) for a wait found `waited` after it began (by a
    /// look from outside, as PostgreSQL's `pg_stat_activity` allows, or a
    /// pool's acquire timeout): a wait not yet recorded counts from then.
    pub fn busy_for(&self, blocker: Blocker, context: &str, waited: Duration) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        let since = *state.since.get_or_insert(now.checked_sub(waited).unwrap_or(now));
        state.blocker = blocker;
        let waited = now - since;
        let due = state.warned_at.map_or(waited >= self.warn_after, |at| now - at >= self.warn_after);
        if due {
            state.warned_at = Some(now);
            tracing::warn!(
                operation = context,
                "database {} for {} s; waiting for it (nothing is lost meanwhile)",
                blocker.waiting_for(),
                waited.as_secs()
            );
        }
        waited
    }

    /// Records that a statement went through: whatever blocked them is gone.
    /// Says so when the wait was reported, or long enough for `/healthz` to
    /// have answered 503 (which a retry's backoff can reach before the next
    /// warning is due).
    pub fn cleared(&self) {
        let mut state = self.lock();
        if let Some(since) =
            state.since.filter(|s| state.warned_at.is_some() || s.elapsed() >= self.warn_after)
        {
            tracing::info!("database writable again after {} s", since.elapsed().as_secs());
        }
        *state = WaitState::default();
    }
}

impl Default for LockWaits {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

/// A pause the store knows of and reports, which a restart would not end:
/// its writes wait for another process's lock ([`LockWaits`]), or the
/// database is away ([`Outage`], bounded by `store.outage_grace`). It
/// excuses a crawl that commits nothing, for systemd's watchdog and the
/// stall guard alike; a write of this process's own that does not return
/// ([`Blocker::ThisProcess`]) excuses nothing.
#[derive(Clone)]
pub struct KnownPause {
    pub(crate) waits: Arc<LockWaits>,
    pub(crate) outage: Arc<Outage>,
}

impl KnownPause {
    pub fn new(waits: Arc<LockWaits>, outage: Arc<Outage>) -> Self {
        Self { waits, outage }
    }

    /// Whether the store is in such a pause now.
    pub fn now(&self) -> bool {
        self.waits.blocked_by_another().is_some() || self.outage.down_for().is_some()
    }
}

/// The database away: since when, why, and until when the store waits for
/// it to come back (`store.outage_grace`). Every operation that finds it
/// away records it here ([`Outage::failed`]); the first that gets through
/// clears it. Shared with `/healthz`, the stall guard and systemd's
/// watchdog, which an outage within its grace excuses: the grace bounds it.
/// A blip (one session ended, its operation through again at the next try)
/// is logged at debug level only: an outage is warned about once it has
/// lasted `warn_after`, and every `warn_after` while it lasts.
#[derive(Debug)]
pub struct Outage {
    /// How long to wait for the database to come back; zero: not at all
    /// (one-shot commands report it at once).
    grace: Duration,
    /// How long it must have lasted to be warned about, and how often
    /// (`store.busy_warning`).
    warn_after: Duration,
    /// Set while an outage is under way: the fast path of [`cleared`](Self::cleared).
    down: AtomicBool,
    state: Mutex<OutageState>,
    /// When the outage under way stops being waited for (its start plus
    /// the grace); `None` while the database answers.
    deadline: watch::Sender<Option<tokio::time::Instant>>,
}

#[derive(Debug, Default)]
struct OutageState {
    since: Option<tokio::time::Instant>,
    warned_at: Option<tokio::time::Instant>,
    /// The last error that said so.
    cause: String,
}

/// What [`Outage::failed`] decided about a try that found the database away.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after a pause; `warn` when a warning is due now.
    Retry { waited: Duration, warn: bool },
    /// The grace is over (or zero): the outage is the operation's error.
    Over { waited: Duration },
}

impl Outage {
    /// No outage; wait `grace` for the database to come back when it goes,
    /// warning once it has been away `warn_after`, and every `warn_after`.
    pub fn new(grace: Duration, warn_after: Duration) -> Self {
        Self {
            grace,
            warn_after,
            down: AtomicBool::new(false),
            state: Mutex::default(),
            deadline: watch::Sender::new(None),
        }
    }

    /// How long the store waits for the database to come back.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutageState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the database has been away, if it is.
    pub fn down_for(&self) -> Option<Duration> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        self.lock().since.map(|since| since.elapsed())
    }

    /// How long the database has been away and the last error that said
    /// so, if it is away.
    pub fn describe(&self) -> Option<(Duration, String)> {
        let state = self.lock();
        state.since.map(|since| (since.elapsed(), state.cause.clone()))
    }

    /// Records a try that found the database away with `cause`, and decides
    /// whether to try again. The outage counts from the first such try
    /// since the database last answered.
    pub(crate) fn failed(&self, cause: String) -> Verdict {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        let since = *state.since.get_or_insert(now);
        state.cause = cause;
        let waited = now - since;
        if waited >= self.grace {
            return Verdict::Over { waited };
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            self.deadline.send_replace(Some(since + self.grace));
        }
        let warn = match state.warned_at {
            None => waited >= self.warn_after,
            Some(at) => now - at >= self.warn_after,
        };
        if warn {
            state.warned_at = Some(now);
        }
        Verdict::Retry { waited, warn }
    }

    /// Whether the next [`failed`](Self::failed) would warn (a cause worth
    /// looking into is then worth finding).
    pub(crate) fn warning_due(&self) -> bool {
        let now = tokio::time::Instant::now();
        let state = self.lock();
        match (state.since, state.warned_at) {
            (_, Some(at)) => now - at >= self.warn_after,
            (Some(since), None) => now - since >= self.warn_after,
            (None, None) => false,
        }
    }

    /// Records that an operation got through: the database is back. Says so
    /// if the outage was warned about, or lasted long enough for `/healthz`
    /// to have answered 503 for a while.
    pub fn cleared(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if let Some(since) =
            state.since.filter(|s| state.warned_at.is_some() || s.elapsed() >= self.warn_after)
        {
            tracing::info!("database reachable again after {} s", since.elapsed().as_secs());
        }
        *state = OutageState::default();
        self.down.store(false, Ordering::Release);
        self.deadline.send_replace(None);
    }

    /// Resolves once an outage is under way and either its grace is over
    /// or `give_up` is cancelled: a try still running then (a statement on
    /// a connection whose network went away, which TCP takes many minutes
    /// to give up on) is abandoned. Cancel safe.
    async fn abandoned(&self, give_up: &CancellationToken) {
        let mut deadline = self.deadline.subscribe();
        loop {
            let at = *deadline.borrow_and_update();
            match at {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => return,
                    _ = give_up.cancelled() => return,
                    _ = deadline.changed() => {}
                },
                // The sender lives as long as `self`, which this borrows.
                None => {
                    let _ = deadline.changed().await;
                }
            }
        }
    }
}

impl Default for Outage {
    fn default() -> Self {
        Self::new(Duration::ZERO, Duration::from_secs(5))
    }
}

/// What a store is watched by: its lock waits, its outages, and the token
/// that ends the waiting for both (the crawl's teardown, past its grace).
/// Clones share all three.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub waits: Arc<LockWaits>,
    pub outage: Arc<Outage>,
    /// Cancelled by the store's `give_up_waiting`.
    pub give_up: CancellationToken,
}

impl Watch {
    /// Lock waits reported after `busy_warning`; outages waited for `grace`.
    pub fn new(busy_warning: Duration, grace: Duration) -> Self {
        Self {
            waits: Arc::new(LockWaits::new(busy_warning)),
            outage: Arc::new(Outage::new(grace, busy_warning)),
            give_up: CancellationToken::new(),
        }
    }
}

/// What a failed store operation means for the caller ([`StoreError::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database is away: wait for it, within `store.outage_grace`.
    Outage,
    /// A statement waits on a lock or a statement still running: wait.
    Waiting(Blocker),
    /// Anything else: the operation failed.
    Failure,
}

/// How the engines' errors sort, before they become a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The database is away ([`StoreError::Unreachable`]).
    Unreachable,
    /// A lock or a statement still running ([`StoreError::Busy`]).
    Locked(Blocker),
    /// The disk is full ([`StoreError::DiskFull`]).
    Full,
    /// Anything else ([`StoreError::Database`]).
    Other,
}

/// A PostgreSQL error's kind. The database is away when connecting failed
/// or the connection broke (an I/O error: refused, reset, closed), when no
/// connection could be had within the pool's timeout (a network cut, a
/// server that is down: sqlx's pool tries a refused connection again until
/// then), or when the server says it ended the session or takes none now
/// (PostgreSQL manual, Appendix A: class 08 connection_exception; 57P01
/// admin_shutdown, which a restart and `pg_terminate_backend` send; 57P02
/// crash_shutdown; 57P03 cannot_connect_now, while starting or in
/// recovery; 57P05 idle_session_timeout; 25P03
/// idle_in_transaction_session_timeout, which a daemon frozen inside a
/// transaction finds on waking; 53300 too_many_connections; and 55000 when
/// the database is `ALLOW_CONNECTIONS false`, "not currently accepting
/// connections"). 53100 is a full disk.
pub(super) fn postgres_kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => Kind::Unreachable,
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some(code) if code.starts_with("08") => Kind::Unreachable,
            Some("57P01" | "57P02" | "57P03" | "57P05" | "25P03" | "53300") => Kind::Unreachable,
            Some("55000") if d.message().contains("not currently accepting connections") => Kind::Unreachable,
            Some("53100") => Kind::Full,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}

/// A SQLite error's kind, by SQLite's primary result code
/// (sqlite.org/rescode.html; sqlx reports the extended code, whose low byte
/// is the primary one): `SQLITE_BUSY` and `SQLITE_LOCKED` are another
/// connection's lock (every connection of this process but the one writer
/// is read-only, and readers take no lock a writer waits for), a pool's
/// timeout is this process's own statements holding every connection of
/// the pool (for the one write connection: a write that has not returned),
/// `SQLITE_FULL` a full disk.
pub(super) fn sqlite_kind(e: &sqlx::Error) -> Kind {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_FULL: i32 = 13;
    match e {
        sqlx::Error::PoolTimedOut => Kind::Locked(Blocker::ThisProcess),
        sqlx::Error::Database(e) => match e.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff) {
            Some(SQLITE_BUSY | SQLITE_LOCKED) => Kind::Locked(Blocker::AnotherProcess),
            Some(SQLITE_FULL) => Kind::Full,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}

/// The first pause between tries of an operation that waits, and the
/// longest: doubling from one to the other.
const PAUSES: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

/// Runs `op` (what it does: `context`) until it does not fail with an
/// error that is waited out ([`StoreError::fault`]): a lock or a statement
/// still running, however long it takes ([`LockWaits`]); the database
/// away, until `store.outage_grace` has passed since it went ([`Outage`]).
/// `op` is given whether an earlier try found the database away, in which
/// case it may have committed before its answer was lost (PostgreSQL).
/// `explain`, when given, is asked for a better cause than a pool's
/// timeout (connecting on its own: [`PgStore::connection_trouble`]).
///
/// `op` must be one transaction (or one statement), so that trying it
/// again is safe. Not cancel safe beyond what `op` is.
///
/// Errors: a failure, at once; [`StoreError::Outage`] once the grace is
/// over, or after [`Watch::give_up`] during an outage;
/// [`StoreError::Busy`] after [`Watch::give_up`] during a lock wait.
pub(crate) async fn ride<T, F>(
    watch: &Watch,
    context: &'static str,
    explain: Option<&PgStore>,
    mut op: impl FnMut(bool) -> F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut pause = PAUSES.0;
    let mut again = false;
    let mut waited = false;
    loop {
        let tried = tokio::select! {
            biased;
            tried = op(again) => tried,
            _ = watch.outage.abandoned(&watch.give_up) => {
                let waited = watch.outage.down_for().unwrap_or_default();
                let cause = watch.outage.describe().map(|(_, cause)| cause).unwrap_or_default();
                return Err(outage_over(watch, context, waited, cause));
            }
        };
        let error = match tried {
            Ok(value) => {
                if waited {
                    watch.waits.cleared();
                }
                watch.outage.cleared();
                return Ok(value);
            }
            Err(error) => error,
        };
        match error.fault() {
            Fault::Failure => return Err(error),
            // A pool whose every connection waits on another process's
            // lock times out too: that is the lock, not an outage.
            Fault::Outage if error.is_pool_timeout() && watch.waits.blocked_by_another().is_some() => {
                watch.waits.busy(Blocker::AnotherProcess, context);
                waited = true;
            }
            Fault::Outage => {
                again = true;
                outage_met(watch, context, explain, error).await?;
            }
            Fault::Waiting(blocker) => {
                // A pool's timeout says the wait has lasted that long already.
                let so_far = match &error {
                    StoreError::Busy { waited, .. } => *waited,
                    _ => Duration::ZERO,
                };
                let so_far = watch.waits.busy_for(blocker, context, so_far);
                waited = true;
                if watch.give_up.is_cancelled() {
                    return Err(StoreError::Busy { context, waited: so_far, blocker });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = watch.give_up.cancelled() => {}
        }
        pause = (pause * 2).min(PAUSES.1);
        if let Some(error) = given_up(watch, context) {
            return Err(error);
        }
    }
}

/// Takes in that `error`, an outage, met `context`: warns (at most as
/// often as [`Outage::warning_due`] says), asking `explain` for a better
/// cause than a pool's timeout.
///
/// Errors: `error` itself without a grace; [`StoreError::Outage`] once the
/// grace is over.
async fn outage_met(
    watch: &Watch,
    context: &'static str,
    explain: Option<&PgStore>,
    error: StoreError,
) -> Result<(), StoreError> {
    let mut cause = error.cause();
    if error.is_pool_timeout()
        && watch.outage.warning_due()
        && let Some(store) = explain
    {
        cause = format!("{cause}; connecting now: {}", store.connection_trouble().await);
    }
    match watch.outage.failed(cause.clone()) {
        Verdict::Over { .. } if watch.outage.grace().is_zero() => return Err(error),
        Verdict::Over { waited } => return Err(outage_over(watch, context, waited, cause)),
        Verdict::Retry { waited, warn: true } => tracing::warn!(
            operation = context,
            "database unreachable for {} s ({cause}); trying again until store.outage_grace ({}) \
             is over, keeping what was fetched meanwhile",
            waited.as_secs(),
            humantime::format_duration(watch.outage.grace())
        ),
        Verdict::Retry { .. } => {
            tracing::debug!(operation = context, "database unreachable ({cause}); trying again")
        }
    }
    Ok(())
}

/// The error to stop `context` with once the crawl's teardown gave up
/// waiting ([`Watch::give_up`]), if it did: the outage or the lock it
/// waited on.
fn given_up(watch: &Watch, context: &'static str) -> Option<StoreError> {
    if !watch.give_up.is_cancelled() {
        return None;
    }
    if let Some(down) = watch.outage.down_for() {
        let cause = watch.outage.describe().map(|(_, cause)| cause).unwrap_or_default();
        return Some(outage_over(watch, context, down, cause));
    }
    let (blocker, waited) = watch.waits.waiting()?;
    Some(StoreError::Busy { context, waited, blocker })
}

/// The error of an operation that stopped waiting for the database: its
/// grace is over, or the crawl's teardown gave up.
fn outage_over(watch: &Watch, context: &'static str, waited: Duration, cause: String) -> StoreError {
    let grace = (!watch.give_up.is_cancelled()).then(|| watch.outage.grace());
    StoreError::Outage { context, waited, grace, cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(context: &'static str) -> StoreError {
        StoreError::Unreachable {
            context,
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_ridden_out_within_the_grace_and_cleared_when_it_ends() {
        let watch = Watch::new(Duration::from_secs(5), Duration::from_secs(120));
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let got = ride(&watch, "record results", None, |again| {
            tries += 1;
            let fails = tries <= 30;
            assert_eq!(again, tries > 1, "a try after an outage knows it");
            async move { if fails { Err(unreachable("record results")) } else { Ok(7) } }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
        assert!(watch.outage.down_for().is_none(), "cleared by the try that got through");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_grace_the_outage_is_the_error_naming_its_cause() {
        let watch = Watch::new(Duration::from_secs(5), Duration::from_secs(120));
        let started = tokio::time::Instant::now();
        let got: Result<(), _> = ride(&watch, "claim", None, |_| async { Err(unreachable("claim")) }).await;
        let error = got.unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(120) && waited <= Duration::from_secs(122), "{waited:?}");
        let text = error.to_string();
        assert!(text.starts_with("database claim: unreachable for 12"), "{text}");
        assert!(text.contains("store.outage_grace (2m)") && text.contains("refused"), "{text}");
        assert_eq!(error.fault(), Fault::Failure, "final: no one waits on it again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_counts_from_the_start_of_the_outage_not_of_each_operation() {
        let watch = Watch::new(Duration::from_secs(5), Duration::from_secs(60));
        watch.outage.failed("earlier".into());
        tokio::time::advance(Duration::from_secs(50)).await;
        let started = tokio::time::Instant::now();
        let got: Result<(), _> = ride(&watch, "claim", None, |_| async { Err(unreachable("claim")) }).await;
        assert!(matches!(got, Err(StoreError::Outage { .. })));
        assert!(started.elapsed() <= Duration::from_secs(11), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_that_hangs_through_an_outage_is_abandoned_at_its_end() {
        let watch = Watch::new(Duration::from_secs(5), Duration::from_secs(60));
        watch.outage.failed("a connection timed out".into());
        let got: Result<(), _> = ride(&watch, "record results", None, |_| std::future::pending()).await;
        let Err(StoreError::Outage { waited, cause, .. }) = got else { panic!("{got:?}") };
        assert_eq!(waited.as_secs(), 60);
        assert_eq!(cause, "a connection timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_ends_the_waiting_for_an_outage() {
        let watch = Watch::new(Duration::from_secs(5), Duration::from_secs(120));
        let give_up = watch.give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            give_up.cancel();
        });
        let got: Result<(), _> = ride(&watch, "claim", None, |_| async { Err(unreachable("claim")) }).await;
        let text = got.unwrap_err().to_string();
        assert!(text.contains("gave up waiting to stop"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_grace_reports_the_error_as_it_came() {
        let watch = Watch::default();
        let got: Result<(), _> =
            ride(&watch, "enqueue", None, |_| async { Err(unreachable("enqueue")) }).await;
        assert!(matches!(got, Err(StoreError::Unreachable { .. })), "{got:?}");
    }

    #[test]
    fn only_another_process_s_lock_excuses_the_watchdog() {
        let waits = LockWaits::new(Duration::from_secs(5));
        waits.busy(Blocker::ThisProcess, "claim");
        assert!(waits.blocked_for().is_some());
        assert!(waits.blocked_by_another().is_none(), "a slow own write is no excuse");
        waits.busy(Blocker::AnotherProcess, "claim");
        assert!(waits.blocked_by_another().is_some());
        waits.cleared();
        assert!(waits.blocked_for().is_none());
    }

    #[test]
    fn errors_sort_into_outages_locks_and_failures() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(postgres_kind(&io()), Kind::Unreachable);
        assert_eq!(postgres_kind(&sqlx::Error::PoolTimedOut), Kind::Unreachable);
        assert_eq!(postgres_kind(&sqlx::Error::RowNotFound), Kind::Other);
        assert_eq!(postgres_kind(&sqlx::Error::PoolClosed), Kind::Other, "closed by us");
        assert_eq!(sqlite_kind(&sqlx::Error::PoolTimedOut), Kind::Locked(Blocker::ThisProcess));
        assert_eq!(sqlite_kind(&io()), Kind::Other);
    }
}
