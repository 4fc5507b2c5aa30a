//! The database goes away for a while, or a write of trawler's own hangs:
//! the daemon rides an outage out (sessions ended again and again, a
//! database refusing connections), says what it waits for, answers 503 on
//! `/healthz` meanwhile, and records every request it made; past
//! `store.outage_grace` it exits 1 naming the cause; at start a refused
//! connection is named at once; and a write of its own that does not
//! return is told from another process's lock, which alone excuses
//! systemd's watchdog. The real binary, local servers, PostgreSQL databases
//! of the tests' own (the shared server is never stopped).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use trawler::store::{Completion, NewUrl, PageLimits, PgStore, Store};

use crate::postgres::{TestDatabase, sleep_once_in};
use crate::server::TestServer;
use crate::util::{Daemon, eventually, spawn_crawl_in, wait_within};

/// A daemon's config for these tests: short requests, leases and
/// warnings, so that an outage of a few seconds outlasts its leases.
const CONFIG: &str = "[crawl]\nconcurrency = 4\n\
                      [fetch]\ntimeout = \"2s\"\n\
                      [store]\nlease = \"4s\"\nbusy_warning = \"1s\"\n\
                      [log]\nlevel = \"info\"\n";

/// Ends the sessions of the trawler process `pid` on `url`'s database (its
/// `application_name` carries its pid), as an administrator's
/// `pg_terminate_backend` or a server restart does. Returns how many.
async fn end_sessions_of(url: &str, pid: u32) -> i64 {
    let mut admin = PgConnection::connect(url).await.unwrap();
    let ended = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name LIKE 'trawler %:' || $1 || ':%' AND datname = current_database()",
    )
    .bind(pid.to_string())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    ended
}

/// Attempts recorded per URL (any outcome, `stale_lease` included) in
/// `url`'s database, for URLs with any.
async fn attempts_per_url(url: &str) -> BTreeMap<String, i64> {
    let mut db = PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT u.url, count(*) FROM attempts AS a JOIN urls AS u ON u.id = a.url_id GROUP BY u.url",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Requests `server` answered per URL.
fn requests_per_url(server: &TestServer) -> BTreeMap<String, i64> {
    let mut per_url = BTreeMap::new();
    for hit in server.hits() {
        *per_url.entry(server.url(&hit.path)).or_default() += 1;
    }
    per_url
}

/// Waits until `daemon`'s log contains `needle` (30 s at most: a slow
/// write on a loaded machine) and returns the log.
async fn wait_for_log(daemon: &Daemon, needle: &str) -> String {
    daemon.stderr.wait_for_within(needle, Duration::from_secs(30)).await
}

/// Fills a table `burn` so that counting its three-way self-join (as the
/// trigger of the SQLite test does) takes about `target` in this build's
/// SQLite, which the daemon shares: timed on 100 rows (a million
/// combinations), then scaled. Unoptimised (debug) builds of SQLite run it
/// ten times slower than optimised ones.
async fn burn_for(db: &mut sqlx::SqliteConnection, target: Duration) {
    let fill = |n: u32| {
        format!(
            "DROP TABLE IF EXISTS burn; CREATE TABLE burn (x INTEGER);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
             INSERT INTO burn SELECT i FROM c;"
        )
    };
    const COUNT: &str = "SELECT count(*) FROM burn AS a, burn AS b, burn AS c WHERE a.x + b.x + c.x = 7";
    sqlx::raw_sql(&fill(100)).execute(&mut *db).await.unwrap();
    let timed = Instant::now();
    let _: i64 = sqlx::query_scalar(COUNT).fetch_one(&mut *db).await.unwrap();
    let scale = (target.as_secs_f64() / timed.elapsed().as_secs_f64().max(1e-3)).cbrt();
    sqlx::raw_sql(&fill((100.0 * scale) as u32)).execute(&mut *db).await.unwrap();
}

/// URLs finished (done or failed) in `url`'s database.
async fn finished(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM urls WHERE state IN ('done', 'failed')")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_daemon_rides_out_ended_sessions_and_a_database_refusing_connections_and_records_every_request() {
    let Some(pg) = TestDatabase::create("rides_out_an_outage").await else { return };
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with_env(dir.path(), CONFIG, &[("TRAWLER_STORE__URL", &pg.url)]);
    let urls: Vec<String> = (0..300).map(|i| server.url(&format!("/slow/100/{i}"))).collect();
    daemon.enqueue(&urls);
    eventually("fetches under way", Duration::from_secs(20), async || server.hits().len() >= 20).await;

    // Its sessions ended again and again for 3 s (restarts, failovers,
    // pg_terminate_backend): every task rides it out.
    let (pid, start) = (daemon.child.id(), Instant::now());
    let mut ended = 0;
    while start.elapsed() < Duration::from_secs(3) {
        ended += end_sessions_of(&pg.url, pid).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended >= 10, "{ended} sessions ended");
    assert!(daemon.child.try_wait().unwrap().is_none(), "exited:\n{}", daemon.stderr.text());

    // Then the database refuses connections (maintenance), for longer than
    // the daemon's leases: /healthz says why meanwhile, and so does the log.
    pg.allow_connections(false).await;
    let unreachable_5_s = |status, text: &str| status == 503 && text.contains("for 5 s");
    let health = daemon.healthz_until("503 for 5 s", unreachable_5_s).await;
    assert!(health.contains("database unreachable for 5 s"), "{health}");
    assert!(health.contains("not currently accepting connections"), "{health}");
    // Blips (a session ended, its operation through at the next try) are
    // no news; an outage that lasts store.busy_warning is.
    let log = daemon.stderr.wait_for("database unreachable for").await;
    assert!(log.contains("trying again until store.outage_grace (2m) is over"), "{log}");
    assert!(!log.contains("database unreachable for 0 s"), "{log}");
    assert!(daemon.child.try_wait().unwrap().is_none(), "exited:\n{}", daemon.stderr.text());
    pg.allow_connections(true).await;
    daemon.healthz_until("200", |status, _| status == 200).await;
    daemon.stderr.wait_for("database reachable again after").await;

    let total = urls.len() as i64;
    eventually("every URL finished", Duration::from_secs(60), async || {
        let done = finished(&pg.url).await;
        if done >= total { Ok(()) } else { Err(format!("{done} of {total} finished")) }
    })
    .await;
    let log = daemon.stderr.text();
    daemon.stop();
    assert!(!log.contains("ERROR"), "{log}");
    // Every request made has its attempt: fetched meanwhile and written
    // when the database was back (as stale_lease where the lease lapsed).
    assert_eq!(attempts_per_url(&pg.url).await, requests_per_url(&server));
}

/// A daemon frozen (SIGSTOP) inside its writer's transaction for longer
/// than the server lets a session idle in one (its lease) finds the session
/// ended on waking: it writes its results again on a new one, losing none.
#[tokio::test]
async fn a_daemon_frozen_inside_a_transaction_past_its_session_s_end_records_what_it_fetched() {
    let Some(pg) = TestDatabase::create("frozen_in_a_transaction").await else { return };
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    // 3 s leases: the server ends a session idle that long in a transaction.
    let config = "[fetch]\ntimeout = \"1s\"\n[store]\nlease = \"3s\"\n[log]\nlevel = \"info\"\n";
    let mut daemon = Daemon::start_with_env(dir.path(), config, &[("TRAWLER_STORE__URL", &pg.url)]);
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    // The writer's first transaction sleeps in its middle, for the test to
    // freeze the daemon there.
    sleep_once_in(&mut db, "AFTER INSERT ON attempts FOR EACH STATEMENT", "", 2.0).await;
    let urls: Vec<String> = (0..30).map(|i| server.url(&format!("/slow/50/{i}"))).collect();
    daemon.enqueue(&urls);

    let session = format!("trawler %:{}:%", daemon.child.id());
    let sleeping =
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 AND wait_event = 'PgSleep'";
    let writer: i32 = eventually("the writer's transaction to sleep", Duration::from_secs(20), async || {
        sqlx::query_scalar(sleeping).bind(&session).fetch_optional(&mut db).await.unwrap()
    })
    .await;
    crate::util::signal(&daemon.child, libc::SIGSTOP);
    // Its statement ends; its session waits, idle in its transaction, until
    // the server ends it.
    eventually("the server to end the session", Duration::from_secs(20), async || {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(writer)
            .fetch_one(&mut db)
            .await
            .unwrap();
        alive == 0
    })
    .await;
    crate::util::signal(&daemon.child, libc::SIGCONT);

    eventually("every URL finished", Duration::from_secs(30), async || {
        let done = finished(&pg.url).await;
        if done >= urls.len() as i64 { Ok(()) } else { Err(daemon.stderr.text()) }
    })
    .await;
    let log = daemon.stderr.text();
    assert!(daemon.child.try_wait().unwrap().is_none(), "{log}");
    daemon.stop();
    assert!(!log.contains("ERROR"), "{log}");
    let (attempts, requests) = (attempts_per_url(&pg.url).await, requests_per_url(&server));
    if attempts != requests {
        let mut db = PgConnection::connect(&pg.url).await.unwrap();
        type Row = (String, String, Option<String>, Option<String>, i64, i32);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT u.url, a.outcome, a.error_kind, a.error_message, a.started_ms, a.attempt
             FROM attempts a JOIN urls u ON u.id = a.url_id ORDER BY u.url, a.id",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        panic!("attempts {attempts:?}\nrequests {requests:?}\n{rows:#?}\n{log}");
    }
}

/// A claim or a commit whose answer was lost with its connection (it may
/// have committed) is tried again without leaving a URL in flight that no
/// job carries, and without recording an attempt twice.
#[tokio::test]
async fn a_claim_or_commit_tried_again_after_its_answer_was_lost_strands_and_doubles_nothing() {
    let Some(pg) = TestDatabase::create("tried_again").await else { return };
    let (lease, timeout, warning) =
        (Duration::from_secs(60), Duration::from_secs(30), Duration::from_secs(5));
    let store = PgStore::open_crawler(&pg.url, 2, lease, timeout, warning).await.unwrap();
    let urls: Vec<NewUrl> = (0..3)
        .map(|i| NewUrl {
            url: format!("http://a.test/{i}"),
            host: "a.test".into(),
            depth: 0,
            found_on: None,
        })
        .collect();
    store.enqueue(&urls).await.unwrap();
    let (now, picks) = (trawler::frontier::now_ms(), [("a.test".to_owned(), 3)]);
    // The first try committed; its answer never came.
    assert_eq!(store.claim(now, &picks).await.unwrap().jobs.len(), 3);
    let jobs = store.claim_again(now, &picks, true).await.unwrap().jobs;
    assert_eq!(jobs.len(), 3, "the lost claim's URLs are claimed again, not left in flight");

    let completions: Vec<Completion> = jobs
        .iter()
        .map(|job| {
            let mut completion = crate::store::done(job, job.lease);
            completion.record.started_at = Some(std::time::SystemTime::now());
            completion
        })
        .collect();
    let limits = PageLimits { total: None, per_host: None, max_depth: 3 };
    assert_eq!(store.complete(&completions, limits).await.unwrap().applied(), 3);
    // The first try committed; its answer never came.
    store.complete_again(&completions, limits, true).await.unwrap();
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT outcome, count(*) FROM attempts GROUP BY outcome")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, [("done".to_owned(), 3)], "recorded once, none as stale_lease");
    let in_flight: i64 = sqlx::query_scalar("SELECT count(*) FROM urls WHERE state <> 'done'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(in_flight, 0);
    store.close().await;
}

#[tokio::test]
async fn past_the_outage_grace_the_daemon_exits_1_naming_the_cause() {
    let Some(pg) = TestDatabase::create("past_the_outage_grace").await else { return };
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = "[fetch]\ntimeout = \"1s\"\n\
                  [store]\nlease = \"2s\"\noutage_grace = \"4s\"\nbusy_warning = \"1s\"\n\
                  [log]\nlevel = \"info\"\n";
    let mut daemon = Daemon::start_with_env(dir.path(), config, &[("TRAWLER_STORE__URL", &pg.url)]);
    daemon.enqueue(&[server.url("/ok/before")]);
    eventually("the request", Duration::from_secs(10), async || server.hits().len() == 1).await;

    pg.allow_connections(false).await;
    let went = Instant::now();
    let (status, _) = wait_within(&mut daemon.child, Duration::from_secs(30));
    let waited = went.elapsed();
    pg.allow_connections(true).await;
    let log = daemon.stderr.all();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(waited >= Duration::from_secs(4), "gave up after {waited:?}:\n{log}");
    assert!(log.contains("database unreachable for"), "warned while waiting:\n{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("longer than store.outage_grace (4s)"), "{last}");
    assert!(last.contains("not currently accepting connections"), "the cause is named: {last}");
}

#[test]
fn a_refused_connection_at_start_is_named_at_once() {
    // A port nothing listens on: connecting is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://crawler:hunter2@127.0.0.1:{port}/crawl");
    let (mut child, _) =
        spawn_crawl_in(dir.path(), &["http://127.0.0.1:1/".to_owned()], &[], &[("TRAWLER_STORE__URL", &url)]);
    let (status, took) = wait_within(&mut child, Duration::from_secs(30));
    let (_, log) = crate::util::output_of(child);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

/// A write of the daemon's own that hangs (a trigger the test adds sleeps
/// in the writer's transaction, holding the host rows that claims and lease
/// renewals wait for) is reported as that, not as another writer's lock,
/// and does not excuse systemd's watchdog.
#[tokio::test]
async fn a_write_of_its_own_that_hangs_is_named_and_stops_the_watchdog() {
    let Some(pg) = TestDatabase::create("own_write_hangs").await else { return };
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_env(
        dir.path(),
        "[store]\nbusy_warning = \"1s\"\n[log]\nlevel = \"info\"\n",
        // WATCHDOG=1 every second while the pipeline is alive; a loop silent
        // for 5 s stops it.
        &[("TRAWLER_STORE__URL", &pg.url), ("WATCHDOG_USEC", "2000000")],
    );
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    // ... holding every host row, as a hung write of its own would.
    sleep_once_in(
        &mut db,
        "AFTER INSERT ON attempts FOR EACH STATEMENT",
        "PERFORM 1 FROM hosts FOR UPDATE;",
        8.0,
    )
    .await;
    let urls: Vec<String> = (0..40).map(|i| server.url(&format!("/slow/50/{i}"))).collect();
    daemon.enqueue(&urls);

    let log = wait_for_log(&daemon, "a write of this process's own that is still running").await;
    assert!(log.contains("held by this daemon's own session"), "{log}");
    let health = daemon.healthz_until("503", |status, _| status == 503).await;
    assert!(health.contains("write of this process's own"), "{health}");
    // Not excused: the silent loop stops WATCHDOG=1, so systemd restarts it.
    eventually("the watchdog to stop", Duration::from_secs(15), async || {
        daemon.stderr.text().contains("loop has not run for")
    })
    .await;
    eventually("the crawl to go on", Duration::from_secs(30), async || server.hits().len() == urls.len())
        .await;
    let log = daemon.stderr.text();
    assert!(!log.contains("locked by another writer"), "{log}");
    daemon.stop();
}

/// The same on SQLite: a write that keeps the one write connection (a
/// trigger the test adds burns a few seconds of CPU inside the writer's
/// transaction, as a slow disk would hold it) is reported as a write of
/// trawler's own, not as another writer's lock.
#[tokio::test]
async fn a_slow_write_of_its_own_on_sqlite_is_not_called_another_writer_s_lock() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), "[store]\nbusy_warning = \"1s\"\n[log]\nlevel = \"info\"\n");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&daemon.db)
            .busy_timeout(Duration::from_secs(10));
        let mut db = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        burn_for(&mut db, Duration::from_secs(5)).await;
        sqlx::raw_sql(
            "CREATE TABLE slow_once (x INTEGER);
             CREATE TRIGGER slow_write AFTER INSERT ON attempts WHEN NOT EXISTS (SELECT 1 FROM slow_once)
             BEGIN
                 INSERT INTO slow_once VALUES (1);
                 SELECT count(*) FROM burn AS a, burn AS b, burn AS c WHERE a.x + b.x + c.x = 7;
             END;",
        )
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let urls: Vec<String> = (0..20).map(|i| server.url(&format!("/ok/{i}"))).collect();
    daemon.enqueue(&urls);
    wait_for_log(&daemon, "a write of this process's own that is still running").await;
    // Once the slow write is over, every result is written; at no moment
    // was the wait called another writer's lock.
    eventually("every result written", Duration::from_secs(60), async || {
        crate::util::scalar(&daemon.db, "SELECT count(*) FROM urls WHERE state = 'done'").await
            == urls.len() as i64
    })
    .await;
    let log = daemon.stderr.text();
    assert!(!log.contains("locked by another writer"), "{log}");
    daemon.stop();
}
