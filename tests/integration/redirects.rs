//! Redirect hops as requests of their own, through the real binary: each
//! waits its host's turn and delay, is checked against its host's
//! robots.txt, and is recorded, so `host_politeness` tells the truth. On
//! both engines (on PostgreSQL each hop also leases its host).

use std::time::Duration;

use crate::server::{RobotsTxt, TestServer};
use crate::util::{count_in, engines, result_in};

/// Scheduling jitter between a request's reserved turn, the time it is
/// recorded as sent, and its arrival at the server.
const JITTER: Duration = Duration::from_millis(10);

fn gaps(server: &TestServer) -> Vec<Duration> {
    let mut at: Vec<_> = server.hits().into_iter().map(|h| h.at).collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn every_hop_waits_its_hosts_delay_and_is_recorded() {
    for engine in engines("every_hop_waits_its_hosts_delay_and_is_recorded").await {
        let origin = TestServer::start_on("127.0.0.62");
        let target = TestServer::start_on("127.0.0.65");
        let dir = tempfile::tempdir().unwrap();
        // A chain of four hops on the origin, and a hop to the target host,
        // which is crawled directly too.
        let chain = origin.url("/redirect/3");
        let away = origin.url(&format!("/goto?to={}", target.url("/ok/from-origin")));
        let mut urls = vec![chain.clone(), away.clone()];
        urls.extend((0..3).map(|i| target.url(&format!("/ok/{i}"))));
        let toml = "[politeness]\nper_host_delay = \"0s\"\n\n\
                    [hosts.\"127.0.0.62\"]\ndelay = \"200ms\"\n\n[hosts.\"127.0.0.65\"]\ndelay = \"300ms\"\n";
        let db = engine.crawl_with_config(dir.path(), &urls, toml);

        // The server saw every request spaced by its host's delay (less a
        // little scheduling jitter between the client's start and the arrival).
        assert_eq!(origin.hits().len(), 6, "5 on the chain, 1 for the hop away");
        assert!(
            gaps(&origin).iter().all(|&g| g + JITTER >= Duration::from_millis(200)),
            "{:?}",
            gaps(&origin)
        );
        assert_eq!(target.hits().len(), 4, "3 direct, 1 redirected there");
        assert!(
            gaps(&target).iter().all(|&g| g + JITTER >= Duration::from_millis(300)),
            "{:?}",
            gaps(&target)
        );

        // Every hop is recorded, and the view counts each host's requests.
        assert_eq!(result_in(&db, &chain).await.redirects, Some(4));
        assert_eq!(count_in(&db, "SELECT count(*) FROM redirect_hops").await, 5);
        let view =
            |host: &str, column: &str| format!("SELECT {column} FROM host_politeness WHERE host = '{host}'");
        assert_eq!(count_in(&db, &view("127.0.0.62", "requests")).await, 6);
        let jitter = JITTER.as_millis() as i64;
        assert!(count_in(&db, &view("127.0.0.62", "min_gap_ms")).await + jitter >= 200);
        assert_eq!(count_in(&db, &view("127.0.0.65", "requests")).await, 4);
        assert!(count_in(&db, &view("127.0.0.65", "min_gap_ms")).await + jitter >= 300);
    }
}

#[tokio::test]
async fn a_redirect_to_another_host_obeys_that_hosts_robots_txt() {
    for engine in engines("a_redirect_to_another_host_obeys_that_hosts_robots_txt").await {
        let origin = TestServer::start_on("127.0.0.63");
        let target =
            TestServer::with_robots("127.0.0.64", RobotsTxt::Text("User-agent: *\nDisallow: /ok/private\n"));
        let dir = tempfile::tempdir().unwrap();
        let private = target.url("/ok/private");
        let redirected = origin.url(&format!("/goto?to={private}"));
        let allowed = origin.url(&format!("/goto?to={}", target.url("/ok/public")));
        let db = engine.crawl_with_config(dir.path(), &[redirected.clone(), allowed.clone()], "");

        assert!(
            target.hits_of("/ok/private").is_empty(),
            "a path the target's robots.txt disallows was fetched"
        );
        assert_eq!(target.robots_hits().len(), 1);
        let row = result_in(&db, &redirected).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref()), ("failed", Some("robots_disallowed")));
        assert_eq!(row.final_url.as_deref(), Some(private.as_str()));
        assert!(row.error_message.unwrap().starts_with(&format!("redirect to {private}: disallowed by")));
        let row = result_in(&db, &allowed).await;
        assert_eq!((row.state.as_str(), row.http_status, row.redirects), ("done", Some(200), Some(1)));
        // Only requests made are counted: the refused hop is not one.
        assert_eq!(count_in(&db, "SELECT requests FROM host_politeness WHERE host = '127.0.0.64'").await, 1);
    }
}
