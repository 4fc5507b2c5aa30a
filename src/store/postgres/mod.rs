//! The PostgreSQL engine: the same frontier and result log as SQLite's, in
//! a database on a PostgreSQL server (`migrations/postgres/`, the same
//! public schema at the same version).
//!
//! Hosts are leased: a claim takes, for each picked host, a lease with this
//! daemon's worker name, a fencing token from the `lease_tokens` sequence
//! and an expiry by the database's clock (`now()`), and puts the host's due
//! URLs in flight under that token. A completion takes effect only if its
//! URL still carries the token; otherwise its attempt is kept with outcome
//! `stale_lease` and changes nothing else. Leases are renewed, given up
//! when idle and ended when lapsed ([`PgStore::keep_leases`]), so several
//! daemons crawl one database at once, each host fetched by one at a time;
//! `trawler enqueue`, `stats` and `export` may run beside them.
//!
//! This file is the engine: opening, migrating, the [`Store`] operations
//! and the reads. `writes.rs` has a batch's statements ([`BatchWrites`]),
//! `coordination.rs` the protocol between daemons (leases taken, renewed,
//! given up and recovered, claims under them, shared robots.txt, work
//! notifications, lock waits), and `leases.rs` the leases this daemon
//! holds, in memory, that every request is checked against.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::batch::{self, AttemptRow, BatchWrites, ContentColumns, Lowered, Shorter, StoredContent, stored};
use super::faults::{Blocker, Kind, postgres_kind};
use super::rules::{self, DroppedRow, UrlChange, duration_ms, to_i64};
use super::{
    ArchivedAttempt, Claim, Committed, ExportFilter, InputError, LockWaits, Outage, PageLimits,
    RecrawlPolicy, ResultRow, StateCounts, StatsReport, Store, StoreError, Watch,
};
use crate::clock::unix_ms;
use crate::job::{Completion, ErrorKind, Hop, Job, NewUrl, Revisit, UrlState, Validators};
use leases::BootInstant;

use crate::redact::ForLog;

/// PostgreSQL's migrations. Their versions are the same public schema as
/// SQLite's at the same number, so the first is 5.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long opening waits for a connection before it reports the server
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The LISTEN/NOTIFY channel on which a process that adds work (new URLs,
/// URLs put back in the queue) tells idle daemons to look for it.
const WORK_CHANNEL: &str = "trawler_work";

/// How long the relay of work notifications waits before listening again
/// after its connection failed (the producer's own poll covers the gap).
const RELISTEN_AFTER: Duration = Duration::from_secs(5);

mod coordination;
mod leases;
mod writes;

use coordination::RECOVER_BATCH;
pub use coordination::{HopLease, LeaseRound, QueueHealth, SharedRobotsTxt};
pub use leases::HostLeases;
use writes::PgBatch;

/// The `results` view as [`ResultRow`] reads it: integers widened to
/// bigint, `fetched_at` and `changed_at` as RFC 3339 UTC text with milliseconds.
macro_rules! results_select {
    () => {
        "SELECT * FROM (SELECT url_id, url, host, state, http_status::int8 AS http_status, error_kind,
                attempts::int8 AS attempts, elapsed_ms,
                to_char(fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS fetched_at,
                fetched_at AS fetched_at_tz, final_url, redirects::int8 AS redirects, content_type, body_bytes,
                body_sha256, error_message, depth::int8 AS depth, found_on,
                to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS changed_at
         FROM results) AS results"
    };
}

/// A trawler database on a PostgreSQL server.
pub struct PgStore {
    pool: PgPool,
    /// The URL without its password, for messages.
    shown: String,
    /// This daemon's name in `hosts.lease_owner` and `attempts.worker`:
    /// host name, process id and a random suffix, unique per run.
    worker: String,
    /// Its sessions' `application_name` ([`session_name`]).
    session: String,
    /// Taken by claims, redirect-hop leases and the giving up of idle hosts
    /// in turn, so that an idle host is never given up while this daemon
    /// is claiming URLs of it or leasing it for a hop (see
    /// [`release_idle`](Self::release_idle)). Renewals do not take it: they
    /// only extend this daemon's own leases, and must not queue behind a
    /// claim.
    claiming: Mutex<()>,
    /// The host leases this daemon holds.
    leases: Arc<HostLeases>,
    /// How long this daemon's statements have been waiting for a lock
    /// ([`PgStore::watch_lock_waits`]), whether the database is away, and
    /// the token [`PgStore::give_up_waiting`] cancels.
    watch: Watch,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// libpq's URI form; the password, if any, in the URL, `PGPASSWORD` or
    /// `~/.pgpass`, which sqlx reads as libpq does)
    /// with at most `max_connections` connections, and applies pending
    /// migrations. Several processes may open one database at once: sqlx
    /// takes PostgreSQL's advisory lock while it migrates, so only one
    /// applies a migration. Such a store may enqueue and read; crawling
    /// needs [`open_crawler`](Self::open_crawler).
    ///
    /// Errors: [`StoreError::NewerSchema`] when the database holds
    /// migrations this binary does not know; [`StoreError::Database`] when
    /// the URL is malformed, the server cannot be reached or refuses, or a
    /// migration fails. Messages name the URL without its password.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, max_connections, None, Role::Tool).await?;
        migrate(&store.pool, &store.shown).await?;
        Ok(store)
    }

    /// Opens an existing trawler database for reading (`trawler stats`,
    /// `trawler export`): no migration, so a database trawler never wrote
    /// is reported, not given trawler's tables.
    ///
    /// Errors: [`StoreError::Database`] when the server cannot be reached or
    /// the database holds no trawler schema; [`StoreError::NewerSchema`]
    /// when a newer trawler wrote it.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url, 2, None, Role::Tool).await?;
        let found: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&store.pool)
                .await;
        let known = known_version();
        let error = match found {
            Ok(Some(found)) if found <= known => return Ok(store),
            Ok(Some(found)) => StoreError::NewerSchema { path: store.shown.clone(), found, known },
            // 42P01, undefined_table: no migration ever ran here.
            Ok(None) => no_schema(&store.shown),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => no_schema(&store.shown),
            Err(e) => db("open read-only")(e),
        };
        store.close().await;
        Err(error)
    }

    /// Connects, without migrating, with sessions named for `role`
    /// ([`session_name`]). With `idle_in_transaction`, the server ends a
    /// session of this store's that stays that long in a transaction
    /// without a statement (PostgreSQL's `idle_in_transaction_session_timeout`).
    async fn connect(
        url: &str,
        max_connections: u32,
        idle_in_transaction: Option<Duration>,
        role: Role,
    ) -> Result<Self, StoreError> {
        let shown = ForLog(url).to_string();
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::Database {
            context: "open",
            source: format!("{shown}: not a PostgreSQL URL: {e}").into(),
        })?;
        let worker = worker_name();
        let session = session_name(role, &worker);
        let mut options = options.application_name(&session);
        if let Some(limit) = idle_in_transaction {
            let ms = limit.as_millis().to_string();
            options = options.options([("idle_in_transaction_session_timeout", ms.as_str())]);
        }
        // A statement waiting on another session's lock is reported by
        // `watch_lock_waits`, naming the session; sqlx's own warning for a
        // slow statement would add the whole SQL of every one that waited.
        let options = sqlx::ConnectOptions::log_slow_statements(
            options,
            log::LevelFilter::Debug,
            Duration::from_secs(1),
        );
        // sqlx's pool tries a refused connection again until its acquire
        // timeout, then says only "pool timed out while waiting for an open
        // connection": one connection of its own first names the cause at
        // once (refused, no such database, a password refused).
        connect_once(&options).await.map_err(|cause| StoreError::Database {
            context: "open",
            source: format!("{shown}: {cause}").into(),
        })?;
        let mut pool = PgPoolOptions::new().max_connections(max_connections).acquire_timeout(CONNECT_TIMEOUT);
        if idle_in_transaction.is_some() {
            // A crawler keeps its connections for its whole run (opened by
            // `open_crawler`), as the SQLite store keeps its own: a
            // connection opened midway may find the process out of file
            // descriptors (its fetches use them up at times, and are
            // deferred), and a failed connect fails the statement.
            pool = pool.min_connections(max_connections).idle_timeout(None).max_lifetime(None);
        }
        let pool = pool
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database { context: "open", source: format!("{shown}: {e}").into() })?;
        // The default length; `open_crawler` sets the configured one.
        let leases = Arc::new(HostLeases::new(crate::config::DEFAULT_LEASE, Duration::ZERO));
        let watch = Watch::default();
        Ok(Self { pool, shown, worker, session, claiming: Mutex::new(()), leases, watch })
    }

    /// Waits `grace` for the database to come back when it goes away
    /// (`store.outage_grace`; see `faults::ride`). A store opened without
    /// it reports an unreachable database at once.
    pub fn with_outage_grace(mut self, grace: Duration) -> Self {
        self.watch.outage = Arc::new(Outage::new(grace, self.watch.waits.warn_after));
        self
    }

    /// How this store waits for locks and outages, for [`super::Backend`].
    pub(super) fn watch(&self) -> &Watch {
        &self.watch
    }

    /// Why no connection can be had, found by opening one of its own:
    /// sqlx's pool says only that it timed out. Names the error, or that
    /// the server did not answer within [`CONNECT_TIMEOUT`], or that it
    /// does answer (this daemon's connections are then all taken by
    /// statements that do not end).
    pub(crate) async fn connection_trouble(&self) -> String {
        match connect_once(&self.pool.connect_options()).await {
            Ok(()) => "the server answers; every connection of this daemon's is taken by a statement \
                       that has not ended"
                .to_owned(),
            Err(cause) => cause,
        }
    }

    /// Opens the database as [`open`](Self::open) does, for crawling beside
    /// any other daemons: its host leases last `lease` (by the database's
    /// clock) and its requests at most `request_timeout` (see
    /// [`HostLeases`]). A session of its that stays a whole lease in a
    /// transaction without a statement (the daemon froze, or lost the
    /// network, between two statements) is ended by the server, so that the
    /// rows it locked do not hold the other daemons up for longer than its
    /// leases would. Its `max_connections` sessions are opened now and kept
    /// for the store's life. Its statements that wait for another session's locks
    /// are reported after `busy_warning` ([`watch_lock_waits`](Self::watch_lock_waits)).
    ///
    /// Errors: as [`open`](Self::open).
    pub async fn open_crawler(
        url: &str,
        max_connections: u32,
        lease: Duration,
        request_timeout: Duration,
        busy_warning: Duration,
    ) -> Result<Self, StoreError> {
        let mut store = Self::connect(url, max_connections, Some(lease), Role::Crawler).await?;
        migrate(&store.pool, &store.shown).await?;
        let opened =
            futures::future::try_join_all((0..max_connections).map(|_| store.pool.acquire())).await.map_err(
                |e| StoreError::Database { context: "open", source: format!("{}: {e}", store.shown).into() },
            )?;
        drop(opened);
        store.leases = Arc::new(HostLeases::new(lease, request_timeout));
        store.watch.waits = Arc::new(LockWaits::new(busy_warning));
        Ok(store)
    }

    /// Makes this daemon's statements that wait for another session's lock,
    /// now or later, fail instead (cancelled with `pg_cancel_backend` from a
    /// session of its own, looked for every [`GIVE_UP_EVERY`] until the pool
    /// closes); a write that
    /// fails so says [`StoreError::Busy`]. The crawl's teardown calls it
    /// once its grace period is over, so that a lock held forever cannot
    /// hold the process forever. Nothing committed is lost: the cancelled
    /// transaction rolls back, and its URLs are put back by this daemon's
    /// release or, failing that, when its leases lapse.
    pub fn give_up_waiting(&self) {
        if self.watch.give_up.is_cancelled() {
            return;
        }
        self.watch.give_up.cancel();
        let (pool, name) = (self.pool.clone(), self.session.clone());
        tokio::spawn(async move {
            // A connection of its own: the pool's may all be waiting.
            use sqlx::Connection;
            let Ok(mut session) = sqlx::PgConnection::connect_with(&pool.connect_options()).await else {
                return;
            };
            while !pool.is_closed() {
                let cancelled = sqlx::query(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .execute(&mut session)
                .await;
                if cancelled.is_err() {
                    return;
                }
                tokio::time::sleep(GIVE_UP_EVERY).await;
            }
            let _ = session.close().await;
        });
    }

    /// What this daemon knows of the others when new hosts are few (a
    /// claim round) and when it rebalances (a lease round): how many
    /// crawling daemons are connected to the database (their
    /// `session_name`s in `pg_stat_activity`), how many hosts are leased,
    /// to how many daemons, and how many to this one.
    ///
    /// Errors: the database cannot be read.
    async fn share(&self) -> Result<Share, StoreError> {
        let (processes, leased, owners, mine): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(DISTINCT application_name) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name LIKE 'trawler %'),
                    count(*), count(DISTINCT lease_owner), count(*) FILTER (WHERE lease_owner = $1)
             FROM hosts WHERE lease_owner IS NOT NULL AND lease_expires_at >= now()",
        )
        .bind(&self.worker)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count daemons and leases"))?;
        let count = |n: i64| n as usize;
        Ok(Share {
            processes: count(processes),
            leased: count(leased),
            owners: count(owners),
            mine: count(mine),
        })
    }

    /// The schema version the database is at: its newest applied migration.
    ///
    /// Errors: the database cannot be read.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(db("schema version"))
    }

    /// This daemon's worker name (`hosts.lease_owner`, `attempts.worker`).
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The host leases this daemon holds, for workers to check before each
    /// request ([`HostLeases::may_start`]).
    pub fn host_leases(&self) -> Arc<HostLeases> {
        self.leases.clone()
    }

    /// The `results` view's rows matching `filter`, in `url_id` order, as a
    /// stream; times as RFC 3339 UTC text, as SQLite stores them.
    pub fn export<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl futures::Stream<Item = Result<ResultRow, StoreError>> + 'a {
        sqlx::query_as::<_, ResultRow>(concat!(
            results_select!(),
            " WHERE ($1::text IS NULL OR state = $1) AND ($2::timestamptz IS NULL OR fetched_at_tz >= $2::timestamptz)
             ORDER BY url_id IS NULL, url_id"
        ))
        .bind(filter.state.as_deref())
        .bind(filter.since.as_deref())
        .fetch(&self.pool)
        .map_err(|e| StoreError::Database { context: "export", source: Box::new(e) })
    }

    /// As [`SqliteStore::archive`](super::SqliteStore::archive).
    pub fn archive<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl futures::Stream<Item = Result<ArchivedAttempt, StoreError>> + 'a {
        sqlx::query_as::<_, ArchivedAttempt>(
            "SELECT a.id, u.url, a.final_url,
                    to_char(a.fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS fetched_at,
                    a.outcome, a.http_status::int8 AS http_status, a.content_type, a.body_bytes, a.body_sha256,
                    a.headers::text AS headers
             FROM attempts AS a JOIN urls AS u ON u.id = a.url_id
             WHERE a.outcome IN ('done', 'not_modified')
               AND ($1::text IS NULL OR u.state = $1) AND ($2::timestamptz IS NULL OR a.fetched_at >= $2::timestamptz)
             ORDER BY a.id",
        )
        .bind(filter.state.as_deref())
        .bind(filter.since.as_deref())
        .fetch(&self.pool)
        .map_err(|e| StoreError::Database { context: "export", source: Box::new(e) })
    }

    /// As [`SqliteStore::body`](super::SqliteStore::body).
    pub async fn body(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let data: Option<Vec<u8>> = sqlx::query_scalar("SELECT data FROM bodies WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read a body"))?;
        data.map(|zstd| super::decompress_body(&zstd)).transpose()
    }

    /// The `results` row of the URL with id `url_id`, if there is one.
    ///
    /// Errors: the database cannot be read.
    pub async fn result(&self, url_id: i64) -> Result<Option<ResultRow>, StoreError> {
        sqlx::query_as(concat!(results_select!(), " WHERE url_id = $1"))
            .bind(url_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read one result"))
    }

    /// The ids of those of `urls` that are stored, by URL.
    ///
    /// Errors: the database cannot be read.
    pub async fn ids(&self, urls: &[&str]) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT url, id FROM urls WHERE url = ANY($1::text[])")
            .bind(urls)
            .fetch_all(&self.pool)
            .await
            .map_err(db("look up URL ids"))?;
        Ok(rows.into_iter().collect())
    }

    /// A snapshot for `trawler stats` at `now_ms` (Unix ms).
    ///
    /// Errors: the database cannot be read.
    pub async fn stats(&self, now_ms: i64) -> Result<StatsReport, StoreError> {
        super::stats_report(self, now_ms).await
    }

    /// When the oldest claim still in flight was taken (Unix ms), if any.
    ///
    /// Errors: the read failed.
    pub async fn oldest_lease_ms(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT min(leased_at_ms) FROM urls WHERE state = 'in_flight'")
            .fetch_one(&self.pool)
            .await
            .map_err(db("oldest lease"))
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// This run's worker name: `host:pid:random`.
/// What a store's sessions are for, which their names say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A crawling daemon's ([`PgStore::open_crawler`]).
    Crawler,
    /// Any other command's: enqueue, stats, export.
    Tool,
}

/// The `application_name` of a worker's sessions: `trawler` for a crawling
/// daemon's, `trawler-cli` for another command's, then its worker name,
/// as PostgreSQL keeps it (at most 63 bytes, NAMEDATALEN - 1; printable
/// ASCII, as the server would replace the rest). What
/// [`PgStore::watch_lock_waits`] knows its own sessions by, what daemons
/// count each other by (`trawler %`: only crawling daemons take hosts), and
/// what an operator sees in `pg_stat_activity`.
fn session_name(role: Role, worker: &str) -> String {
    let prefix = match role {
        Role::Crawler => "trawler",
        Role::Tool => "trawler-cli",
    };
    let mut name: String = format!("{prefix} {worker}")
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect();
    name.truncate(63);
    name
}

/// What a round of [`PgStore`]'s `ready_hosts` knows of the other daemons
/// when it picks new hosts.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Crawling daemons connected to the database, this one included
    /// (enqueue, stats and export sessions are named otherwise).
    processes: usize,
    /// Hosts leased (unlapsed), to any daemon.
    leased: usize,
    /// Daemons holding those leases.
    owners: usize,
    /// Of those, this daemon's.
    mine: usize,
}

impl Share {
    /// How many of a `window` of ready hosts no daemon holds this round
    /// takes, `wanted` (its idle workers) at most: enough to bring it up to
    /// its share of the hosts in play (leased ones and the window), and at
    /// least its share of the window, so that a daemon holding many hosts
    /// that wait on delays still takes new ones while the others are busy.
    /// Never none of a window that has some. A window with room for every
    /// daemon's `wanted` is not shared out: it would only slow the intake.
    fn take(self, wanted: usize, window: usize) -> usize {
        let processes = self.processes.max(1);
        if window >= wanted.saturating_mul(processes) {
            // Enough for every daemon to fill its idle workers.
            return wanted;
        }
        let of_window = window.div_ceil(processes);
        let to_even = (self.leased + window).div_ceil(processes).saturating_sub(self.mine);
        wanted.min(window).min(of_window.max(to_even))
    }

    /// How many hosts this daemon holds beyond its share of the leased
    /// ones (their count over the daemons connected, rounded up), when a
    /// connected daemon holds none: one that joined a running crawl, whose
    /// intake finds no host free while the others keep theirs busy. 0 when
    /// every daemon holds some, so daemons that took uneven shares as their
    /// own workers allowed are not made to trade hosts back and forth.
    fn surplus(self) -> usize {
        if self.processes <= self.owners {
            return 0;
        }
        self.mine.saturating_sub(self.leased.div_ceil(self.processes))
    }
}

/// How often, once the crawl gave up waiting for locks, this daemon's
/// statements that wait for one are cancelled.
const GIVE_UP_EVERY: Duration = Duration::from_millis(100);

/// How long a statement must have waited for another session's lock before
/// [`PgStore::watch_lock_waits`] counts it: daemons' own transactions on the
/// same rows wait milliseconds.
pub const LOCK_WAIT_NOTICED: Duration = Duration::from_secs(1);

fn worker_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_owned()
    };
    format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
}

fn no_schema(shown: &str) -> StoreError {
    StoreError::Database {
        context: "open read-only",
        source: format!("{shown}: no trawler database here (no trawler tables); crawl into it first").into(),
    }
}

/// The newest schema version this binary knows.
fn known_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

async fn migrate(pool: &PgPool, shown: &str) -> Result<(), StoreError> {
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(found)) => {
            Err(StoreError::NewerSchema { path: shown.to_owned(), found, known: known_version() })
        }
        Err(e) => Err(StoreError::Database { context: "migrate", source: format!("{shown}: {e}").into() }),
    }
}

/// How many more hosts than it wants a daemon picks its new hosts from, at
/// random (see `ready_hosts`).
const NEW_HOST_WINDOW: i64 = 4;

/// Tries of a transaction that PostgreSQL aborted to resolve a deadlock or
/// a serialization conflict (SQLSTATE 40P01, 40001), which other daemons'
/// transactions on the same rows can cause; each try is a whole
/// transaction, so trying again is safe.
const CONFLICT_TRIES: u32 = 5;

impl PgStore {
    /// Runs the transaction `op` (what it does: `context`, for errors) again
    /// when PostgreSQL aborted it as a deadlock victim or a serialization
    /// failure, up to [`CONFLICT_TRIES`] times.
    async fn writing<T, F>(&self, context: &'static str, mut op: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match op().await {
                Err(e) if retry_conflict(&e, tries).await => {}
                // 57014 query_canceled: by give_up_waiting, while it waited
                // for another session's lock.
                Err(sqlx::Error::Database(d))
                    if self.watch.give_up.is_cancelled() && d.code().as_deref() == Some("57014") =>
                {
                    let (blocker, waited) = self.watch.waits.waiting().unwrap_or_default();
                    return Err(StoreError::Busy { context, waited, blocker });
                }
                other => return other.map_err(db(context)),
            }
        }
    }
}

/// Whether a transaction that failed with `e` on its `tries`-th try should
/// be tried again: a deadlock or serialization failure (PostgreSQL manual,
/// Appendix A: 40P01 deadlock_detected, 40001 serialization_failure), fewer
/// than [`CONFLICT_TRIES`] times. Pauses 5 ms per try so far before saying
/// yes.
async fn retry_conflict(e: &sqlx::Error, tries: u32) -> bool {
    let conflict =
        matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")));
    if !conflict || tries >= CONFLICT_TRIES {
        return false;
    }
    tracing::debug!("transaction aborted by a conflict with another transaction, trying again: {e}");
    tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
    true
}

/// `last_starts` as the arrays of hosts and seconds ago that statements
/// unnest.
fn last_start_arrays(last_starts: &[(String, Duration)]) -> (Vec<&str>, Vec<f64>) {
    last_starts.iter().map(|(host, ago)| (host.as_str(), ago.as_secs_f64())).unzip()
}

/// A store error for `e` in `context`, as `faults::postgres_kind` sorts
/// it: the database away is [`StoreError::Unreachable`], a full disk
/// [`StoreError::DiskFull`], anything else [`StoreError::Database`]. (A
/// lock is waited for by the statement itself, not returned.)
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match postgres_kind(&e) {
        Kind::Unreachable => StoreError::Unreachable { context, source: Box::new(e) },
        Kind::Full => StoreError::DiskFull { context },
        Kind::Locked(_) | Kind::Other => StoreError::Database { context, source: Box::new(e) },
    }
}

/// Opens one connection with `options` and closes it, within
/// [`CONNECT_TIMEOUT`]. Errors: what connecting failed with, as text.
async fn connect_once(options: &PgConnectOptions) -> Result<(), String> {
    use sqlx::Connection;
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} s (a host that is down, or a network that drops the packets)",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Tells listening daemons, when the caller's transaction commits, that
/// there is work to look for ([`WORK_CHANNEL`]; PostgreSQL delivers a
/// notification at commit, and folds duplicates within one transaction).
async fn notify_work(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&mut **tx).await?;
    Ok(())
}

/// Inserts URLs not known yet and marks their hosts as having work, in the
/// caller's transaction. Returns how many were new.
async fn insert_urls(tx: &mut Transaction<'_, Postgres>, urls: &[NewUrl]) -> Result<u64, sqlx::Error> {
    if urls.is_empty() {
        return Ok(0);
    }
    let hosts: Vec<String> = sqlx::query_scalar(
        "INSERT INTO urls (url, host, added_at, depth, found_on)
         SELECT url, host, now(), depth, found_on
         FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[]) AS v(url, host, depth, found_on)
         ON CONFLICT (url) DO NOTHING
         RETURNING host",
    )
    .bind(urls.iter().map(|u| u.url.as_str()).collect::<Vec<_>>())
    .bind(urls.iter().map(|u| u.host.as_str()).collect::<Vec<_>>())
    .bind(urls.iter().map(|u| i32::try_from(u.depth).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(urls.iter().map(|u| u.found_on).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let mut new_hosts: BTreeMap<&str, i64> = BTreeMap::new();
    for host in &hosts {
        *new_hosts.entry(host).or_default() += 1;
    }
    if !new_hosts.is_empty() {
        // Sorted by host (a BTreeMap), so daemons lock host rows in one order.
        sqlx::query(
            "INSERT INTO hosts (host, work_at_ms, urls)
             SELECT host, 0, n FROM unnest($1::text[], $2::int8[]) AS v(host, n)
             ON CONFLICT (host) DO UPDATE SET work_at_ms = 0, urls = hosts.urls + excluded.urls",
        )
        .bind(new_hosts.keys().copied().collect::<Vec<_>>())
        .bind(new_hosts.values().copied().collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(hosts.len() as u64)
}

impl PgStore {
    /// [`Store::complete`]; `again` when an earlier try of these very
    /// completions found the database away: that try may have committed
    /// before its answer was lost, so attempts already recorded (by this
    /// worker, for the URL, its attempt number and start) are not recorded
    /// twice. Their URLs' leases are gone then, so nothing else is applied
    /// twice.
    ///
    /// Errors: the database cannot be written.
    pub async fn complete_again(
        &self,
        completions: &[Completion],
        limits: PageLimits,
        again: bool,
    ) -> Result<Committed, StoreError> {
        let committed = self
            .writing("record results", || async {
                let mut tx = self.pool.begin().await?;
                let mut engine = PgBatch { tx: &mut tx, worker: &self.worker, again };
                let committed =
                    batch::write_batch(&mut engine, completions, limits, SystemTime::now()).await?;
                tx.commit().await?;
                Ok(committed)
            })
            .await;
        if committed.is_ok() {
            // Results go through: whatever held them is gone (said at once,
            // not at the next look for lock waits, which a batch crawl's end
            // may not wait for).
            self.watch.waits.cleared();
        }
        committed
    }
}

super::stats_queries!(PgStore, pool);

impl Store for PgStore {
    async fn enqueue(&self, urls: &[NewUrl]) -> Result<u64, StoreError> {
        self.writing("enqueue", || async {
            let mut tx = self.pool.begin().await?;
            let new = insert_urls(&mut tx, urls).await?;
            if new > 0 {
                notify_work(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(new)
        })
        .await
    }

    async fn record_input_errors(&self, errors: &[InputError]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO input_errors (source, line, text, reason, recorded_at)
             SELECT source, line, text, reason, now()
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[]) AS v(source, line, text, reason)
             ON CONFLICT (source, line, text) DO NOTHING",
        )
        .bind(errors.iter().map(|e| e.source.as_str()).collect::<Vec<_>>())
        .bind(errors.iter().map(|e| to_i64(e.line)).collect::<Vec<_>>())
        .bind(errors.iter().map(|e| e.text.as_str()).collect::<Vec<_>>())
        .bind(errors.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .map_err(db("record input errors"))?;
        Ok(())
    }

    async fn ready_hosts(
        &self,
        now_ms: i64,
        busy: &[String],
        limit: u32,
        new_limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // This daemon's hosts, and of the hosts no daemon holds a window of
        // the longest-waiting, NEW_HOST_WINDOW times as many as wanted:
        // daemons that all took the oldest would all pick the same ones,
        // and all but one would come away empty until their next poll.
        // Neither the hosts busy here nor those being handed over to
        // another daemon (`rebalance`).
        let held_back = self.leases.held_back();
        let skipped = match held_back.is_empty() {
            true => std::borrow::Cow::Borrowed(busy),
            false => std::borrow::Cow::Owned([busy, &held_back[..]].concat()),
        };
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(
            "(SELECT host, ready_at_ms, true FROM hosts
              WHERE lease_owner = $4 AND ready_at_ms <= $1 AND host <> ALL($2::text[])
              ORDER BY ready_at_ms LIMIT $3)
             UNION ALL
             (SELECT host, ready_at_ms, false FROM hosts
              WHERE ready_at_ms <= $1 AND host <> ALL($2::text[])
                AND (lease_owner IS NULL OR lease_expires_at < now())
              ORDER BY ready_at_ms LIMIT $5)",
        )
        .bind(now_ms)
        .bind(&*skipped)
        .bind(i64::from(limit))
        .bind(&self.worker)
        .bind(i64::from(new_limit) * NEW_HOST_WINDOW)
        .fetch_all(&self.pool)
        .await
        .map_err(db("ready hosts"))?;
        let (mut ready, window): (Vec<_>, Vec<_>) = rows.into_iter().partition(|row| row.2);
        // A full window has hosts to spare; fewer new hosts than that are
        // shared out (`Share`), so that they are not all taken by whichever
        // daemon's rounds came first.
        let take = if window.is_empty() {
            0
        } else if window.len() as i64 >= i64::from(new_limit) * NEW_HOST_WINDOW {
            new_limit as usize
        } else {
            self.share().await?.take(new_limit as usize, window.len())
        };
        ready.extend(rand::seq::IndexedRandom::choose_multiple(&window[..], &mut rand::rng(), take).cloned());
        ready.sort_by_key(|row| row.1);
        ready.truncate(limit as usize);
        Ok(ready.into_iter().map(|row| row.0).collect())
    }

    async fn claim(&self, now_ms: i64, picks: &[(String, u32)]) -> Result<Claim, StoreError> {
        self.claim_again(now_ms, picks, false).await
    }

    async fn complete(
        &self,
        completions: &[Completion],
        limits: PageLimits,
    ) -> Result<Committed, StoreError> {
        self.complete_again(completions, limits, false).await
    }

    async fn requeue_abandoned(&self) -> Result<u64, StoreError> {
        // Other daemons may be crawling: only what lapsed leases held is
        // known to be abandoned. A crashed daemon's other leases lapse
        // within a lease's length, and the lease rounds end them then.
        let mut requeued = 0;
        loop {
            let (hosts, urls) = self.recover_lapsed().await?;
            requeued += urls;
            if hosts < RECOVER_BATCH as u64 {
                return Ok(requeued);
            }
        }
    }

    async fn release(&self, last_starts: &[(String, Duration)]) -> Result<u64, StoreError> {
        let (hosts, agos) = last_start_arrays(last_starts);
        let requeued = self
            .writing("release host leases", || async {
                let mut tx = self.pool.begin().await?;
                let requeued: Vec<String> = sqlx::query_scalar(
                    "UPDATE urls SET state = 'queued', lease = NULL, leased_at_ms = NULL
                     FROM hosts
                     WHERE hosts.lease_owner = $1 AND urls.lease = hosts.lease_token
                       AND urls.state = 'in_flight'
                     RETURNING urls.host",
                )
                .bind(&self.worker)
                .fetch_all(&mut *tx)
                .await?;
                let distinct: BTreeSet<&str> = requeued.iter().map(String::as_str).collect();
                sqlx::query(
                    "WITH v AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS v(host, ago_s)),
                     r AS (SELECT h.host, v.ago_s FROM hosts AS h LEFT JOIN v ON v.host = h.host
                           WHERE h.lease_owner = $1 ORDER BY h.host FOR UPDATE OF h)
                     UPDATE hosts SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                         work_at_ms = CASE WHEN hosts.host = ANY($4::text[]) THEN 0 ELSE hosts.work_at_ms END,
                         last_start_at = greatest(hosts.last_start_at, now() - make_interval(secs => r.ago_s))
                     FROM r WHERE hosts.host = r.host",
                )
                .bind(&self.worker)
                .bind(&hosts)
                .bind(&agos)
                .bind(distinct.into_iter().collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
                if !requeued.is_empty() {
                    notify_work(&mut tx).await?;
                }
                tx.commit().await?;
                Ok(requeued.len() as u64)
            })
            .await?;
        self.leases.released_all();
        Ok(requeued)
    }

    async fn next_ready(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT ready_at_ms FROM hosts WHERE work_at_ms < 9223372036854775807 ORDER BY ready_at_ms LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("next ready host"))
    }

    async fn has_queued(&self) -> Result<bool, StoreError> {
        // URLs other daemons hold may come back (a retry, a stop, a lapsed
        // lease): the crawl is not over while any is in flight.
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM urls WHERE state IN ('queued', 'in_flight'))")
            .fetch_one(&self.pool)
            .await
            .map_err(db("look for queued URLs"))
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT state, count(*) FROM urls GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db("count URLs"))?;
        let mut counts = StateCounts::default();
        for (state, n) in rows {
            let n = n as u64;
            match UrlState::from_name(&state) {
                Some(UrlState::Queued) => counts.queued = n,
                Some(UrlState::InFlight) => counts.in_flight = n,
                Some(UrlState::Done) => counts.done = n,
                Some(UrlState::Failed) => counts.failed = n,
                None => {}
            }
        }
        let invalid: i64 = sqlx::query_scalar("SELECT count(*) FROM input_errors")
            .fetch_one(&self.pool)
            .await
            .map_err(db("count input errors"))?;
        counts.invalid_lines = invalid as u64;
        Ok(counts)
    }

    async fn schedule_recrawls(&self, policy: &RecrawlPolicy) -> Result<u64, StoreError> {
        let hosts: Vec<&str> = policy.per_host.keys().map(String::as_str).collect();
        let afters: Vec<i64> = policy.per_host.values().map(|d| duration_ms(*d)).collect();
        let result = sqlx::query(
            "WITH p AS (SELECT * FROM unnest($1::text[], $2::int8[]) AS p(host, after_ms)),
             due AS (SELECT u.id, u.finished_ms + CASE
                         WHEN coalesce(p.after_ms, $3) IS NULL THEN NULL
                         WHEN $4 AND u.state = 'done' THEN coalesce(u.recrawl_interval_ms, p.after_ms, $3)
                         ELSE coalesce(p.after_ms, $3) END AS at_ms
                     FROM urls AS u LEFT JOIN p ON p.host = u.host
                     WHERE u.state IN ('done', 'failed'))
             UPDATE urls SET recrawl_at_ms = due.at_ms FROM due
             WHERE urls.id = due.id AND urls.recrawl_at_ms IS DISTINCT FROM due.at_ms",
        )
        .bind(&hosts)
        .bind(&afters)
        .bind(policy.default.map(duration_ms))
        .bind(policy.adaptive)
        .execute(&self.pool)
        .await
        .map_err(db("schedule recrawls"))?;
        Ok(result.rows_affected())
    }

    async fn has_body(&self, sha256: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bodies WHERE sha256 = $1)")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await
            .map_err(db("look up a body"))
    }

    async fn save_body(&self, sha256: &str, bytes: u64, zstd: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bodies (sha256, bytes, encoding, data, stored_at) VALUES ($1, $2, 'zstd', $3, now())
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(to_i64(bytes))
        .bind(zstd)
        .execute(&self.pool)
        .await
        .map_err(db("store a body"))?;
        Ok(())
    }

    async fn requeue_recrawls(&self, now_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.writing("requeue recrawls", || async {
            let mut tx = self.pool.begin().await?;
            let hosts: Vec<String> = sqlx::query_scalar(
                "UPDATE urls SET state = 'queued', not_before_ms = 0, recrawl_at_ms = NULL,
                     recrawls = recrawls + 1, attempts_before = attempts
                 WHERE id IN (SELECT id FROM urls WHERE recrawl_at_ms <= $1 ORDER BY recrawl_at_ms LIMIT $2
                              FOR UPDATE SKIP LOCKED)
                 RETURNING host",
            )
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            let distinct: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
            if !distinct.is_empty() {
                sqlx::query("UPDATE hosts SET work_at_ms = 0 WHERE host = ANY($1::text[])")
                    .bind(distinct.into_iter().collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await?;
                notify_work(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(hosts.len() as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_takes_its_share_of_new_hosts_and_never_none_of_some() {
        let share = |processes, leased, mine| Share { processes, leased, owners: 1, mine };
        // Three daemons, six new hosts: two each, not six to the first up.
        assert_eq!(share(3, 0, 0).take(32, 6), 2);
        assert_eq!(share(3, 2, 2).take(32, 4), 2, "its share of the window, though it has its share");
        assert_eq!(share(3, 2, 0).take(32, 4), 2);
        assert_eq!(share(3, 4, 0).take(32, 2), 2, "the last brings itself up to its share");
        assert_eq!(share(3, 0, 0).take(32, 1), 1);
        assert_eq!(share(3, 0, 0).take(32, 0), 0);
        // Many hosts: the idle workers bound it, as before.
        assert_eq!(share(3, 0, 0).take(32, 128), 32);
        assert_eq!(share(3, 200, 150).take(8, 24), 8, "room for every daemon's idle workers");
        assert_eq!(share(3, 200, 150).take(8, 23), 8.min(23usize.div_ceil(3)));
        assert_eq!(share(1, 0, 0).take(32, 6), 6);
        assert_eq!(share(0, 0, 0).take(32, 6), 6, "no count seen: alone");
        // Holding many hosts that wait on delays: still a share of new ones.
        assert_eq!(share(3, 120, 100).take(32, 6), 2);
    }

    #[test]
    fn a_daemon_hands_over_its_hosts_beyond_its_share_only_to_one_that_holds_none() {
        let share = |processes, leased, owners, mine| Share { processes, leased, owners, mine };
        // One daemon holds all 200; a second joined: 100 each.
        assert_eq!(share(2, 200, 1, 200).surplus(), 100);
        // Three daemons, two hold 150 and 50; the third joined.
        assert_eq!(share(3, 200, 2, 150).surplus(), 150 - 67);
        assert_eq!(share(3, 200, 2, 50).surplus(), 0, "under its share");
        // Every daemon holds some: no trading back and forth.
        assert_eq!(share(2, 200, 2, 190).surplus(), 0);
        assert_eq!(share(1, 200, 1, 200).surplus(), 0, "alone");
        assert_eq!(share(0, 0, 0, 0).surplus(), 0, "nothing leased");
    }

    #[test]
    fn session_names_fit_postgresql_and_name_what_the_session_is_for() {
        let name = session_name(Role::Crawler, &format!("{}:123:abcdef01", "h".repeat(80)));
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("trawler hhh"));
        assert_eq!(session_name(Role::Crawler, "héte:1:2"), "trawler h?te:1:2");
        assert_eq!(session_name(Role::Tool, "h:1:2"), "trawler-cli h:1:2");
    }
}
