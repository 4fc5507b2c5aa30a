//! The SQLite backend of [`Store`]: the only code that knows sqlx.
//!
//! One write connection (a pool of one, so writes never contend inside the
//! process) and a small read-only pool. WAL mode lets `sqlite3` and other
//! readers query while a crawl writes.
//!
//! Another process may hold the write lock for as long as it likes (an
//! analyst's `BEGIN IMMEDIATE`, a backup tool, `trawler enqueue`). Every
//! write waits it out: SQLite's busy handler waits [`BUSY_SLICE`] at a time,
//! and a write that still finds the database locked (`SQLITE_BUSY`) is tried
//! again with backoff, for as long as it takes, while [`LockWaits`] logs how
//! long and `/healthz` reports it. A write that waits more than
//! [`OWN_WRITE_NOTICED`] for the one write connection waits for a write of
//! this process's own that has not returned (a slow or hung disk): it waits
//! on too, but is reported as that, and excuses neither systemd's watchdog
//! nor the stall guard (`faults::Blocker`). Only the crawl's teardown gives
//! up waiting ([`SqliteStore::give_up_waiting`]). A connection whose transaction failed
//! (SQLite may have rolled it back itself, e.g. on `SQLITE_FULL`) is closed
//! rather than returned to the pool, so the next write starts clean.
//!
//! Transactions of
//! more than one statement start with `BEGIN IMMEDIATE`: sqlx's `begin()` is
//! deferred, and a deferred transaction that reads before it writes fails with
//! `SQLITE_BUSY_SNAPSHOT` when another connection committed in between, whatever
//! the busy timeout (sqlite.org/wal.html, "Sometimes Queries Return SQLITE_BUSY
//! In WAL Mode"). Single statements take the write lock when they start.
//!
//! Batches are written as multi-row statements (`WITH v(...) AS (VALUES ...)`,
//! or one JSON array through `json_each`), so committing N results costs a
//! few statements per table (`store/batch.rs` says which), not round trips
//! per result to sqlx's connection thread.
//!
//! A process holds an advisory lock on `<database>.lock` for as long as the
//! store is open, so a second crawler on the same file is refused; the lock is
//! released by the kernel when the process dies, even by `kill -9`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Connection, QueryBuilder, Row, Sqlite};

use super::batch::{self, AttemptRow, BatchWrites, ContentColumns, Lowered, Shorter, StoredContent, stored};
use super::claims::Claims;
use super::faults::{Kind, sqlite_kind};
use super::rules::{self, DroppedRow, UrlChange, duration_ms, rfc3339, rfc3339_from_ms, to_i64};
use super::{
    ArchivedAttempt, Claim, Committed, ExportFilter, InputError, LockWaits, PageLimits, RecrawlPolicy,
    ResultRow, StateCounts, StatsReport, Store, StoreError, Watch,
};
use crate::clock::unix_ms;
use crate::config::{StoreConfig, Synchronous};
use crate::job::{Completion, ErrorKind, Hop, Job, NewUrl, Revisit, UrlState, Validators};

static MIGRATOR: Migrator = sqlx::migrate!();

/// A claim's query: the URLs whose ids `$ids` selects, as a [`Job`] is
/// read from them, in this order. Both forms of the claim are written
/// through it, so they cannot drift.
macro_rules! claim_sql {
    ($ids:literal) => {
        concat!(
            "SELECT id, url, attempts - attempts_before, depth, host, etag, last_modified, body_sha256, recrawl_interval_ms
             FROM urls WHERE id IN (",
            $ids,
            ")"
        )
    };
}

/// Rows per multi-row statement. A batch is cut greedily into these sizes so
/// that only a handful of distinct statements exist, each prepared once and
/// then reused from sqlx's per-connection statement cache: preparing a fresh
/// 500-row statement for every batch size cost a sixth of the write thread's
/// time. The largest binds 256 × 24 values, under SQLite's 32,766 per
/// statement (SQLITE_MAX_VARIABLE_NUMBER since 3.32.0).
const STATEMENT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// `values` as a JSON array (or object), bound as one parameter and read by
/// `json_each(?)`: a list of any length in one statement, under SQLite's
/// bound-parameter limit.
fn json_array<T: serde::Serialize + ?Sized>(values: &T) -> String {
    serde_json::to_string(values).expect("strings, numbers and tuples of them serialize to JSON")
}

/// Cuts `rows` into chunks whose lengths are all in [`STATEMENT_ROWS`].
fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = *STATEMENT_ROWS.iter().find(|&&n| n <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// The text of a multi-row statement for each of the [`STATEMENT_ROWS`]
/// sizes, built once: `head`, then that many `(?, …, ?)` groups of `width`
/// placeholders, then `tail`. The per-page statements bind their rows to
/// these instead of building the same text again for every batch with
/// `QueryBuilder`, which cost a twentieth of the crawl's instructions.
struct MultiRow([String; STATEMENT_ROWS.len()]);

impl MultiRow {
    fn new(head: &str, width: usize, tail: &str) -> Self {
        let group = format!("({})", vec!["?"; width].join(", "));
        Self(STATEMENT_ROWS.map(|rows| format!("{head}{}{tail}", vec![group.as_str(); rows].join(", "))))
    }

    /// The text for `rows` rows: a length [`statement_chunks`] cuts.
    fn sql(&self, rows: usize) -> &str {
        let size = STATEMENT_ROWS.iter().position(|&n| n == rows).expect("a chunk from statement_chunks");
        &self.0[size]
    }
}

/// Adds `value` to a statement's arguments.
fn add<'q, T>(args: &mut SqliteArguments<'q>, value: T) -> Result<(), StoreError>
where
    T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + 'q,
{
    args.add(value).map_err(|source| StoreError::Database { context: "bind a value", source })
}

/// Read connections of the crawl's own pool (producer, gauges, API).
const READ_CONNECTIONS: u32 = 4;

/// Rows a statement of the crawl's own pools (a claim's query) may stream
/// back before SQLite's thread waits for the caller to take them. sqlx's
/// default, 50, made a claim of a few hundred URLs stop and wake across
/// threads every 50 rows. These pools' rows are small (ids, URLs, counts;
/// a body is read alone, by `body`), so a claim's worth costs little.
const ROW_BUFFER: usize = 2_048;

/// How long a reader waits for a lock (readers are only blocked by WAL
/// recovery or a checkpoint that truncates, and briefly).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long SQLite's own busy handler waits for another process's write lock
/// before the statement fails with `SQLITE_BUSY` and [`SqliteStore::writing`]
/// takes over: short, so that waits are reported as they happen and a
/// teardown can give up.
const BUSY_SLICE: Duration = Duration::from_millis(250);

/// How long a write waits for the one write connection before it counts
/// as waiting for this process's own write still holding it (see
/// [`Blocker::ThisProcess`]; the wait goes on, reported as that).
const OWN_WRITE_NOTICED: Duration = Duration::from_secs(1);

/// The largest the WAL is kept after a checkpoint reset it: 64 MiB.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// What a checkpoint did (`PRAGMA wal_checkpoint`'s three columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The WAL could not be reset: a reader is still using it.
    pub busy: bool,
    /// Pages in the WAL before the checkpoint.
    pub wal_pages: i64,
    /// Of those, pages copied into the database.
    pub checkpointed: i64,
    /// The page size, in bytes.
    pub page_size: i64,
}

impl Checkpoint {
    /// Whether a reader kept the checkpoint from finishing: it reads a
    /// snapshot in the WAL, so the WAL cannot be reset and truncated.
    pub fn pinned(&self) -> bool {
        self.busy || self.checkpointed < self.wal_pages
    }

    /// The WAL's size left behind, in bytes (0 after a full TRUNCATE).
    pub fn wal_bytes_left(&self) -> i64 {
        if self.pinned() { self.wal_pages * self.page_size } else { 0 }
    }
}

/// The smallest WAL size a doubling is counted from, for
/// [`PinnedWal::observe`]: doublings of a few KiB are no news.
const WAL_WARN_FLOOR: i64 = 8 * 1024 * 1024;

/// When a WAL that a reader keeps from being truncated is worth a warning:
/// at the first pinned checkpoint, then each time the WAL has doubled since
/// the last warning (from [`WAL_WARN_FLOOR`] at least), so a WAL growing
/// from 14 to 150 MiB is reported at 14, 28, 56 and 112 MiB, and one that
/// stays pinned at one size only once. A checkpoint that truncates starts
/// it over.
#[derive(Debug, Default)]
pub struct PinnedWal {
    /// The WAL's size at the last warning, while it stays pinned.
    warned_at: Option<i64>,
}

impl PinnedWal {
    /// Takes in a checkpoint's result; returns whether to warn now.
    pub fn observe(&mut self, checkpoint: &Checkpoint) -> bool {
        if !checkpoint.pinned() {
            self.warned_at = None;
            return false;
        }
        let size = checkpoint.wal_bytes_left();
        let due = match self.warned_at {
            None => true,
            Some(last) => size >= last.max(WAL_WARN_FLOOR).saturating_mul(2),
        };
        if due {
            self.warned_at = Some(size);
        }
        due
    }
}

/// A trawler database opened for crawling. See the module docs.
pub struct SqliteStore {
    /// The single write connection.
    write: SqlitePool,
    /// Read-only connections for counts and queries.
    read: SqlitePool,
    /// How long writes have waited for a lock, and the token that ends the
    /// waiting ([`StoreError::Busy`] then).
    watch: Watch,
    /// Held open for the store's lifetime: dropping it releases the lock.
    /// `None` for a store opened with [`SqliteStore::open_shared`].
    _lock: Option<File>,
    /// The URLs this crawler holds in flight: their rows stay `queued`
    /// (`store/claims.rs`).
    claims: Claims,
    /// Taken by every write that reads or settles [`Self::claims`]
    /// (completions, a host's next work time after a claim, requeues), so
    /// that none reads the claims between another's commit and its
    /// settling of them.
    claim_writes: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `config.path`, takes its
    /// lock file and applies pending migrations. URLs a crashed run left in
    /// flight stay so until the caller runs [`Store::requeue_abandoned`].
    ///
    /// Errors: [`StoreError::Locked`] when another process holds the lock;
    /// [`StoreError::NewerSchema`] when the file holds migrations this binary
    /// does not know; [`StoreError::Database`] when the file cannot be
    /// created, opened or migrated.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let lock = take_lock(&config.path)?;
        Self::open_with(config, Some(lock)).await
    }

    /// Opens the database without taking its lock, for adding URLs while a
    /// crawler owns it (`trawler enqueue` beside `trawler run`): writes wait
    /// for the owner's transactions (`busy_timeout`), and the owner's
    /// producer sees new URLs on its next look. Only [`Store::enqueue`] and
    /// reads are meant for such a store; claiming would race the owner.
    ///
    /// Errors: as [`SqliteStore::open`], except [`StoreError::Locked`].
    pub async fn open_shared(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(config, None).await
    }

    /// Opens an existing database for reading only (`trawler stats`,
    /// `trawler export`): no lock, no migrations, nothing written.
    ///
    /// Errors: [`StoreError::Database`] when the file is missing or unreadable.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Database {
                context: "open",
                source: format!("{}: no such database", path.display()).into(),
            });
        }
        let options = SqliteConnectOptions::new().filename(path).read_only(true).busy_timeout(BUSY_TIMEOUT);
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(db_at("open read-only", path))?;
        Ok(Self {
            write: read.clone(),
            read,
            watch: Watch::default(),
            _lock: None,
            claims: Claims::default(),
            claim_writes: Default::default(),
        })
    }

    /// The `results` view's rows matching `filter`, in `url_id` order, as a
    /// stream: memory stays flat however many rows there are.
    pub fn export<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl futures::Stream<Item = Result<ResultRow, StoreError>> + 'a {
        use futures::TryStreamExt;
        sqlx::query_as::<_, ResultRow>(
            "SELECT * FROM results
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR fetched_at >= ?2)
             ORDER BY url_id IS NULL, url_id",
        )
        .bind(filter.state.as_deref())
        .bind(filter.since.as_deref())
        .fetch(&self.read)
        .map_err(|e| StoreError::Database { context: "export", source: Box::new(e) })
    }

    /// The attempts with a final response (`done`, `not_modified`) of the
    /// URLs matching `filter` (`since` applies to the attempt), in the order
    /// they were made, as a stream.
    pub fn archive<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl futures::Stream<Item = Result<ArchivedAttempt, StoreError>> + 'a {
        use futures::TryStreamExt;
        sqlx::query_as::<_, ArchivedAttempt>(
            "SELECT a.id, u.url, a.final_url, a.fetched_at, a.outcome, a.http_status, a.content_type,
                    a.body_bytes, a.body_sha256, a.headers
             FROM attempts AS a JOIN urls AS u ON u.id = a.url_id
             WHERE a.outcome IN ('done', 'not_modified')
               AND (?1 IS NULL OR u.state = ?1) AND (?2 IS NULL OR a.fetched_at >= ?2)
             ORDER BY a.id",
        )
        .bind(filter.state.as_deref())
        .bind(filter.since.as_deref())
        .fetch(&self.read)
        .map_err(|e| StoreError::Database { context: "export", source: Box::new(e) })
    }

    /// The stored body with this SHA-256 (`bodies`), decoded, if there is
    /// one.
    ///
    /// Errors: the database cannot be read, or the stored frame is corrupt.
    pub async fn body(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let data: Option<Vec<u8>> = sqlx::query_scalar("SELECT data FROM bodies WHERE sha256 = ?1")
            .bind(sha256)
            .fetch_optional(&self.read)
            .await
            .map_err(db("read a body"))?;
        data.map(|zstd| super::decompress_body(&zstd)).transpose()
    }

    /// The `results` row of the URL with id `url_id`, if there is one.
    ///
    /// Errors: the database cannot be read.
    pub async fn result(&self, url_id: i64) -> Result<Option<ResultRow>, StoreError> {
        sqlx::query_as("SELECT * FROM results WHERE url_id = ?1")
            .bind(url_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db("read one result"))
    }

    /// The ids of those of `urls` that are stored, by URL.
    ///
    /// Errors: the database cannot be read.
    pub async fn ids(&self, urls: &[&str]) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT url, id FROM urls WHERE url IN (SELECT value FROM json_each(?1))")
                .bind(json_array(urls))
                .fetch_all(&self.read)
                .await
                .map_err(db("look up URL ids"))?;
        Ok(rows.into_iter().collect())
    }

    /// A snapshot for `trawler stats`, read while a crawler may be writing.
    ///
    /// Errors: the database cannot be read.
    pub async fn stats(&self, now_ms: i64) -> Result<StatsReport, StoreError> {
        super::stats_report(self, now_ms).await
    }

    async fn open_with(config: &StoreConfig, lock: Option<File>) -> Result<Self, StoreError> {
        let path = config.path.clone();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db("parse options"))?
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(BUSY_SLICE)
            // A WAL that a checkpoint reset is cut back to this size
            // (sqlite.org/pragma.html#pragma_journal_size_limit).
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
            .foreign_keys(true);
        // A write waiting for another process's lock is reported by
        // `LockWaits`, and a long migration by `migrate`; sqlx's own warning
        // for a slow statement would log the whole SQL of each.
        let options = sqlx::ConnectOptions::log_slow_statements(
            options,
            log::LevelFilter::Debug,
            std::time::Duration::from_secs(1),
        );
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // Waiting longer for the one connection than SQLite's busy
            // handler waits for a lock (BUSY_SLICE, after which the write
            // gives the connection up and tries again) is waiting for a
            // write of this process's own that has not returned (a slow or
            // hung disk): `writing` reports it as that, and waits on.
            .acquire_timeout(OWN_WRITE_NOTICED)
            // A transaction that failed may have been rolled back by SQLite
            // behind sqlx's back (SQLITE_FULL, SQLITE_IOERR), leaving sqlx's
            // transaction depth at one: every later `BEGIN` on that
            // connection would fail. Such a connection is closed instead. A
            // committed transaction has its depth back at zero before the
            // commit returns; one that was dropped (failed) still counts
            // until its queued rollback runs, so its connection is closed
            // too, which costs a reconnect after an error but no round trip
            // after every commit.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_lazy_with(options.clone().create_if_missing(true).row_buffer_size(ROW_BUFFER));
        let read_options = options.read_only(true).busy_timeout(BUSY_TIMEOUT).row_buffer_size(ROW_BUFFER);
        let store = Self {
            // Every read connection is opened now and kept: the database's
            // descriptors are all taken at start, so running out of them
            // later (see `descriptors.rs`) can only defer fetches, never
            // fail a read.
            read: SqlitePoolOptions::new()
                .max_connections(READ_CONNECTIONS)
                .min_connections(READ_CONNECTIONS)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(read_options),
            write,
            watch: Watch::new(config.busy_warning, config.outage_grace(Duration::ZERO)),
            _lock: lock,
            claims: Claims::default(),
            claim_writes: tokio::sync::Mutex::new(()),
        };
        // Opening sets WAL mode and migrating writes: both may have to wait
        // for another process's lock, like any write.
        let (pool, at) = (&store.write, path.as_path());
        store.writing("migrate", move || migrate(pool, at)).await?;
        let opened = futures::future::try_join_all((0..READ_CONNECTIONS).map(|_| store.read.acquire()))
            .await
            .map_err(db_at("open read-only", &path))?;
        drop(opened);
        Ok(store)
    }

    /// Runs the write `op` (what it does: `context`) until it does not fail
    /// with [`StoreError::Busy`]: another process holds the write lock, or
    /// this process's own write still holds the one write connection, so
    /// wait (backing off, reporting through [`LockWaits`]) and try again,
    /// for as long as it takes, unless
    /// [`give_up_waiting`](Self::give_up_waiting) was called (see
    /// `faults::ride`). `op` must be a whole transaction (or one
    /// statement), so that trying it again is safe.
    async fn writing<T, F>(&self, context: &'static str, mut op: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        super::faults::ride(&self.watch, context, None, |_| op()).await
    }

    /// How this store waits for locks, for [`super::Backend`].
    pub(super) fn watch(&self) -> &Watch {
        &self.watch
    }

    /// Copies the WAL into the database and truncates it to zero bytes
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), unless a reader's snapshot still
    /// needs its pages ([`Checkpoint::pinned`]): then as much as possible is
    /// copied and the WAL keeps its size. Without this the WAL never shrinks
    /// while the crawler runs: SQLite's automatic checkpoints never truncate.
    ///
    /// Errors: the database cannot be written.
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let (busy, wal_pages, checkpointed): (i64, i64, i64) = self
            .writing("checkpoint", move || async move {
                sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&self.write)
                    .await
                    .map_err(db("checkpoint"))
            })
            .await?;
        let page_size: i64 =
            sqlx::query_scalar("PRAGMA page_size").fetch_one(&self.read).await.map_err(db("page size"))?;
        Ok(Checkpoint { busy: busy != 0, wal_pages, checkpointed, page_size })
    }

    /// Makes writes that are waiting for another process's lock, and later
    /// ones that find it held, fail with [`StoreError::Busy`] instead of
    /// waiting on: the crawl's teardown calls it once its grace period is
    /// over, so that a lock held forever cannot hold the process forever.
    pub fn give_up_waiting(&self) {
        self.watch.give_up.cancel();
    }

    /// How long writes have been waiting for another process's lock, shared
    /// with `/healthz`.
    pub fn lock_waits(&self) -> Arc<LockWaits> {
        self.watch.waits.clone()
    }

    /// When the oldest claim still in flight was taken (Unix ms), if any:
    /// claims are this process's memory, so this cannot fail.
    pub async fn oldest_lease_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.claims.oldest_ms())
    }

    /// Up to `n` queued URLs due at `now_ms` of each `(host, n)` of
    /// `picks` that no claim holds, oldest due first, as jobs under one
    /// new lease token. A read: the caller holds them.
    async fn due_unheld(&self, now_ms: i64, picks: &[(String, u32)]) -> Result<Vec<Job>, StoreError> {
        let hosts: Vec<&str> = picks.iter().map(|(host, _)| host.as_str()).collect();
        let held = json_array(&self.claims.ids_on(&hosts));
        let rows = match picks {
            // One host (one fast site, or a trickle): its due URLs
            // straight from `urls_host_due`, without the ranking below,
            // whose temporary tables cost more than the claim itself
            // (SQLite has no LIMIT that refers to the outer row).
            [(host, n)] => sqlx::query(claim_sql!(
                "SELECT id FROM urls
                 WHERE host = ?2 AND state = 'queued' AND not_before_ms <= ?1
                   AND id NOT IN (SELECT value FROM json_each(?4))
                 ORDER BY not_before_ms, id LIMIT ?3"
            ))
            .bind(now_ms)
            .bind(host)
            .bind(n),
            // One statement for every picked host: each host's due URLs
            // are looked up through `urls_host_due` (at most the largest
            // pick per host), ranked, and cut to that host's own count.
            _ => sqlx::query(claim_sql!(
                "SELECT id FROM (
                     SELECT u.id, p.value ->> 1 AS n,
                            row_number() OVER (PARTITION BY p.key ORDER BY u.not_before_ms, u.id) AS rank
                     FROM json_each(?2) AS p
                     JOIN urls AS u ON u.id IN (
                         SELECT id FROM urls
                         WHERE host = p.value ->> 0 AND state = 'queued' AND not_before_ms <= ?1
                           AND id NOT IN (SELECT value FROM json_each(?4))
                         ORDER BY not_before_ms, id LIMIT ?3))
                 WHERE rank <= n"
            ))
            .bind(now_ms)
            .bind(json_array(picks))
            .bind(picks.iter().map(|(_, n)| *n).max().unwrap_or(0)),
        }
        .bind(held)
        .fetch_all(&self.read)
        .await
        .map_err(db("claim"))?;
        let lease: i64 = rand::random();
        let jobs: Vec<Job> = rows
            .into_iter()
            .map(|row| Job {
                url_id: row.get(0),
                url: row.get(1),
                attempt: row.get::<u32, _>(2) + 1,
                depth: row.get(3),
                host: row.get(4),
                lease,
                revisit: Revisit {
                    validators: Validators { etag: row.get(5), last_modified: row.get(6) },
                    body_sha256: row.get(7),
                    recrawl_interval_ms: row.get(8),
                },
            })
            .collect();
        Ok(jobs)
    }

    /// Writes, in a batch's transaction `tx`, what the claims are once
    /// the batch lets go of those it settles (`live` completions) and
    /// `revoked`: how many are held (`claims_held`, so that a crash is known
    /// at the next start) and, for each host a claim found dry, its next
    /// work time, its soonest queued URL still held by none. Both in one
    /// transaction: a host whose work was moved on always has a count
    /// above 0 behind it. Returns the dry hosts written. The caller holds
    /// [`Self::claim_writes`].
    async fn write_claims(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        live: &BTreeSet<(i64, i64)>,
        revoked: &[i64],
    ) -> Result<Vec<String>, StoreError> {
        let settled: BTreeSet<i64> =
            live.iter().map(|(url_id, _)| *url_id).chain(revoked.iter().copied()).collect();
        let dry = self.claims.dry();
        if !dry.is_empty() {
            let hosts: Vec<&str> = dry.iter().map(String::as_str).collect();
            let still_held: Vec<i64> =
                self.claims.ids_on(&hosts).into_iter().filter(|id| !settled.contains(id)).collect();
            work_at_next_unheld(tx, &json_array(&hosts), &still_held).await?;
        }
        let held = self.claims.len().saturating_sub(settled.len() as u64);
        sqlx::query("UPDATE claims_held SET urls = ?1 WHERE urls <> ?1")
            .bind(i64::try_from(held).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(db("count claims held"))?;
        Ok(dry)
    }

    /// Closes both pools. The owner of the database (a store opened with
    /// [`open`](Self::open)) first takes the file out of WAL mode
    /// (`journal_mode = DELETE`, which checkpoints and removes the `-wal` and
    /// `-shm` files): a stopped crawl's database is then a plain file that a
    /// reader without write access to its directory can open (sqlite.org/
    /// wal.html §"Read-Only Databases": a WAL database needs its `-shm`, or a
    /// writable directory to create it). If another process has the file
    /// open, it stays in WAL mode, and its `-wal` and `-shm` stay with it.
    /// The next crawl switches back to WAL.
    pub async fn close(&self) {
        close_pool(&self.read).await;
        if self._lock.is_some() {
            match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = DELETE").fetch_one(&self.write).await
            {
                Ok(mode) if mode == "delete" => {}
                Ok(mode) => {
                    tracing::debug!(mode, "the database stays in WAL mode: another process has it open")
                }
                Err(e) => tracing::debug!("the database stays in WAL mode: {e}"),
            }
        }
        self.write.close().await;
    }
}

/// Closes `pool` and every connection in it. sqlx 0.8's `Pool::close` can
/// return while a connection that was on its way back to the pool (its
/// `PoolConnection` dropped just before) sits idle in it, still open; with a
/// read connection open, `journal_mode = DELETE` fails as locked and the
/// stopped crawl's database keeps its `-wal`. Closing again closes such
/// stragglers; a closed pool hands out no new connections, so the loop ends
/// once the returns in flight have landed (100 tries 1 ms apart at most).
async fn close_pool(pool: &SqlitePool) {
    for _ in 0..100 {
        pool.close().await;
        if pool.size() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tracing::debug!(open = pool.size(), "connections still open after closing the pool");
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| {
        StoreError::Database {
            context: "create lock file",
            source: format!("{}: {e}", lock_path.display()).into(),
        }
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.display().to_string(),
            lock: lock_path.display().to_string(),
        }),
        Err(TryLockError::Error(e)) => Err(StoreError::Database {
            context: "lock",
            source: format!("{}: {e}", lock_path.display()).into(),
        }),
    }
}

/// Applies pending migrations on the write connection. Foreign keys are off
/// meanwhile, and checked afterwards: version 6 rebuilds `attempts`, which
/// `redirect_hops` refers to, and a transaction (sqlx runs each migration in
/// one) cannot turn them off (sqlite.org/foreignkeys.html, §2 and
/// lang_altertable.html §7).
///
/// Errors: as [`SqliteStore::open`]; a foreign key left broken is a
/// [`StoreError::Database`] naming the table.
async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(db("migrate"))?;
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // No table yet on a new file: nothing to upgrade.
    let at: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
        .unwrap_or(None);
    if let Some(at) = at.filter(|at| *at < latest) {
        tracing::info!(
            "upgrading {} from schema version {at} to {latest}; on a large database this takes a while \
             (versions 6 and 8 copy the attempts table once each)",
            path.display()
        );
    }
    sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut *conn).await.map_err(db("migrate"))?;
    let ran = MIGRATOR.run_direct(&mut *conn).await;
    let broken: Vec<(String,)> = match &ran {
        Ok(()) => sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check LIMIT 1")
            .fetch_all(&mut *conn)
            .await
            .map_err(db("migrate"))?,
        Err(_) => Vec::new(),
    };
    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await.map_err(db("migrate"))?;
    if let Some((table,)) = broken.first() {
        return Err(StoreError::Database {
            context: "migrate",
            source: format!("{}: a foreign key of table {table} is broken", path.display()).into(),
        });
    }
    match ran {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(found)) => Err(StoreError::NewerSchema {
            path: path.display().to_string(),
            found,
            known: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
        }),
        Err(MigrateError::Execute(e)) if sqlite_kind(&e) != Kind::Other => Err(db("migrate")(e)),
        Err(e) => Err(StoreError::Database {
            context: "migrate",
            source: format!("{}: {e}", path.display()).into(),
        }),
    }
}

/// A store error for `e` in `context`, as `faults::sqlite_kind` sorts it
/// (SQLite knows no outage: its file is local).
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match sqlite_kind(&e) {
        // A pool's timeout: the one write connection was held that long (at
        // least; the read pool waits longer).
        Kind::Locked(blocker) => {
            let waited =
                if matches!(e, sqlx::Error::PoolTimedOut) { OWN_WRITE_NOTICED } else { Duration::ZERO };
            StoreError::Busy { context, waited, blocker }
        }
        Kind::Full => StoreError::DiskFull { context },
        Kind::Unreachable | Kind::Other => StoreError::Database { context, source: Box::new(e) },
    }
}

fn db_at(context: &'static str, path: &Path) -> impl FnOnce(sqlx::Error) -> StoreError {
    let path = path.display().to_string();
    move |e| match sqlite_kind(&e) {
        Kind::Other => StoreError::Database { context, source: format!("{path}: {e}").into() },
        _ => db(context)(e),
    }
}

super::stats_queries!(SqliteStore, read);

impl Store for SqliteStore {
    async fn enqueue(&self, urls: &[NewUrl]) -> Result<u64, StoreError> {
        self.writing("enqueue", move || async move {
            let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin"))?;
            let new = insert_urls(&mut tx, urls).await?;
            tx.commit().await.map_err(db("commit enqueue"))?;
            Ok(new)
        })
        .await
    }

    async fn record_input_errors(&self, errors: &[InputError]) -> Result<(), StoreError> {
        self.writing("record input errors", move || async move {
            let recorded_at = rfc3339(SystemTime::now());
            for chunk in statement_chunks(errors) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO input_errors (source, line, text, reason, recorded_at) ",
                );
                q.push_values(chunk, |mut row, e| {
                    row.push_bind(&e.source)
                        .push_bind(to_i64(e.line))
                        .push_bind(&e.text)
                        .push_bind(&e.reason)
                        .push_bind(&recorded_at);
                });
                q.push(" ON CONFLICT (source, line, text) DO NOTHING");
                q.build().execute(&self.write).await.map_err(db("record input errors"))?;
            }
            Ok(())
        })
        .await
    }

    async fn ready_hosts(
        &self,
        now_ms: i64,
        busy: &[String],
        limit: u32,
        _new_limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT host FROM hosts
             WHERE ready_at_ms <= ?1 AND host NOT IN (SELECT value FROM json_each(?2))
             ORDER BY ready_at_ms LIMIT ?3",
        )
        .bind(now_ms)
        .bind(json_array(busy))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db("ready hosts"))
    }

    async fn claim(&self, now_ms: i64, picks: &[(String, u32)]) -> Result<Claim, StoreError> {
        // A claim writes nothing: it is held in memory (`store/claims.rs`),
        // and the query leaves out the URLs held. It takes its turn with
        // the batches that settle claims: what it reads (a URL's depth,
        // whether it is still queued) cannot change before it holds what it
        // read, so a batch that commits later sees the claim (a shorter
        // path to a held page fetches it again). The batches write how
        // many claims are held, and the dry hosts' next work time.
        let _settling = self.claim_writes.lock().await;
        let mut jobs = self.due_unheld(now_ms, picks).await?;
        // Across hosts too, the URLs queued first go first.
        jobs.sort_unstable_by_key(|job| job.url_id);
        self.claims.hold(&jobs, now_ms);
        // A host that had fewer due URLs than picked has none left to
        // claim: its next work is its next URL not held, which the next
        // batch writes (a claim writes nothing). Until then the host may
        // be picked again, and its claim finds nothing.
        let mut taken: HashMap<&str, u32> = HashMap::new();
        for job in &jobs {
            *taken.entry(job.host.as_str()).or_default() += 1;
        }
        let dry: Vec<&str> = picks
            .iter()
            .filter(|(host, n)| taken.get(host.as_str()).copied().unwrap_or(0) < *n)
            .map(|(host, _)| host.as_str())
            .collect();
        self.claims.mark_dry(&dry);
        Ok(Claim { jobs, handed_over: Vec::new() })
    }

    async fn complete(
        &self,
        completions: &[Completion],
        limits: PageLimits,
    ) -> Result<Committed, StoreError> {
        self.writing("record results", move || async move {
            let _settling = self.claim_writes.lock().await;
            let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin"))?;
            let mut batch = SqliteBatch {
                tx: &mut tx,
                claims: &self.claims,
                finished: BTreeSet::new(),
                revoked: Vec::new(),
            };
            let committed = batch::write_batch(&mut batch, completions, limits, SystemTime::now()).await?;
            // A page can be both finished and revoked by one batch (a
            // shorter path to it): `write_claims` counts it once.
            let revoked = batch.revoked;
            let dry = self.write_claims(&mut tx, &committed.live, &revoked).await?;
            tx.commit().await.map_err(db("commit results"))?;
            self.claims.settle(&committed.live, &revoked);
            self.claims.written(&dry);
            Ok(committed)
        })
        .await
    }

    async fn requeue_abandoned(&self) -> Result<u64, StoreError> {
        self.writing("requeue in-flight URLs", move || async move {
            let _settling = self.claim_writes.lock().await;
            let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin"))?;
            // Rows left in flight by a trawler that wrote its claims to the
            // database (schema 8 and before).
            let legacy = sqlx::query(
                "UPDATE urls SET state = 'queued', lease = NULL, leased_at_ms = NULL
                 WHERE state = 'in_flight'",
            )
            .execute(&mut *tx)
            .await
            .map_err(db("requeue in-flight URLs"))?
            .rows_affected();
            let held: i64 = sqlx::query_scalar("SELECT urls FROM claims_held")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count claims held"))?;
            if held > 0 || legacy > 0 {
                // Claims that were never let go of (a crash): their URLs
                // are queued, but a claim that took a host's last due URLs
                // left the host with no work. Each host's next work is its
                // soonest queued URL.
                sqlx::query(
                    "UPDATE hosts SET work_at_ms = (SELECT min(not_before_ms) FROM urls
                                                    WHERE urls.host = hosts.host AND urls.state = 'queued')
                     WHERE work_at_ms > (SELECT coalesce(min(not_before_ms), 9223372036854775807) FROM urls
                                         WHERE urls.host = hosts.host AND urls.state = 'queued')",
                )
                .execute(&mut *tx)
                .await
                .map_err(db("requeue hosts"))?;
                sqlx::query("UPDATE claims_held SET urls = 0")
                    .execute(&mut *tx)
                    .await
                    .map_err(db("count claims held"))?;
            }
            tx.commit().await.map_err(db("commit requeue"))?;
            // The count is the last batch's view of this process's claims
            // (at start-up, of a crashed run's): this process's own, if it
            // holds any, are the ones to count.
            let own = self.claims.clear();
            Ok(legacy + own.max(u64::try_from(held).unwrap_or(0)))
        })
        .await
    }

    async fn release(&self, _last_starts: &[(String, Duration)]) -> Result<u64, StoreError> {
        // The owner is the only crawler: what is in flight is its own, and
        // no other crawler takes its hosts over. Its claims' rows are
        // queued already; their hosts have work again.
        self.writing("release claims", move || async move {
            let _settling = self.claim_writes.lock().await;
            let hosts: BTreeSet<String> = self.claims.hosts();
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin"))?;
            if !hosts.is_empty() {
                work_at_next_unheld(&mut tx, &json_array(&hosts), &[]).await?;
            }
            sqlx::query("UPDATE claims_held SET urls = 0")
                .execute(&mut *tx)
                .await
                .map_err(db("count claims held"))?;
            tx.commit().await.map_err(db("commit release"))?;
            Ok(self.claims.clear())
        })
        .await
    }

    async fn next_ready(&self) -> Result<Option<i64>, StoreError> {
        // Hosts with no queued URL sort last (ready_at_ms is the maximum), so
        // the first row in index order answers.
        sqlx::query_scalar(
            "SELECT ready_at_ms FROM hosts WHERE work_at_ms < 9223372036854775807
             ORDER BY ready_at_ms LIMIT 1",
        )
        .fetch_optional(&self.read)
        .await
        .map_err(db("next ready host"))
    }

    async fn has_queued(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'queued')")
            .fetch_one(&self.read)
            .await
            .map_err(db("look for queued URLs"))
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows = sqlx::query("SELECT state, count(*) FROM urls GROUP BY state")
            .fetch_all(&self.read)
            .await
            .map_err(db("count URLs"))?;
        let mut counts = StateCounts::default();
        for row in rows {
            let n = row.get::<i64, _>(1) as u64;
            match UrlState::from_name(row.get::<&str, _>(0)) {
                Some(UrlState::Queued) => counts.queued = n,
                Some(UrlState::InFlight) => counts.in_flight = n,
                Some(UrlState::Done) => counts.done = n,
                Some(UrlState::Failed) => counts.failed = n,
                None => {}
            }
        }
        // Claims are held in memory: their rows are queued in the
        // database (another process's `trawler stats` counts them so).
        let held = self.claims.len();
        counts.queued = counts.queued.saturating_sub(held);
        counts.in_flight += held;
        let invalid: i64 = sqlx::query_scalar("SELECT count(*) FROM input_errors")
            .fetch_one(&self.read)
            .await
            .map_err(db("count input errors"))?;
        counts.invalid_lines = invalid as u64;
        Ok(counts)
    }

    async fn schedule_recrawls(&self, policy: &RecrawlPolicy) -> Result<u64, StoreError> {
        if policy.is_never() {
            let scheduled: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM urls WHERE recrawl_at_ms IS NOT NULL)")
                    .fetch_one(&self.read)
                    .await
                    .map_err(db("look for recrawl times"))?;
            if !scheduled {
                return Ok(0);
            }
        }
        let per_host: BTreeMap<&str, i64> =
            policy.per_host.iter().map(|(h, d)| (h.as_str(), duration_ms(*d))).collect();
        let per_host = &json_array(&per_host);
        self.writing("schedule recrawls", move || async move {
            // A URL's own interval (adaptive revisit) applies only where
            // its host is recrawled at all.
            let result = sqlx::query(
                "WITH due AS (
                     SELECT id, finished_ms + CASE WHEN after_ms IS NULL THEN NULL
                         WHEN ?3 AND state = 'done' THEN coalesce(recrawl_interval_ms, after_ms)
                         ELSE after_ms END AS at_ms
                     FROM (SELECT id, state, finished_ms, recrawl_interval_ms,
                               coalesce((SELECT value FROM json_each(?1) WHERE key = urls.host), ?2) AS after_ms
                           FROM urls WHERE state IN ('done', 'failed')))
                 UPDATE urls SET recrawl_at_ms = due.at_ms FROM due
                 WHERE urls.id = due.id AND urls.recrawl_at_ms IS NOT due.at_ms",
            )
            .bind(per_host)
            .bind(policy.default.map(duration_ms))
            .bind(policy.adaptive)
            .execute(&self.write)
            .await
            .map_err(db("schedule recrawls"))?;
            Ok(result.rows_affected())
        })
        .await
    }

    async fn has_body(&self, sha256: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bodies WHERE sha256 = ?1)")
            .bind(sha256)
            .fetch_one(&self.read)
            .await
            .map_err(db("look up a body"))
    }

    async fn save_body(&self, sha256: &str, bytes: u64, zstd: &[u8]) -> Result<(), StoreError> {
        let stored_at = &rfc3339(SystemTime::now());
        self.writing("store a body", move || async move {
            sqlx::query(
                "INSERT INTO bodies (sha256, bytes, encoding, data, stored_at) VALUES (?1, ?2, 'zstd', ?3, ?4)
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha256)
            .bind(to_i64(bytes))
            .bind(zstd)
            .bind(stored_at)
            .execute(&self.write)
            .await
            .map_err(db("store a body"))?;
            Ok(())
        })
        .await
    }

    async fn requeue_recrawls(&self, now_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.writing("requeue recrawls", move || async move {
            let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db("begin"))?;
            let hosts: Vec<String> = sqlx::query_scalar(
                "UPDATE urls SET state = 'queued', not_before_ms = 0, recrawl_at_ms = NULL,
                     recrawls = recrawls + 1, attempts_before = attempts
                 WHERE id IN (SELECT id FROM urls WHERE recrawl_at_ms <= ?1 ORDER BY recrawl_at_ms LIMIT ?2)
                 RETURNING host",
            )
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("requeue recrawls"))?;
            if !hosts.is_empty() {
                let distinct: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
                sqlx::query(
                    "UPDATE hosts SET work_at_ms = 0 WHERE host IN (SELECT value FROM json_each(?1))",
                )
                .bind(json_array(&distinct))
                .execute(&mut *tx)
                .await
                .map_err(db("requeue recrawl hosts"))?;
            }
            tx.commit().await.map_err(db("commit recrawls"))?;
            Ok(hosts.len() as u64)
        })
        .await
    }
}

/// Sets each host of `hosts_json` (a JSON array) to have work when its
/// soonest queued URL not in `held` is due (`hosts.work_at_ms`): never,
/// without one.
async fn work_at_next_unheld(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    hosts_json: &str,
    held: &[i64],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE hosts SET work_at_ms = coalesce(
             (SELECT min(not_before_ms) FROM urls
              WHERE urls.host = hosts.host AND urls.state = 'queued'
                AND urls.id NOT IN (SELECT value FROM json_each(?2))),
             9223372036854775807)
         WHERE host IN (SELECT value FROM json_each(?1))",
    )
    .bind(hosts_json)
    .bind(json_array(held))
    .execute(&mut **tx)
    .await
    .map_err(db("update hosts after claim"))?;
    Ok(())
}

/// [`BatchWrites`] on an SQLite write transaction: which completions are
/// live is `claims`' to say; `revoked` collects the claims the batch takes
/// back (pages to fetch again at a lower depth), let go of once it commits.
struct SqliteBatch<'t, 'c> {
    tx: &'t mut sqlx::Transaction<'c, Sqlite>,
    claims: &'t Claims,
    /// The URLs of the batch's live completions: no longer being fetched,
    /// though their claims are let go only once the batch commits.
    finished: BTreeSet<i64>,
    revoked: Vec<i64>,
}

impl BatchWrites for SqliteBatch<'_, '_> {
    type Error = StoreError;

    async fn update_urls(
        &mut self,
        completions: &[Completion],
        changes: &[UrlChange],
    ) -> Result<BTreeSet<(i64, i64)>, StoreError> {
        // Live: the claim is still held, under the completion's lease.
        let live: BTreeSet<(i64, i64)> = completions
            .iter()
            .filter(|c| self.claims.is_live(c.url_id, c.lease))
            .map(|c| (c.url_id, c.lease))
            .collect();
        self.finished = live.iter().map(|(url_id, _)| *url_id).collect();
        let rows: Vec<(&Completion, &UrlChange)> =
            completions.iter().zip(changes).filter(|(c, _)| live.contains(&(c.url_id, c.lease))).collect();
        for chunk in statement_chunks(&rows) {
            update_urls(self.tx, chunk).await?;
        }
        Ok(live)
    }

    async fn stored_content(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, StoredContent>, StoreError> {
        let rows: Vec<ContentColumns> = sqlx::query_as(
            "SELECT url_id, content_type, body_bytes, body_sha256 FROM attempts WHERE id IN
               (SELECT max(id) FROM attempts
                WHERE outcome = 'done' AND url_id IN (SELECT value FROM json_each(?1)) GROUP BY url_id)",
        )
        .bind(json_array(ids))
        .fetch_all(&mut **self.tx)
        .await
        .map_err(db("look up confirmed content"))?;
        Ok(rows.into_iter().map(stored).collect())
    }

    async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), StoreError> {
        // Hops need their attempt's id, and a batch may hold two attempts
        // of one URL (a stale one and the live one): ids are given here,
        // after the largest, under the write lock the transaction holds.
        let ids: Vec<Option<i64>> = if rows.iter().any(|r| !r.record.hops.is_empty()) {
            let last: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM attempts")
                .fetch_one(&mut **self.tx)
                .await
                .map_err(db("record attempts"))?;
            (1..=rows.len() as i64).map(|n| Some(last + n)).collect()
        } else {
            vec![None; rows.len()]
        };
        let rows: Vec<(Option<i64>, &AttemptRow)> = ids.iter().copied().zip(rows).collect();
        for chunk in statement_chunks(&rows) {
            insert_attempts(self.tx, chunk).await?;
        }
        insert_hops(self.tx, &rows).await
    }

    async fn update_hosts(&mut self, changes: &[(&str, i64, i64)]) -> Result<(), StoreError> {
        update_hosts(self.tx, changes).await
    }

    async fn page_depths(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, u32>, StoreError> {
        Ok(sqlx::query_as("SELECT id, depth FROM urls WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(json_array(ids))
            .fetch_all(&mut **self.tx)
            .await
            .map_err(db("look up page depths"))?
            .into_iter()
            .collect())
    }

    async fn stored_urls(&mut self, urls: &[&str]) -> Result<BTreeSet<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT url FROM urls WHERE url IN (SELECT value FROM json_each(?1))")
            .bind(json_array(urls))
            .fetch_all(&mut **self.tx)
            .await
            .map_err(db("look up discovered URLs"))?
            .into_iter()
            .collect())
    }

    async fn url_counts(
        &mut self,
        total: bool,
        hosts: &[&str],
    ) -> Result<(i64, BTreeMap<String, i64>), StoreError> {
        let all = match total {
            true => sqlx::query_scalar("SELECT coalesce(sum(urls), 0) FROM hosts")
                .fetch_one(&mut **self.tx)
                .await
                .map_err(db("count URLs"))?,
            false => 0,
        };
        if hosts.is_empty() {
            return Ok((all, BTreeMap::new()));
        }
        let per_host =
            sqlx::query_as("SELECT host, urls FROM hosts WHERE host IN (SELECT value FROM json_each(?1))")
                .bind(json_array(hosts))
                .fetch_all(&mut **self.tx)
                .await
                .map_err(db("count URLs per host"))?
                .into_iter()
                .collect();
        Ok((all, per_host))
    }

    async fn insert_urls(&mut self, urls: &[NewUrl]) -> Result<u64, StoreError> {
        insert_urls(self.tx, urls).await
    }

    async fn shorter_paths(
        &mut self,
        candidates: &[(&str, u32, Option<i64>)],
    ) -> Result<Vec<Shorter>, StoreError> {
        let rows: Vec<(i64, u32, Option<i64>, u32, String)> = sqlx::query_as(
            "WITH RECURSIVE
               found(url, depth, via) AS (
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
                 FROM json_each(?1)),
               lowered(id, depth, via) AS (
                 SELECT u.id, f.depth, f.via FROM found f JOIN urls u ON u.url = f.url WHERE f.depth < u.depth
                 UNION
                 SELECT l.to_id, p.depth + 1, p.id FROM lowered p
                 JOIN links l ON l.from_id = p.id JOIN urls v ON v.id = l.to_id
                 WHERE p.depth + 1 < v.depth)
             -- With min(), SQLite takes the bare column (via) from the row
             -- that has the least depth.
             SELECT l.id, min(l.depth), l.via, u.depth, u.state FROM lowered l JOIN urls u ON u.id = l.id
             GROUP BY l.id",
        )
        .bind(json_array(candidates))
        .fetch_all(&mut **self.tx)
        .await
        .map_err(db("find shorter paths"))?;
        Ok(rows
            .into_iter()
            .map(|(id, depth, via, before, state)| {
                // A claimed URL's row stays queued: it is being fetched,
                // unless this batch finished it (a retry stays queued).
                let state = match rules::stored_state(&state) {
                    UrlState::Queued if self.claims.holds(id) && !self.finished.contains(&id) => {
                        UrlState::InFlight
                    }
                    state => state,
                };
                (id, depth, via, before, state)
            })
            .collect())
    }

    async fn lower_depths(&mut self, rows: &[Lowered]) -> Result<(), StoreError> {
        // A page being fetched at its old depth is fetched again: its
        // claim goes, so its completion is stale.
        let claims = self.claims;
        self.revoked.extend(rows.iter().filter(|r| r.3 && claims.holds(r.0)).map(|r| r.0));
        let rows_json = json_array(rows);
        sqlx::query(
            "WITH v(id, depth, via, refetch) AS (
               SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                      json_extract(value, '$[3]')
               FROM json_each(?1))
             UPDATE urls SET depth = v.depth, found_on = coalesce(v.via, urls.found_on),
               state = CASE WHEN v.refetch THEN 'queued' ELSE urls.state END,
               not_before_ms = CASE WHEN v.refetch THEN 0 ELSE urls.not_before_ms END,
               recrawl_at_ms = CASE WHEN v.refetch THEN NULL ELSE urls.recrawl_at_ms END,
               etag = CASE WHEN v.refetch THEN NULL ELSE urls.etag END,
               last_modified = CASE WHEN v.refetch THEN NULL ELSE urls.last_modified END
             FROM v WHERE urls.id = v.id",
        )
        .bind(rows_json.as_str())
        .execute(&mut **self.tx)
        .await
        .map_err(db("lower depths"))?;
        if rows.iter().any(|r| r.3) {
            sqlx::query(
                "UPDATE hosts SET work_at_ms = 0 WHERE host IN
                   (SELECT host FROM urls WHERE id IN (SELECT json_extract(value, '$[0]') FROM json_each(?1)
                    WHERE json_extract(value, '$[3]')))",
            )
            .bind(rows_json.as_str())
            .execute(&mut **self.tx)
            .await
            .map_err(db("wake hosts of refetched pages"))?;
        }
        Ok(())
    }

    async fn insert_links(&mut self, edges: &[(i64, &str)]) -> Result<(), StoreError> {
        // One statement whatever the count: the edges as one JSON array.
        sqlx::query(
            "INSERT OR IGNORE INTO links (from_id, to_id)
             SELECT json_extract(e.value, '$[0]'), u.id FROM json_each(?1) AS e
             JOIN urls AS u ON u.url = json_extract(e.value, '$[1]')",
        )
        .bind(json_array(edges))
        .execute(&mut **self.tx)
        .await
        .map_err(db("record links"))?;
        Ok(())
    }

    async fn add_dropped_links(&mut self, rows: &[DroppedRow]) -> Result<(), StoreError> {
        for chunk in statement_chunks(rows) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO dropped_links (url_id, reason, count) ");
            q.push_values(chunk, |mut row, (url_id, reason, n)| {
                row.push_bind(*url_id).push_bind(reason.as_str()).push_bind(*n);
            });
            q.push(
                " ON CONFLICT (url_id, reason) DO UPDATE SET count = dropped_links.count + excluded.count",
            );
            q.build().execute(&mut **self.tx).await.map_err(db("record dropped links"))?;
        }
        Ok(())
    }
}

/// Inserts one statement's worth of `attempts` rows, each with its id if
/// given (`None`: SQLite picks it).
async fn insert_attempts(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    chunk: &[(Option<i64>, &AttemptRow<'_>)],
) -> Result<(), StoreError> {
    const HEAD: &str = "WITH v(id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, dns_ms, ttfb_ms,
                outcome, http_status, error_kind, error_message, retry_at, final_url, redirects, redirect_chain,
                content_type, body_bytes, body_sha256, headers, noindex, canonical_url) AS (VALUES ";
    const TAIL: &str = ") INSERT INTO attempts (id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms,
                dns_ms, ttfb_ms, outcome, http_status, error_kind, error_message, retry_at, final_url, redirects,
                redirect_chain, content_type, body_bytes, body_sha256, headers, noindex, canonical_url)
          SELECT * FROM v";
    static STATEMENT: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new(HEAD, 23, TAIL));
    let mut args = SqliteArguments::default();
    for (id, row) in chunk {
        let r = row.record;
        add(&mut args, *id)?;
        add(&mut args, row.url_id)?;
        add(&mut args, row.attempt)?;
        add(&mut args, rfc3339_from_ms(row.started_ms))?;
        add(&mut args, row.started_ms)?;
        add(&mut args, rfc3339_from_ms(row.fetched_ms))?;
        add(&mut args, to_i64(r.elapsed_ms))?;
        add(&mut args, r.dns_ms.map(to_i64))?;
        add(&mut args, r.ttfb_ms.map(to_i64))?;
        add(&mut args, row.outcome.as_str())?;
        add(&mut args, r.http_status)?;
        add(&mut args, r.error_kind.map(ErrorKind::as_str))?;
        add(&mut args, r.error_message.as_deref())?;
        add(&mut args, row.retry_ms.map(rfc3339_from_ms))?;
        add(&mut args, r.final_url.as_deref())?;
        add(&mut args, r.redirect_chain.len() as i64)?;
        add(&mut args, row.redirect_chain.as_deref())?;
        add(&mut args, row.content_type)?;
        add(&mut args, row.body_bytes.map(to_i64))?;
        add(&mut args, row.body_sha256)?;
        add(&mut args, r.headers.as_deref())?;
        add(&mut args, r.noindex)?;
        add(&mut args, r.canonical_url.as_deref())?;
    }
    sqlx::query_with(STATEMENT.sql(chunk.len()), args)
        .execute(&mut **tx)
        .await
        .map_err(db("record attempts"))?;
    Ok(())
}

/// Inserts the redirect hops of the attempts given ids.
async fn insert_hops(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    rows: &[(Option<i64>, &AttemptRow<'_>)],
) -> Result<(), StoreError> {
    let hops: Vec<(i64, usize, &Hop)> = rows
        .iter()
        .filter_map(|(id, row)| Some(((*id)?, &row.record.hops)))
        .flat_map(|(id, hops)| hops.iter().enumerate().map(move |(i, hop)| (id, i + 1, hop)))
        .collect();
    for rows in statement_chunks(&hops) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO redirect_hops (attempt_id, hop, url, host, started_ms, http_status) ",
        );
        q.push_values(rows, |mut row, (id, n, hop)| {
            row.push_bind(*id)
                .push_bind(*n as i64)
                .push_bind(&hop.url)
                .push_bind(&hop.host)
                .push_bind(unix_ms(hop.started_at))
                .push_bind(hop.http_status);
        });
        q.build().execute(&mut **tx).await.map_err(db("record redirect hops"))?;
    }
    Ok(())
}

/// Applies each change to its completion's URL: live completions only,
/// whose URLs are queued (a claim leaves its row as it was).
async fn update_urls(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    chunk: &[(&Completion, &UrlChange)],
) -> Result<(), StoreError> {
    const HEAD: &str = "WITH v(url_id, state, attempt, not_before_ms, finished_ms, recrawl_after_ms,
                done, etag, last_modified, body_sha256, changed_ms, recrawl_interval_ms) AS (VALUES ";
    const TAIL: &str = ") UPDATE urls SET state = v.state, attempts = urls.attempts_before + v.attempt,
                not_before_ms = v.not_before_ms,
                finished_ms = coalesce(v.finished_ms, urls.finished_ms),
                recrawl_at_ms = v.finished_ms + v.recrawl_after_ms,
                etag = CASE WHEN v.done THEN v.etag ELSE urls.etag END,
                last_modified = CASE WHEN v.done THEN v.last_modified ELSE urls.last_modified END,
                body_sha256 = CASE WHEN v.done THEN v.body_sha256 ELSE urls.body_sha256 END,
                changed_ms = coalesce(v.changed_ms, urls.changed_ms),
                recrawl_interval_ms = CASE WHEN v.done THEN v.recrawl_interval_ms ELSE urls.recrawl_interval_ms END
          FROM v WHERE urls.id = v.url_id AND urls.state = 'queued'";
    static STATEMENT: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new(HEAD, 12, TAIL));
    let mut args = SqliteArguments::default();
    for (c, change) in chunk {
        add(&mut args, c.url_id)?;
        add(&mut args, change.state.as_str())?;
        add(&mut args, change.attempts)?;
        add(&mut args, change.not_before_ms)?;
        add(&mut args, change.finished_ms)?;
        add(&mut args, change.recrawl_after_ms)?;
        add(&mut args, change.content.is_some())?;
        let content = change.content.as_ref();
        add(&mut args, content.and_then(|c| c.validators.etag.as_deref()))?;
        add(&mut args, content.and_then(|c| c.validators.last_modified.as_deref()))?;
        add(&mut args, content.and_then(|c| c.body_sha256.as_deref()))?;
        add(&mut args, content.and_then(|c| c.changed_ms))?;
        add(&mut args, content.and_then(|c| c.recrawl_interval_ms))?;
    }
    sqlx::query_with(STATEMENT.sql(chunk.len()), args).execute(&mut **tx).await.map_err(db("update URLs"))?;
    Ok(())
}

/// Inserts URLs not known yet, and marks their hosts as having work, in the
/// caller's transaction (a URL whose host row says "no work" would never be
/// claimed). Returns how many were new.
async fn insert_urls(tx: &mut sqlx::Transaction<'_, Sqlite>, urls: &[NewUrl]) -> Result<u64, StoreError> {
    static INSERT: LazyLock<MultiRow> = LazyLock::new(|| {
        MultiRow::new(
            "INSERT INTO urls (url, host, added_at, depth, found_on) VALUES ",
            5,
            " ON CONFLICT (url) DO NOTHING RETURNING host",
        )
    });
    let added_at = rfc3339(SystemTime::now());
    let mut new_hosts: BTreeMap<String, i64> = BTreeMap::new();
    let mut new = 0;
    for chunk in statement_chunks(urls) {
        let mut args = SqliteArguments::default();
        for u in chunk {
            add(&mut args, u.url.as_str())?;
            add(&mut args, u.host.as_str())?;
            add(&mut args, added_at.as_str())?;
            add(&mut args, u.depth)?;
            add(&mut args, u.found_on)?;
        }
        let hosts: Vec<String> = sqlx::query_scalar_with(INSERT.sql(chunk.len()), args)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("enqueue"))?;
        new += hosts.len() as u64;
        for host in hosts {
            *new_hosts.entry(host).or_default() += 1;
        }
    }
    let new_hosts: Vec<(String, i64)> = new_hosts.into_iter().collect();
    for chunk in statement_chunks(&new_hosts) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO hosts (host, work_at_ms, urls) ");
        q.push_values(chunk, |mut row, (host, n)| {
            row.push_bind(host).push_bind(0).push_bind(*n);
        });
        q.push(" ON CONFLICT (host) DO UPDATE SET work_at_ms = 0, urls = hosts.urls + excluded.urls");
        q.build().execute(&mut **tx).await.map_err(db("enqueue hosts"))?;
    }
    Ok(new)
}

/// Moves hosts' `work_at_ms` earlier for retries and records host backoffs
/// ([`rules::host_changes`]: `(host, work_at_ms, backoff_until_ms)`).
async fn update_hosts(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    rows: &[(&str, i64, i64)],
) -> Result<(), StoreError> {
    for chunk in statement_chunks(rows) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v(host, work_at_ms, backoff_until_ms) AS (");
        q.push_values(chunk, |mut row, (host, work_at, backoff_until)| {
            row.push_bind(*host).push_bind(*work_at).push_bind(*backoff_until);
        });
        q.push(
            ") UPDATE hosts SET work_at_ms = min(hosts.work_at_ms, v.work_at_ms),
                    backoff_until_ms = CASE v.backoff_until_ms WHEN 0 THEN hosts.backoff_until_ms
                                       ELSE v.backoff_until_ms END
              FROM v WHERE hosts.host = v.host",
        );
        q.build().execute(&mut **tx).await.map_err(db("update hosts"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_wal_is_warned_about_at_first_and_at_each_doubling() {
        let mib = 1024 * 1024 / 4096;
        let pinned = |mib_pages: i64| Checkpoint {
            busy: true,
            wal_pages: mib_pages,
            checkpointed: 0,
            page_size: 4096,
        };
        let mut wal = PinnedWal::default();
        let warned: Vec<i64> = [14, 14, 20, 27, 28, 40, 56, 100, 112, 150]
            .into_iter()
            .filter(|&size| wal.observe(&pinned(size * mib)))
            .collect();
        assert_eq!(warned, [14, 28, 56, 112]);
        assert!(!wal.observe(&Checkpoint { busy: false, wal_pages: 10, checkpointed: 10, page_size: 4096 }));
        assert!(wal.observe(&pinned(mib)), "pinned again after a truncation: news again");
        assert!(!wal.observe(&pinned(2 * mib)), "doublings of a small WAL count from the floor");
        assert!(wal.observe(&pinned(16 * mib)));
    }

    #[test]
    fn multi_row_statements_have_a_placeholder_group_per_row() {
        let statement = MultiRow::new("INSERT INTO t (a, b) VALUES ", 2, " RETURNING a");
        assert_eq!(statement.sql(1), "INSERT INTO t (a, b) VALUES (?, ?) RETURNING a");
        assert_eq!(
            statement.sql(4),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?), (?, ?) RETURNING a"
        );
        assert_eq!(statement.sql(256).matches('?').count(), 512);
    }

    #[test]
    fn batches_are_cut_into_a_few_reusable_sizes() {
        let rows: Vec<u32> = (0..339).collect();
        let sizes: Vec<usize> = statement_chunks(&rows).map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 64, 16, 1, 1, 1]);
        let rejoined: Vec<u32> = statement_chunks(&rows).flatten().copied().collect();
        assert_eq!(rejoined, rows);
        assert_eq!(statement_chunks::<u32>(&[]).count(), 0);
    }
}
