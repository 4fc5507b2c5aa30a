//! Conditional recrawls (RFC 9110 §13): a recrawl sends the validators of
//! the URL's last response, a 304 is a visit with outcome `not_modified`
//! that keeps the URL's content, and adaptive revisit stretches or shrinks
//! each URL's interval. Every test runs the real binary on both engines;
//! the time between visits passes in the database ([`age_visits`]), not in
//! sleeps.

use std::time::Duration;

use crate::server::TestServer;
use crate::util::{
    age_visits, count_in, engines, output_of, result_in, spawn_trawler_with_env, strings_in, wait_within,
};

/// Outcomes of `url`'s attempts in order, and the statuses.
async fn visits(db: &trawler::config::Config, url: &str) -> Vec<String> {
    let sql = format!(
        "SELECT a.outcome || ' ' || CAST(a.http_status AS TEXT) FROM attempts a JOIN urls u ON u.id = a.url_id
         WHERE u.url = '{url}' ORDER BY a.id"
    );
    strings_in(db, &sql).await
}

#[tokio::test]
async fn a_recrawl_sends_validators_and_a_304_keeps_the_content() {
    for engine in engines("a_recrawl_sends_validators_and_a_304_keeps_the_content").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let (tagged, dated, plain) =
            (server.url("/versioned/a"), server.url("/dated/b"), server.url("/ok/c"));
        let lines = [tagged.clone(), dated.clone(), plain.clone()];
        let env = [("TRAWLER_CRAWL__RECRAWL_AFTER", "1s")];
        let crawl = || engine.crawl_to_end_with_env(dir.path(), &lines, &[], &env).0;

        let db = crawl();
        let first = result_in(&db, &tagged).await;
        assert_eq!(first.http_status, Some(200));
        let first_changed = first.changed_at.clone().expect("a first visit changes the content");

        // Unchanged: each URL with validators gets a 304, the other a 200.
        age_visits(&db, Duration::from_millis(1100)).await;
        let db = crawl();
        let hits = server.hits();
        let second_of =
            |path: &str| hits.iter().filter(|h| h.path == path).nth(1).cloned().expect("two requests");
        let tagged_hit = second_of("/versioned/a");
        assert_eq!(tagged_hit.if_none_match.as_deref(), Some("\"v1\""));
        let dated_hit = second_of("/dated/b");
        assert_eq!(dated_hit.if_none_match, None, "no ETag was sent, so none is given back");
        assert_eq!(dated_hit.if_modified_since.as_deref(), Some("Thu, 01 Jan 2026 00:00:00 GMT"));
        let plain_hit = second_of("/ok/c");
        assert_eq!((plain_hit.if_none_match, plain_hit.if_modified_since), (None, None));

        assert_eq!(visits(&db, &tagged).await, ["done 200", "not_modified 304"]);
        assert_eq!(visits(&db, &dated).await, ["done 200", "not_modified 304"]);
        assert_eq!(visits(&db, &plain).await, ["done 200", "done 200"]);
        let kept = result_in(&db, &tagged).await;
        assert_eq!(kept.state, "done");
        assert_eq!(kept.http_status, Some(304));
        assert_eq!(
            (&kept.content_type, kept.body_bytes, &kept.body_sha256),
            (&first.content_type, first.body_bytes, &first.body_sha256),
            "a 304 keeps the content it confirms"
        );
        assert_eq!(
            kept.changed_at.as_deref(),
            Some(first_changed.as_str()),
            "not changed since the first visit"
        );

        // Changed: a 200 with the new content, and its new validators next time.
        server.set_version(2);
        age_visits(&db, Duration::from_millis(1100)).await;
        let db = crawl();
        assert_eq!(visits(&db, &tagged).await, ["done 200", "not_modified 304", "done 200"]);
        assert_eq!(visits(&db, &dated).await, ["done 200", "not_modified 304", "done 200"]);
        let changed = result_in(&db, &tagged).await;
        assert_ne!(changed.body_sha256, first.body_sha256);
        assert!(changed.changed_at.as_deref() > Some(first_changed.as_str()), "{changed:?}");
        assert_eq!(
            strings_in(&db, &format!("SELECT etag FROM urls WHERE url = '{tagged}'")).await,
            ["\"v2\""]
        );

        // `trawler stats` counts what each recrawl found.
        let file = dir.path().join("crawl.db");
        let mut stats =
            spawn_trawler_with_env(&["stats", "--json", "--db", file.to_str().unwrap()], &engine.env());
        assert_eq!(wait_within(&mut stats, Duration::from_secs(10)).0.code(), Some(0));
        let report: serde_json::Value = serde_json::from_str(&output_of(stats).0).unwrap();
        let rounds = &report["recrawls"];
        assert_eq!(rounds[0]["recrawl"], 1, "{report}");
        assert_eq!(
            (&rounds[0]["pages"], &rounds[0]["changed"], &rounds[0]["not_modified"]),
            (&3.into(), &0.into(), &2.into())
        );
        assert_eq!(
            (&rounds[1]["pages"], &rounds[1]["changed"], &rounds[1]["not_modified"]),
            (&3.into(), &2.into(), &0.into())
        );
    }
}

#[tokio::test]
async fn adaptive_revisit_waits_longer_for_unchanged_pages_and_less_for_changed_ones() {
    for engine in engines("adaptive_revisit_waits_longer_for_unchanged_pages_and_less_for_changed_ones").await
    {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("/versioned/adaptive");
        let env = [
            ("TRAWLER_CRAWL__RECRAWL_AFTER", "1s"),
            ("TRAWLER_CRAWL__ADAPTIVE_RECRAWL", "true"),
            ("TRAWLER_CRAWL__RECRAWL_MIN", "1s"),
            ("TRAWLER_CRAWL__RECRAWL_MAX", "2s"),
        ];
        let crawl = || engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(&url), &[], &env).0;
        let interval = "SELECT CAST(recrawl_interval_ms AS BIGINT) FROM urls";
        let due_after = "SELECT CAST(recrawl_at_ms - finished_ms AS BIGINT) FROM urls";

        let db = crawl();
        assert_eq!(count_in(&db, interval).await, 1000, "a first visit starts at recrawl_after");
        age_visits(&db, Duration::from_millis(1100)).await;
        let db = crawl();
        assert_eq!(count_in(&db, interval).await, 1400, "unchanged: 1.4 times as long");
        assert_eq!(count_in(&db, due_after).await, 1400);
        age_visits(&db, Duration::from_millis(1500)).await;
        let db = crawl();
        assert_eq!(count_in(&db, interval).await, 1960);
        age_visits(&db, Duration::from_millis(2100)).await;
        let db = crawl();
        assert_eq!(count_in(&db, interval).await, 2000, "capped at recrawl_max");
        server.set_version(2);
        age_visits(&db, Duration::from_millis(2100)).await;
        let db = crawl();
        assert_eq!(count_in(&db, interval).await, 1600, "changed: 0.8 times as long");
        assert_eq!(count_in(&db, due_after).await, 1600);
        assert_eq!(server.hits().len(), 5);
    }
}

#[tokio::test]
async fn a_version_5_database_is_upgraded_keeping_every_attempt_and_hop() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crawl.db");
    {
        // Schema version 5 with a fetched URL, as the last release left it.
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.migrations = migrator.migrations.iter().filter(|m| m.version <= 5).cloned().collect();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO urls (id, url, host, state, attempts, added_at, finished_ms)
                 VALUES (7, 'http://old.test/', 'old.test', 'done', 1, '2026-01-01T00:00:00.000Z', 1000);
             INSERT INTO attempts (id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, outcome,
                 http_status, final_url, redirects, content_type, body_bytes, body_sha256, dns_ms, ttfb_ms)
                 VALUES (70, 7, 1, '2026-01-01T00:00:00.000Z', 900, '2026-01-01T00:00:00.100Z', 100, 'done',
                 200, 'http://old.test/x', 1, 'text/html', 5, 'abc', 1, 2);
             INSERT INTO redirect_hops (attempt_id, hop, url, host, started_ms, http_status)
                 VALUES (70, 1, 'http://old.test/x', 'old.test', 950, 200);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let (file, _) = crate::util::crawl_to_end(dir.path(), &[server.url("/ok/new")], &[], &[]);
    let mut db = crate::util::test_config(dir.path());
    db.store.path = file;
    let kept =
        "SELECT CAST(id AS TEXT) || ' ' || outcome || ' ' || body_sha256 || ' ' || CAST(dns_ms AS TEXT)
                FROM attempts WHERE url_id = 7";
    assert_eq!(strings_in(&db, kept).await, ["70 done abc 1"]);
    assert_eq!(count_in(&db, "SELECT count(*) FROM redirect_hops WHERE attempt_id = 70").await, 1);
    assert_eq!(count_in(&db, "SELECT count(*) FROM pragma_foreign_key_check").await, 0);
    assert_eq!(strings_in(&db, "SELECT body_sha256 FROM urls WHERE id = 7").await, ["abc"]);
    let old = result_in(&db, "http://old.test/").await;
    assert_eq!(old.changed_at.as_deref(), Some("1970-01-01T00:00:01.000Z"), "{old:?}");
    assert_eq!(result_in(&db, &server.url("/ok/new")).await.http_status, Some(200));
    assert_eq!(count_in(&db, "SELECT max(version) FROM _sqlx_migrations").await, 9);
}

/// A database left by a trawler that wrote its claims to `urls` (schema 8)
/// and was killed: its URLs in flight are fetched by the next run.
#[tokio::test]
async fn urls_a_schema_8_crawler_left_in_flight_are_crawled_after_the_upgrade() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crawl.db");
    let url = server.url("/ok/left");
    {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.migrations = migrator.migrations.iter().filter(|m| m.version <= 8).cloned().collect();
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        migrator.run(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO urls (url, host, state, lease, leased_at_ms, added_at)
             VALUES (?1, '127.0.0.1', 'in_flight', 42, 1000, '2026-01-01T00:00:00.000Z')",
        )
        .bind(&url)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO hosts (host, work_at_ms, urls) VALUES ('127.0.0.1', 9223372036854775807, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let (file, log) = crate::util::crawl_to_end(dir.path(), &[], &[], &[]);
    assert!(log.contains("requeued URLs left in flight"), "{log}");
    let mut config = crate::util::test_config(dir.path());
    config.store.path = file;
    assert_eq!(result_in(&config, &url).await.http_status, Some(200));
    assert_eq!(count_in(&config, "SELECT urls FROM claims_held").await, 0);
}

#[tokio::test]
async fn only_redirects_are_followed_and_a_304_without_validators_is_no_content() {
    for engine in engines("only_redirects_are_followed_and_a_304_without_validators_is_no_content").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let moved = |code: u16| server.url(&format!("/moved/{code}/a"));
        let missing = server.url("/etag404/a");
        let mut lines: Vec<String> = [300, 301, 304, 305, 307, 399].map(moved).to_vec();
        lines.push(missing.clone());
        let env = [("TRAWLER_CRAWL__RECRAWL_AFTER", "1s")];
        let crawl = || engine.crawl_to_end_with_env(dir.path(), &lines, &[], &env).0;
        let db = crawl();

        // RFC 9110 §15.4: 301, 302, 303, 307 and 308 redirect; 300, 305 and
        // an unknown 3xx are final responses, Location or not.
        for code in [300, 305, 399] {
            assert_eq!(visits(&db, &moved(code)).await, [format!("done {code}")], "{code}");
        }
        for code in [301, 307] {
            let row = result_in(&db, &moved(code)).await;
            assert_eq!((row.http_status, row.redirects), (Some(200), Some(1)), "{code}");
        }
        let mut targets: Vec<String> =
            server.hits().into_iter().filter(|h| h.path.starts_with("/ok/")).map(|h| h.path).collect();
        targets.sort();
        assert_eq!(targets, ["/ok/target-301", "/ok/target-307"]);
        // A 304 to a request without validators is no content of the URL's,
        // and its Location is not followed.
        let not_modified = result_in(&db, &moved(304)).await;
        assert_eq!(
            (not_modified.state.as_str(), not_modified.error_kind.as_deref(), not_modified.body_sha256),
            ("failed", Some("protocol"), None),
            "{:?}",
            not_modified.error_message
        );
        assert_eq!(count_in(&db, "SELECT count(*) FROM urls WHERE etag IS NOT NULL").await, 0);

        // An error page's validators are not kept, so its recrawl is not
        // conditional and the 404 stays a 404.
        age_visits(&db, Duration::from_millis(1100)).await;
        let db = crawl();
        let requests = server.hits().into_iter().filter(|h| h.path == "/etag404/a").collect::<Vec<_>>();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].if_none_match, None);
        assert_eq!(visits(&db, &missing).await, ["done 404", "done 404"]);
        assert_eq!(result_in(&db, &missing).await.http_status, Some(404));
    }
}
