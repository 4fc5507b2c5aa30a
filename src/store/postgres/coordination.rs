//! How several daemons share one crawl on PostgreSQL: host leases (taken
//! by claims and redirect hops, renewed, given up when idle, ended when
//! lapsed, fenced by a token), the share of new hosts, robots.txt fetched
//! once for all daemons, work notifications, the lock-wait watch and the
//! queue's health. The engine's SQL for what every store does is in
//! `mod.rs` and `batch.rs`; the leases this daemon holds, in memory, in
//! `leases.rs`.

use super::*;

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
    /// Hosts this daemon is handing over to others and still holds (a
    /// rebalance: see [`PgStore::rebalance`]), to be given up once idle.
    pub handing_over: usize,
    /// Lapsed leases of any daemon (a crashed one's) ended, and how many
    /// URLs they held in flight went back to the queue.
    pub recovered_hosts: u64,
    pub recovered_urls: u64,
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

/// Lapsed leases ended per statement of [`PgStore::keep_leases`].
pub(super) const RECOVER_BATCH: i64 = 1000;
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

impl PgStore {
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
        .bind(&self.session)
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
    /// in the queue. Before giving idle hosts up, it hands over its hosts
    /// beyond its share, when it holds more than that and another daemon
    /// holds none ([`hand_over_surplus`](Self::hand_over_surplus)); between
    /// rounds, [`rebalance`](Self::rebalance) does that sooner.
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
        self.hand_over_surplus(keeping).await?;
        round.released = self.release_idle(last_starts, keeping).await?;
        round.handing_over = self.leases.handing_over().len();
        let (hosts, urls) = self.recover_lapsed().await?;
        (round.recovered_hosts, round.recovered_urls) = (hosts, urls);
        Ok(round)
    }

    /// What a daemon does between its lease rounds so that one that joins
    /// a running crawl gets its share of the hosts soon: begins to hand
    /// over the hosts it holds beyond its share when a daemon holds none
    /// ([`hand_over_surplus`](Self::hand_over_surplus)), and gives up
    /// those of the hosts it is handing over that are idle now, recording
    /// their last request starts (`last_starts`, as for
    /// [`release_idle`](Self::release_idle)). Returns how many hosts it
    /// still holds of those it is handing over.
    ///
    /// Errors: the database cannot be read or written.
    pub async fn rebalance(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<usize, StoreError> {
        self.hand_over_surplus(keeping).await?;
        let handing_over = self.leases.handing_over();
        if !handing_over.is_empty() {
            self.give_up_idle(last_starts, keeping, Some(&handing_over)).await?;
        }
        Ok(self.leases.handing_over().len())
    }

    /// Begins to hand over the hosts this daemon holds beyond its share of
    /// the leased hosts (their count over the trawler daemons connected,
    /// rounded up; see `Share::surplus`) when a connected daemon holds
    /// none, except those it is `keeping`. A busy host is never idle for
    /// long (its next URL most often waits in flight for its turn), so
    /// without this a daemon that joined a running crawl would get few
    /// hosts or none. A host handed over gets no new claim here; once what
    /// it has in flight has finished, it is given up for another daemon to
    /// take ([`HostLeases::hand_over`]). At most one hand-over a lease
    /// ([`HostLeases::may_hand_over`]).
    ///
    /// Errors: the database cannot be read.
    async fn hand_over_surplus(&self, keeping: &[String]) -> Result<(), StoreError> {
        if !self.leases.may_hand_over() {
            return Ok(());
        }
        let more = self.share().await?.surplus();
        if more == 0 {
            return Ok(());
        }
        let kept = self.leases.kept();
        let candidates: Vec<&String> = kept.iter().filter(|host| !keeping.contains(host)).collect();
        let chosen: Vec<&str> =
            rand::seq::IndexedRandom::choose_multiple(&candidates[..], &mut rand::rng(), more)
                .map(|host| host.as_str())
                .collect();
        tracing::info!(
            hosts = chosen.len(),
            held = kept.len(),
            "handing hosts over to a daemon that holds none: this one holds more than its share"
        );
        self.leases.hand_over(chosen);
        Ok(())
    }

    /// Gives up this daemon's leases on hosts with nothing of theirs in
    /// flight, except the hosts it is `keeping`: those it has a redirect
    /// hop in flight to (which holds a lease without a URL of the host's),
    /// and those in backoff, whose escalation (backoffs in a row) lives in
    /// this daemon's politeness and would start over with another owner.
    /// Each host's last request start (`last_starts`, how long ago, from
    /// politeness) is recorded for the next owner. When one given up has
    /// URLs queued (a host handed over), the daemons waiting for work are
    /// notified ([`WORK_CHANNEL`]). Returns how many it gave up.
    ///
    /// Errors: the database cannot be written.
    pub async fn release_idle(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
    ) -> Result<u64, StoreError> {
        self.give_up_idle(last_starts, keeping, None).await
    }

    /// [`release_idle`](Self::release_idle), of the hosts `among` these
    /// only, when given.
    async fn give_up_idle(
        &self,
        last_starts: &[(String, Duration)],
        keeping: &[String],
        among: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        // In turn with this daemon's claims: a claim that puts URLs of a
        // host in flight has committed before this looks for them (a
        // concurrent one could not be seen: a row's re-check after a lock
        // wait does not run NOT EXISTS again).
        let _claiming = self.claiming.lock().await;
        let (hosts, agos) = last_start_arrays(last_starts);
        let released: Vec<(String, bool)> = self
            .writing("give up idle host leases", || {
                sqlx::query_as(
                    "WITH v AS (SELECT * FROM unnest($2::text[], $3::float8[]) AS v(host, ago_s))
                     UPDATE hosts SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                         last_start_at = greatest(hosts.last_start_at,
                             now() - make_interval(secs => (SELECT ago_s FROM v WHERE v.host = hosts.host)))
                     WHERE lease_owner = $1 AND host <> ALL($4::text[])
                       AND ($6::text[] IS NULL OR host = ANY($6::text[]))
                       AND NOT EXISTS (SELECT 1 FROM urls
                                       WHERE urls.lease = hosts.lease_token AND urls.state = 'in_flight')
                     RETURNING host, work_at_ms < $5",
                )
                .bind(&self.worker)
                .bind(&hosts)
                .bind(&agos)
                .bind(keeping)
                .bind(i64::MAX)
                .bind(among)
                .fetch_all(&self.pool)
            })
            .await?;
        self.leases.released(released.iter().map(|(host, _)| host.as_str()));
        // A host given up with URLs queued (one handed over): the daemons
        // waiting for work may take it now, not at their next poll.
        if released.iter().any(|(_, queued)| *queued) {
            self.writing("notify the daemons of work", || {
                sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&self.pool)
            })
            .await?;
        }
        Ok(released.len() as u64)
    }

    /// Ends up to [`RECOVER_BATCH`] lapsed leases of any daemon: their
    /// in-flight URLs go back to the queue (due at once), and the host's
    /// last start is taken as the latest its owner could have started a
    /// request (the lapse less a request timeout). Returns how many hosts
    /// and URLs.
    pub(super) async fn recover_lapsed(&self) -> Result<(u64, u64), StoreError> {
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
        let mut claim = self
            .writing("claim", || async {
                let sent = self.leases.now();
                let tx = self.pool.begin().await?;
                let claim = Claiming { worker: &self.worker, hosts: &hosts, wanted: &wanted, now_ms, again };
                claim_in(tx, claim, &self.leases, sent).await
            })
            .await?;
        // Across hosts too, the URLs queued first go first.
        claim.jobs.sort_unstable_by_key(|job| job.url_id);
        Ok(claim)
    }
}
