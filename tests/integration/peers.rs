//! Peers that break HTTP mid-way, through the real binary: a body cut short
//! of its length, a reset mid-body (plain and compressed), a corrupt
//! encoding, and a keep-alive connection the server closed as the next
//! request arrived.

use crate::raw::{RawServer, Reply, gzip, head};
use crate::util::{count_in, engines, strings_in};

/// 200 KiB that compress to tens of KiB, so a cut leaves part of the body.
fn text() -> Vec<u8> {
    (0..200 * 1024u64).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(i * i % 37) as usize]).collect()
}

/// `head` followed by `body`.
fn response(mut head: Vec<u8>, body: &[u8]) -> Vec<u8> {
    head.extend_from_slice(body);
    head
}

#[tokio::test]
async fn a_body_cut_short_or_reset_is_a_read_error_and_retried_a_corrupt_one_is_not() {
    for engine in engines("a_body_cut_short_or_reset_is_a_read_error_and_retried_a_corrupt_one_is_not").await
    {
        let (plain, zipped) = (text(), gzip(&text()));
        let server = RawServer::start("127.0.0.60", move |path, _| {
            let length = |body: &[u8]| format!("Content-Length: {}", body.len());
            let plain_head = head("200 OK", &[&length(&plain)]);
            let gzip_head = head("200 OK", &["Content-Encoding: gzip", &length(&zipped)]);
            let (half, half_zipped) = (&plain[..plain.len() / 2], &zipped[..zipped.len() / 2]);
            match path {
                // A Content-Length that lies, then a close.
                "/short" => Reply::Close(response(plain_head, half)),
                "/short-gzip" => Reply::Close(response(gzip_head, half_zipped)),
                // A connection reset mid-body.
                "/reset" => Reply::Reset(response(plain_head, half)),
                "/reset-gzip" => Reply::Reset(response(gzip_head, half_zipped)),
                // All of it, but not gzip.
                "/corrupt-gzip" => {
                    let mut corrupt = zipped.to_vec();
                    corrupt[20..60].iter_mut().for_each(|b| *b ^= 0x55);
                    Reply::Close(response(gzip_head, &corrupt))
                }
                _ => Reply::Close(head("404 Not Found", &["Content-Length: 0"])),
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let paths = ["/short", "/short-gzip", "/reset", "/reset-gzip", "/corrupt-gzip"];
        let (db, _) = engine.crawl_to_end_with_env(
            dir.path(),
            &paths.map(|p| server.url(p)),
            &["--max-attempts", "2"],
            &[("TRAWLER_RETRY__BACKOFF_BASE", "10ms"), ("TRAWLER_RETRY__BACKOFF_MAX", "20ms")],
        );

        let attempts = strings_in(
            &db,
            "SELECT u.url || ' ' || a.error_kind || ' ' || a.outcome
             FROM attempts AS a JOIN urls AS u ON u.id = a.url_id ORDER BY u.id, a.id",
        )
        .await;
        let site = server.url("");
        let attempts: Vec<(String, String, String)> = attempts
            .iter()
            .map(|a| {
                let fields: Vec<&str> = a.strip_prefix(&site).unwrap().split(' ').collect();
                (fields[0].to_owned(), fields[1].to_owned(), fields[2].to_owned())
            })
            .collect();
        let of = |path: &str| -> Vec<(String, String)> {
            attempts.iter().filter(|a| a.0 == path).map(|a| (a.1.clone(), a.2.clone())).collect()
        };
        let retried_then_failed =
            vec![("read".to_owned(), "retry".to_owned()), ("read".into(), "failed".into())];
        for path in ["/short", "/short-gzip", "/reset", "/reset-gzip"] {
            assert_eq!(of(path), retried_then_failed, "{path}");
        }
        assert_eq!(of("/corrupt-gzip"), [("protocol".to_owned(), "failed".to_owned())]);
    }
}

#[tokio::test]
async fn a_keep_alive_connection_closed_by_the_server_costs_no_attempt() {
    for engine in engines("a_keep_alive_connection_closed_by_the_server_costs_no_attempt").await {
        // Every connection answers its first request and keeps alive, then closes
        // without answering when the next request arrives on it: what a server
        // that closes idle connections does when the close and a request cross.
        let server = RawServer::start("127.0.0.61", |_, n| match n {
            0 => Reply::KeepAlive(response(head("200 OK", &["Content-Length: 2"]), b"ok")),
            _ => Reply::Close(Vec::new()),
        });
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = (0..10).map(|i| server.url(&format!("/page/{i}"))).collect();
        let (db, _) = engine.crawl_to_end_with_env(
            dir.path(),
            &urls,
            &["--concurrency", "1"],
            &[("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "1")],
        );

        let stale = server.requests().iter().filter(|(_, n)| *n > 0).count();
        assert!(stale >= 5, "connections were not reused: {:?}", server.requests());
        assert_eq!(count_in(&db, "SELECT count(*) FROM results WHERE state = 'done'").await, 10);
        assert_eq!(
            count_in(&db, "SELECT count(*) FROM attempts").await,
            10,
            "a stale connection cost an attempt"
        );
    }
}

#[tokio::test]
async fn an_attempt_that_fails_on_robots_txt_records_the_time_it_took() {
    for engine in engines("an_attempt_that_fails_on_robots_txt_records_the_time_it_took").await {
        // robots.txt never answers: the attempt fails as a timeout after the
        // fetch timeout, and says how long that took.
        let server = RawServer::start("127.0.0.74", |path, _| match path {
            "/robots.txt" => Reply::Stall,
            _ => Reply::Close(response(head("200 OK", &["Content-Length: 2"]), b"ok")),
        });
        let dir = tempfile::tempdir().unwrap();
        let once = ["--max-attempts", "1", "--timeout", "1s"];
        let (db, _) = engine.crawl_to_end(dir.path(), &[server.url("/page")], &once);
        assert_eq!(strings_in(&db, "SELECT error_kind FROM attempts").await, ["timeout"]);
        let elapsed_ms = count_in(&db, "SELECT elapsed_ms FROM attempts").await;
        assert!(elapsed_ms >= 1000, "elapsed_ms = {elapsed_ms}");
        assert!(server.requests().iter().all(|(path, _)| path == "/robots.txt"), "{:?}", server.requests());
    }
}
