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
use super::leases::{BootInstant, HostLeases};
use super::rules::{self, DroppedRow, UrlChange, duration_ms, to_i64};
use super::{
    ArchivedAttempt, Claim, Committed, ExportFilter, InputError, LockWaits, Outage, PageLimits,
    RecrawlPolicy, ResultRow, StateCounts, StatsQueries, StatsReport, Store, StoreError, Watch,
};
use crate::clock::unix_ms;
use crate::job::{Completion, ErrorKind, Hop, Job, NewUrl, Revisit, UrlState, Validators};

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

/// Leases the hosts `$1` (text[], sorted) to the worker `$2` for `$3`
/// seconds, as [`Leased`] rows: those no other daemon holds (or whose lease
/// lapsed); a host this daemon holds keeps its token. `$own` and `$others`
/// are the locking clauses of the rows of hosts this daemon holds and of
/// the others ([`LeaseWait`] says which are used when).
///
/// Another daemon's claim locks the rows of the hosts it is taking on until
/// it commits; one frozen right after this statement (SIGSTOP, a stall, its
/// network cut) would hold them until the server ends its session, a whole
/// lease later. So a claim never waits for the row of a host this daemon
/// does not hold (`SKIP LOCKED`): another daemon is taking it on, or its
/// lease is being ended, and the host is left out of this claim, ready for
/// a later one. The rows of this daemon's own hosts are most often locked
/// by its own writer recording the host's results, whose commit is a moment
/// away (skipping them would leave the host unclaimed, and the producer
/// idle, until its next poll): those are waited for. No other daemon's
/// claim locks them (its own part takes its hosts, its other part hosts
/// free or lapsed), only another daemon's writer recording a link to the
/// host, for the length of its transaction. A write of this daemon's own
/// that hangs holds its claims up, as it should: that is what
/// `watch_lock_waits` reports and systemd's watchdog restarts. Waiting
/// cannot deadlock: its own rows are locked before any other (the first
/// part of the union), by the first statement of the transaction, in host
/// order as every writer locks them. A row waited for is checked again once
/// free (a host another daemon took over meanwhile is left out).
///
/// A host new to this daemon comes with how long ago its last request may
/// have started: the time its last owner recorded on giving it up, or, for
/// a lapsed lease, the latest its owner could have started one (the lapse
/// less `$4`, a request timeout in seconds: it starts none later).
macro_rules! lease_hosts_sql {
    ($own:literal, $others:literal) => {
        concat!(
            "WITH own AS (
                 SELECT host, lease_owner AS old_owner, lease_token AS old_token,
                        lease_expires_at AS old_expires, last_start_at
                 FROM hosts
                 WHERE host = ANY($1::text[]) AND lease_owner = $2
                 ORDER BY host ",
            $own,
            "),
             others AS (
                 SELECT host, lease_owner AS old_owner, lease_token AS old_token,
                        lease_expires_at AS old_expires, last_start_at
                 FROM hosts
                 WHERE host = ANY($1::text[])
                   AND (lease_owner IS NULL OR (lease_owner <> $2 AND lease_expires_at < now()))
                 ORDER BY host ",
            $others,
            "),
             p AS (SELECT * FROM own UNION ALL SELECT * FROM others)
             UPDATE hosts SET
                 lease_token = CASE WHEN hosts.lease_owner = $2 THEN hosts.lease_token
                                    ELSE nextval('lease_tokens') END,
                 lease_owner = $2,
                 lease_expires_at = now() + make_interval(secs => $3)
             FROM p WHERE hosts.host = p.host
             RETURNING hosts.host, hosts.lease_token AS token,
                 CASE WHEN p.old_owner <> $2 THEN p.old_token END AS taken_from,
                 p.old_owner IS DISTINCT FROM $2 AS new,
                 extract(epoch FROM now() - greatest(p.last_start_at,
                     CASE WHEN p.old_owner <> $2 THEN p.old_expires - make_interval(secs => $4) END))::float8
                     AS last_start_s"
        )
    };
}

/// The longest a redirect hop's lease statement waits for its host's row
/// ([`LeaseWait::AnyHost`]): PostgreSQL's `lock_timeout`, for that
/// statement only. A writer commits in milliseconds; a row held longer is
/// most likely another daemon's claim taking the host on.
const OWN_LOCK_WAIT: &str = "SET LOCAL lock_timeout = '200ms'";

/// What [`PgStore::queue_health`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueHealth {
    /// `(table, dead row versions)` of `urls`, `hosts` and `attempts`.
    pub dead_tuples: Vec<(String, i64)>,
    /// Seconds the oldest snapshot-holding transaction on the database has
    /// been open (0 when none is).
    pub oldest_transaction_s: f64,
}

/// A trawler database on a PostgreSQL server.
pub struct PgStore {
    pool: PgPool,
    /// The URL without its password, for messages.
    shown: String,
    /// This daemon's name in `hosts.lease_owner` and `attempts.worker`:
    /// host name, process id and a random suffix, unique per run.
    worker: String,
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

/// What one round of [`PgStore::keep_leases`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRound {
    /// Leases renewed.
    pub renewed: u64,
    /// Hosts whose lease this daemon found taken over by another (it had
    /// lapsed): requests to them stopped at their deadline.
    pub lost: Vec<String>,
    /// Idle hosts given up (nothing of theirs in flight here).
    pub released: u64,
    /// Lapsed leases of any daemon (a crashed one's) ended, and how many
    /// URLs they held in flight went back to the queue.
    pub recovered_hosts: u64,
    pub recovered_urls: u64,
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
        let store = Self::connect(url, max_connections, None).await?;
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
        let store = Self::connect(url, 2, None).await?;
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

    /// Connects, without migrating. With `idle_in_transaction`, the server
    /// ends a session of this store's that stays that long in a transaction
    /// without a statement (PostgreSQL's `idle_in_transaction_session_timeout`).
    async fn connect(
        url: &str,
        max_connections: u32,
        idle_in_transaction: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let shown = ForLog(url).to_string();
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::Database {
            context: "open",
            source: format!("{shown}: not a PostgreSQL URL: {e}").into(),
        })?;
        let worker = worker_name();
        let mut options = options.application_name(&session_name(&worker));
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
        Ok(Self { pool, shown, worker, claiming: Mutex::new(()), leases, watch })
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
        let mut store = Self::connect(url, max_connections, Some(lease)).await?;
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
        let (pool, name) = (self.pool.clone(), session_name(&self.worker));
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

    /// What a claim round knows of the other daemons when new hosts are
    /// few: how many trawler processes are connected to the database
    /// (`session_name`s in `pg_stat_activity`), how many hosts are leased,
    /// and how many of them to this daemon.
    ///
    /// Errors: the database cannot be read.
    async fn share(&self) -> Result<Share, StoreError> {
        let (processes, leased, mine): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(DISTINCT application_name) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name LIKE 'trawler %'),
                    count(*), count(*) FILTER (WHERE lease_owner = $1)
             FROM hosts WHERE lease_owner IS NOT NULL AND lease_expires_at >= now()",
        )
        .bind(&self.worker)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count daemons and leases"))?;
        Ok(Share { processes: processes as usize, leased: leased as usize, mine: mine as usize })
    }

    /// How long this daemon's statements have been waiting for a lock
    /// another session holds, shared with `/healthz`, the watchdog and the
    /// stall guard.
    pub fn lock_waits(&self) -> Arc<LockWaits> {
        self.watch.waits.clone()
    }

    /// Looks once for statements of this daemon's sessions (by
    /// `application_name`) that have waited [`LOCK_WAIT_NOTICED`] or more
    /// for a lock: an analyst's transaction left open after an `UPDATE`, a
    /// `LOCK TABLE`, a migration. While there are, records the wait in
    /// [`LockWaits`], which warns every `store.busy_warning` naming the
    /// session that holds the lock (its pid, for `pg_terminate_backend`);
    /// once there are none, clears it. The statements themselves wait on:
    /// PostgreSQL gives them the lock when it is released, and nothing is
    /// lost meanwhile. Shorter waits (daemons' own transactions on the same
    /// rows) are not reported.
    ///
    /// A lock held by a session of another process is what it seems
    /// ([`Blocker::AnotherProcess`], which excuses systemd's watchdog); one
    /// held by this daemon's own session is a statement of its own that
    /// has not ended ([`Blocker::ThisProcess`]: a hung write, which does
    /// not), and is reported as that. When both are found, another
    /// process's lock is named.
    ///
    /// Reads `pg_stat_activity` and `pg_blocking_pids` (PostgreSQL manual,
    /// "The Cumulative Statistics System" and "System Information
    /// Functions"); a role without `pg_read_all_stats` sees another role's
    /// session without its query.
    ///
    /// Errors: the database cannot be read.
    pub async fn watch_lock_waits(&self) -> Result<(), StoreError> {
        let blocker: Option<(f64, i32, String, String, f64, String, bool)> = sqlx::query_as(
            "SELECT extract(epoch FROM now() - w.state_change)::float8,
                    b.pid, coalesce(b.usename::text, '?'), coalesce(b.state, '?'),
                    coalesce(extract(epoch FROM now() - b.xact_start), 0)::float8,
                    left(coalesce(b.query, ''), 160), b.application_name IS NOT DISTINCT FROM $1
             FROM pg_stat_activity w
             CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocking(pid)
             JOIN pg_stat_activity b ON b.pid = blocking.pid
             WHERE w.application_name = $1 AND w.datname = current_database()
               AND w.wait_event_type = 'Lock' AND w.state_change <= now() - $2::float8 * interval '1 second'
             ORDER BY b.application_name IS NOT DISTINCT FROM $1, w.state_change, b.xact_start NULLS LAST
             LIMIT 1",
        )
        .bind(session_name(&self.worker))
        .bind(LOCK_WAIT_NOTICED.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("look for lock waits"))?;
        match blocker {
            Some((waited, pid, user, state, in_transaction, query, own)) => {
                let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
                let waited = Duration::try_from_secs_f64(waited).unwrap_or_default();
                let (blocker, whose) = match own {
                    false => (Blocker::AnotherProcess, "blocked by session"),
                    true => (Blocker::ThisProcess, "held by this daemon's own session"),
                };
                self.watch.waits.busy_for(
                    blocker,
                    &format!(
                        "{whose} {pid} (user {user}, {state}, in a transaction for {in_transaction:.0} s; \
                         last statement: {query})"
                    ),
                    waited,
                );
            }
            None => self.watch.waits.cleared(),
        }
        Ok(())
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

    /// The queue tables' health: dead row versions per table
    /// (`pg_stat_user_tables.n_dead_tup`, which autovacuum clears) and how
    /// long the oldest transaction holding a snapshot in this database has
    /// been open (`pg_stat_activity`, `backend_xmin` set): while one is open,
    /// vacuum can remove no row version newer than its snapshot, so dead rows
    /// pile up and the queue tables and their indexes grow.
    ///
    /// Errors: the statistics views cannot be read.
    pub async fn queue_health(&self) -> Result<QueueHealth, StoreError> {
        let dead_tuples: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname IN ('urls', 'hosts', 'attempts')
             ORDER BY relname",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("queue health"))?;
        let oldest_transaction_s: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 FROM pg_stat_activity
             WHERE datname = current_database() AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("queue health"))?;
        Ok(QueueHealth { dead_tuples, oldest_transaction_s })
    }

    /// Until `done`, wakes `wake` whenever a process notifies
    /// [`WORK_CHANNEL`] (it added URLs or put some back in the queue), so
    /// that an idle daemon looks for work at once instead of at its next
    /// poll. Notifications sent while the listening connection is down are
    /// lost (PostgreSQL does not queue them for a listener that is gone);
    /// the producer's poll, at most a second apart, finds that work.
    pub async fn relay_work_notifications(&self, wake: Arc<Notify>, done: CancellationToken) {
        loop {
            let error = tokio::select! {
                _ = done.cancelled() => return,
                error = relay_until_lost(&self.pool, &wake) => error,
            };
            // While the database is away, the outage's own warnings say so.
            if self.watch.outage.down_for().is_some() || postgres_kind(&error) == Kind::Unreachable {
                tracing::debug!("not listening for new work on {} ({error}); polling instead", self.shown);
            } else {
                tracing::warn!(
                    "not listening for new work on {} ({error}); polling instead, listening again in {} s",
                    self.shown,
                    RELISTEN_AFTER.as_secs()
                );
            }
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(RELISTEN_AFTER) => {}
            }
        }
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

    /// The unexpired robots.txt of `origin` another daemon fetched (the
    /// `robots_txt` table), if there is one.
    ///
    /// Errors: the database cannot be read.
    pub async fn shared_robots_txt(&self, origin: &str) -> Result<Option<SharedRobotsTxt>, StoreError> {
        let row: Option<(Option<i32>, Option<Vec<u8>>, f64)> = sqlx::query_as(
            "SELECT http_status, body, extract(epoch FROM expires_at - now())::float8 FROM robots_txt
             WHERE origin = $1 AND expires_at > now()",
        )
        .bind(origin)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a shared robots.txt"))?;
        Ok(row.map(|(http_status, body, left_s)| SharedRobotsTxt {
            http_status: http_status.and_then(|s| u16::try_from(s).ok()),
            body: body.unwrap_or_default(),
            expires_in: Duration::from_secs_f64(left_s.max(0.0)),
        }))
    }

    /// Shares the robots.txt of `origin` this daemon fetched, answered with
    /// `http_status` and `body`, for `ttl` (by the database's clock).
    ///
    /// Errors: the database cannot be written.
    pub async fn share_robots_txt(
        &self,
        origin: &str,
        http_status: u16,
        body: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO robots_txt (origin, http_status, body, fetched_at, expires_at)
             VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4))
             ON CONFLICT (origin) DO UPDATE SET http_status = excluded.http_status, body = excluded.body,
                 fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
        )
        .bind(origin)
        .bind(i32::from(http_status))
        .bind(body)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(db("share a robots.txt"))?;
        Ok(())
    }

    /// Leases `host` for a redirect hop to it from another host's URL: the
    /// hop is a request to `host`, so it needs the lease as a claim does.
    /// Takes the lease if no other daemon holds it (or it lapsed), keeps it
    /// if this daemon does. The lease is given up by the next round of
    /// [`keep_leases`](Self::keep_leases) once nothing of the host is in
    /// flight here. A host this daemon holds with its deadline ahead needs
    /// no round trip: a renewal keeps that lease like any other. The host's
    /// row is waited for if another session has it locked, up to
    /// [`OWN_LOCK_WAIT`]: held longer, it is most likely another daemon's
    /// claim taking the host on, and the host counts as held by another.
    ///
    /// Errors: the database cannot be written.
    pub async fn lease_hop(&self, host: &str) -> Result<HopLease, StoreError> {
        if self.leases.may_start_any(host) {
            return Ok(HopLease::Held { last_start: None });
        }
        let claiming = self.claiming.lock().await;
        let sent = self.leases.now();
        let leased: Option<Leased> = self
            .writing("lease a redirect's host", || async {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO hosts (host, work_at_ms) VALUES ($1, 9223372036854775807)
                     ON CONFLICT (host) DO NOTHING",
                )
                .bind(host)
                .execute(&mut *tx)
                .await?;
                let leased =
                    match lease_in(&mut tx, &[host], &self.worker, &self.leases, LeaseWait::AnyHost).await {
                        Err(e) if lock_timed_out(&e) => return Ok(None),
                        leased => leased?.pop(),
                    };
                if let Some(Leased { taken_from: Some(token), .. }) = &leased {
                    requeue_taken_over(&mut tx, &[*token]).await?;
                }
                tx.commit().await?;
                Ok(leased)
            })
            .await?;
        drop(claiming);
        let Some(leased) = leased else { return Ok(HopLease::HeldByAnother) };
        self.leases.granted(sent, [(host, leased.token)]);
        Ok(HopLease::Held { last_start: leased.handed_over().map(|(_, ago)| ago) })
    }

    /// One round of lease keeping, every [`HostLeases::renew_every`] while
    /// the daemon crawls: renews this daemon's leases (and learns which it
    /// lost); gives up the idle ones, hosts with nothing of theirs in
    /// flight, recording when their last request started
    /// (`last_starts`: host and how long ago, from politeness) so that the
    /// next owner keeps the delay, except the hosts it is `keeping` (see
    /// [`release_idle`](Self::release_idle)); and ends leases of any daemon that
    /// lapsed (a crashed daemon's), putting what they held in flight back
    /// in the queue.
    ///
    /// Errors: the database cannot be written; requests to this daemon's
    /// hosts then stop at their deadline unless a later round renews them.
    pub async fn keep_leases(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<LeaseRound, StoreError> {
        let mut round = LeaseRound::default();
        // Beside this daemon's claims, not after them: its rows are only
        // ever locked for a moment by its own claims, which never wait for
        // another daemon's locks (lease_hosts_sql!).
        let renewal = self.leases.renewal();
        let renewed: Vec<(String, i64)> = self
            .writing("renew host leases", || {
                sqlx::query_as(
                    "WITH mine AS (SELECT host FROM hosts WHERE lease_owner = $1 ORDER BY host FOR UPDATE)
                     UPDATE hosts SET lease_expires_at = now() + make_interval(secs => $2)
                     FROM mine WHERE hosts.host = mine.host
                     RETURNING hosts.host, hosts.lease_token",
                )
                .bind(&self.worker)
                .bind(self.leases.length().as_secs_f64())
                .fetch_all(&self.pool)
            })
            .await?;
        round.renewed = renewed.len() as u64;
        round.lost = self.leases.renewed(renewal, &renewed);
        round.released = self.release_idle(last_starts, keeping).await?;
        let (hosts, urls) = self.recover_lapsed().await?;
        (round.recovered_hosts, round.recovered_urls) = (hosts, urls);
        Ok(round)
    }

    /// Gives up this daemon's leases on hosts with nothing of theirs in
    /// flight, except the hosts it is `keeping`: those it has a redirect
    /// hop in flight to (which holds a lease without a URL of the host's),
    /// and those in backoff, whose escalation (backoffs in a row) lives in
    /// this daemon's politeness and would start over with another owner.
    /// Each host's last request start (`last_starts`, how long ago, from
    /// politeness) is recorded for the next owner. Returns how many it gave
    /// up.
    ///
    /// Errors: the database cannot be written.
    pub async fn release_idle(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<u64, StoreError> {
        // In turn with this daemon's claims: a claim that puts URLs of a
        // host in flight has committed before this looks for them (a
        // concurrent one could not be seen: a row's re-check after a lock
        // wait does not run NOT EXISTS again).
        let _claiming = self.claiming.lock().await;
        let (hosts, agos) = last_start_arrays(last_starts);
        let released: Vec<String> = self
            .writing("give up idle host leases", || {
                sqlx::query_scalar(
                    "WITH v AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS v(host, ago_s))
                     UPDATE hosts SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                         last_start_at = greatest(hosts.last_start_at,
                             now() - make_interval(secs => (SELECT ago_s FROM v WHERE v.host = hosts.host)))
                     WHERE lease_owner = $1 AND host <> ALL($4::text[])
                       AND NOT EXISTS (SELECT 1 FROM urls
                                       WHERE urls.lease = hosts.lease_token AND urls.state = 'in_flight')
                     RETURNING host",
                )
                .bind(&self.worker)
                .bind(&hosts)
                .bind(&agos)
                .bind(keeping)
                .fetch_all(&self.pool)
            })
            .await?;
        self.leases.released(released.iter().map(String::as_str));
        Ok(released.len() as u64)
    }

    /// Ends up to [`RECOVER_BATCH`] lapsed leases of any daemon: their
    /// in-flight URLs go back to the queue (due at once), and the host's
    /// last start is taken as the latest its owner could have started a
    /// request (the lapse less a request timeout). Returns how many hosts
    /// and URLs.
    async fn recover_lapsed(&self) -> Result<(u64, u64), StoreError> {
        self.writing("end lapsed host leases", || async {
            let mut tx = self.pool.begin().await?;
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "WITH l AS (SELECT host, lease_token, lease_expires_at FROM hosts
                            WHERE lease_owner IS NOT NULL AND lease_expires_at < now()
                            ORDER BY host LIMIT $2 FOR UPDATE SKIP LOCKED),
                 q AS (UPDATE urls SET state = 'queued', lease = NULL, leased_at_ms = NULL
                       FROM l WHERE urls.lease = l.lease_token AND urls.state = 'in_flight'
                       RETURNING urls.host),
                 n AS (SELECT host, count(*) AS n FROM q GROUP BY host)
                 UPDATE hosts SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                     work_at_ms = CASE WHEN n.n IS NULL THEN hosts.work_at_ms ELSE 0 END,
                     last_start_at = greatest(hosts.last_start_at, l.lease_expires_at - make_interval(secs => $1))
                 FROM l LEFT JOIN n ON n.host = l.host
                 WHERE hosts.host = l.host
                 RETURNING hosts.host, coalesce(n.n, 0)",
            )
            .bind(self.leases.request_timeout().as_secs_f64())
            .bind(RECOVER_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let urls: i64 = rows.iter().map(|(_, n)| n).sum();
            if urls > 0 {
                notify_work(&mut tx).await?;
            }
            tx.commit().await?;
            Ok((rows.len() as u64, urls as u64))
        })
        .await
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Wakes `wake` at every notification on [`WORK_CHANNEL`] until listening
/// fails; returns why.
async fn relay_until_lost(pool: &PgPool, wake: &Notify) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(WORK_CHANNEL).await {
        return e;
    }
    loop {
        match listener.recv().await {
            Ok(_) => wake.notify_one(),
            Err(e) => return e,
        }
    }
}

/// This run's worker name: `host:pid:random`.
/// The `application_name` of a worker's sessions: `trawler`, then its
/// worker name, as PostgreSQL keeps it (at most 63 bytes, NAMEDATALEN - 1;
/// printable ASCII, as the server would replace the rest). What
/// [`PgStore::watch_lock_waits`] knows its own sessions by, and what an
/// operator sees in `pg_stat_activity`.
fn session_name(worker: &str) -> String {
    let mut name: String = format!("trawler {worker}")
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
    /// Trawler processes connected to the database, this one included.
    /// Enqueue, stats and export sessions count too, which only makes a
    /// round take fewer: the rest stay ready for the next.
    processes: usize,
    /// Hosts leased (unlapsed), to any daemon.
    leased: usize,
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

/// Lapsed leases ended per statement of [`PgStore::keep_leases`].
const RECOVER_BATCH: i64 = 1000;

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
    /// [`Store::claim`]; `again` when an earlier try of this very claim
    /// (the same `now_ms` and `picks`) found the database away: that try
    /// may have committed before its answer was lost, leaving URLs in
    /// flight under this daemon's leases that no job carries and no lease
    /// round would free while the host stays leased here. Those (claimed
    /// at `now_ms` on these hosts) go back to the queue first, in the same
    /// transaction, and are claimed again.
    ///
    /// Errors: the database cannot be written.
    pub async fn claim_again(
        &self,
        now_ms: i64,
        picks: &[(String, u32)],
        again: bool,
    ) -> Result<Claim, StoreError> {
        let hosts: Vec<&str> = {
            let mut hosts: Vec<&str> = picks.iter().map(|(host, _)| host.as_str()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            hosts
        };
        let wanted: BTreeMap<&str, u32> = picks.iter().map(|(host, n)| (host.as_str(), *n)).collect();
        let _claiming = self.claiming.lock().await;
        let mut tries = 0;
        let mut claim = loop {
            tries += 1;
            let sent = self.leases.now();
            let claimed = match self.pool.begin().await {
                Ok(tx) => {
                    let claim =
                        Claiming { worker: &self.worker, hosts: &hosts, wanted: &wanted, now_ms, again };
                    claim_in(tx, claim, &self.leases, sent).await
                }
                Err(e) => Err(e),
            };
            match claimed {
                Err(e) if retry_conflict(&e, tries).await => {}
                other => break other.map_err(db("claim"))?,
            }
        };
        // Across hosts too, the URLs queued first go first.
        claim.jobs.sort_unstable_by_key(|job| job.url_id);
        Ok(claim)
    }

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

impl StatsQueries for PgStore {
    async fn pairs(&self, sql: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as(sql).fetch_all(&self.pool).await.map_err(db("stats"))?;
        Ok(rows.into_iter().map(|(k, n)| (k, n as u64)).collect())
    }

    async fn attempts_since(&self, since_ms: i64) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM attempts WHERE started_ms >= $1")
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await
            .map(|n| n as u64)
            .map_err(db("stats"))
    }

    async fn latency_quantile(&self, since_ms: i64, q: f64) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT elapsed_ms FROM attempts WHERE started_ms >= $1 ORDER BY elapsed_ms
             LIMIT 1 OFFSET (SELECT (count(*) * $2)::int8 FROM attempts WHERE started_ms >= $1)",
        )
        .bind(since_ms)
        .bind(q)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("stats"))
    }

    async fn recrawls(&self) -> Result<(u64, Option<i64>), StoreError> {
        let (n, next): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), min(recrawl_at_ms) FROM urls WHERE recrawl_at_ms IS NOT NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(db("stats"))?;
        Ok((n as u64, next))
    }

    async fn recrawl_rounds(&self) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
        sqlx::query_as(super::RECRAWL_ROUNDS_SQL).fetch_all(&self.pool).await.map_err(db("stats"))
    }
}

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
        .bind(busy)
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

/// A lapsed lease taken over: what its owner had in flight under the
/// tokens `taken_over` goes back to the queue, and its late completions
/// will be stale. Returns how many URLs went back.
async fn requeue_taken_over(
    tx: &mut Transaction<'_, Postgres>,
    taken_over: &[i64],
) -> Result<u64, sqlx::Error> {
    if taken_over.is_empty() {
        return Ok(0);
    }
    let requeued = sqlx::query(
        "UPDATE urls SET state = 'queued', lease = NULL, leased_at_ms = NULL
         WHERE state = 'in_flight' AND lease = ANY($1::int8[])",
    )
    .bind(taken_over)
    .execute(&mut **tx)
    .await?;
    Ok(requeued.rows_affected())
}

/// A robots.txt another daemon fetched ([`PgStore::shared_robots_txt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRobotsTxt {
    /// The answer's status.
    pub http_status: Option<u16>,
    /// The file, at most 512 KiB of it (`robots::MAX_ROBOTS_BYTES`).
    pub body: Vec<u8>,
    /// How much longer its rules stand.
    pub expires_in: Duration,
}

/// How a redirect hop's host was leased ([`PgStore::lease_hop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopLease {
    /// This daemon holds the host now; `last_start` is how long ago its
    /// last request may have started, when the lease is new to this daemon
    /// and that is known.
    Held { last_start: Option<Duration> },
    /// Another daemon holds the host.
    HeldByAnother,
}

/// Which host rows locked by another session a lease statement waits for
/// (see [`lease_hosts_sql!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseWait {
    /// Those of hosts this daemon holds; the others are skipped (a claim).
    OwnHosts,
    /// Any, for [`OWN_LOCK_WAIT`] at most (a redirect hop's one host).
    AnyHost,
}

/// Leases `hosts` (sorted) to `worker` in `tx`, as [`lease_hosts_sql!`]
/// says, waiting for locked rows as `wait` says. Fails with SQLSTATE 55P03
/// ([`lock_timed_out`]) when a hop's wait ran out; the transaction is
/// aborted then.
async fn lease_in(
    tx: &mut Transaction<'_, Postgres>,
    hosts: &[&str],
    worker: &str,
    leases: &HostLeases,
    wait: LeaseWait,
) -> Result<Vec<Leased>, sqlx::Error> {
    let sql = match wait {
        LeaseWait::OwnHosts => lease_hosts_sql!("FOR UPDATE", "FOR UPDATE SKIP LOCKED"),
        LeaseWait::AnyHost => lease_hosts_sql!("FOR UPDATE", "FOR UPDATE"),
    };
    let waits = wait == LeaseWait::AnyHost;
    if waits {
        sqlx::query(OWN_LOCK_WAIT).execute(&mut **tx).await?;
    }
    let leased = sqlx::query_as(sql)
        .bind(hosts)
        .bind(worker)
        .bind(leases.length().as_secs_f64())
        .bind(leases.request_timeout().as_secs_f64())
        .fetch_all(&mut **tx)
        .await?;
    if waits {
        // The rest of the transaction waits as it did.
        sqlx::query("SET LOCAL lock_timeout TO DEFAULT").execute(&mut **tx).await?;
    }
    Ok(leased)
}

/// Whether `e` is a lock wait that ran out (SQLSTATE 55P03
/// lock_not_available: `lock_timeout`).
fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// A host a claim leased.
#[derive(sqlx::FromRow)]
struct Leased {
    host: String,
    token: i64,
    /// The token of another daemon's lapsed lease this claim took over.
    taken_from: Option<i64>,
    /// Whether the lease is new to this daemon.
    new: bool,
    /// How long ago (s) the host's last request may have started, if known.
    last_start_s: Option<f64>,
}

impl Leased {
    /// The host and how long ago its last request may have started, for a
    /// lease new to this daemon when that is known.
    fn handed_over(&self) -> Option<(String, Duration)> {
        let ago = self.last_start_s.filter(|s| self.new && *s >= 0.0)?;
        Some((self.host.clone(), Duration::from_secs_f64(ago)))
    }
}

/// What one claim asks for ([`claim_in`]).
struct Claiming<'a> {
    /// This daemon's worker name.
    worker: &'a str,
    /// The hosts, sorted.
    hosts: &'a [&'a str],
    /// How many URLs of each host.
    wanted: &'a BTreeMap<&'a str, u32>,
    /// The claim's time (Unix ms): URLs due by then, marked claimed then.
    now_ms: i64,
    /// An earlier try of this claim may have committed ([`PgStore::claim_again`]).
    again: bool,
}

/// Claims, in `tx`, up to `wanted[host]` due URLs of each of `hosts`
/// (sorted), under a lease of each host for `worker`: hosts no other daemon
/// holds (or whose lease lapsed) are leased, and a host this daemon holds
/// keeps its token; a host it does not hold whose row another session has
/// locked is left out (see [`lease_hosts_sql!`]). The leases are recorded in `leases` as
/// confirmed at `sent`, when the transaction began, once it commits.
async fn claim_in(
    mut tx: Transaction<'_, Postgres>,
    claiming: Claiming<'_>,
    leases: &HostLeases,
    sent: BootInstant,
) -> Result<Claim, sqlx::Error> {
    let Claiming { worker, hosts, wanted, now_ms, again } = claiming;
    // As its first statement: see lease_hosts_sql! on waiting for locks.
    let leased = lease_in(&mut tx, hosts, worker, leases, LeaseWait::OwnHosts).await?;
    let taken_over: Vec<i64> = leased.iter().filter_map(|l| l.taken_from).collect();
    let requeued = requeue_taken_over(&mut tx, &taken_over).await?;
    if again {
        // An earlier try's claims, if it committed: only a claim at this
        // very millisecond, under these leases, can have made them.
        sqlx::query(
            "UPDATE urls SET state = 'queued', lease = NULL, leased_at_ms = NULL
             WHERE state = 'in_flight' AND lease = ANY($1::int8[]) AND leased_at_ms = $2",
        )
        .bind(leased.iter().map(|l| l.token).collect::<Vec<_>>())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    let rows = claim_urls(&mut tx, &leased, wanted, now_ms).await?;
    tx.commit().await?;
    if !taken_over.is_empty() {
        // As the lease round says when it ends lapsed leases first.
        tracing::info!(
            hosts = taken_over.len(),
            urls = requeued,
            "lapsed host leases ended (a daemon stopped renewing): their URLs are back in the frontier"
        );
    }
    leases.granted(sent, leased.iter().map(|l| (l.host.as_str(), l.token)));
    let handed_over = leased.iter().filter_map(Leased::handed_over).collect();
    let jobs = rows.into_iter().map(Job::from).collect();
    Ok(Claim { jobs, handed_over })
}

/// A URL row a claim put in flight.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    url: String,
    attempts: i32,
    depth: i32,
    host: String,
    lease: i64,
    etag: Option<String>,
    last_modified: Option<String>,
    body_sha256: Option<String>,
    recrawl_interval_ms: Option<i64>,
}

impl From<ClaimedRow> for Job {
    fn from(row: ClaimedRow) -> Self {
        Job {
            url_id: row.id,
            url: row.url,
            attempt: u32::try_from(row.attempts).unwrap_or(0) + 1,
            depth: u32::try_from(row.depth).unwrap_or(0),
            host: row.host,
            lease: row.lease,
            revisit: Revisit {
                validators: Validators { etag: row.etag, last_modified: row.last_modified },
                body_sha256: row.body_sha256,
                recrawl_interval_ms: row.recrawl_interval_ms,
            },
        }
    }
}

/// Puts up to `wanted` due URLs of each of the `leased` hosts in flight
/// under its lease's token, and moves the hosts' `work_at_ms` to their next
/// queued URL. Rows a concurrent statement holds are skipped.
async fn claim_urls(
    tx: &mut Transaction<'_, Postgres>,
    leased: &[Leased],
    wanted: &BTreeMap<&str, u32>,
    now_ms: i64,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let counts: Vec<i32> =
        leased.iter().map(|l| i32::try_from(wanted[l.host.as_str()]).unwrap_or(i32::MAX)).collect();
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "WITH p AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[]) AS p(host, token, n)),
         c AS (SELECT u.id, p.token FROM p CROSS JOIN LATERAL (
                  SELECT id FROM urls
                  WHERE host = p.host AND state = 'queued' AND not_before_ms <= $4
                  ORDER BY not_before_ms, id LIMIT p.n
                  FOR UPDATE SKIP LOCKED) AS u)
         UPDATE urls SET state = 'in_flight', lease = c.token, leased_at_ms = $4
         FROM c WHERE urls.id = c.id
         RETURNING urls.id, urls.url, urls.attempts - urls.attempts_before AS attempts, urls.depth, urls.host,
                   urls.lease, urls.etag, urls.last_modified, urls.body_sha256, urls.recrawl_interval_ms",
    )
    .bind(leased.iter().map(|l| l.host.as_str()).collect::<Vec<_>>())
    .bind(leased.iter().map(|l| l.token).collect::<Vec<_>>())
    .bind(&counts)
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE hosts SET work_at_ms = coalesce(
             (SELECT min(not_before_ms) FROM urls WHERE urls.host = hosts.host AND urls.state = 'queued'),
             9223372036854775807)
         WHERE host = ANY($1::text[])",
    )
    .bind(leased.iter().map(|l| l.host.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(rows)
}

/// [`BatchWrites`] on a PostgreSQL transaction of daemon `worker`;
/// `again`: the batch may have been committed already (its commit's answer
/// was lost), so attempts already recorded are not inserted twice.
struct PgBatch<'t, 'c> {
    tx: &'t mut Transaction<'c, Postgres>,
    worker: &'t str,
    again: bool,
}

impl BatchWrites for PgBatch<'_, '_> {
    type Error = sqlx::Error;

    async fn update_urls(
        &mut self,
        completions: &[Completion],
        changes: &[UrlChange],
    ) -> Result<BTreeSet<(i64, i64)>, sqlx::Error> {
        update_urls(self.tx, completions, changes).await
    }

    async fn stored_content(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, StoredContent>, sqlx::Error> {
        let rows: Vec<ContentColumns> = sqlx::query_as(
            "SELECT DISTINCT ON (url_id) url_id, content_type, body_bytes, body_sha256 FROM attempts
             WHERE url_id = ANY($1::int8[]) AND outcome = 'done' ORDER BY url_id, id DESC",
        )
        .bind(ids)
        .fetch_all(&mut **self.tx)
        .await?;
        Ok(rows.into_iter().map(stored).collect())
    }

    async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), sqlx::Error> {
        let mut rows: Vec<&AttemptRow> = rows.iter().collect();
        if self.again {
            let recorded = recorded_attempts(self.tx, &rows, self.worker).await?;
            rows.retain(|r| {
                !recorded.contains(&(r.url_id, i32::try_from(r.attempt).unwrap_or(i32::MAX), r.started_ms))
            });
        }
        if rows.is_empty() {
            return Ok(());
        }
        // Redirect hops need their attempt's id, and a batch may hold two
        // attempts of one URL (a stale one and the live one), so when any
        // attempt has hops the ids are taken first and hops find theirs by
        // position. Otherwise (most batches) the insert takes them itself:
        // an empty array unnests to NULLs beside the others.
        let ids: Vec<i64> = if rows.iter().any(|r| !r.record.hops.is_empty()) {
            sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('attempts', 'id')) FROM generate_series(1, $1)",
            )
            .bind(rows.len() as i64)
            .fetch_all(&mut **self.tx)
            .await?
        } else {
            Vec::new()
        };
        insert_attempts(self.tx, &rows, &ids, self.worker).await?;
        insert_hops(self.tx, &rows, &ids).await
    }

    async fn update_hosts(&mut self, changes: &[(&str, i64, i64)]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE hosts SET work_at_ms = least(hosts.work_at_ms, v.work_at_ms),
             backoff_until_ms = CASE v.backoff_until_ms WHEN 0 THEN hosts.backoff_until_ms
                                ELSE v.backoff_until_ms END
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(host, work_at_ms, backoff_until_ms)
             WHERE hosts.host = v.host",
        )
        .bind(changes.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.2).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn page_depths(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, u32>, sqlx::Error> {
        Ok(sqlx::query_as::<_, (i64, i32)>("SELECT id, depth FROM urls WHERE id = ANY($1::int8[])")
            .bind(ids)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .map(|(id, depth)| (id, u32::try_from(depth).unwrap_or(0)))
            .collect())
    }

    async fn stored_urls(&mut self, urls: &[&str]) -> Result<BTreeSet<String>, sqlx::Error> {
        Ok(sqlx::query_scalar("SELECT url FROM urls WHERE url = ANY($1::text[])")
            .bind(urls)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .collect())
    }

    async fn url_counts(
        &mut self,
        total: bool,
        hosts: &[&str],
    ) -> Result<(i64, BTreeMap<String, i64>), sqlx::Error> {
        let all = match total {
            true => {
                sqlx::query_scalar("SELECT coalesce(sum(urls), 0)::int8 FROM hosts")
                    .fetch_one(&mut **self.tx)
                    .await?
            }
            false => 0,
        };
        if hosts.is_empty() {
            return Ok((all, BTreeMap::new()));
        }
        let per_host = sqlx::query_as("SELECT host, urls FROM hosts WHERE host = ANY($1::text[])")
            .bind(hosts)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .collect();
        Ok((all, per_host))
    }

    async fn insert_urls(&mut self, urls: &[NewUrl]) -> Result<u64, sqlx::Error> {
        insert_urls(self.tx, urls).await
    }

    async fn shorter_paths(
        &mut self,
        candidates: &[(&str, u32, Option<i64>)],
    ) -> Result<Vec<Shorter>, sqlx::Error> {
        let rows: Vec<(i64, i32, Option<i64>, i32, String)> = sqlx::query_as(
            "WITH RECURSIVE
               found(url, depth, via) AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])),
               lowered(id, depth, via) AS (
                 SELECT u.id, f.depth, f.via FROM found f JOIN urls u ON u.url = f.url WHERE f.depth < u.depth
                 UNION
                 SELECT l.to_id, p.depth + 1, p.id FROM lowered p
                 JOIN links l ON l.from_id = p.id JOIN urls v ON v.id = l.to_id
                 WHERE p.depth + 1 < v.depth)
             SELECT l.id, min(l.depth), (array_agg(l.via ORDER BY l.depth))[1], u.depth, u.state
             FROM lowered l JOIN urls u ON u.id = l.id
             GROUP BY l.id, u.depth, u.state",
        )
        .bind(candidates.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| i32::try_from(c.1).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.2).collect::<Vec<_>>())
        .fetch_all(&mut **self.tx)
        .await?;
        let depth = |d: i32| u32::try_from(d).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|(id, d, via, before, state)| {
                (id, depth(d), via, depth(before), rules::stored_state(&state))
            })
            .collect())
    }

    async fn lower_depths(&mut self, rows: &[Lowered]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE urls SET depth = v.depth, found_on = coalesce(v.via, urls.found_on),
               state = CASE WHEN v.refetch THEN 'queued' ELSE urls.state END,
               lease = CASE WHEN v.refetch THEN NULL ELSE urls.lease END,
               leased_at_ms = CASE WHEN v.refetch THEN NULL ELSE urls.leased_at_ms END,
               not_before_ms = CASE WHEN v.refetch THEN 0 ELSE urls.not_before_ms END,
               etag = CASE WHEN v.refetch THEN NULL ELSE urls.etag END,
               last_modified = CASE WHEN v.refetch THEN NULL ELSE urls.last_modified END
             FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::bool[]) AS v(id, depth, via, refetch)
             WHERE urls.id = v.id",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| i32::try_from(r.1).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        let woken: Vec<i64> = rows.iter().filter(|r| r.3).map(|r| r.0).collect();
        if !woken.is_empty() {
            sqlx::query("UPDATE hosts SET work_at_ms = 0 WHERE host IN (SELECT host FROM urls WHERE id = ANY($1::int8[]))")
                .bind(&woken)
                .execute(&mut **self.tx)
                .await?;
        }
        Ok(())
    }

    async fn insert_links(&mut self, edges: &[(i64, &str)]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO links (from_id, to_id)
             SELECT v.from_id, u.id FROM unnest($1::int8[], $2::text[]) AS v(from_id, url)
             JOIN urls AS u ON u.url = v.url
             ON CONFLICT DO NOTHING",
        )
        .bind(edges.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(edges.iter().map(|e| e.1).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn add_dropped_links(&mut self, rows: &[DroppedRow]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO dropped_links (url_id, reason, count)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])
             ON CONFLICT (url_id, reason) DO UPDATE SET count = dropped_links.count + excluded.count",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }
}

/// Applies `changes[i]` to `completions[i]`'s URL where the URL still
/// carries its lease and is in flight; returns the (URL id, lease) applied.
async fn update_urls(
    tx: &mut Transaction<'_, Postgres>,
    completions: &[Completion],
    changes: &[UrlChange],
) -> Result<BTreeSet<(i64, i64)>, sqlx::Error> {
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE urls SET state = v.state, attempts = urls.attempts_before + v.attempt,
             not_before_ms = v.not_before_ms, lease = NULL, leased_at_ms = NULL,
             finished_ms = coalesce(v.finished_ms, urls.finished_ms),
             recrawl_at_ms = v.finished_ms + v.recrawl_after_ms,
             etag = CASE WHEN v.done THEN v.etag ELSE urls.etag END,
             last_modified = CASE WHEN v.done THEN v.last_modified ELSE urls.last_modified END,
             body_sha256 = CASE WHEN v.done THEN v.body_sha256 ELSE urls.body_sha256 END,
             changed_ms = coalesce(v.changed_ms, urls.changed_ms),
             recrawl_interval_ms = CASE WHEN v.done THEN v.recrawl_interval_ms ELSE urls.recrawl_interval_ms END
         FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int4[], $5::int8[], $6::int8[], $7::int8[],
                     $8::bool[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[])
              AS v(url_id, lease, state, attempt, not_before_ms, finished_ms, recrawl_after_ms,
                   done, etag, last_modified, body_sha256, changed_ms, recrawl_interval_ms)
         WHERE urls.id = v.url_id AND urls.lease = v.lease AND urls.state = 'in_flight'
         RETURNING urls.id, v.lease",
    )
    .bind(completions.iter().map(|c| c.url_id).collect::<Vec<_>>())
    .bind(completions.iter().map(|c| c.lease).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.state.as_str()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| i32::try_from(c.attempts).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.not_before_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.finished_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.recrawl_after_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.is_some()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.validators.etag.as_deref())).collect::<Vec<_>>())
    .bind(
        changes
            .iter()
            .map(|c| c.content.as_ref().and_then(|c| c.validators.last_modified.as_deref()))
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.body_sha256.as_deref())).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.changed_ms)).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.recrawl_interval_ms)).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(applied.into_iter().collect())
}

/// The attempts of `rows` that daemon `worker` has recorded already, as
/// `(url_id, attempt, started_ms)`.
async fn recorded_attempts(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    worker: &str,
) -> Result<BTreeSet<(i64, i32, i64)>, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT url_id, attempt, started_ms FROM attempts WHERE worker = $1 AND url_id = ANY($2::int8[])",
    )
    .bind(worker)
    .bind(rows.iter().map(|r| r.url_id).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect())
}

/// Inserts `rows`, with `ids` when given (else the sequence's).
async fn insert_attempts(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    ids: &[i64],
    worker: &str,
) -> Result<(), sqlx::Error> {
    let records = || rows.iter().map(|r| r.record);
    sqlx::query(
        "INSERT INTO attempts (id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, dns_ms, ttfb_ms,
             outcome, http_status, error_kind, error_message, retry_at, final_url, redirects, redirect_chain,
             content_type, body_bytes, body_sha256, headers, worker, noindex, canonical_url)
         SELECT coalesce(id, nextval(pg_get_serial_sequence('attempts', 'id'))), url_id, attempt, to_timestamp(started_ms / 1000.0), started_ms, to_timestamp(fetched_ms / 1000.0),
             elapsed_ms, dns_ms, ttfb_ms, outcome, http_status, error_kind, error_message,
             to_timestamp(retry_ms / 1000.0), final_url, redirects, redirect_chain::jsonb,
             content_type, body_bytes, body_sha256, headers::jsonb, $20, noindex, canonical_url
         FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                     $8::text[], $9::int4[], $10::text[], $11::text[], $12::int8[], $13::text[], $14::int4[],
                     $15::text[], $16::text[], $17::int8[], $18::text[], $19::text[], $21::int8[],
                     $22::bool[], $23::text[])
              AS v(url_id, attempt, started_ms, fetched_ms, elapsed_ms, dns_ms, ttfb_ms, outcome, http_status,
                   error_kind, error_message, retry_ms, final_url, redirects, redirect_chain, content_type,
                   body_bytes, body_sha256, headers, id, noindex, canonical_url)",
    )
    .bind(rows.iter().map(|r| r.url_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.started_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.fetched_ms).collect::<Vec<_>>())
    .bind(records().map(|r| to_i64(r.elapsed_ms)).collect::<Vec<_>>())
    .bind(records().map(|r| r.dns_ms.map(to_i64)).collect::<Vec<_>>())
    .bind(records().map(|r| r.ttfb_ms.map(to_i64)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.http_status.map(i32::from)).collect::<Vec<_>>())
    .bind(records().map(|r| r.error_kind.map(ErrorKind::as_str)).collect::<Vec<_>>())
    .bind(records().map(|r| r.error_message.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.retry_ms).collect::<Vec<_>>())
    .bind(records().map(|r| r.final_url.as_deref()).collect::<Vec<_>>())
    .bind(records().map(|r| i32::try_from(r.redirect_chain.len()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.redirect_chain.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.content_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_bytes.map(to_i64)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_sha256).collect::<Vec<_>>())
    .bind(records().map(|r| r.headers.as_deref()).collect::<Vec<_>>())
    .bind(worker)
    .bind(ids)
    .bind(records().map(|r| r.noindex).collect::<Vec<_>>())
    .bind(records().map(|r| r.canonical_url.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts the redirect hops of `rows`, whose attempts have `ids`.
async fn insert_hops(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    let hops: Vec<(i64, i32, &Hop)> = ids
        .iter()
        .zip(rows)
        .flat_map(|(id, r)| r.record.hops.iter().enumerate().map(move |(i, hop)| (*id, i as i32 + 1, hop)))
        .collect();
    if !hops.is_empty() {
        sqlx::query(
            "INSERT INTO redirect_hops (attempt_id, hop, url, host, started_ms, http_status)
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::int4[])",
        )
        .bind(hops.iter().map(|h| h.0).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.1).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.url.as_str()).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.host.as_str()).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| unix_ms(h.2.started_at)).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.http_status.map(i32::from)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_takes_its_share_of_new_hosts_and_never_none_of_some() {
        let share = |processes, leased, mine| Share { processes, leased, mine };
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
    fn session_names_fit_postgresql() {
        let name = session_name(&format!("{}:123:abcdef01", "h".repeat(80)));
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("trawler hhh"));
        assert_eq!(session_name("héte:1:2"), "trawler h?te:1:2");
    }
}
