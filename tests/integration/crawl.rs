//! What one crawl records for each kind of server behaviour.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::server::TestServer;
use crate::util::{column_in, count_in, crawl_lines, engines, result_in, strings_in};

#[tokio::test]
async fn a_200_is_done_with_its_body_described() {
    for engine in engines("a_200_is_done_with_its_body_described").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = server.url("/ok/one");
        let summary = crawl_lines(&config, std::slice::from_ref(&url)).await;

        let body = b"<!doctype html><title>ok</title><p>hello";
        let row = result_in(&config, &url).await;
        assert_eq!(row.state, "done");
        assert_eq!(row.http_status, Some(200));
        assert_eq!(row.error_kind, None);
        assert_eq!(row.attempts, 1);
        assert_eq!(row.final_url.as_deref(), Some(url.as_str()));
        assert_eq!(row.redirects, Some(0));
        assert_eq!(row.content_type.as_deref(), Some("text/html; charset=utf-8"));
        assert_eq!(row.body_bytes, Some(body.len() as i64));
        assert_eq!(row.body_sha256, Some(format!("{:x}", Sha256::digest(body))));
        let fetched_at = row.fetched_at.expect("fetched_at");
        assert!(fetched_at.ends_with('Z'), "{fetched_at}");
        humantime::parse_rfc3339(&fetched_at).expect("fetched_at is RFC 3339");
        assert!(row.elapsed_ms.unwrap() < 5_000);

        assert_eq!((summary.done, summary.failed, summary.attempts, summary.retries), (1, 0, 1, 0));
        assert_eq!(summary.bytes, body.len() as u64);
        assert!(!summary.stopped);
    }
}

#[tokio::test]
async fn a_404_is_final_at_once() {
    for engine in engines("a_404_is_final_at_once").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = server.url("/status/404/gone");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(404), 1));
        assert_eq!(row.error_kind, None);
        assert_eq!(server.hits_of("/status/404/gone").len(), 1);
    }
}

#[tokio::test]
async fn a_503_is_retried_after_a_backoff_then_done() {
    for engine in engines("a_503_is_retried_after_a_backoff_then_done").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.retry.backoff_base = Duration::from_millis(300);
        config.retry.backoff_max = Duration::from_secs(1);
        let url = server.url("/flaky/1/a");
        let summary = crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(200), 2));
        let hits = server.hits_of("/flaky/1/a");
        assert_eq!(hits.len(), 2);
        // Equal jitter keeps at least half the 300 ms base.
        let gap = hits[1] - hits[0];
        assert!(gap >= Duration::from_millis(150), "retried after only {gap:?}");
        assert_eq!((summary.attempts, summary.retries), (2, 1));

        // The first attempt is on record with why it was retried.
        let first = count_in(
            &config,
            "SELECT count(*) FROM attempts WHERE attempt = 1 AND outcome = 'retry'
               AND http_status = 503 AND error_kind = 'http_status' AND retry_at IS NOT NULL",
        )
        .await;
        assert_eq!(first, 1);
    }
}

#[tokio::test]
async fn a_429_waits_for_its_retry_after() {
    for engine in engines("a_429_waits_for_its_retry_after").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        // A backoff this long would fail the upper bound: Retry-After must win.
        config.retry.backoff_base = Duration::from_secs(8);
        config.retry.backoff_max = Duration::from_secs(8);
        let url = server.url("/retry-after/1/a");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(200), 2));
        let hits = server.hits_of("/retry-after/1/a");
        let gap = hits[1] - hits[0];
        assert!(gap >= Duration::from_millis(950) && gap < Duration::from_secs(3), "gap {gap:?}");
    }
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_fails_as_timeout_after_retries() {
    for engine in engines("a_response_slower_than_the_timeout_fails_as_timeout_after_retries").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.fetch.timeout = Duration::from_millis(200);
        config.retry.max_attempts = NonZeroU32::new(2).unwrap();
        let url = server.url("/slow/3000/a");
        let summary = crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("timeout"), 2)
        );
        assert!(row.elapsed_ms.unwrap() >= 200 && row.elapsed_ms.unwrap() < 1_000, "{row:?}");
        assert_eq!(server.hits_of("/slow/3000/a").len(), 2);
        assert_eq!((summary.done, summary.failed), (0, 1));
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_failed_as_connect() {
    for engine in engines("a_refused_connection_is_retried_then_failed_as_connect").await {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = format!("http://127.0.0.1:{port}/nobody-home");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("connect"), 3)
        );
        assert_eq!(row.http_status, None);
        assert!(row.error_message.unwrap().contains("refused"));
    }
}

#[tokio::test]
async fn redirects_are_followed_recorded_and_bounded() {
    for engine in engines("redirects_are_followed_recorded_and_bounded").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.fetch.max_redirects = 5;
        let chain = server.url("/redirect/3");
        let looping = server.url("/loop/a");
        let too_long = server.url("/redirect/9");
        crawl_lines(&config, &[chain.clone(), looping.clone(), too_long.clone()]).await;

        let row = result_in(&config, &chain).await;
        assert_eq!((row.state.as_str(), row.http_status), ("done", Some(200)));
        assert_eq!(row.final_url, Some(server.url("/ok/end")));
        assert_eq!(row.redirects, Some(4));
        let recorded =
            strings_in(&config, "SELECT CAST(redirect_chain AS TEXT) FROM attempts WHERE redirects = 4")
                .await;
        let expected: Vec<String> = ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0"]
            .iter()
            .map(|p| server.url(p))
            .collect();
        assert_eq!(serde_json::from_str::<Vec<String>>(&recorded[0]).unwrap(), expected);

        let row = result_in(&config, &looping).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("redirect_loop"), 1)
        );

        let row = result_in(&config, &too_long).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref()), ("failed", Some("redirect_limit")));
        assert_eq!(row.http_status, Some(302));
    }
}

#[tokio::test]
async fn a_body_over_the_cap_fails_without_being_read_whole() {
    for engine in engines("a_body_over_the_cap_fails_without_being_read_whole").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.fetch.max_body_bytes = NonZeroU64::new(64 * 1024).unwrap();
        let url = server.url("/big/1000000");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("body_too_large"), 1)
        );
        assert_eq!(row.http_status, Some(200));
    }
}

#[tokio::test]
async fn headers_and_bodies_are_stored_only_when_asked() {
    for engine in engines("headers_and_bodies_are_stored_only_when_asked").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        let plain = server.url("/ok/plain");
        crawl_lines(&config, std::slice::from_ref(&plain)).await;
        let stored =
            count_in(&config, "SELECT count(*) FROM attempts WHERE headers IS NOT NULL OR body IS NOT NULL")
                .await;
        assert_eq!(stored, 0);

        config.store.save_headers = true;
        config.store.save_body = true;
        // Two URLs serving the same page: its body is stored once, compressed.
        let (kept, same) = (server.url("/ok/kept"), server.url("/ok/same"));
        crawl_lines(&config, &[kept.clone(), same]).await;
        let of_kept = format!(
            "FROM attempts a JOIN urls u ON u.id = a.url_id JOIN bodies b ON b.sha256 = a.body_sha256
             WHERE u.url = '{kept}'"
        );
        let headers = strings_in(&config, &format!("SELECT CAST(a.headers AS TEXT) {of_kept}")).await;
        let headers: Vec<(String, String)> = serde_json::from_str(&headers[0]).unwrap();
        assert!(headers.contains(&("content-type".into(), "text/html; charset=utf-8".into())), "{headers:?}");
        assert_eq!(strings_in(&config, &format!("SELECT b.encoding {of_kept}")).await, ["zstd"]);
        let data: Vec<Vec<u8>> = column_in(&config, &format!("SELECT b.data {of_kept}")).await;
        assert_eq!(zstd::decode_all(&data[0][..]).unwrap(), b"<!doctype html><title>ok</title><p>hello");
        let bodies = count_in(&config, "SELECT count(*) FROM bodies").await;
        let attempts_with_body =
            count_in(&config, "SELECT count(*) FROM attempts WHERE body IS NOT NULL").await;
        assert_eq!((bodies, attempts_with_body), (1, 0), "one body, stored once, not in attempts");
    }
}

#[tokio::test]
async fn the_global_rate_limit_spaces_request_starts() {
    for engine in engines("the_global_rate_limit_spaces_request_starts").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.crawl.rate = Some(20.0);
        let urls: Vec<String> = (0..11).map(|i| server.url(&format!("/ok/{i}"))).collect();
        crawl_lines(&config, &urls).await;

        let hits = server.hits();
        assert_eq!(hits.len(), 11);
        // 20 requests/s with a burst of one: ten gaps of 50 ms at least.
        let span = hits.last().unwrap().at - hits[0].at;
        assert!(span >= Duration::from_millis(480), "11 requests in {span:?}");
        for pair in hits.windows(2) {
            assert!(
                pair[1].at - pair[0].at >= Duration::from_millis(35),
                "gap {:?}",
                pair[1].at - pair[0].at
            );
        }
    }
}

#[tokio::test]
async fn gzip_bodies_are_decoded_before_they_are_measured() {
    for engine in engines("gzip_bodies_are_decoded_before_they_are_measured").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = server.url("/gzip/a");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let row = result_in(&config, &url).await;
        assert_eq!((row.state.as_str(), row.http_status), ("done", Some(200)));
        assert_eq!(row.body_bytes, Some(crate::server::GZIP_PLAIN.len() as i64));
        assert_eq!(row.body_sha256, Some(format!("{:x}", Sha256::digest(crate::server::GZIP_PLAIN))));
    }
}

#[tokio::test]
async fn a_server_that_stalls_mid_body_cannot_hang_a_worker() {
    for engine in engines("a_server_that_stalls_mid_body_cannot_hang_a_worker").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.fetch.timeout = Duration::from_millis(300);
        config.retry.max_attempts = NonZeroU32::new(2).unwrap();
        let stall = server.url("/stall/a");
        let started = std::time::Instant::now();
        crawl_lines(&config, std::slice::from_ref(&stall)).await;
        assert!(started.elapsed() < Duration::from_secs(3));

        let row = result_in(&config, &stall).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("timeout"), 2)
        );
        assert_eq!(row.http_status, Some(200), "the status that did arrive is kept: {row:?}");
    }
}

#[tokio::test]
async fn a_decompression_bomb_is_stopped_at_the_decoded_size_cap() {
    for engine in engines("a_decompression_bomb_is_stopped_at_the_decoded_size_cap").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.fetch.max_body_bytes = NonZeroU64::new(1024 * 1024).unwrap();
        // 8 MiB of zeros in a few KiB of gzip: only a cap on decoded bytes sees it.
        let bomb = server.url("/bomb/8");
        crawl_lines(&config, std::slice::from_ref(&bomb)).await;

        let row = result_in(&config, &bomb).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("body_too_large"), 1)
        );
        assert_eq!(row.http_status, Some(200));
    }
}

#[tokio::test]
async fn a_type_outside_accept_content_types_is_skipped_after_its_headers() {
    for engine in engines("a_type_outside_accept_content_types_is_skipped_after_its_headers").await {
        let server = crate::server::TestServer::with_robots(
            "127.0.0.1",
            crate::server::RobotsTxt::Text("User-agent: *\nDisallow: /ok/private\n"),
        );
        let dir = tempfile::tempdir().unwrap();
        let (page, big, text, missing, private) = (
            server.url("/ok/page"),
            server.url("/big/20000000"),
            server.url("/gzip/plain"),
            server.url("/status/404/gone"),
            server.url("/ok/private"),
        );
        let lines = [page.clone(), big.clone(), text.clone(), missing.clone(), private.clone()];
        let toml = "[fetch]\naccept_content_types = [\"text/HTML\", \"image/*\"]\n";
        let db = engine.crawl_with_config(dir.path(), &lines, toml);

        let outcome = |url: &str| {
            format!("SELECT a.outcome FROM attempts a JOIN urls u ON u.id = a.url_id WHERE u.url = '{url}'")
        };
        assert_eq!(strings_in(&db, &outcome(&page)).await, ["done"]);
        assert_eq!(result_in(&db, &page).await.body_bytes, Some(40));
        // 20 MB over the 10 MiB cap, but no byte of it is read.
        let skipped = result_in(&db, &big).await;
        assert_eq!(strings_in(&db, &outcome(&big)).await, ["skipped"]);
        assert_eq!((skipped.state.as_str(), skipped.http_status), ("done", Some(200)));
        assert_eq!((skipped.body_bytes, skipped.error_kind.as_deref()), (None, None));
        let why = skipped.error_message.unwrap_or_default();
        assert!(why.contains("application/octet-stream") && why.contains("accept_content_types"), "{why}");
        assert_eq!(strings_in(&db, &outcome(&text)).await, ["skipped"]);
        // Only 2xx bodies are refused; robots.txt (text/plain) is still read.
        assert_eq!(strings_in(&db, &outcome(&missing)).await, ["done"]);
        assert_eq!(result_in(&db, &missing).await.http_status, Some(404));
        assert_eq!(result_in(&db, &private).await.error_kind.as_deref(), Some("robots_disallowed"));
    }
}
