//! Per-host politeness, observed at the servers and in `host_politeness`.
//! Each server listens on its own loopback address, so each is its own host.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use trawler::config::{Config, HostOverride};

use crate::logs::backoff_changes;
use crate::server::TestServer;
use crate::util::{count_in, crawl_lines, engines, result_in};

fn polite(config: &mut Config, concurrency: u32, delay_ms: u64) {
    config.politeness.per_host_concurrency = NonZeroU32::new(concurrency).unwrap();
    config.politeness.per_host_delay = Duration::from_millis(delay_ms);
}

fn hit_times(server: &TestServer) -> Vec<Instant> {
    server.hits().into_iter().map(|h| h.at).collect()
}

fn min_gap(times: &[Instant]) -> Duration {
    times.windows(2).map(|w| w[1] - w[0]).min().expect("two requests at least")
}

/// The server records arrival times; the client reserves start times. Allow
/// a little scheduling jitter between the two.
const JITTER: Duration = Duration::from_millis(10);

#[tokio::test]
async fn the_per_host_gap_and_concurrency_are_never_exceeded() {
    for engine in engines("the_per_host_gap_and_concurrency_are_never_exceeded").await {
        let a = TestServer::start_on("127.0.0.2");
        let b = TestServer::start_on("127.0.0.3");
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        polite(&mut config, 2, 50);
        config.hosts.insert(
            "127.0.0.3".into(),
            HostOverride {
                delay: Some(Duration::from_millis(120)),
                concurrency: NonZeroU32::new(1),
                ..HostOverride::default()
            },
        );
        // Responses (150 ms) outlast the delay (50 ms), so requests to a overlap
        // up to its concurrency.
        let mut urls: Vec<String> = (0..8).map(|i| a.url(&format!("/slow/150/{i}"))).collect();
        urls.extend((0..5).map(|i| b.url(&format!("/slow/150/{i}"))));
        let summary = crawl_lines(&config, &urls).await;
        assert_eq!(summary.done, 13);

        assert_eq!(a.max_concurrent(), 2, "127.0.0.2 allows 2 at once, and the crawl used them");
        assert!(
            min_gap(&hit_times(&a)) + JITTER >= Duration::from_millis(50),
            "{:?}",
            min_gap(&hit_times(&a))
        );
        assert_eq!(b.max_concurrent(), 1, "127.0.0.3's override allows 1");
        assert!(min_gap(&hit_times(&b)) + JITTER >= Duration::from_millis(150), "one at a time, each 150 ms");

        // The database says the same, from the crawler's own start times.
        let view =
            |host: &str, column: &str| format!("SELECT {column} FROM host_politeness WHERE host = '{host}'");
        assert_eq!(count_in(&config, &view("127.0.0.2", "requests")).await, 8);
        assert_eq!(count_in(&config, &view("127.0.0.3", "requests")).await, 5);
        let gap = count_in(&config, &view("127.0.0.2", "min_gap_ms")).await;
        assert!(gap >= 50, "min gap {gap} ms on 127.0.0.2");
        let gap = count_in(&config, &view("127.0.0.3", "min_gap_ms")).await;
        assert!(gap >= 120, "min gap {gap} ms on 127.0.0.3");
    }
}

#[tokio::test]
async fn a_throttling_host_backs_off_without_slowing_the_others() {
    for engine in engines("a_throttling_host_backs_off_without_slowing_the_others").await {
        let throttled = TestServer::start_on("127.0.0.4");
        let healthy = TestServer::start_on("127.0.0.5");
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.crawl.concurrency = NonZeroU32::new(4).unwrap();
        polite(&mut config, 4, 0);
        config.retry.max_attempts = NonZeroU32::new(1).unwrap();
        config.hosts.insert(
            "127.0.0.4".into(),
            HostOverride { concurrency: NonZeroU32::new(1), ..Default::default() },
        );
        // The first URL of 127.0.0.4 answers 503 with Retry-After: 1; the second
        // is fine, but must wait for the host's backoff.
        let first = throttled.url("/throttle/1/a");
        let second = throttled.url("/ok/b");
        let mut urls = vec![first.clone(), second.clone()];
        urls.extend((0..30).map(|i| healthy.url(&format!("/ok/{i}"))));
        crawl_lines(&config, &urls).await;

        let t_first = throttled.hits_of("/throttle/1/a")[0];
        let t_second = throttled.hits_of("/ok/b")[0];
        assert!(
            t_second - t_first >= Duration::from_millis(950),
            "host backoff ignored: {:?}",
            t_second - t_first
        );
        let healthy_done = hit_times(&healthy).into_iter().max().unwrap();
        assert!(healthy_done < t_second, "the healthy host waited for the throttled one");
        assert!(healthy_done - t_first < Duration::from_millis(800));

        let row = result_in(&config, &first).await;
        assert_eq!((row.state.as_str(), row.http_status), ("failed", Some(503)));
        assert_eq!(result_in(&config, &second).await.state, "done");
        let throttles =
            count_in(&config, "SELECT responses_503 FROM host_politeness WHERE host = '127.0.0.4'").await;
        assert_eq!(throttles, 1);
        let backoff = count_in(&config, "SELECT backoff_until_ms FROM hosts WHERE host = '127.0.0.4'").await;
        assert!(backoff > 0, "the host backoff is persisted");
    }
}

#[tokio::test]
async fn a_burst_of_concurrent_503s_backs_the_host_off_once() {
    for engine in engines("a_burst_of_concurrent_503s_backs_the_host_off_once").await {
        // A site of the user's own with per-host limits lifted: 20 requests
        // at once, all answered 503 after 300 ms, so all are sent before the
        // first answer. One backoff, as for a single 503, not twenty
        // escalations.
        let server = TestServer::start_on("127.0.0.9");
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = (0..20).map(|i| server.url(&format!("/slow503/300/{i}"))).collect();
        let (db, stderr) = engine.crawl_to_end_with_env(
            dir.path(),
            &urls,
            &["--concurrency", "20"],
            &[
                ("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "20"),
                ("TRAWLER_POLITENESS__BACKOFF_BASE", "2s"),
                ("TRAWLER_RETRY__MAX_ATTEMPTS", "1"),
            ],
        );
        assert_eq!(server.max_concurrent(), 20, "the burst was not concurrent");
        let backoffs: Vec<(bool, u64)> =
            backoff_changes(&stderr).into_iter().filter(|(began, _)| *began).collect();
        assert_eq!(backoffs.len(), 1, "{backoffs:#?}");
        let backoff_ms = backoffs[0].1;
        assert!((1000..=2000).contains(&backoff_ms), "{backoffs:?}");
        assert_eq!(
            count_in(&db, "SELECT count(*) FROM results WHERE state = 'failed' AND http_status = 503").await,
            20
        );
    }
}

#[tokio::test]
async fn a_slow_host_holds_no_worker_while_other_hosts_have_work() {
    for engine in engines("a_slow_host_holds_no_worker_while_other_hosts_have_work").await {
        let slow = TestServer::start_on("127.0.0.6");
        let fast = [TestServer::start_on("127.0.0.7"), TestServer::start_on("127.0.0.8")];
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        // Two workers only: one held by the slow host would halve the others.
        config.crawl.concurrency = NonZeroU32::new(2).unwrap();
        polite(&mut config, 2, 0);
        config.hosts.insert(
            "127.0.0.6".into(),
            HostOverride { delay: Some(Duration::from_millis(400)), ..Default::default() },
        );
        let mut urls: Vec<String> = (0..3).map(|i| slow.url(&format!("/ok/{i}"))).collect();
        for server in &fast {
            urls.extend((0..15).map(|i| server.url(&format!("/ok/{i}"))));
        }
        crawl_lines(&config, &urls).await;

        let slow_hits = hit_times(&slow);
        assert_eq!(slow_hits.len(), 3);
        assert!(min_gap(&slow_hits) + JITTER >= Duration::from_millis(400));
        for server in &fast {
            let hits = hit_times(server);
            assert_eq!(hits.len(), 15);
            assert!(
                hits.iter().all(|&t| t < slow_hits[1]),
                "a fast host's URL waited behind the slow host's delay"
            );
        }
    }
}

/// A new host's first job waits a whole delay after its robots.txt request;
/// it waits parked, not holding its worker: with one worker and two new
/// hosts, both robots.txt requests come before either page, and the pages
/// still keep the delay after their robots.txt.
#[tokio::test]
async fn a_job_waiting_for_its_turn_after_robots_txt_holds_no_worker() {
    for engine in engines("a_job_waiting_for_its_turn_after_robots_txt_holds_no_worker").await {
        let servers = [TestServer::start_on("127.0.0.79"), TestServer::start_on("127.0.0.80")];
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = servers.iter().map(|s| s.url("/ok/page")).collect();
        let env = [("TRAWLER_POLITENESS__PER_HOST_DELAY", "1s")];
        engine.crawl_to_end_with_env(dir.path(), &urls, &["--concurrency", "1"], &env);

        let robots: Vec<Instant> = servers.iter().map(|s| s.robots_hits()[0].at).collect();
        let pages: Vec<Instant> = servers.iter().map(|s| hit_times(s)[0]).collect();
        assert!(
            robots.iter().all(|r| pages.iter().all(|p| r < p)),
            "a worker waited out a host's delay instead of taking the other host's job"
        );
        for (robots, page) in robots.iter().zip(&pages) {
            assert!(*page - *robots + JITTER >= Duration::from_secs(1));
        }
    }
}

/// A stop while a job is parked for its turn ends the crawl at once, and
/// the parked URL is queued again, not stranded in flight: the same command
/// fetches it next time.
#[tokio::test]
async fn a_stop_while_a_job_is_parked_requeues_its_url() {
    use crate::util::{eventually, signal, spawn_crawl_in, wait_within};
    for engine in engines("a_stop_while_a_job_is_parked_requeues_its_url").await {
        let server = TestServer::start_on("127.0.0.81");
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("/ok/parked");
        let mut env = vec![("TRAWLER_POLITENESS__PER_HOST_DELAY", "30s")];
        env.extend(engine.env());
        let (mut crawl, db) = spawn_crawl_in(dir.path(), std::slice::from_ref(&url), &[], &env);
        eventually("robots.txt to be fetched", Duration::from_secs(10), async || {
            !server.robots_hits().is_empty()
        })
        .await;
        // Time for the answer to be read and the job parked. Nothing shows
        // a parked job (it is neither logged nor stored), so this is a
        // sleep; a stop that came before the parking would end the same
        // way, so it can only weaken the test, not fail it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(&crawl, libc::SIGTERM);
        let (status, took) = wait_within(&mut crawl, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0));
        assert!(took < Duration::from_secs(5), "the stop waited for the parked job's turn: {took:?}");
        assert!(server.hits().is_empty());
        let db = engine.reading(&db);
        assert_eq!(count_in(&db, "SELECT count(*) FROM urls WHERE state = 'queued'").await, 1);
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts").await, 0);

        engine.crawl_to_end(dir.path(), std::slice::from_ref(&url), &[]);
        assert_eq!(result_in(&db, &url).await.state, "done");
        assert_eq!(server.hits().len(), 1);
    }
}

#[tokio::test]
async fn the_gap_the_site_sees_holds_when_connections_take_long_to_set_up() {
    for engine in engines("the_gap_the_site_sees_holds_when_connections_take_long_to_set_up").await {
        // Every connection through the proxy takes 200 ms to set up: a
        // request on a new connection reaches the site that much after its
        // turn, and the next one must still come a whole delay after it.
        let proxy = crate::socks::SocksProxy::start("127.0.0.1", Duration::from_millis(200));
        let allow_all = || crate::server::RobotsTxt::Text("User-agent: *\nAllow: /\n");
        let hosts =
            ["127.0.0.81", "127.0.0.82", "127.0.0.83"].map(|ip| TestServer::with_robots(ip, allow_all()));
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        polite(&mut config, 2, 300);
        config.fetch.proxy = Some(proxy.url());
        let urls: Vec<String> =
            hosts.iter().flat_map(|h| (0..3).map(move |i| h.url(&format!("/ok/{i}")))).collect();
        let summary = crawl_lines(&config, &urls).await;
        assert_eq!(summary.done, 9);
        assert!(proxy.connects().len() >= 3, "through the proxy: {:?}", proxy.connects());

        for host in &hosts {
            // robots.txt and the pages, as the site saw them arrive.
            let mut arrivals: Vec<Instant> = host.robots_hits().into_iter().map(|h| h.at).collect();
            arrivals.extend(hit_times(host));
            arrivals.sort();
            assert_eq!(arrivals.len(), 4);
            let gap = min_gap(&arrivals);
            assert!(gap + JITTER >= Duration::from_millis(300), "{}: {gap:?} between requests", host.addr);
        }
        // What was sent is what host_politeness measures.
        let gaps = "SELECT min(min_gap_ms) FROM host_politeness";
        assert!(count_in(&config, gaps).await >= 300 - JITTER.as_millis() as i64);
    }
}

/// A 503 for one path backs the host off; a request in flight beside it then
/// succeeds, which ends the backoff: the host's next request goes at once,
/// not after the backoff, and the store holds the backoff as cut.
#[tokio::test]
async fn a_success_ends_the_hosts_backoff_and_its_next_request_goes_at_once() {
    for engine in engines("a_success_ends_the_hosts_backoff_and_its_next_request_goes_at_once").await {
        let server = TestServer::start_on("127.0.0.110");
        let dir = tempfile::tempdir().unwrap();
        // Both of the first two are sent at once; the 503 comes back after
        // 200 ms, the 200 beside it after 400 ms.
        let urls =
            [server.url("/slow503/200/one-path"), server.url("/slow/400/beside"), server.url("/ok/next")];
        let env =
            [("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "2"), ("TRAWLER_POLITENESS__BACKOFF_BASE", "4s")];
        let (db, log) = engine.crawl_to_end_with_env(dir.path(), &urls, &["--max-attempts", "1"], &env);

        let changes = backoff_changes(&log);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes[0].0 && (2000..4000).contains(&changes[0].1), "a first backoff: {changes:?}");
        assert_eq!(changes[1], (false, 0), "ended by the success");
        // Without the cut, the next request would wait at least half of
        // backoff_base (2 s) after the 503.
        let (throttled, next) = (server.hits_of("/slow503/200/one-path")[0], server.hits_of("/ok/next")[0]);
        let after = Duration::from_millis(200) + Duration::from_secs(2);
        assert!(next - throttled < after, "the next request waited out the backoff: {:?}", next - throttled);
        let next_wall = server.hits().into_iter().find(|h| h.path == "/ok/next").unwrap().wall;
        let next_ms = next_wall.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let until = count_in(&db, "SELECT backoff_until_ms FROM hosts WHERE host = '127.0.0.110'").await;
        assert!(0 < until && until <= next_ms, "the stored backoff was not cut: {until} > {next_ms}");
    }
}

/// Three periods, each a 503 for one path and a success beside it: each
/// backs the host off at the first step and is cut short, none escalates.
#[tokio::test]
async fn periods_that_bring_successes_do_not_escalate_the_backoff() {
    for engine in engines("periods_that_bring_successes_do_not_escalate_the_backoff").await {
        let server = TestServer::start_on("127.0.0.111");
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = (1..=3)
            .flat_map(|n| [server.url(&format!("/slow503/100/p{n}")), server.url(&format!("/slow/300/q{n}"))])
            .collect();
        let env =
            [("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "2"), ("TRAWLER_POLITENESS__BACKOFF_BASE", "1s")];
        let (_, log) = engine.crawl_to_end_with_env(dir.path(), &urls, &["--max-attempts", "1"], &env);

        // A first step is under backoff_base (1 s, equal jitter); a second
        // would be at least that.
        let changes = backoff_changes(&log);
        let expected: Vec<bool> = [true, false].repeat(3);
        assert_eq!(changes.iter().map(|c| c.0).collect::<Vec<_>>(), expected, "{changes:?}");
        assert!(changes.iter().all(|&(_, ms)| ms < 1000), "escalated: {changes:?}");
    }
}

/// A URL's retry that gets a 503 again (a flaky path) is that URL's: it waits
/// on its own backoff, and the host, which served others meanwhile, does not
/// back off again.
#[tokio::test]
async fn a_urls_repeated_503_backs_the_host_off_once() {
    for engine in engines("a_urls_repeated_503_backs_the_host_off_once").await {
        let server = TestServer::start_on("127.0.0.113");
        let dir = tempfile::tempdir().unwrap();
        // One at a time: the flaky URL, then the others while its retry
        // waits, then its retries.
        let urls = [server.url("/flaky/2/path"), server.url("/ok/a"), server.url("/ok/b")];
        let env = [
            ("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "1"),
            ("TRAWLER_POLITENESS__BACKOFF_BASE", "1s"),
            ("TRAWLER_RETRY__BACKOFF_BASE", "20ms"),
            ("TRAWLER_RETRY__BACKOFF_MAX", "100ms"),
        ];
        let (db, log) = engine.crawl_to_end_with_env(dir.path(), &urls, &["--max-attempts", "3"], &env);

        let changes = backoff_changes(&log);
        assert_eq!(changes.iter().filter(|c| c.0).count(), 1, "{changes:?}");
        let row = result_in(&db, &urls[0]).await;
        assert_eq!((row.state.as_str(), row.http_status, row.attempts), ("done", Some(200), 3));
        assert_eq!(server.hits_of("/flaky/2/path").len(), 3);
    }
}

/// URLs on a port of the host's address where nothing listens fail on their
/// own (refused, retried, failed as `connect`), whether robots.txt or the
/// page is refused: the host answers on its other port, so it never backs off.
#[tokio::test]
async fn a_refused_port_is_that_ports_failure_not_the_hosts() {
    for engine in engines("a_refused_port_is_that_ports_failure_not_the_hosts").await {
        let server = TestServer::start_on("127.0.0.112");
        let closed = std::net::TcpListener::bind("127.0.0.112:0").unwrap().local_addr().unwrap().port();
        let mut urls: Vec<String> = (0..3).map(|i| server.url(&format!("/ok/{i}"))).collect();
        let refused: Vec<String> =
            (0..4).map(|i| format!("http://127.0.0.112:{closed}/nobody/{i}")).collect();
        urls.extend(refused.iter().cloned());
        // One request at a time, so the host has answered on its port first.
        let env = [
            ("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "1"),
            ("TRAWLER_POLITENESS__BACKOFF_BASE", "1s"),
            ("TRAWLER_RETRY__BACKOFF_BASE", "20ms"),
            ("TRAWLER_RETRY__BACKOFF_MAX", "100ms"),
        ];
        for robots in [&[][..], &["--ignore-robots"][..]] {
            let dir = tempfile::tempdir().unwrap();
            let args = [&["--max-attempts", "3"][..], robots].concat();
            let (db, log) = engine.crawl_to_end_with_env(dir.path(), &urls, &args, &env);

            assert_eq!(backoff_changes(&log), [], "{robots:?}");
            for url in &refused {
                let row = result_in(&db, url).await;
                assert_eq!(
                    (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
                    ("failed", Some("connect"), 3)
                );
            }
            let until = count_in(&db, "SELECT backoff_until_ms FROM hosts WHERE host = '127.0.0.112'").await;
            assert_eq!(until, 0, "{robots:?}");
        }
    }
}
