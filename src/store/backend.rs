//! [`Backend`]: the store every caller outside `store/` uses, one variant per
//! database engine. Callers (crawl, API, reload, stats, export, enqueue)
//! never name an engine's own type; adding an engine is a variant here and a
//! module beside `sqlite.rs`, with the [`Store`] trait written once for it.
//!
//! Every operation goes through `faults::ride`, so every task of a crawl
//! waits out what another would: a lock, a write of its own still running,
//! the database away within `store.outage_grace`. A crawl's tasks see
//! failures only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::faults::{self, KnownPause, Outage, Watch};
use super::postgres::HostLeases;
use super::postgres::{HopLease, LeaseRound, PgStore, QueueHealth, SharedRobotsTxt};
use super::sqlite::{Checkpoint, SqliteStore};
use super::{
    ArchivedAttempt, Claim, Committed, ExportFilter, InputError, LockWaits, PageLimits, RecrawlPolicy,
    ResultRow, StateCounts, StatsReport, Store, StoreError,
};
use crate::config::StoreConfig;
use crate::job::{Completion, NewUrl};

/// A trawler database, on one of the engines trawler supports: SQLite, the
/// embedded default, or PostgreSQL (`store.url`).
pub enum Backend {
    /// A SQLite file, owned by one crawler process at a time.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PgStore),
}

/// Connections to PostgreSQL per process: the writer, the producer, the
/// input, the API and the gauges each need one at times.
const PG_CONNECTIONS: u32 = 8;

/// `$body`, with `$s` bound to the engine's own store, through
/// [`Backend::ride`] as the operation `$context`.
macro_rules! ridden {
    ($self:expr, $context:literal, $s:ident => $body:expr) => {
        $self.ride($context, |_| async move { each!($self, $s => $body) }).await
    };
}

/// Runs `$body` with `$s` bound to the engine's own store.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Backend::Sqlite($s) => $body,
            Backend::Postgres($s) => $body,
        }
    };
}

impl Backend {
    /// Opens the database `config` names for crawling, creating it if missing
    /// (SQLite) and applying pending migrations: a SQLite file as its one
    /// crawler (its owner); a PostgreSQL database beside any other daemons,
    /// with host leases of [`StoreConfig::lease`] for requests of at most
    /// `request_timeout` (`fetch.timeout`). URLs a crashed run left in
    /// flight stay so until the caller runs [`Store::requeue_abandoned`].
    /// Once open, the database going away is waited for
    /// ([`StoreConfig::outage_grace`]); at opening it is an error at once,
    /// naming the cause (a refused connection, a wrong password).
    ///
    /// Errors: [`StoreError::Locked`] when another crawler owns the SQLite
    /// file;
    /// [`StoreError::NewerSchema`] when it holds migrations this binary does
    /// not know; [`StoreError::Database`] when it cannot be created, opened
    /// or migrated.
    pub async fn open(config: &StoreConfig, request_timeout: Duration) -> Result<Self, StoreError> {
        match &config.url {
            Some(url) => Ok(Self::Postgres(
                PgStore::open_crawler(
                    url,
                    PG_CONNECTIONS,
                    config.lease(request_timeout),
                    request_timeout,
                    config.busy_warning,
                )
                .await?
                .with_outage_grace(config.outage_grace(request_timeout)),
            )),
            None => Ok(Self::Sqlite(SqliteStore::open(config).await?)),
        }
    }

    /// How this store waits for locks and outages.
    fn watch(&self) -> &Watch {
        each!(self, s => s.watch())
    }

    /// Runs `op` (what it does: `context`) through `faults::ride`: locks
    /// and this process's own slow writes waited out, the database away
    /// waited for within its grace. `op` is told whether an earlier try
    /// found the database away.
    async fn ride<T, F>(&self, context: &'static str, op: impl FnMut(bool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let explain = match self {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => Some(s),
        };
        faults::ride(self.watch(), context, explain, op).await
    }

    /// Whether the database is away now, since when and why, shared with
    /// `/healthz`, the stall guard and the watchdog.
    pub fn outage(&self) -> Arc<Outage> {
        self.watch().outage.clone()
    }

    /// Opens the database to add URLs (`trawler enqueue`), whether or not a
    /// crawler owns it. SQLite: as its owner when it is free, otherwise
    /// beside the owner ([`SqliteStore::open_shared`]), whose producer picks
    /// the new URLs up on its next look. PostgreSQL: beside any daemons,
    /// which are told at once ([`PgStore::relay_work_notifications`]). Only [`Store::enqueue`],
    /// [`Store::record_input_errors`] and reads are meant for such a store.
    ///
    /// Errors: as [`Backend::open`], except [`StoreError::Locked`].
    pub async fn open_to_enqueue(config: &StoreConfig) -> Result<Self, StoreError> {
        if let Some(url) = &config.url {
            return Ok(Self::Postgres(PgStore::open(url, 2).await?));
        }
        match SqliteStore::open(config).await {
            Ok(store) => Ok(Self::Sqlite(store)),
            Err(StoreError::Locked { .. }) => Ok(Self::Sqlite(SqliteStore::open_shared(config).await?)),
            Err(e) => Err(e),
        }
    }

    /// Opens an existing database for reading only (`trawler stats`,
    /// `trawler export`): no lock, no migrations, nothing written.
    ///
    ///
    /// Errors: [`StoreError::Database`] when it is missing, unreadable or
    /// (PostgreSQL) holds no trawler schema; [`StoreError::NewerSchema`]
    /// (PostgreSQL) when a newer trawler wrote it.
    pub async fn open_read_only(config: &StoreConfig) -> Result<Self, StoreError> {
        match &config.url {
            Some(url) => Ok(Self::Postgres(PgStore::open_read_only(url).await?)),
            None => Ok(Self::Sqlite(SqliteStore::open_read_only(&config.path).await?)),
        }
    }

    /// The `results` view's rows matching `filter`, in `url_id` order, as a
    /// stream: memory stays flat however many rows there are.
    pub fn export<'a>(&'a self, filter: &'a ExportFilter) -> BoxStream<'a, Result<ResultRow, StoreError>> {
        each!(self, s => Box::pin(s.export(filter)))
    }

    /// The attempts with a final response of the URLs matching `filter`,
    /// oldest first, as a stream, for a WARC archive.
    pub fn archive<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> BoxStream<'a, Result<ArchivedAttempt, StoreError>> {
        each!(self, s => Box::pin(s.archive(filter)))
    }

    /// The stored body (`store.save_body`) with this SHA-256, decoded.
    ///
    /// Errors: the database cannot be read, or the stored frame is corrupt.
    pub async fn body(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        ridden!(self, "read a body", s => s.body(sha256).await)
    }

    /// The `results` row of the URL with id `url_id`, if there is one.
    ///
    /// Errors: the database cannot be read.
    pub async fn result(&self, url_id: i64) -> Result<Option<ResultRow>, StoreError> {
        ridden!(self, "read one result", s => s.result(url_id).await)
    }

    /// The ids of those of `urls` that are stored, by URL.
    ///
    /// Errors: the database cannot be read.
    pub async fn ids(&self, urls: &[&str]) -> Result<BTreeMap<String, i64>, StoreError> {
        ridden!(self, "look up URL ids", s => s.ids(urls).await)
    }

    /// A snapshot for `trawler stats` at `now_ms` (Unix ms), read while a
    /// crawler may be writing.
    ///
    /// Errors: the database cannot be read.
    pub async fn stats(&self, now_ms: i64) -> Result<StatsReport, StoreError> {
        ridden!(self, "stats", s => s.stats(now_ms).await)
    }

    /// Truncates the engine's write-ahead log if it keeps one that only a
    /// checkpoint shrinks (SQLite's WAL, see [`SqliteStore::checkpoint`]);
    /// `None` when the engine has nothing to checkpoint.
    ///
    /// Errors: the database cannot be written.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        match self {
            Backend::Sqlite(s) => self.ride("checkpoint", |_| s.checkpoint()).await.map(Some),
            Backend::Postgres(_) => Ok(None),
        }
    }

    /// Makes statements waiting for a lock fail with [`StoreError::Busy`],
    /// and operations waiting for the database to come back with
    /// [`StoreError::Outage`], instead of waiting on (the crawl's teardown,
    /// after its grace period).
    pub fn give_up_waiting(&self) {
        match self {
            Backend::Sqlite(s) => s.give_up_waiting(),
            Backend::Postgres(s) => s.give_up_waiting(),
        }
    }

    /// How long statements have been waiting, and for what, shared with
    /// `/healthz`, the stall guard and the watchdog: SQLite's database lock
    /// or its one write connection held by a write still running, or on
    /// PostgreSQL any lock (rows, a table) that this daemon's statements
    /// wait for ([`Coordination::watch_lock_waits`]).
    pub fn lock_waits(&self) -> Arc<LockWaits> {
        self.watch().waits.clone()
    }

    /// The pauses of this store that excuse a crawl committing nothing
    /// ([`KnownPause`]).
    pub fn known_pause(&self) -> KnownPause {
        KnownPause::new(self.lock_waits(), self.outage())
    }

    /// When the oldest claim still in flight was taken (Unix ms), if any.
    ///
    /// Errors: the read failed.
    pub async fn oldest_lease_ms(&self) -> Result<Option<i64>, StoreError> {
        ridden!(self, "oldest lease", s => s.oldest_lease_ms().await)
    }

    /// The protocol of a database several daemons share (PostgreSQL):
    /// host leases, hop leases, shared robots.txt, work notifications,
    /// lock waits, queue health. `None` for a database one process owns
    /// (SQLite), which needs none of it: callers ask here once and keep
    /// the answer.
    pub fn coordination(self: &Arc<Self>) -> Option<Coordination> {
        match &**self {
            Backend::Sqlite(_) => None,
            Backend::Postgres(_) => Some(Coordination { backend: self.clone() }),
        }
    }

    /// Closes the connections (see [`SqliteStore::close`] for what the owner
    /// of a SQLite file does first).
    pub async fn close(&self) {
        each!(self, s => s.close().await)
    }
}

impl Store for Backend {
    async fn enqueue(&self, urls: &[NewUrl]) -> Result<u64, StoreError> {
        ridden!(self, "enqueue", s => s.enqueue(urls).await)
    }

    async fn record_input_errors(&self, errors: &[InputError]) -> Result<(), StoreError> {
        ridden!(self, "record input errors", s => s.record_input_errors(errors).await)
    }

    async fn ready_hosts(
        &self,
        now_ms: i64,
        busy: &[String],
        limit: u32,
        new_limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        ridden!(self, "ready hosts", s => s.ready_hosts(now_ms, busy, limit, new_limit).await)
    }

    async fn claim(&self, now_ms: i64, picks: &[(String, u32)]) -> Result<Claim, StoreError> {
        self.ride("claim", |again| async move {
            match self {
                Backend::Sqlite(s) => s.claim(now_ms, picks).await,
                Backend::Postgres(s) => s.claim_again(now_ms, picks, again).await,
            }
        })
        .await
    }

    async fn complete(
        &self,
        completions: &[Completion],
        limits: PageLimits,
    ) -> Result<Committed, StoreError> {
        self.ride("record results", |again| async move {
            match self {
                Backend::Sqlite(s) => s.complete(completions, limits).await,
                Backend::Postgres(s) => s.complete_again(completions, limits, again).await,
            }
        })
        .await
    }

    async fn requeue_abandoned(&self) -> Result<u64, StoreError> {
        ridden!(self, "requeue abandoned URLs", s => s.requeue_abandoned().await)
    }

    async fn release(&self, last_starts: &[(String, Duration)]) -> Result<u64, StoreError> {
        ridden!(self, "release host leases", s => s.release(last_starts).await)
    }

    async fn next_ready(&self) -> Result<Option<i64>, StoreError> {
        ridden!(self, "next ready host", s => s.next_ready().await)
    }

    async fn has_queued(&self) -> Result<bool, StoreError> {
        ridden!(self, "look for queued URLs", s => s.has_queued().await)
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        ridden!(self, "count URLs", s => s.counts().await)
    }

    async fn schedule_recrawls(&self, policy: &RecrawlPolicy) -> Result<u64, StoreError> {
        ridden!(self, "schedule recrawls", s => s.schedule_recrawls(policy).await)
    }

    async fn has_body(&self, sha256: &str) -> Result<bool, StoreError> {
        ridden!(self, "look up a body", s => s.has_body(sha256).await)
    }

    async fn save_body(&self, sha256: &str, bytes: u64, zstd: &[u8]) -> Result<(), StoreError> {
        ridden!(self, "store a body", s => s.save_body(sha256, bytes, zstd).await)
    }

    async fn requeue_recrawls(&self, now_ms: i64, limit: u32) -> Result<u64, StoreError> {
        ridden!(self, "requeue recrawls", s => s.requeue_recrawls(now_ms, limit).await)
    }
}

/// What a daemon sharing its database with others does besides crawling
/// ([`Backend::coordination`]). Each call rides out lock waits and outages
/// as every store call does.
#[derive(Clone)]
pub struct Coordination {
    /// Always [`Backend::Postgres`]: only [`Backend::coordination`] makes one.
    backend: Arc<Backend>,
}

impl Coordination {
    fn pg(&self) -> &PgStore {
        match &*self.backend {
            Backend::Postgres(pg) => pg,
            Backend::Sqlite(_) => {
                unreachable!("Backend::coordination makes a Coordination for PostgreSQL only")
            }
        }
    }

    /// The host leases this daemon holds, for workers to check before each
    /// request.
    pub fn host_leases(&self) -> Arc<HostLeases> {
        self.pg().host_leases()
    }

    /// One round of lease keeping ([`PgStore::keep_leases`]).
    ///
    /// Errors: the database cannot be written.
    pub async fn keep_leases(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<LeaseRound, StoreError> {
        self.backend.ride("keep host leases", |_| self.pg().keep_leases(last_starts, keeping)).await
    }

    /// Between lease rounds: hands over this daemon's hosts beyond its
    /// share when a daemon holds none, and gives up those handed over that
    /// are idle ([`PgStore::rebalance`]). Returns how many it still holds
    /// of those it is handing over.
    ///
    /// Errors: the database cannot be read or written.
    pub async fn rebalance(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<usize, StoreError> {
        self.backend.ride("rebalance host leases", |_| self.pg().rebalance(last_starts, keeping)).await
    }

    /// Leases `host` for a redirect hop to it ([`PgStore::lease_hop`]).
    ///
    /// Errors: the database cannot be written.
    pub async fn lease_hop(&self, host: &str) -> Result<HopLease, StoreError> {
        self.backend.ride("lease a redirect's host", |_| self.pg().lease_hop(host)).await
    }

    /// The unexpired robots.txt of `origin` another daemon fetched (the
    /// `robots_txt` table).
    ///
    /// Errors: the database cannot be read.
    pub async fn shared_robots_txt(&self, origin: &str) -> Result<Option<SharedRobotsTxt>, StoreError> {
        self.backend.ride("read a shared robots.txt", |_| self.pg().shared_robots_txt(origin)).await
    }

    /// Shares a robots.txt this daemon fetched with the other daemons
    /// ([`PgStore::share_robots_txt`]).
    ///
    /// Errors: the database cannot be written.
    pub async fn share_robots_txt(
        &self,
        origin: &str,
        http_status: u16,
        body: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let share = |_| self.pg().share_robots_txt(origin, http_status, body, ttl);
        self.backend.ride("share a robots.txt", share).await
    }

    /// Until `done`, wakes `wake` when another process adds work to the
    /// database ([`PgStore::relay_work_notifications`]).
    pub async fn relay_work_notifications(&self, wake: Arc<Notify>, done: CancellationToken) {
        self.pg().relay_work_notifications(wake, done).await
    }

    /// One look for this daemon's statements waiting on another session's
    /// locks ([`PgStore::watch_lock_waits`]).
    ///
    /// Errors: the database cannot be read.
    pub async fn watch_lock_waits(&self) -> Result<(), StoreError> {
        self.backend.ride("look for lock waits", |_| self.pg().watch_lock_waits()).await
    }

    /// The queue tables' health ([`PgStore::queue_health`]).
    ///
    /// Errors: the engine's statistics cannot be read.
    pub async fn queue_health(&self) -> Result<QueueHealth, StoreError> {
        self.backend.ride("queue health", |_| self.pg().queue_health()).await
    }
}
