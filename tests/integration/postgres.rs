//! The PostgreSQL engine: its schema is SQLite's public interface, it is
//! versioned and refused when newer, and several daemons may open one
//! database at once. Each test makes its own database on the server at
//! `TRAWLER_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and drops it; without a reachable server the tests print that they were
//! skipped and pass, unless `TRAWLER_REQUIRE_POSTGRES` is set (as `.ci/run`
//! sets it), which makes an unreachable server a failure.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection};
use trawler::store::{PgStore, SqliteStore, StoreError};

use crate::util::{strings, test_config};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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
const PUBLIC: [(&str, &[&str]); 11] = [
    ("urls", &[]),
    ("hosts", &["lease_owner", "lease_token", "lease_expires_at", "last_start_ms"]),
    ("attempts", &["worker"]),
    ("links", &[]),
    ("dropped_links", &[]),
    ("input_errors", &[]),
    ("redirect_hops", &[]),
    ("bodies", &[]),
    ("results", &[]),
    ("host_politeness", &[]),
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
        assert_eq!(store.schema_version().await.unwrap(), 5);
        store.close().await;
    }
    let mut db = PgConnection::connect(&pg.url).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&mut db).await.unwrap();
    assert_eq!(applied, 1);
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let err = PgStore::open(&pg.url, 1).await.err().expect("refused");
    assert!(matches!(err, StoreError::NewerSchema { found: 999999, known: 5, .. }), "{err}");
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
