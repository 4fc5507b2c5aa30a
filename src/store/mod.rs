//! The durable frontier and result log, behind one interface with lease
//! semantics so that another backend (PostgreSQL shared by several daemons) is
//! an added module, not a rewrite.
//!
//! A URL moves `queued` → (claim, with a lease token) `in_flight` → `done` |
//! `failed` | back to `queued` with a not-before time (retry). Every transition
//! out of `in_flight` is a [`Completion`] that carries the claim's lease token;
//! a completion whose claim no longer holds that token is stale and changes
//! nothing. On SQLite the claim is held in the crawler's memory and the row
//! stays `queued` (`claims.rs`); on PostgreSQL it is the row's `lease`. Only the engines' modules (`sqlite.rs`, `postgres.rs`) and the
//! classification of their errors (`faults.rs`) know sqlx: no sqlx type
//! crosses this boundary. What a failed operation means, and how it is
//! waited out, is `faults.rs`.

mod backend;
mod batch;
mod claims;
mod faults;
pub mod postgres;
mod rules;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use std::time::Duration;

pub use backend::{Backend, Coordination};
// The vocabulary of what the store takes and hands out (`crate::job`).
pub use crate::job::{
    AdaptiveRecrawl, AttemptRecord, Completion, DropReason, Hop, Job, NewUrl, Next, Outcome, Revisit,
    UrlState, Validators,
};
pub use faults::{Blocker, Fault, KnownPause, LockWaits, Outage, Watch};
pub use postgres::{HopLease, HostLeases, LeaseRound, PgStore, QueueHealth, SharedRobotsTxt};
pub use sqlite::{Checkpoint, PinnedWal, SqliteStore};

/// A store operation that failed. What it means for the caller, whether to
/// wait or stop, is [`StoreError::fault`]: a crawl's store waits out locks
/// and outages itself ([`Backend`]), so a crawl's tasks see only failures,
/// and any of those stops the crawl.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database's lock file.
    #[error(
        "{path} is in use by another trawler process (lock file {lock}); \
         readers such as sqlite3 may still open it"
    )]
    Locked { path: String, lock: String },
    /// The database was written by a newer trawler whose schema this binary
    /// does not know.
    #[error(
        "{path} has schema version {found}, newer than this trawler knows ({known}); \
         use a newer trawler or another database"
    )]
    NewerSchema { path: String, found: i64, known: i64 },
    /// A statement waits on `blocker` (another process's lock, or a
    /// statement of this process's own still running). Waited out by the
    /// store; returned only once the store was told to stop waiting (the
    /// crawl is being torn down after its grace period), with how long it
    /// had waited.
    #[error("database {context}: {} for {} s; gave up waiting to stop", blocker.waiting_for(), waited.as_secs())]
    Busy { context: &'static str, waited: Duration, blocker: Blocker },
    /// The file system is full (SQLITE_FULL): nothing more can be recorded.
    /// Committed results are intact; what was not committed is fetched again
    /// by the next run.
    #[error("database {context}: disk full: free space and rerun")]
    DiskFull { context: &'static str },
    /// The database could not be reached, or ended the connection (see
    /// `faults::postgres_kind`): one try of an operation during an outage.
    /// A crawl's store tries again ([`Fault::Outage`]).
    #[error("database {context}: {source}")]
    Unreachable {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database stayed away for `waited`, longer than `grace`
    /// (`store.outage_grace`), or until the crawl's teardown gave up
    /// waiting (`grace` is `None`); `cause` is the last error that said so.
    #[error("database {context}: unreachable for {} s, {}: {cause}", waited.as_secs(), outage_end(*grace))]
    Outage { context: &'static str, waited: Duration, grace: Option<Duration>, cause: String },
    /// Opening, migrating, reading or writing failed.
    #[error("database {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How an outage's wait ended, for [`StoreError::Outage`].
fn outage_end(grace: Option<Duration>) -> String {
    match grace {
        Some(grace) => format!("longer than store.outage_grace ({})", humantime::format_duration(grace)),
        None => "gave up waiting to stop".to_owned(),
    }
}

impl StoreError {
    /// What the error means for the caller: the one classification every
    /// task's store operations go by (see `store/faults.rs`).
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Unreachable { .. } => Fault::Outage,
            StoreError::Busy { blocker, .. } => Fault::Waiting(*blocker),
            _ => Fault::Failure,
        }
    }

    /// Whether it is a pool's timeout: no connection within the pool's
    /// wait (a cause that says little on its own).
    pub(crate) fn is_pool_timeout(&self) -> bool {
        let source = match self {
            StoreError::Unreachable { source, .. } | StoreError::Database { source, .. } => source,
            _ => return false,
        };
        matches!(source.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolTimedOut))
    }

    /// The error's own cause, without the operation's name.
    pub(crate) fn cause(&self) -> String {
        match self {
            StoreError::Unreachable { source, .. } | StoreError::Database { source, .. } => {
                source.to_string()
            }
            StoreError::Outage { cause, .. } => cause.clone(),
            other => other.to_string(),
        }
    }
}

/// An input line that was not a crawlable URL.
#[derive(Debug, Clone)]
pub struct InputError {
    /// The input's name: its path as given, or `-` for stdin.
    pub source: String,
    /// 1-based line number.
    pub line: u64,
    /// The line as read (trimmed, at most a few KiB).
    pub text: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What [`Store::claim`] took.
#[derive(Debug, Default)]
pub struct Claim {
    /// The jobs, the URLs queued first first.
    pub jobs: Vec<Job>,
    /// Hosts this claim leased from another daemon or from none
    /// (PostgreSQL), with how long ago their last request may have started,
    /// where the database knows: their delay counts from then. Always
    /// empty on SQLite, whose one crawler keeps every host's politeness
    /// itself.
    pub handed_over: Vec<(String, Duration)>,
}

/// When finished URLs are fetched again: `crawl.recrawl_after`, and the hosts
/// with their own `[hosts."..."] recrawl_after`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecrawlPolicy {
    /// `crawl.adaptive_recrawl`: a URL's own interval
    /// (`urls.recrawl_interval_ms`), where it has one, comes first.
    pub adaptive: bool,
    pub default: Option<std::time::Duration>,
    pub per_host: std::collections::BTreeMap<String, std::time::Duration>,
}

impl RecrawlPolicy {
    /// No URL is ever fetched again.
    pub fn is_never(&self) -> bool {
        self.default.is_none() && self.per_host.is_empty()
    }
}

/// Caps on how many URLs discovery may add (see `DiscoveryConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageLimits {
    /// URLs in the store in all.
    pub total: Option<u64>,
    /// URLs in the store per host.
    pub per_host: Option<u64>,
    /// `discovery.max_depth`: a page found at it was not parsed, so when a
    /// shorter path to it turns up it is fetched again.
    pub max_depth: u32,
}

/// What committing a batch of completions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The (URL id, lease) of each completion applied: a stale one (its URL
    /// was taken back, or leased again, meanwhile) changed no URL's state.
    pub live: BTreeSet<(i64, i64)>,
    /// Finished (`done`) URLs this batch put back in the queue: pages found
    /// at the maximum depth, and so not parsed, to which a shorter path
    /// turned up (`discovery.max_depth`). They are no longer finished.
    pub reopened: u64,
    /// Discovered URLs that were new to the store.
    pub new_urls: u64,
    /// Links dropped on the applied pages, by reason, the page limits
    /// (`max_pages`, `max_pages_per_host`) included.
    pub dropped_links: BTreeMap<DropReason, u64>,
}

impl Committed {
    /// How many completions took effect (the rest were stale).
    pub fn applied(&self) -> u64 {
        self.live.len() as u64
    }

    /// Whether `completion` took effect: its URL moved to the state it says.
    pub fn took_effect(&self, completion: &Completion) -> bool {
        self.live.contains(&(completion.url_id, completion.lease))
    }
}

/// One row of the `results` view, for `trawler export`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ResultRow {
    pub url_id: Option<i64>,
    pub url: String,
    pub host: Option<String>,
    pub state: String,
    pub http_status: Option<i64>,
    pub error_kind: Option<String>,
    pub attempts: i64,
    pub elapsed_ms: Option<i64>,
    pub fetched_at: Option<String>,
    pub final_url: Option<String>,
    pub redirects: Option<i64>,
    pub content_type: Option<String>,
    pub body_bytes: Option<i64>,
    pub body_sha256: Option<String>,
    pub error_message: Option<String>,
    pub depth: i64,
    pub found_on: Option<i64>,
    /// When the URL's content last changed (RFC 3339 UTC): the visit that
    /// found it new; a 304 or an identical body keeps it.
    pub changed_at: Option<String>,
}

/// An attempt with a final response, as `trawler export --format warc`
/// archives it (outcomes `done` and `not_modified`), with its URL.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArchivedAttempt {
    /// `attempts.id`.
    pub id: i64,
    /// The URL asked for, and the one that answered (after redirects).
    pub url: String,
    pub final_url: Option<String>,
    /// When the response ended, RFC 3339 UTC with milliseconds.
    pub fetched_at: String,
    /// `done` or `not_modified`.
    pub outcome: String,
    pub http_status: Option<i64>,
    pub content_type: Option<String>,
    /// The decoded body's length and SHA-256 (lower-case hex); a 304's are
    /// those of the content it confirmed.
    pub body_bytes: Option<i64>,
    pub body_sha256: Option<String>,
    /// The response's headers as a JSON array of `[name, value]`, when
    /// `store.save_headers` was on.
    pub headers: Option<String>,
}

/// A stored body's zstd frame (`bodies.data`) decoded.
///
/// Errors: a corrupt frame, as [`StoreError::Database`].
pub(crate) fn decompress_body(zstd: &[u8]) -> Result<Vec<u8>, StoreError> {
    zstd::stream::decode_all(zstd)
        .map_err(|e| StoreError::Database { context: "decode a body", source: Box::new(e) })
}

/// Which rows `trawler export` writes.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only rows in this state (`queued`, `done`, `failed`).
    pub state: Option<String>,
    /// Only rows fetched at or after this RFC 3339 UTC time (millisecond form).
    pub since: Option<String>,
}

/// A snapshot of a database for `trawler stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatsReport {
    pub queued: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub invalid_lines: u64,
    /// Finished URLs by outcome: HTTP status class (`2xx`, ...) or error kind.
    pub outcomes: Vec<(String, u64)>,
    /// Links dropped, by reason (`dropped_links`), most first.
    pub dropped_links: Vec<(String, u64)>,
    /// Hosts with the most URLs, and with the most failed URLs.
    pub top_hosts: Vec<(String, u64)>,
    pub top_failing_hosts: Vec<(String, u64)>,
    /// Attempts started in the last minute and the last hour.
    pub attempts_last_minute: u64,
    pub attempts_last_hour: u64,
    /// Attempt latency over the last hour, in ms (`None` without attempts).
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
    /// Finished URLs with a recrawl time, and the soonest one (RFC 3339).
    pub recrawls_scheduled: u64,
    pub next_recrawl_at: Option<String>,
    /// What the recrawls found, per recrawl of a page (1 = its first), the
    /// last 10 of them.
    pub recrawls: Vec<RecrawlRound>,
}

/// The visits that were a page's `recrawl`-th (after its first visit with
/// a final response), and what they found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecrawlRound {
    pub recrawl: u64,
    /// Visits with a final response (`done` or `not_modified`).
    pub pages: u64,
    /// Of those, a body whose SHA-256 differs from the visit before.
    pub changed: u64,
    /// Of those, a 304 Not Modified.
    pub not_modified: u64,
}

/// [`RecrawlRound`]s in SQL both engines take: each page's visits with a
/// final response, numbered, compared with the one before.
pub(crate) const RECRAWL_ROUNDS_SQL: &str = "WITH visits AS (
        SELECT outcome, body_sha256,
               lag(body_sha256) OVER (PARTITION BY url_id ORDER BY id) AS before,
               row_number() OVER (PARTITION BY url_id ORDER BY id) - 1 AS recrawl
        FROM attempts WHERE outcome IN ('done', 'not_modified'))
    SELECT CAST(recrawl AS BIGINT), CAST(count(*) AS BIGINT),
           CAST(sum(CASE WHEN outcome = 'done' AND body_sha256 <> before THEN 1 ELSE 0 END) AS BIGINT),
           CAST(sum(CASE WHEN outcome = 'not_modified' THEN 1 ELSE 0 END) AS BIGINT)
    FROM visits WHERE recrawl > 0 GROUP BY recrawl ORDER BY recrawl DESC LIMIT 10";

impl RecrawlRound {
    /// The rounds in `rows` of [`RECRAWL_ROUNDS_SQL`], first recrawl first.
    pub(crate) fn from_rows(rows: Vec<(i64, i64, i64, i64)>) -> Vec<Self> {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut rounds: Vec<Self> = rows
            .into_iter()
            .map(|(r, p, c, m)| Self { recrawl: n(r), pages: n(p), changed: n(c), not_modified: n(m) })
            .collect();
        rounds.reverse();
        rounds
    }
}

/// The queries behind [`StatsReport`] that differ between engines (SQL
/// dialect, placeholders); [`stats_report`] decides once what is asked.
pub(crate) trait StatsQueries: Store {
    /// `(key, count)` rows of `sql`, a query written in the SQL both engines
    /// share (see [`STATS_PAIRS`]).
    fn pairs(&self, sql: &'static str)
    -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Attempts started at or after `since_ms` (Unix ms).
    fn attempts_since(&self, since_ms: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The `q` quantile (0 to 1) of `elapsed_ms` over the attempts started
    /// at or after `since_ms`; `None` without attempts.
    fn latency_quantile(
        &self,
        since_ms: i64,
        q: f64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Finished URLs with a recrawl time, and the soonest time (Unix ms).
    fn recrawls(&self) -> impl Future<Output = Result<(u64, Option<i64>), StoreError>> + Send;

    /// The rows of [`RECRAWL_ROUNDS_SQL`].
    fn recrawl_rounds(&self) -> impl Future<Output = Result<Vec<(i64, i64, i64, i64)>, StoreError>> + Send;
}

/// Implements [`StatsQueries`] for the engine `$engine`, whose reads go to
/// its pool `$pool`: the same SQL on both engines (`$n` placeholders, which
/// sqlx takes on SQLite too), written once.
macro_rules! stats_queries {
    ($engine:ty, $pool:ident) => {
        impl $crate::store::StatsQueries for $engine {
            async fn pairs(&self, sql: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as(sql).fetch_all(&self.$pool).await.map_err(db("stats"))?;
                Ok(rows.into_iter().map(|(k, n)| (k, n as u64)).collect())
            }

            async fn attempts_since(&self, since_ms: i64) -> Result<u64, StoreError> {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM attempts WHERE started_ms >= $1")
                    .bind(since_ms)
                    .fetch_one(&self.$pool)
                    .await
                    .map(|n| n as u64)
                    .map_err(db("stats"))
            }

            async fn latency_quantile(&self, since_ms: i64, q: f64) -> Result<Option<i64>, StoreError> {
                // The offset in integers (q in thousandths), so that both
                // engines round it down: PostgreSQL rounds a float cast to
                // an integer to the nearest, past the last row for a p95
                // of five attempts.
                sqlx::query_scalar(
                    "SELECT elapsed_ms FROM attempts WHERE started_ms >= $1 ORDER BY elapsed_ms
                     LIMIT 1 OFFSET (SELECT count(*) * $2 / 1000 FROM attempts WHERE started_ms >= $1)",
                )
                .bind(since_ms)
                .bind((q.clamp(0.0, 1.0) * 1000.0).round() as i64)
                .fetch_optional(&self.$pool)
                .await
                .map_err(db("stats"))
            }

            async fn recrawls(&self) -> Result<(u64, Option<i64>), StoreError> {
                let (n, next): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT count(*), min(recrawl_at_ms) FROM urls WHERE recrawl_at_ms IS NOT NULL",
                )
                .fetch_one(&self.$pool)
                .await
                .map_err(db("stats"))?;
                Ok((n as u64, next))
            }

            async fn recrawl_rounds(&self) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
                sqlx::query_as($crate::store::RECRAWL_ROUNDS_SQL).fetch_all(&self.$pool).await.map_err(db("stats"))
            }
        }
    };
}
pub(crate) use stats_queries;

/// The `(key, count)` queries of `trawler stats`, in SQL that SQLite and
/// PostgreSQL both take: outcomes, dropped links, top hosts, top failing
/// hosts.
pub(crate) const STATS_PAIRS: [&str; 4] = [
    "SELECT coalesce(error_kind, (http_status / 100) || 'xx'), count(*) FROM results
     WHERE state IN ('done', 'failed') GROUP BY 1 ORDER BY 2 DESC, 1",
    "SELECT reason, CAST(sum(count) AS BIGINT) FROM dropped_links GROUP BY reason ORDER BY 2 DESC, 1",
    "SELECT host, count(*) FROM urls GROUP BY host ORDER BY 2 DESC, 1 LIMIT 10",
    "SELECT host, count(*) FROM urls WHERE state = 'failed' GROUP BY host ORDER BY 2 DESC, 1 LIMIT 10",
];

/// A snapshot for `trawler stats` at `now_ms` (Unix ms): attempts in the
/// last minute and hour, latency quantiles over the last hour.
pub(crate) async fn stats_report(engine: &impl StatsQueries, now_ms: i64) -> Result<StatsReport, StoreError> {
    const HOUR_MS: i64 = 3_600_000;
    let counts = engine.counts().await?;
    let [outcomes, dropped_links, top_hosts, top_failing_hosts] = STATS_PAIRS;
    let (recrawls_scheduled, next_recrawl) = engine.recrawls().await?;
    Ok(StatsReport {
        queued: counts.queued,
        in_flight: counts.in_flight,
        done: counts.done,
        failed: counts.failed,
        invalid_lines: counts.invalid_lines,
        outcomes: engine.pairs(outcomes).await?,
        dropped_links: engine.pairs(dropped_links).await?,
        top_hosts: engine.pairs(top_hosts).await?,
        top_failing_hosts: engine.pairs(top_failing_hosts).await?,
        attempts_last_minute: engine.attempts_since(now_ms - 60_000).await?,
        attempts_last_hour: engine.attempts_since(now_ms - HOUR_MS).await?,
        latency_p50_ms: engine.latency_quantile(now_ms - HOUR_MS, 0.50).await?,
        latency_p95_ms: engine.latency_quantile(now_ms - HOUR_MS, 0.95).await?,
        recrawls_scheduled,
        next_recrawl_at: next_recrawl.map(rules::rfc3339_from_ms),
        recrawls: RecrawlRound::from_rows(engine.recrawl_rounds().await?),
    })
}

/// URLs by state, as counted in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub queued: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    /// Rejected input lines recorded so far.
    pub invalid_lines: u64,
}

impl StateCounts {
    /// The count of URLs in `state`.
    pub fn of(&self, state: UrlState) -> u64 {
        match state {
            UrlState::Queued => self.queued,
            UrlState::InFlight => self.in_flight,
            UrlState::Done => self.done,
            UrlState::Failed => self.failed,
        }
    }

    pub fn total(&self) -> u64 {
        self.queued + self.in_flight + self.done + self.failed
    }

    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }
}

/// The frontier's operations. Every method is one atomic store transaction;
/// none is cancel safe in the sense that a dropped call may or may not have
/// committed (callers never race them against a token).
pub trait Store: Send + Sync + 'static {
    /// Adds URLs that are not known yet; known ones (in any state) are left as
    /// they are. Returns how many were new.
    fn enqueue(&self, urls: &[NewUrl]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records rejected input lines (an identical line at the same place is
    /// recorded once).
    fn record_input_errors(
        &self,
        errors: &[InputError],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Hosts that have a queued URL due at `now_ms` and are not in backoff,
    /// longest-waiting first, leaving out `busy` ones; at most `limit`, of
    /// which at most `new_limit` are hosts this crawler does not hold yet
    /// (PostgreSQL: so that one daemon does not lease every host while
    /// others idle; SQLite's one crawler holds every host).
    fn ready_hosts(
        &self,
        now_ms: i64,
        busy: &[String],
        limit: u32,
        new_limit: u32,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Claims, for each `(host, n)` in `picks`, up to `n` of the host's queued
    /// URLs due at `now_ms` (oldest due first), in flight under a lease token:
    /// held in memory on SQLite, written to the rows on PostgreSQL.
    fn claim(
        &self,
        now_ms: i64,
        picks: &[(String, u32)],
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records each completion's attempt, moves its URL to the next state and
    /// enqueues the links it discovered, all in one transaction (the order
    /// and meaning: `store/batch.rs`). A stale completion (its claim is no
    /// longer held under its lease) changes nothing but its attempt, recorded as
    /// `stale_lease`. Discovered URLs that would exceed `limits` are dropped
    /// (and counted as dropped links).
    fn complete(
        &self,
        completions: &[Completion],
        limits: PageLimits,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// At start-up: puts back in the queue, due at once, the in-flight URLs
    /// that no running crawler will finish: on SQLite, whose one crawler
    /// is this one, all of them (a crashed run's claims); on PostgreSQL,
    /// those under leases that lapsed (a crashed daemon's other leases
    /// lapse within a lease's length, and the lease rounds end them then).
    /// Returns how many were requeued.
    fn requeue_abandoned(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// At the end of a crawl: puts the URLs this crawler holds in flight
    /// back in the queue, due at once, and gives up its hosts' leases at
    /// once, so another daemon takes them over without waiting for them to
    /// lapse; `last_starts` (host, how long ago its last request started)
    /// lets the next owner keep the delay. Returns how many URLs were
    /// requeued.
    fn release(
        &self,
        last_starts: &[(String, Duration)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The earliest time (Unix ms) a host with queued URLs may be fetched,
    /// `None` when no host has queued URLs. May be early, never late.
    fn next_ready(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Whether any URL is queued, or (PostgreSQL) in flight with any daemon,
    /// which may yet put it back: a batch crawl is over only when this is
    /// false and nothing of its own is in flight.
    fn has_queued(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// URLs by state.
    fn counts(&self) -> impl Future<Output = Result<StateCounts, StoreError>> + Send;

    /// Sets every finished URL's recrawl time (`urls.recrawl_at_ms`) from
    /// `policy` and the time it finished, e.g. after the policy changed.
    /// Returns how many URLs' times changed. Costs one pass over the finished
    /// URLs; does nothing when `policy` is never and no URL has a time.
    fn schedule_recrawls(
        &self,
        policy: &RecrawlPolicy,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether a body with this SHA-256 (lower-case hex) is stored.
    fn has_body(&self, sha256: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores a body once: `zstd` is the zstd frame of a decoded body of
    /// `bytes` bytes whose SHA-256 is `sha256`. Storing one that is already
    /// there changes nothing. Its own transaction, committed before the
    /// attempt that refers to it, so a body is never held in a writer batch.
    fn save_body(
        &self,
        sha256: &str,
        bytes: u64,
        zstd: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Puts up to `limit` finished URLs whose recrawl time is at or before
    /// `now_ms` back in the queue, due at once, as a new visit: their
    /// attempts so far are kept (history) and the retry count starts again.
    /// Returns how many were requeued.
    fn requeue_recrawls(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
