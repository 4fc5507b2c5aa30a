//! robots.txt (RFC 9309) as a crawl obeys it. Each test's server has its own
//! loopback address, so its robots.txt is its own.

use std::time::Duration;

use crate::server::{RobotsTxt, TestServer};
use crate::util::{count_in, crawl_lines, engines, result_in};

#[tokio::test]
async fn a_disallowed_url_is_never_fetched_and_says_why() {
    for engine in engines("a_disallowed_url_is_never_fetched_and_says_why").await {
        let server =
            TestServer::with_robots("127.0.0.20", RobotsTxt::Text("User-agent: *\nDisallow: /status/\n"));
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let allowed = server.url("/ok/public");
        let blocked = server.url("/status/200/private");
        let summary = crawl_lines(&config, &[allowed.clone(), blocked.clone()]).await;

        assert_eq!(server.robots_hits().len(), 1, "robots.txt is fetched once per origin");
        assert!(server.hits_of("/status/200/private").is_empty(), "a disallowed URL was requested");
        let row = result_in(&config, &blocked).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.http_status),
            ("failed", Some("robots_disallowed"), None)
        );
        assert!(row.error_message.unwrap().ends_with("/robots.txt"));
        assert_eq!(result_in(&config, &allowed).await.state, "done");
        assert_eq!((summary.done, summary.failed), (1, 1));
    }
}

#[tokio::test]
async fn a_robots_txt_over_512_kib_is_obeyed_as_far_as_it_is_read() {
    for engine in engines("a_robots_txt_over_512_kib_is_obeyed_as_far_as_it_is_read").await {
        // RFC 9309 §2.5: parse at least the first 500 KiB. The declared
        // length (600 KiB) must not make the whole file count as missing.
        let server = TestServer::with_robots(
            "127.0.0.28",
            RobotsTxt::Padded("User-agent: *\nDisallow: /ok/private\n"),
        );
        let dir = tempfile::tempdir().unwrap();
        let (open, private) = (server.url("/ok/open"), server.url("/ok/private"));
        let (db, _) = engine.crawl_to_end(dir.path(), &[open.clone(), private.clone()], &[]);

        assert!(server.hits_of("/ok/private").is_empty(), "a disallowed URL was requested");
        assert_eq!(result_in(&db, &private).await.error_kind.as_deref(), Some("robots_disallowed"));
        assert_eq!(result_in(&db, &open).await.state, "done");
    }
}

#[tokio::test]
async fn the_group_for_our_token_wins_over_the_star_group() {
    for engine in engines("the_group_for_our_token_wins_over_the_star_group").await {
        let robots = "User-agent: trawler\nDisallow: /ok/secret\n\nUser-agent: *\nDisallow: /\n";
        let server = TestServer::with_robots("127.0.0.21", RobotsTxt::Text(robots));
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let open = server.url("/ok/open");
        let secret = server.url("/ok/secret");
        crawl_lines(&config, &[open.clone(), secret.clone()]).await;

        assert_eq!(result_in(&config, &open).await.state, "done");
        assert_eq!(result_in(&config, &secret).await.error_kind.as_deref(), Some("robots_disallowed"));
    }
}

#[tokio::test]
async fn crawl_delay_raises_the_host_delay_up_to_the_cap() {
    for engine in engines("crawl_delay_raises_the_host_delay_up_to_the_cap").await {
        let polite =
            TestServer::with_robots("127.0.0.22", RobotsTxt::Text("User-agent: *\nCrawl-delay: 0.15\n"));
        let greedy =
            TestServer::with_robots("127.0.0.23", RobotsTxt::Text("User-agent: *\nCrawl-delay: 60\n"));
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.robots.max_crawl_delay = Duration::from_millis(250);
        let mut urls: Vec<String> = (0..4).map(|i| polite.url(&format!("/ok/{i}"))).collect();
        urls.extend((0..4).map(|i| greedy.url(&format!("/ok/{i}"))));
        crawl_lines(&config, &urls).await;

        let gaps = |server: &TestServer| {
            let hits: Vec<_> = server.hits().into_iter().map(|h| h.at).collect();
            hits.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        };
        let slack = Duration::from_millis(10);
        assert!(
            gaps(&polite).iter().all(|&g| g + slack >= Duration::from_millis(150)),
            "{:?}",
            gaps(&polite)
        );
        // 60 s asked, 250 ms allowed by robots.max_crawl_delay.
        let greedy_gaps = gaps(&greedy);
        assert!(greedy_gaps.iter().all(|&g| g + slack >= Duration::from_millis(250)), "{greedy_gaps:?}");
        assert!(greedy_gaps.iter().all(|&g| g < Duration::from_secs(2)), "{greedy_gaps:?}");
    }
}

#[tokio::test]
async fn an_unreachable_robots_txt_postpones_the_host_until_it_answers() {
    for engine in engines("an_unreachable_robots_txt_postpones_the_host_until_it_answers").await {
        let server = TestServer::with_robots(
            "127.0.0.24",
            RobotsTxt::FailsThen(503, "User-agent: *\nDisallow: /private\n"),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.robots.unreachable_retry = Duration::from_millis(300);
        let url = server.url("/ok/page");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        let robots = server.robots_hits();
        assert_eq!(robots.len(), 2, "fetched again after the 503");
        assert!(
            robots[1].at - robots[0].at >= Duration::from_millis(290),
            "{:?}",
            robots[1].at - robots[0].at
        );
        let page = server.hits_of("/ok/page");
        assert_eq!(page.len(), 1);
        assert!(page[0] > robots[1].at, "the page was fetched while robots.txt was unreachable");

        let row = result_in(&config, &url).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(200), 2));
        let postponed = count_in(
            &config,
            "SELECT count(*) FROM attempts WHERE attempt = 1 AND outcome = 'retry' AND error_kind = 'robots_unreachable'",
        )
        .await;
        assert_eq!(postponed, 1);
    }
}

#[tokio::test]
async fn robots_txt_redirects_are_followed() {
    for engine in engines("robots_txt_redirects_are_followed").await {
        let server =
            TestServer::with_robots("127.0.0.25", RobotsTxt::Redirected("User-agent: *\nDisallow: /\n"));
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = server.url("/ok/page");
        crawl_lines(&config, std::slice::from_ref(&url)).await;

        assert_eq!(server.robots_hits().len(), 2);
        assert!(server.hits().is_empty());
        assert_eq!(result_in(&config, &url).await.error_kind.as_deref(), Some("robots_disallowed"));
    }
}

#[tokio::test]
async fn a_missing_robots_txt_allows_everything_and_ignoring_skips_it() {
    for engine in engines("a_missing_robots_txt_allows_everything_and_ignoring_skips_it").await {
        let missing = TestServer::start_on("127.0.0.26");
        let strict = TestServer::with_robots("127.0.0.27", RobotsTxt::Text("User-agent: *\nDisallow: /\n"));
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        let a = missing.url("/ok/a");
        crawl_lines(&config, std::slice::from_ref(&a)).await;
        assert_eq!(missing.robots_hits().len(), 1);
        assert_eq!(result_in(&config, &a).await.state, "done");

        config.robots.obey = false;
        let b = strict.url("/ok/b");
        crawl_lines(&config, std::slice::from_ref(&b)).await;
        assert!(strict.robots_hits().is_empty(), "robots.txt fetched though ignored");
        assert_eq!(result_in(&config, &b).await.state, "done");
    }
}

/// When robots.txt gets no response at all, the URL's error says so plainly.
#[tokio::test]
async fn an_unreachable_robots_txt_is_named_in_the_error() {
    for engine in engines("an_unreachable_robots_txt_is_named_in_the_error").await {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: the connection to robots.txt is refused.
        let url = "http://127.0.0.29:9/page".to_owned();
        let once = [("TRAWLER_RETRY__MAX_ATTEMPTS", "1")];
        let (db, _) = engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(&url), &[], &once);
        let row = result_in(&db, &url).await;
        assert_eq!(row.error_kind.as_deref(), Some("connect"));
        let message = row.error_message.unwrap();
        assert!(
            message.starts_with("robots.txt unreachable (connect: ")
                && message.contains("the page was not requested (http://127.0.0.29:9/robots.txt)"),
            "{message}"
        );
    }
}

/// RFC 9309 §2.2.2: rules and URLs compare after the same percent-decoding,
/// whichever way either is spelled, a redirect's target included.
#[tokio::test]
async fn percent_encoded_rules_match_the_urls_they_name_however_spelled() {
    for engine in engines("percent_encoded_rules_match_the_urls_they_name_however_spelled").await {
        let robots = "User-agent: *\nDisallow: /%7Ejoe/\nDisallow: /%61dmin/\nDisallow: /a%3cd.html\n";
        let server = TestServer::with_robots("127.0.0.30", RobotsTxt::Text(robots));
        let to = url::form_urlencoded::byte_serialize(server.url("/%7Ejoe/r").as_bytes()).collect::<String>();
        let goto = format!("/goto?to={to}");
        let seeds = [
            "/~joe/a",
            "/%7Ejoe/b",
            "/%7ejoe/c",
            "/admin/d",
            "/%61dmin/e",
            "/a%3cd.html",
            goto.as_str(),
            "/ok/open",
        ]
        .map(|path| server.url(path));
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = engine.crawl_to_end(dir.path(), &seeds, &[]);

        let mut fetched: Vec<String> = server.hits().into_iter().map(|h| h.path).collect();
        fetched.sort();
        assert_eq!(fetched, ["/goto", "/ok/open"], "only the allowed URL and the redirect were requested");
        for path in ["/~joe/a", "/~joe/b", "/~joe/c", "/admin/d", "/admin/e", "/a%3Cd.html"] {
            let row = result_in(&db, &server.url(path)).await;
            assert_eq!(
                (row.state.as_str(), row.error_kind.as_deref()),
                ("failed", Some("robots_disallowed")),
                "{path}"
            );
        }
        let redirected = result_in(&db, &server.url(&goto)).await;
        assert_eq!(redirected.error_kind.as_deref(), Some("robots_disallowed"));
        assert_eq!(result_in(&db, &server.url("/ok/open")).await.state, "done");
    }
}

/// A group written for `trawler/1.0` or `Trawler Bot` is trawler's (the
/// product token, as Google's parser reads it), not the `*` group.
#[tokio::test]
async fn a_group_for_the_token_with_a_version_or_a_word_is_ours() {
    for engine in engines("a_group_for_the_token_with_a_version_or_a_word_is_ours").await {
        let versioned = TestServer::with_robots(
            "127.0.0.31",
            RobotsTxt::Text("User-agent: trawler/1.0\nDisallow: /ok/private\n\nUser-agent: *\nDisallow: /\n"),
        );
        let worded = TestServer::with_robots(
            "127.0.0.32",
            RobotsTxt::Text("User-agent: *\nDisallow: /\n\nUser-agent: Trawler Bot\nDisallow: /ok/private\n"),
        );
        let seeds: Vec<String> = [&versioned, &worded]
            .iter()
            .flat_map(|server| [server.url("/ok/open"), server.url("/ok/private")])
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = engine.crawl_to_end(dir.path(), &seeds, &[]);
        for server in [&versioned, &worded] {
            assert_eq!(result_in(&db, &server.url("/ok/open")).await.state, "done", "{}", server.addr);
            let private = result_in(&db, &server.url("/ok/private")).await;
            assert_eq!(private.error_kind.as_deref(), Some("robots_disallowed"), "{}", server.addr);
            assert!(server.hits_of("/ok/private").is_empty());
        }
    }
}

/// A 200 robots.txt whose gzip body cannot be decoded is the server's
/// error (RFC 9309 §2.3.1.4; Google treats invalid responses as server
/// errors): the host is disallowed for `robots.unreachable_retry`, and the
/// log and the attempt say what happened, not "5xx".
#[tokio::test]
async fn a_robots_txt_whose_body_cannot_be_decoded_says_so_and_disallows_for_now() {
    use crate::raw::{RawServer, Reply, head};
    for engine in engines("a_robots_txt_whose_body_cannot_be_decoded_says_so_and_disallows_for_now").await {
        let server = RawServer::start("127.0.0.33", |path, _| {
            let garbage = b"this is not gzip at all, whatever the header says";
            let length = format!("Content-Length: {}", garbage.len());
            match path {
                "/robots.txt" => {
                    let mut answer =
                        head("200 OK", &["Content-Encoding: gzip", "Content-Type: text/plain", &length]);
                    answer.extend_from_slice(garbage);
                    Reply::Close(answer)
                }
                _ => Reply::Close(head("200 OK", &["Content-Type: text/html", "Content-Length: 0"])),
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("/page");
        let env = [("TRAWLER_ROBOTS__UNREACHABLE_RETRY", "200ms"), ("TRAWLER_RETRY__MAX_ATTEMPTS", "2")];
        let (db, log) = engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(&url), &[], &env);

        let row = result_in(&db, &url).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref()), ("failed", Some("robots_unreachable")));
        let message = row.error_message.unwrap();
        assert!(
            message.starts_with("robots.txt answered 200 with a body that could not be decoded (protocol: ")
                && message.contains("), which disallows the host for now: the page was not requested (")
                && !message.contains("5xx"),
            "{message}"
        );
        assert!(log.contains("robots.txt answered 200 with a body that could not be decoded"), "{log}");
        let requests = server.requests();
        assert!(
            requests.iter().all(|(path, _)| path == "/robots.txt"),
            "the page was requested: {requests:?}"
        );
        assert_eq!(requests.len(), 2, "fetched again after robots.unreachable_retry");
    }
}

/// A robots.txt whose connection breaks mid-body got no answer to go by:
/// the attempt fails as `read` and is retried like a fetch, soon, rather
/// than parking the host for `robots.unreachable_retry` (10 minutes here).
#[tokio::test]
async fn a_robots_txt_broken_off_mid_body_is_retried_like_a_fetch() {
    use crate::raw::{RawServer, Reply, head};
    use std::sync::atomic::{AtomicUsize, Ordering};
    for engine in engines("a_robots_txt_broken_off_mid_body_is_retried_like_a_fetch").await {
        let robots_requests = AtomicUsize::new(0);
        let server = RawServer::start("127.0.0.34", move |path, _| {
            let rules = b"User-agent: *\nDisallow: /private\n";
            match path {
                "/robots.txt" if robots_requests.fetch_add(1, Ordering::SeqCst) == 0 => {
                    // Twice as long as what is sent before the close.
                    let mut answer = head("200 OK", &[&format!("Content-Length: {}", rules.len() * 2)]);
                    answer.extend_from_slice(rules);
                    Reply::Close(answer)
                }
                "/robots.txt" => {
                    let mut answer = head("200 OK", &[&format!("Content-Length: {}", rules.len())]);
                    answer.extend_from_slice(rules);
                    Reply::Close(answer)
                }
                _ => Reply::Close(head("200 OK", &["Content-Type: text/html", "Content-Length: 0"])),
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("/page");
        let env = [("TRAWLER_RETRY__BACKOFF_BASE", "10ms"), ("TRAWLER_RETRY__BACKOFF_MAX", "20ms")];
        let (db, _) = engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(&url), &[], &env);

        let row = result_in(&db, &url).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(200), 2));
        let first = crate::util::strings_in(
            &db,
            "SELECT error_kind || ' ' || outcome || ' ' || error_message FROM attempts WHERE attempt = 1",
        )
        .await;
        assert!(
            matches!(&first[..], [one] if one.starts_with("read retry robots.txt unreachable (read: ")),
            "{first:?}"
        );
    }
}
