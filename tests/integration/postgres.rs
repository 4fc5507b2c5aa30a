//! The PostgreSQL engine: its schema is SQLite's public interface, it is
//! versioned and refused when newer, a crawl on it ends as the same crawl on
//! SQLite, host leases are renewed, given up and ended when lapsed, a
//! completion under a lost lease is kept as `stale_lease` and changes
//! nothing, and redirects, sitemaps and robots.txt respect other daemons'
//! hosts (the daemons together: `scale_out`). Each test makes its own database on the server at
//! `TRAWLER_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and drops it; without a reachable server the tests print that they were
//! skipped and pass, unless `TRAWLER_REQUIRE_POSTGRES` is set (as `.ci/run`
//! sets it), which makes an unreachable server a failure.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use trawler::store::{HopLease, Job, NewUrl, PageLimits, PgStore, SqliteStore, Store, StoreError};

use crate::server::TestServer;
use crate::util::{
    Daemon, crawl_to_end, eventually, output_of, signal, spawn_crawl_in, spawn_trawler,
    spawn_trawler_with_env, strings, test_config, wait_within,
};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The lease, request timeout and lock-wait warning of stores the tests
/// open as a daemon.
const LEASE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(30);
const BUSY_WARNING: Duration = Duration::from_secs(5);

/// A database of its own for one test, dropped (with its connections) when
/// this is dropped.
pub struct TestDatabase {
    /// The database's URL.
    pub url: String,
    server: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database, or returns `None` after printing why the
    /// test is skipped.
    pub async fn create(test: &str) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = std::env::var("TRAWLER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
        let mut admin = match PgConnection::connect(&server).await {
            Ok(admin) => admin,
            Err(e) if std::env::var_os("TRAWLER_REQUIRE_POSTGRES").is_none() => {
                // Straight to the process's stderr: the harness captures
                // eprintln! of passing tests, and a skip must be seen.
                let _ = writeln!(std::io::stderr(), "{test}: skipped: no PostgreSQL at {server}: {e}");
                return None;
            }
            Err(e) => {
                panic!("TRAWLER_REQUIRE_POSTGRES is set and PostgreSQL at {server} is unreachable: {e}")
            }
        };
        let name = format!("trawler_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        admin.close().await.unwrap();
        let (base, _) = server.rsplit_once('/').expect("a database URL ends in /name");
        Some(Self { url: format!("{base}/{name}"), server, name })
    }

    /// Lets sessions connect to the database or not (`ALLOW_CONNECTIONS`,
    /// as an administrator does for maintenance), from the server's own
    /// database; refusing also ends every session the database has.
    pub async fn allow_connections(&self, allow: bool) {
        let mut admin = PgConnection::connect(&self.server).await.unwrap();
        let name = &self.name;
        sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"))
            .execute(&mut admin)
            .await
            .unwrap();
        if !allow {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(name)
                .execute(&mut admin)
                .await
                .unwrap();
        }
        admin.close().await.unwrap();
    }
}

/// Makes the first statement that fires `trigger` (for example `AFTER
/// INSERT ON attempts FOR EACH STATEMENT`) run `first` and then sleep
/// `sleep_s` in the database, once: for a test to freeze or hold a daemon
/// right there.
pub async fn sleep_once_in(db: &mut PgConnection, trigger: &str, first: &str, sleep_s: f64) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE slow_once (at timestamptz);
         CREATE FUNCTION sleep_once() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NOT EXISTS (SELECT 1 FROM slow_once) THEN
                 INSERT INTO slow_once VALUES (now());
                 {first}
                 PERFORM pg_sleep({sleep_s});
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER sleep_once {trigger} EXECUTE FUNCTION sleep_once();"
    ))
    .execute(db)
    .await
    .unwrap();
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime: drop the database from a thread of
        // its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Column names of `relation`, in order, on PostgreSQL.
async fn pg_columns(db: &mut PgConnection, relation: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(relation)
    .fetch_all(db)
    .await
    .unwrap()
}

/// The public relations (README, "The database"), each with the columns
/// only PostgreSQL has: what several daemons sharing a crawl need.
const PUBLIC: [(&str, &[&str]); 12] = [
    ("urls", &[]),
    ("hosts", &["lease_owner", "lease_token", "lease_expires_at", "last_start_at"]),
    ("attempts", &["worker"]),
    ("links", &[]),
    ("dropped_links", &[]),
    ("input_errors", &[]),
    ("redirect_hops", &[]),
    ("bodies", &[]),
    ("results", &[]),
    ("host_politeness", &[]),
    ("claims_held", &[]),
    ("_sqlx_migrations", &[]),
];

#[tokio::test]
async fn postgres_has_the_public_schema_of_sqlite_at_the_same_version() {
    let Some(pg) = TestDatabase::create("postgres_has_the_public_schema").await else { return };
    let store = PgStore::open(&pg.url, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    SqliteStore::open(&config.store).await.unwrap().close().await;

    let sqlite_version: Vec<String> =
        strings(&config.store.path, "SELECT CAST(max(version) AS TEXT) FROM _sqlx_migrations").await;
    assert_eq!(
        store.schema_version().await.unwrap().to_string(),
        sqlite_version[0],
        "one version, both engines"
    );

    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    for (relation, only_postgres) in PUBLIC {
        let sqlite =
            strings(&config.store.path, &format!("SELECT name FROM pragma_table_xinfo('{relation}')")).await;
        assert!(!sqlite.is_empty(), "{relation} exists in SQLite");
        let mut postgres = pg_columns(&mut db, relation).await;
        for extra in only_postgres {
            let at = postgres.iter().position(|c| c == extra).unwrap_or_else(|| panic!("{relation}.{extra}"));
            postgres.remove(at);
        }
        assert_eq!(postgres, sqlite, "{relation}: the same columns in the same order");
    }
    store.close().await;
}

#[tokio::test]
async fn postgres_views_say_what_sqlite_views_say() {
    let Some(pg) = TestDatabase::create("postgres_views_say_what_sqlite_views_say").await else { return };
    let store = PgStore::open(&pg.url, 2).await.unwrap();
    store.close().await;
    // A URL fetched twice 300 ms apart (a 503, then a 200), a redirect hop
    // to another host, and a rejected input line.
    let rows = [
        "INSERT INTO urls (id, url, host, state, attempts, added_at, finished_ms)
         VALUES (1, 'http://a.test/', 'a.test', 'done', 2, '2026-12-06T10:00:00Z', 1765015200400)",
        "INSERT INTO attempts (id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, outcome,
                               http_status, error_kind, redirects)
         VALUES (1, 1, 1, '2026-12-06T10:00:00Z', 1765015200000, '2026-12-06T10:00:00.050Z', 50, 'retry', 503,
                 'http_status', 0),
                (2, 1, 2, '2026-12-06T10:00:00.300Z', 1765015200300, '2026-12-06T10:00:00.400Z', 100, 'done', 200,
                 NULL, 1)",
        "INSERT INTO redirect_hops (attempt_id, hop, url, host, started_ms, http_status)
         VALUES (2, 1, 'http://b.test/', 'b.test', 1765015200350, 200)",
        "INSERT INTO input_errors (source, line, text, reason, recorded_at)
         VALUES ('urls.txt', 3, 'not a url', 'relative URL without a base', '2026-12-06T10:00:00Z')",
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    SqliteStore::open(&config.store).await.unwrap().close().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&config.store.path);
    let sqlite = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    for sql in rows {
        sqlx::query(sql).execute(&sqlite).await.unwrap();
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    // Times are text in SQLite and timestamptz in PostgreSQL: compare them
    // as Unix ms.
    let results =
        "SELECT coalesce(url_id, 0), url, state, coalesce(http_status, 0), coalesce(error_kind, ''),
                          attempts, coalesce(error_message, '')
                   FROM results ORDER BY url";
    let from_sqlite: Vec<(i64, String, String, i64, String, i64, String)> =
        sqlx::query_as(results).fetch_all(&sqlite).await.unwrap();
    let from_postgres: Vec<(i64, String, String, i32, String, i32, String)> =
        sqlx::query_as(results).fetch_all(&mut db).await.unwrap();
    let widened: Vec<_> = from_postgres
        .into_iter()
        .map(|(a, b, c, d, e, f, g)| (a, b, c, i64::from(d), e, i64::from(f), g))
        .collect();
    assert_eq!(widened, from_sqlite);
    assert_eq!(from_sqlite.len(), 2);

    let politeness = "SELECT host, requests, min_gap_ms, responses_503 FROM host_politeness ORDER BY host";
    let from_sqlite: Vec<(String, i64, Option<i64>, i64)> =
        sqlx::query_as(politeness).fetch_all(&sqlite).await.unwrap();
    let from_postgres: Vec<(String, i64, Option<i64>, i64)> =
        sqlx::query_as(politeness).fetch_all(&mut db).await.unwrap();
    assert_eq!(from_postgres, from_sqlite);
    assert_eq!(from_sqlite[0], ("a.test".to_owned(), 2, Some(300), 1));
    let first: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM first_request_at)::float8 FROM host_politeness WHERE host = 'a.test'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((first * 1000.0).round() as i64, 1765015200000);
}

#[tokio::test]
async fn postgres_reopens_without_migrating_and_refuses_a_newer_schema() {
    let Some(pg) = TestDatabase::create("postgres_refuses_a_newer_schema").await else { return };
    // Daemons starting together on an empty database: one migrates, the
    // others wait for its lock and find nothing left to do.
    let (a, b, c) =
        tokio::join!(PgStore::open(&pg.url, 1), PgStore::open(&pg.url, 1), PgStore::open(&pg.url, 1));
    for store in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(store.schema_version().await.unwrap(), 9);
        store.close().await;
    }
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&mut db).await.unwrap();
    assert_eq!(applied, 5, "versions 5 to 9");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let err = PgStore::open(&pg.url, 1).await.err().expect("refused");
    assert!(matches!(err, StoreError::NewerSchema { found: 999999, known: 9, .. }), "{err}");
    assert!(err.to_string().contains("newer than this trawler knows"), "{err}");
}

#[tokio::test]
async fn a_postgres_url_with_a_password_is_never_shown_with_it() {
    // Nothing listens on port 1: the error must name the server, not the
    // password.
    let err =
        PgStore::open("postgres://crawler:hunter2@127.0.0.1:1/crawl", 1).await.err().expect("unreachable");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let err =
        PgStore::open("mysql://crawler:hunter2@127.0.0.1/crawl", 1).await.err().expect("not PostgreSQL");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// `(url, state, http_status, attempts, redirects, depth)` of a `results` row.
type Row = (String, String, Option<i64>, i64, Option<i64>, i64);

/// Every `results` row, as `trawler export` prints it (JSON lines).
fn exported(db: &str) -> Vec<Row> {
    let child = spawn_trawler(&["export", "--db", db]);
    let (out, err) = output_of(child);
    let mut rows: Vec<_> = out
        .lines()
        .map(|line| {
            let row: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{err}"));
            (
                row["url"].as_str().unwrap().to_owned(),
                row["state"].as_str().unwrap().to_owned(),
                row["http_status"].as_i64(),
                row["attempts"].as_i64().unwrap(),
                row["redirects"].as_i64(),
                row["depth"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_crawl_on_postgres_ends_as_the_same_crawl_on_sqlite() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("a_crawl_on_postgres")) else { return };
    // Each crawl against a server of its own (the flaky path counts its
    // requests), compared by path.
    let lines = |server: &TestServer| {
        vec![
            server.url("/site/index.html"),
            server.url("/ok/plain"),
            server.url("/status/404/missing"),
            server.url("/flaky/1/again"),
            server.url("/redirect/2"),
            "not a url".to_owned(),
        ]
    };
    let flags = ["--follow", "--max-depth", "2", "--max-attempts", "3"];
    let (first, second) = (TestServer::start_on("127.0.0.100"), TestServer::start_on("127.0.0.100"));
    let dir = tempfile::tempdir().unwrap();
    let (sqlite, _) = crawl_to_end(dir.path(), &lines(&first), &flags, &[]);
    // The database named by the environment, as a service unit would.
    let other = tempfile::tempdir().unwrap();
    let env = [("TRAWLER_STORE__URL", pg.url.as_str())];
    let (_, log) = crawl_to_end(other.path(), &lines(&second), &flags, &env);

    let by_path = |rows: Vec<Row>, server: &TestServer| -> Vec<Row> {
        let origin = server.url("");
        let mut rows: Vec<Row> =
            rows.into_iter().map(|(url, a, b, c, d, e)| (url.replace(&origin, ""), a, b, c, d, e)).collect();
        rows.sort();
        rows
    };
    let from_sqlite = by_path(exported(sqlite.to_str().unwrap()), &first);
    let from_postgres = by_path(exported(&pg.url), &second);
    assert!(from_sqlite.len() > 8, "{from_sqlite:?}");
    assert_eq!(from_postgres, from_sqlite, "{log}");
    let again = from_postgres.iter().find(|r| r.0.ends_with("/flaky/1/again")).unwrap();
    assert_eq!((again.1.as_str(), again.2, again.3), ("done", Some(200), 2), "a 503, then a 200");

    runtime.block_on(async {
        let mut db = PgConnection::connect(&pg.url).await.unwrap();
        let (attempts, workers, stale): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT worker), count(*) FILTER (WHERE outcome = 'stale_lease') FROM attempts",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(attempts > 8);
        assert_eq!((workers, stale), (1, 0), "one daemon, no lost lease");
        let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM hosts WHERE lease_owner IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(leased, 0, "a stopped daemon holds no host");
    });
    let (stats, _) = output_of(spawn_trawler(&["stats", "--db", &pg.url, "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["invalid_lines"], 1);
    assert_eq!(stats["queued"], 0);
}

#[test]
fn a_capped_crawl_that_keeps_bodies_and_headers_ends_alike_on_both_engines() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("a_capped_crawl_with_bodies")) else { return };
    let toml = "[discovery]\nfollow = true\nmax_depth = 3\nmax_pages = 6\n\
                [store]\nsave_body = true\nsave_headers = true\n";
    let (first, second) = (TestServer::start_on("127.0.0.101"), TestServer::start_on("127.0.0.101"));
    let crawl = |server: &TestServer, env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, toml).unwrap();
        let lines = [server.url("/site/index.html"), server.url("/gzip/page")];
        let (db, _) = crawl_to_end(dir.path(), &lines, &["--config", config.to_str().unwrap()], env);
        (dir, db)
    };
    let (_sqlite_dir, sqlite) = crawl(&first, &[]);
    let (_pg_dir, _) = crawl(&second, &[("TRAWLER_STORE__URL", pg.url.as_str())]);

    let by_path = |rows: Vec<Row>, server: &TestServer| -> Vec<Row> {
        let origin = server.url("");
        let mut rows: Vec<Row> =
            rows.into_iter().map(|(url, a, b, c, d, e)| (url.replace(&origin, ""), a, b, c, d, e)).collect();
        rows.sort();
        rows
    };
    // Which depth-2 page takes the last place depends on which page was
    // fetched first, so the engines agree on the count and the shallow pages.
    let shallow = |rows: &[Row]| -> Vec<Row> { rows.iter().filter(|r| r.5 < 2).cloned().collect() };
    let from_sqlite = by_path(exported(sqlite.to_str().unwrap()), &first);
    let from_postgres = by_path(exported(&pg.url), &second);
    assert_eq!((from_sqlite.len(), from_postgres.len()), (6, 6), "max_pages: {from_postgres:?}");
    assert_eq!(shallow(&from_postgres), shallow(&from_sqlite));
    let stats = |db: &str| -> serde_json::Value {
        serde_json::from_str(&output_of(spawn_trawler(&["stats", "--db", db, "--json"])).0).unwrap()
    };
    for stats in [stats(sqlite.to_str().unwrap()), stats(&pg.url)] {
        let capped = stats["dropped_links"].as_array().unwrap().iter().find(|r| r[0] == "max_pages").cloned();
        assert!(capped.is_some_and(|r| r[1].as_u64().unwrap() > 0), "{stats}");
    }

    // Every fetched body stored once, as a zstd frame of its bytes (a 404
    // in the last place stores the empty body); headers as JSON.
    runtime.block_on(async {
        let mut db = PgConnection::connect(&pg.url).await.unwrap();
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT body_sha256) FROM attempts a
             WHERE body_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM bodies b WHERE b.sha256 = a.body_sha256)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(missing, 0, "every attempt's body is stored");
        let bodies: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT bytes, data FROM bodies").fetch_all(&mut db).await.unwrap();
        assert!(bodies.iter().filter(|(bytes, _)| *bytes > 0).count() >= 5, "{} bodies", bodies.len());
        for (bytes, data) in &bodies {
            assert_eq!(zstd::decode_all(data.as_slice()).unwrap().len() as i64, *bytes);
        }
        // Headers are a JSON array of [name, value] that a query can search.
        let (attempts, arrays, typed, with_type): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE jsonb_typeof(headers) = 'array'),
                    count(*) FILTER (WHERE headers @> jsonb_build_array(jsonb_build_array('content-type', content_type))),
                    count(content_type)
             FROM attempts",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(attempts >= 6 && arrays == attempts, "{attempts} attempts, {arrays} with headers");
        assert!(with_type >= 5 && typed == with_type, "{typed} of {with_type} content types found in headers");
    });
}

#[tokio::test]
async fn a_late_completion_on_postgres_is_kept_as_stale_lease_and_changes_nothing() {
    let Some(pg) = TestDatabase::create("a_late_completion_is_stale").await else { return };
    let store = PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap();
    let url = NewUrl { url: "http://a.test/x".into(), host: "a.test".into(), depth: 0, found_on: None };
    assert_eq!(store.enqueue(&[url.clone(), url]).await.unwrap(), 1);
    assert_eq!(store.ready_hosts(i64::MAX, &[], 10, 10).await.unwrap(), ["a.test"]);
    let first = store.claim(i64::MAX, &[("a.test".into(), 5)]).await.unwrap().jobs.remove(0);
    // The lease ends (a stop here stands for a lapse and a takeover).
    assert_eq!(store.release(&[]).await.unwrap(), 1);
    let second = store.claim(i64::MAX, &[("a.test".into(), 5)]).await.unwrap().jobs.remove(0);
    assert_eq!(second.url_id, first.url_id);
    assert_ne!(second.lease, first.lease, "a new lease token");

    let done = |job: &Job| crate::store::done(job, job.lease);
    assert_eq!(store.complete(&[done(&first)], PageLimits::default()).await.unwrap().applied(), 0);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.in_flight, counts.done), (1, 0), "the late completion changed nothing");
    assert_eq!(store.complete(&[done(&second)], PageLimits::default()).await.unwrap().applied(), 1);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.in_flight, counts.done), (0, 1));

    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let outcomes: Vec<(String, String)> =
        sqlx::query_as("SELECT outcome, worker FROM attempts ORDER BY id").fetch_all(&mut db).await.unwrap();
    let worker = store.worker().to_owned();
    assert_eq!(outcomes, [("stale_lease".to_owned(), worker.clone()), ("done".to_owned(), worker)]);
    let result: (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM results").fetch_one(&mut db).await.unwrap();
    assert_eq!(result, ("done".to_owned(), 1), "results ignore the stale attempt");
    store.close().await;
}

#[test]
fn the_service_on_postgres_crawls_what_is_enqueued_recrawls_and_stops_cleanly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("the_service_on_postgres")) else { return };
    let server = TestServer::start_on("127.0.0.101");
    let dir = tempfile::tempdir().unwrap();
    let env = [("TRAWLER_STORE__URL", pg.url.as_str())];
    let daemon = Daemon::start_with_env(dir.path(), "[crawl]\nrecrawl_after = \"1s\"\n", &env);
    let mut enqueue = spawn_trawler_with_env(&["enqueue", &server.url("/ok/a"), &server.url("/ok/b")], &env);
    assert_eq!(wait_within(&mut enqueue, Duration::from_secs(10)).0.code(), Some(0));

    // Each URL fetched, then fetched again as a recrawl a second later.
    runtime.block_on(eventually("two visits of each URL", Duration::from_secs(10), async || {
        let hits = server.hits_per_path();
        hits.get("/ok/a").copied().unwrap_or(0) >= 2 && hits.get("/ok/b").copied().unwrap_or(0) >= 2
    }));
    daemon.stop();
    runtime.block_on(async {
        let mut db = PgConnection::connect(&pg.url).await.unwrap();
        let (recrawled, in_flight, leased): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM urls WHERE recrawls >= 1),
                    (SELECT count(*) FROM urls WHERE state = 'in_flight'),
                    (SELECT count(*) FROM hosts WHERE lease_owner IS NOT NULL)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!((recrawled, in_flight, leased), (2, 0, 0), "recrawled; nothing left claimed or leased");
    });
}

#[test]
fn after_kill_9_a_rerun_on_postgres_crawls_every_url_once_more_at_most() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("after_kill_9_on_postgres")) else { return };
    let (server, dir, lines, mut child) = runtime.block_on(short_lease_crawl_midway(&pg.url, 30, 30));
    signal(&child, libc::SIGKILL);
    wait_within(&mut child, Duration::from_secs(5));

    // The killed daemon's host leases lapse (3 s) and a lease round of the
    // rerun ends them, putting their URLs back in the frontier; the rerun
    // waits for them rather than end with URLs in flight.
    let (flags, env) = short_lease_crawl(&pg.url);
    let (_, log) = crawl_to_end(dir.path(), &lines, &flags, &env);
    assert!(
        log.contains("lapsed host leases ended") || log.contains("requeued URLs left in flight"),
        "{log}"
    );
    assert_eq!(runtime.block_on(done_urls(&pg.url)), 100);
    // Only URLs in flight (or claimed) at the kill may have been fetched twice.
    let per_path = server.hits_per_path();
    assert_eq!(per_path.len(), 100);
    let twice = per_path.values().filter(|&&n| n > 1).count();
    assert!(twice <= 2 * 2 + 2, "{twice} URLs fetched twice");
}

/// Reads `/metrics` at `url` until it shows what `holds` says it is
/// `expected` to (the gauges refresh every 5 s), for at most 15 s.
async fn metrics_until(http: &reqwest::Client, url: &str, expected: &str, holds: impl Fn(&str) -> bool) {
    eventually(&format!("/metrics to show {expected}"), Duration::from_secs(15), async || {
        let metrics = http.get(url).send().await.unwrap().text().await.unwrap();
        if holds(&metrics) { Ok(()) } else { Err(metrics) }
    })
    .await
}

#[tokio::test]
async fn metrics_show_dead_rows_and_a_transaction_that_holds_vacuum_back() {
    let Some(pg) = TestDatabase::create("metrics_show_a_transaction_that_holds_vacuum_back").await else {
        return;
    };
    let server = TestServer::start_on("127.0.0.101");
    let dir = tempfile::tempdir().unwrap();
    let env = [("TRAWLER_STORE__URL", pg.url.as_str())];
    let daemon = Daemon::start_with_env(dir.path(), "", &env);
    // An analyst's transaction, left open.
    let mut analyst = PgConnection::connect(&pg.url).await.unwrap();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM urls")
        .execute(&mut analyst)
        .await
        .unwrap();
    let mut enqueue = spawn_trawler_with_env(&["enqueue", &server.url("/ok/a"), &server.url("/ok/b")], &env);
    assert_eq!(wait_within(&mut enqueue, Duration::from_secs(10)).0.code(), Some(0));

    let url = format!("http://{}/metrics", daemon.admin);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gauge = |metrics: &str, name: &str| -> Option<f64> {
        metrics.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    let oldest = |m: &str| gauge(m, "trawler_pg_oldest_transaction_seconds");
    // The crawl updated both URLs twice (claim, result); the open snapshot
    // keeps those dead versions from being vacuumed.
    let dead = |m: &str| gauge(m, "trawler_pg_dead_tuples{table=\"urls\"}");
    let held = |m: &str| oldest(m).is_some_and(|s| s >= 1.0) && dead(m).is_some_and(|n| n >= 2.0);
    metrics_until(&http, &url, "the transaction and the dead rows it holds back", held).await;

    // Once the analyst is done, the gauge says so.
    sqlx::raw_sql("ROLLBACK").execute(&mut analyst).await.unwrap();
    let released = |m: &str| oldest(m).is_some_and(|s| s < 1.0);
    metrics_until(&http, &url, "no transaction held open", released).await;
    daemon.stop();
}

#[tokio::test]
async fn urls_enqueued_by_another_process_wake_an_idle_daemon() {
    let Some(pg) = TestDatabase::create("urls_enqueued_wake_an_idle_daemon").await else { return };
    let daemon =
        std::sync::Arc::new(PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap());
    let (wake, done) =
        (std::sync::Arc::new(tokio::sync::Notify::new()), tokio_util::sync::CancellationToken::new());
    let relay = tokio::spawn({
        let (daemon, wake, done) = (daemon.clone(), wake.clone(), done.clone());
        async move { daemon.relay_work_notifications(wake, done).await }
    });
    let enqueue = PgStore::open(&pg.url, 1).await.unwrap();
    let url = NewUrl { url: "http://a.test/new".into(), host: "a.test".into(), depth: 0, found_on: None };
    // Until the relay listens, a notification may be missed: enqueue new
    // URLs until one wakes it.
    let mut woken = false;
    for i in 0..50 {
        let url = NewUrl { url: format!("{}{i}", url.url), ..url.clone() };
        assert_eq!(enqueue.enqueue(&[url]).await.unwrap(), 1);
        if tokio::time::timeout(Duration::from_millis(200), wake.notified()).await.is_ok() {
            woken = true;
            break;
        }
    }
    assert!(woken, "no notification reached the daemon");
    // A URL already known is no work: no notification.
    let known = NewUrl { url: "http://a.test/new0".into(), ..url };
    assert_eq!(enqueue.enqueue(&[known]).await.unwrap(), 0);
    assert!(tokio::time::timeout(Duration::from_millis(300), wake.notified()).await.is_err());
    done.cancel();
    relay.await.unwrap();
    enqueue.close().await;
    daemon.close().await;
}

/// URLs whose result is `done` in the database at `url`.
async fn done_urls(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM results WHERE state = 'done'").fetch_one(&mut db).await.unwrap()
}

/// Flags and environment of a crawl on the database at `url` whose leases
/// are short (3 s, for 1 s requests), so that a crashed run's lapse soon.
fn short_lease_crawl(url: &str) -> ([&'static str; 4], [(&'static str, &str); 2]) {
    (["--concurrency", "2", "--timeout", "1s"], [("TRAWLER_STORE__URL", url), ("TRAWLER_STORE__LEASE", "3s")])
}

/// A short-lease crawl ([`short_lease_crawl`]) on `url`'s database of 100
/// URLs that answer after `ms` (a server on 127.0.0.102), returned once
/// `fetched` have been requested: to act on midway. Also its server,
/// directory and input lines, for a rerun.
async fn short_lease_crawl_midway(
    url: &str,
    ms: u64,
    fetched: usize,
) -> (TestServer, tempfile::TempDir, Vec<String>, std::process::Child) {
    let server = TestServer::start_on("127.0.0.102");
    let lines: Vec<String> = (0..100).map(|i| server.url(&format!("/slow/{ms}/{i}"))).collect();
    let dir = tempfile::tempdir().unwrap();
    let (flags, env) = short_lease_crawl(url);
    let (child, _) = spawn_crawl_in(dir.path(), &lines, &flags, &env);
    eventually("fetches midway", Duration::from_secs(20), async || server.hits().len() >= fetched).await;
    (server, dir, lines, child)
}

/// Ends every session trawler has on `url`'s database (its
/// `application_name`), as a server restart or an administrator's
/// `pg_terminate_backend` would. Returns how many.
async fn end_trawler_sessions(url: &str) -> i64 {
    let mut admin = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name LIKE 'trawler %' AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

#[test]
fn sessions_ended_mid_crawl_lose_no_url() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("sessions_ended_mid_crawl")) else { return };
    let (server, _dir, _lines, mut child) = runtime.block_on(short_lease_crawl_midway(&pg.url, 20, 10));
    assert!(runtime.block_on(end_trawler_sessions(&pg.url)) > 0);
    // Every task rides the ended sessions out (store.outage_grace): the
    // crawl goes on to its end, and a statement the ending cut short is
    // tried again.
    let (status, _) = wait_within(&mut child, Duration::from_secs(30));
    let (_, log) = output_of(child);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(runtime.block_on(done_urls(&pg.url)), 100);
    assert_eq!(server.hits().len(), 100, "no URL fetched twice");
}

#[tokio::test]
async fn stats_on_a_postgres_database_trawler_never_wrote_says_so_and_creates_nothing() {
    let Some(pg) = TestDatabase::create("stats_on_a_database_trawler_never_wrote").await else { return };
    let mut child = spawn_trawler(&["stats", "--db", &pg.url]);
    let (status, _) = wait_within(&mut child, Duration::from_secs(20));
    let (_, err) = output_of(child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("no trawler database here"), "{err}");
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a read-only command created nothing");
}

#[tokio::test]
async fn a_stale_and_a_live_completion_of_one_url_in_one_batch_are_told_apart() {
    let Some(pg) = TestDatabase::create("stale_and_live_in_one_batch").await else { return };
    let store = PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap();
    let url = NewUrl { url: "http://a.test/page".into(), host: "a.test".into(), depth: 0, found_on: None };
    store.enqueue(&[url]).await.unwrap();
    let first = store.claim(i64::MAX, &[("a.test".into(), 1)]).await.unwrap().jobs.remove(0);
    store.release(&[]).await.unwrap();
    let second = store.claim(i64::MAX, &[("a.test".into(), 1)]).await.unwrap().jobs.remove(0);
    // Both fetches report in the same batch, each with a link and a
    // redirect hop; only the live one may add to the link graph.
    let report = |job: &Job, link: &str| {
        let mut c = crate::store::done(job, job.lease);
        c.links = vec![NewUrl {
            url: format!("http://a.test/{link}"),
            host: "a.test".into(),
            depth: 1,
            found_on: Some(job.url_id),
        }];
        c.record.redirect_chain = vec!["http://a.test/page".into()];
        c.record.hops = vec![trawler::store::Hop {
            url: format!("http://a.test/{link}-target"),
            host: "a.test".into(),
            started_at: std::time::SystemTime::now(),
            http_status: Some(200),
        }];
        c
    };
    let committed = store
        .complete(&[report(&first, "from-stale"), report(&second, "from-live")], PageLimits::default())
        .await;
    assert_eq!(committed.unwrap().applied(), 1);

    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM attempts ORDER BY id").fetch_all(&mut db).await.unwrap();
    assert_eq!(outcomes, ["stale_lease", "done"]);
    let urls: Vec<String> =
        sqlx::query_scalar("SELECT url FROM urls ORDER BY id").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        urls,
        ["http://a.test/page", "http://a.test/from-live"],
        "the stale page's link is not enqueued"
    );
    let hops: i64 =
        sqlx::query_scalar("SELECT count(*) FROM redirect_hops").fetch_one(&mut db).await.unwrap();
    assert_eq!(hops, 2, "both fetches' requests were made and are recorded");
    store.close().await;
}

/// `(lease_owner, seconds until the lease lapses, seconds since last_start_at)`
/// of `host`.
async fn lease_of(db: &mut PgConnection, host: &str) -> (Option<String>, Option<f64>, Option<f64>) {
    sqlx::query_as(
        "SELECT lease_owner, extract(epoch FROM lease_expires_at - now())::float8,
                extract(epoch FROM now() - last_start_at)::float8
         FROM hosts WHERE host = $1",
    )
    .bind(host)
    .fetch_one(db)
    .await
    .unwrap()
}

/// A few new hosts are shared out, not all taken by the daemon whose round
/// came first: each round takes its share of the ready window, by the
/// number of trawler processes connected.
#[tokio::test]
async fn a_round_takes_its_share_of_a_few_new_hosts() {
    let Some(pg) = TestDatabase::create("fair_share").await else { return };
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap());
    }
    let urls: Vec<NewUrl> = (0..6)
        .map(|i| NewUrl {
            url: format!("http://h{i}.test/"),
            host: format!("h{i}.test"),
            depth: 0,
            found_on: None,
        })
        .collect();
    daemons[0].enqueue(&urls).await.unwrap();
    let mut taken = Vec::new();
    for daemon in &daemons {
        // 32 idle workers each: without shares, the first takes all six.
        let hosts = daemon.ready_hosts(i64::MAX, &[], 64, 32).await.unwrap();
        let picks: Vec<(String, u32)> = hosts.iter().map(|h| (h.clone(), 1)).collect();
        daemon.claim(i64::MAX, &picks).await.unwrap();
        taken.push(hosts.len());
    }
    assert_eq!(taken, [2, 2, 2]);
}

#[tokio::test]
async fn leases_are_renewed_released_when_idle_recovered_when_lapsed_and_handed_over() {
    let Some(pg) = TestDatabase::create("lease_lifecycle").await else { return };
    let first = PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap();
    let second = PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap();
    let url = |host: &str, path: &str| NewUrl {
        url: format!("http://{host}/{path}"),
        host: host.into(),
        depth: 0,
        found_on: None,
    };
    first
        .enqueue(&[url("a.test", "1"), url("a.test", "2"), url("b.test", "1"), url("c.test", "1")])
        .await
        .unwrap();
    let picks = [("a.test".to_owned(), 1), ("b.test".to_owned(), 1), ("c.test".to_owned(), 1)];
    let claim = first.claim(i64::MAX, &picks).await.unwrap();
    assert_eq!(claim.jobs.len(), 3);
    assert!(claim.handed_over.is_empty(), "no daemon ever fetched from these hosts");
    let job = |host: &str| claim.jobs.iter().find(|j| j.host == host).unwrap().clone();
    let leases = first.host_leases();
    assert!(leases.may_start("a.test", job("a.test").lease));

    // b.test's only URL is done: the next round gives b.test up, with when
    // its last request started; a.test and c.test have URLs in flight.
    first
        .complete(&[crate::store::done(&job("b.test"), job("b.test").lease)], PageLimits::default())
        .await
        .unwrap();
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    sqlx::query("UPDATE hosts SET lease_expires_at = now() + interval '5 seconds'")
        .execute(&mut db)
        .await
        .unwrap();
    let round = first.keep_leases(&[("b.test".into(), Duration::from_millis(300))], &[]).await.unwrap();
    assert_eq!((round.renewed, round.released, round.lost.len(), round.recovered_hosts), (3, 1, 0, 0));
    let (owner, left, since) = lease_of(&mut db, "b.test").await;
    assert_eq!((owner, left), (None, None));
    assert!((0.3..5.0).contains(&since.unwrap()), "last start {since:?} s ago");
    let (owner, left, _) = lease_of(&mut db, "a.test").await;
    assert_eq!(owner.as_deref(), Some(first.worker()));
    assert!(left.unwrap() > 55.0, "renewed to a whole lease: {left:?} s left");
    assert!(!leases.may_start("b.test", job("b.test").lease), "given up");

    // a.test's lease lapses (its daemon stopped renewing): any daemon's
    // round ends it, and a.test's URL in flight goes back to the queue.
    sqlx::query("UPDATE hosts SET lease_expires_at = now() - interval '2 seconds' WHERE host = 'a.test'")
        .execute(&mut db)
        .await
        .unwrap();
    let round = second.keep_leases(&[], &[]).await.unwrap();
    assert_eq!((round.recovered_hosts, round.recovered_urls), (1, 1));
    let (owner, _, since) = lease_of(&mut db, "a.test").await;
    assert_eq!(owner, None);
    // Its owner started nothing after the lapse less a request timeout.
    let since = since.unwrap();
    assert!((TIMEOUT.as_secs_f64() + 1.9..TIMEOUT.as_secs_f64() + 10.0).contains(&since), "{since}");

    // The second daemon takes a.test over, waiting out that last start.
    let taken = second.claim(i64::MAX, &[("a.test".to_owned(), 5)]).await.unwrap();
    assert_eq!(taken.jobs.len(), 2);
    let (host, ago) = &taken.handed_over[0];
    assert_eq!(host, "a.test");
    assert!((since - 1.0..since + 1.0).contains(&ago.as_secs_f64()), "{ago:?} vs {since}");
    // The first daemon learns that it lost a.test, and keeps c.test.
    let round = first.keep_leases(&[], &[]).await.unwrap();
    assert_eq!(round.lost, ["a.test"]);
    assert!(!leases.may_start("a.test", job("a.test").lease));
    assert!(leases.may_start("c.test", job("c.test").lease));

    // A redirect to a host: leased for the hop when free (a host row made
    // for a host with no URL), refused while another daemon holds it.
    assert_eq!(first.lease_hop("d.test").await.unwrap(), HopLease::Held { last_start: None });
    assert!(leases.may_start_any("d.test"));
    // Held: the next hop there asks nothing of the database (its lease row
    // locked elsewhere would otherwise make it wait).
    let mut locker = PgConnection::connect(&pg.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1 FROM hosts WHERE host = 'd.test' FOR UPDATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(2), first.lease_hop("d.test")).await;
    assert_eq!(again.expect("no wait on the row").unwrap(), HopLease::Held { last_start: None });
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(second.lease_hop("d.test").await.unwrap(), HopLease::HeldByAnother);
    assert_eq!(second.lease_hop("a.test").await.unwrap(), HopLease::Held { last_start: None }, "its own");
    // Nothing of d.test in flight: the next round gives it up.
    assert_eq!(first.release_idle(&[("d.test".into(), Duration::from_millis(20))], &[]).await.unwrap(), 1);
    match second.lease_hop("d.test").await.unwrap() {
        HopLease::Held { last_start: Some(ago) } => assert!(ago < Duration::from_secs(5), "{ago:?}"),
        other => panic!("{other:?}"),
    }
    second.release_idle(&[], &[]).await.unwrap();

    // A stop hands over only the stopping daemon's own: the second puts its
    // two a.test URLs back and gives a.test up; c.test stays the first's.
    assert_eq!(second.release(&[("a.test".into(), Duration::from_millis(50))]).await.unwrap(), 2);
    let (owner, _, since) = lease_of(&mut db, "a.test").await;
    assert_eq!(owner, None);
    assert!(since.unwrap() < 5.0, "the second daemon's own last start: {since:?}");
    assert_eq!(lease_of(&mut db, "c.test").await.0.as_deref(), Some(first.worker()));
    let counts = first.counts().await.unwrap();
    assert_eq!((counts.queued, counts.in_flight, counts.done), (2, 1, 1));
    first.close().await;
    second.close().await;
}

#[test]
fn a_redirect_to_a_host_another_daemon_holds_is_handed_over_as_a_url_of_its_own() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("redirect_handed_over")) else { return };
    let (from, to) = (TestServer::start_on("127.0.0.103"), TestServer::start_on("127.0.0.104"));
    let target = to.url("/ok/target");
    let source = from.url(&format!("/goto?to={target}"));
    // Another daemon holds the target's host.
    let other = runtime.block_on(PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING)).unwrap();
    assert!(matches!(runtime.block_on(other.lease_hop("127.0.0.104")).unwrap(), HopLease::Held { .. }));
    let dir = tempfile::tempdir().unwrap();
    let env = [("TRAWLER_STORE__URL", pg.url.as_str())];
    let (mut child, _) = spawn_crawl_in(dir.path(), std::slice::from_ref(&source), &[], &env);
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    async fn state(db: &mut PgConnection, url: &str) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM urls WHERE url = $1")
            .bind(url)
            .fetch_optional(db)
            .await
            .unwrap()
    }
    runtime.block_on(eventually("the source's result", Duration::from_secs(20), async || {
        state(&mut db, &source).await.as_deref() == Some("done")
    }));
    // Not requested by this daemon: queued for whoever holds its host.
    assert_eq!(runtime.block_on(state(&mut db, &target)).as_deref(), Some("queued"));
    assert!(to.hits().is_empty());
    // The other daemon gives the host up; the crawl then fetches it.
    runtime.block_on(other.release_idle(&[], &[])).unwrap();
    let (status, _) = wait_within(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", output_of(child).1);
    assert_eq!(to.hits_of("/ok/target").len(), 1);
    let (status, final_url, redirects): (i32, String, i32) = runtime
        .block_on(
            sqlx::query_as("SELECT http_status, final_url, redirects FROM results WHERE url = $1")
                .bind(&source)
                .fetch_one(&mut db),
        )
        .unwrap();
    assert_eq!(
        (status, final_url.as_str(), redirects),
        (302, source.as_str(), 0),
        "the redirect's own answer"
    );
    let found_on: Option<i64> = runtime
        .block_on(
            sqlx::query_scalar("SELECT found_on FROM urls WHERE url = $1").bind(&target).fetch_one(&mut db),
        )
        .unwrap();
    assert!(found_on.is_some(), "found on the redirecting URL");
    runtime.block_on(other.close());
}

#[tokio::test]
async fn a_sitemap_on_a_host_another_daemon_holds_is_read_once_the_host_is_free() {
    let Some(pg) = TestDatabase::create("sitemap_on_a_held_host").await else { return };
    let server = TestServer::start_on("127.0.0.105");
    let other = PgStore::open_crawler(&pg.url, 2, LEASE, TIMEOUT, BUSY_WARNING).await.unwrap();
    assert!(matches!(other.lease_hop("127.0.0.105").await.unwrap(), HopLease::Held { .. }));
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::util::test_config(dir.path());
    config.store.url = Some(pg.url.clone());
    config.discovery.sitemaps = vec![server.url("/sitemap.xml")];
    let held_for_a_while = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(server.hits().is_empty() && server.robots_hits().is_empty(), "nothing asked of a held host");
        assert_eq!(other.release_idle(&[], &[]).await.unwrap(), 1);
    };
    let (summary, ()) = tokio::join!(crate::util::crawl_lines(&config, &[]), held_for_a_while);
    assert_eq!(summary.done, 2, "the sitemap's two URLs, once its host was free");
    assert_eq!(server.hits_of("/sitemap.xml").len(), 1);
    other.close().await;
}

#[test]
fn robots_txt_is_fetched_once_for_all_the_daemons_of_a_database() {
    use crate::server::RobotsTxt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("robots_txt_shared")) else { return };
    let server =
        TestServer::with_robots("127.0.0.106", RobotsTxt::Text("User-agent: *\nDisallow: /private\n"));
    let env = [("TRAWLER_STORE__URL", pg.url.as_str())];
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    crawl_to_end(first.path(), &[server.url("/ok/a")], &[], &env);
    assert_eq!(server.robots_hits().len(), 1);
    // Another daemon (a process of its own, nothing in memory) uses the
    // file the first one fetched: its rules, and no request for it.
    crawl_to_end(second.path(), &[server.url("/ok/b"), server.url("/private/c")], &[], &env);
    assert_eq!(server.robots_hits().len(), 1, "read from robots_txt, not fetched again");
    assert!(server.hits_of("/private/c").is_empty());
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    let refused: Option<String> = runtime
        .block_on(
            sqlx::query_scalar("SELECT error_kind FROM results WHERE url = $1")
                .bind(server.url("/private/c"))
                .fetch_one(&mut db),
        )
        .unwrap();
    assert_eq!(refused.as_deref(), Some("robots_disallowed"));
    let shared: (i32, Vec<u8>) = runtime
        .block_on(sqlx::query_as("SELECT http_status, body FROM robots_txt").fetch_one(&mut db))
        .unwrap();
    assert_eq!((shared.0, shared.1.as_slice()), (200, &b"User-agent: *\nDisallow: /private\n"[..]));
}

/// A host in backoff stays with the daemon that backed it off, though none
/// of its URLs is in flight: the escalation (backoffs in a row) is known
/// only there, and another owner would start it over.
#[tokio::test]
async fn a_host_in_backoff_keeps_its_lease_through_lease_rounds() {
    let Some(pg) = TestDatabase::create("backoff_keeps_lease").await else { return };
    let server = TestServer::start_on("127.0.0.106");
    let dir = tempfile::tempdir().unwrap();
    let (flags, env) = short_lease_crawl(&pg.url);
    let mut env = env.to_vec();
    // A backoff of 5 to 10 s (the base, less up to half for jitter).
    env.extend([("TRAWLER_POLITENESS__BACKOFF_BASE", "10s"), ("TRAWLER_RETRY__MAX_ATTEMPTS", "2")]);
    let url = server.url("/status/503/busy");
    let (mut child, _) = spawn_crawl_in(dir.path(), std::slice::from_ref(&url), &flags, &env);
    eventually("the first 503", Duration::from_secs(10), async || server.hits().len() == 1).await;
    // A 3 s lease is kept every second: each round renews the host's lease
    // (a later expiry), then would give it up if it counted as idle. Two
    // rounds pass within the backoff.
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let lease = "SELECT lease_owner, CAST(extract(epoch FROM lease_expires_at) * 1000 AS BIGINT)
                 FROM hosts WHERE host = '127.0.0.106'";
    let mut expiries = std::collections::BTreeSet::new();
    let owner = eventually("two lease rounds", Duration::from_secs(10), async || {
        let (owner, expires): (Option<String>, Option<i64>) =
            sqlx::query_as(lease).fetch_one(&mut db).await.unwrap();
        expiries.extend(expires);
        // Given up, or renewed twice since the first look.
        (owner.is_none() || expiries.len() >= 3).then_some(owner)
    })
    .await;
    assert!(owner.is_some(), "the host in backoff was given up");
    let (status, _) = wait_within(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let hits = server.hits();
    assert_eq!(hits.len(), 2);
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(4900), "{:?}", hits[1].at - hits[0].at);
}
