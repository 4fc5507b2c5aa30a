//! `trawler run` while it runs: SIGHUP reloads, and recrawl_after.

use std::time::Duration;

use crate::server::TestServer;
use crate::util::{count_in, engines, eventually, output_of, spawn_trawler_with_env, wait_within};

#[tokio::test]
async fn sighup_applies_rate_and_log_level_and_rejects_a_bad_config() {
    for engine in engines("sighup_applies_rate_and_log_level_and_rejects_a_bad_config").await {
        let server = TestServer::start_on("127.0.0.52");
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = engine.start_daemon(dir.path(), "[crawl]\nrate = 1.0\n", &[]);
        let urls: Vec<String> = (0..30).map(|i| server.url(&format!("/ok/{i}"))).collect();
        daemon.enqueue(&urls);

        // At 1 request/s the first requests are a second apart.
        eventually("two fetches at the old rate", Duration::from_secs(5), async || server.hits().len() >= 2)
            .await;
        let hits = server.hits();
        assert!(hits[1].at - hits[0].at >= Duration::from_millis(900), "{hits:?}");
        assert!(!daemon.stderr.text().contains("fetched"), "debug events are off at level info");

        // A faster rate, debug logging, and a setting that needs a restart.
        daemon.reload("[crawl]\nrate = 1000.0\nconcurrency = 4\n[log]\nlevel = \"info,trawler=debug\"\n");
        let log = daemon.stderr.wait_for("configuration reloaded").await;
        assert!(log.contains("changed=crawl.rate, log.level"), "{log}");
        assert!(log.contains("`crawl.concurrency` changed; it takes effect after a restart"), "{log}");
        eventually("the rest at the new rate", Duration::from_secs(5), async || server.hits().len() == 30)
            .await;
        // One span per fetch, with the URL's id, host and attempt.
        let log = daemon.stderr.wait_for("fetched").await;
        let fetch_line = log.lines().find(|l| l.contains("fetched")).unwrap();
        for field in ["fetch{", "url_id=", "host=127.0.0.52", "attempt=1"] {
            assert!(fetch_line.contains(field), "{field} missing in {fetch_line}");
        }

        // A config that does not validate, then one that does not parse: both
        // rejected, and the running settings stay (the fast rate keeps working).
        daemon.reload("[crawl]\nrate = -5.0\n");
        let log = daemon.stderr.wait_for("configuration rejected").await;
        assert!(log.contains("crawl.rate"), "{log}");
        daemon.reload("[crawl\nrate = 1\n");
        eventually("the second rejection", Duration::from_secs(5), async || {
            daemon.stderr.text().matches("configuration rejected").count() == 2
        })
        .await;
        let more: Vec<String> = (30..40).map(|i| server.url(&format!("/ok/{i}"))).collect();
        daemon.enqueue(&more);
        eventually("new URLs at the kept rate", Duration::from_secs(5), async || server.hits().len() == 40)
            .await;
        assert!(daemon.child.try_wait().unwrap().is_none(), "a bad config must not stop the service");

        // A much slower rate is a longer legitimate wait: the stall guard waits
        // longer before it calls the crawl stalled (12 requests at 1,000 s each,
        // two 30 s timeouts and a minute: 3h 22m).
        daemon.reload("[crawl]\nrate = 0.001\n");
        let log = daemon.stderr.wait_for("stall timeout is now").await;
        assert!(log.contains("the stall timeout is now 3h 22m"), "{log}");

        daemon.stop();
    }
}

#[tokio::test]
async fn finished_urls_are_fetched_again_when_recrawl_after_says_so() {
    for engine in engines("finished_urls_are_fetched_again_when_recrawl_after_says_so").await {
        let (often, never) = (TestServer::start_on("127.0.0.53"), TestServer::start_on("127.0.0.54"));
        let dir = tempfile::tempdir().unwrap();
        let per_host = "[hosts.\"127.0.0.53\"]\nrecrawl_after = \"1s\"\n";
        let daemon = engine.start_daemon(dir.path(), per_host, &[]);
        daemon.enqueue(&[often.url("/ok/page"), never.url("/ok/page")]);

        // Only the host with a recrawl_after is fetched again, as a new visit.
        eventually("a recrawl of 127.0.0.53", Duration::from_secs(8), async || often.hits().len() >= 3).await;
        assert_eq!(never.hits().len(), 1);
        let file = daemon.db.clone();
        let db = engine.reading(&file);
        let visits = "SELECT count(*) FROM attempts a JOIN urls u ON u.id = a.url_id
                      WHERE u.host = '127.0.0.53' AND a.attempt = 1";
        assert!(
            count_in(&db, visits).await >= 2,
            "each visit starts at attempt 1 and keeps the earlier ones"
        );
        assert!(
            count_in(&db, "SELECT CAST(recrawls AS BIGINT) FROM urls WHERE host = '127.0.0.53'").await >= 1
        );

        // A reload that sets the default recrawls the other host too.
        daemon.reload(&format!("[crawl]\nrecrawl_after = \"1s\"\n{per_host}"));
        eventually("a recrawl of 127.0.0.54", Duration::from_secs(8), async || never.hits().len() >= 2).await;
        daemon.stop();
        let states = "SELECT count(*) FROM results WHERE state IN ('done', 'queued')";
        assert_eq!(count_in(&db, states).await, 2, "a stop between visits loses nothing");

        // `trawler stats` shows the schedule.
        let mut stats =
            spawn_trawler_with_env(&["stats", "--json", "--db", file.to_str().unwrap()], &engine.env());
        assert_eq!(wait_within(&mut stats, Duration::from_secs(10)).0.code(), Some(0));
        let report: serde_json::Value = serde_json::from_str(&output_of(stats).0).unwrap();
        let scheduled = count_in(&db, "SELECT count(*) FROM urls WHERE recrawl_at_ms IS NOT NULL").await;
        assert_eq!(report["recrawls_scheduled"].as_i64(), Some(scheduled));
        assert_eq!(report["next_recrawl_at"].is_string(), scheduled > 0, "{report}");
    }
}
