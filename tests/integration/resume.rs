//! Input handling and resuming: bad lines, duplicates, a stopped run resumed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use trawler::Shutdown;
use trawler::seeds::SeedSource;

use crate::server::TestServer;
use crate::util::{count_in, crawl_lines, engines, eventually, result_in, strings_in, write_input};

#[tokio::test]
async fn malformed_lines_are_reported_and_the_rest_is_crawled() {
    for engine in engines("malformed_lines_are_reported_and_the_rest_is_crawled").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let lines = vec![
            "# seeds for the test".to_owned(),
            server.url("/ok/first"),
            "".to_owned(),
            "not a url".to_owned(),
            "ftp://127.0.0.1/file".to_owned(),
            server.url("/ok/second"),
        ];
        let summary = crawl_lines(&config, &lines).await;
        assert_eq!((summary.done, summary.input_lines, summary.input_invalid), (2, 6, 2));

        let errors = strings_in(
            &config,
            "SELECT source || '|' || line || '|' || text || '|' || reason FROM input_errors",
        )
        .await;
        let mut errors: Vec<Vec<&str>> = errors.iter().map(|e| e.split('|').collect()).collect();
        errors.sort_by_key(|e| e[1].parse::<u32>().unwrap());
        let source = dir.path().join("urls.txt").display().to_string();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0][..3], [source.as_str(), "4", "not a url"]);
        assert!(errors[0][3].contains("relative URL"), "{}", errors[0][3]);
        assert_eq!(errors[1][1..3], ["5", "ftp://127.0.0.1/file"]);
        assert!(errors[1][3].contains("ftp"), "{}", errors[1][3]);

        // The results view shows rejected lines as failed with invalid_url.
        let row = result_in(&config, "not a url").await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("invalid_url"), 0)
        );
        assert_eq!(result_in(&config, &server.url("/ok/second")).await.state, "done");
    }
}

#[tokio::test]
async fn the_same_url_given_twice_is_fetched_once() {
    for engine in engines("the_same_url_given_twice_is_fetched_once").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let url = server.url("/ok/dup");
        let shouty = url.replace("http://", "HTTP://");
        let lines = vec![url.clone(), url.clone(), format!("{url}#section"), shouty];
        crawl_lines(&config, &lines).await;

        assert_eq!(server.hits_of("/ok/dup").len(), 1);
        assert_eq!(count_in(&config, "SELECT count(*) FROM urls").await, 1);
        assert_eq!(count_in(&config, "SELECT count(*) FROM results").await, 1);
    }
}

#[tokio::test]
async fn a_stopped_crawl_resumes_without_fetching_finished_urls_again() {
    for engine in engines("a_stopped_crawl_resumes_without_fetching_finished_urls_again").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.crawl.concurrency = NonZeroU32::new(4).unwrap();
        let lines: Vec<String> = (0..120).map(|i| server.url(&format!("/slow/20/{i}"))).collect();
        let input = write_input(dir.path(), &lines);

        // First run: stop it once some URLs are done.
        let shutdown = Shutdown::new();
        let run = {
            let (config, input, shutdown) = (config.clone(), input.clone(), shutdown.clone());
            tokio::spawn(
                async move { trawler::crawl(&config, Some(SeedSource::File(input)), &shutdown).await },
            )
        };
        eventually("20 fetches", Duration::from_secs(20), async || server.hits().len() >= 20).await;
        shutdown.stop();
        let first = run.await.unwrap().unwrap();
        assert!(first.stopped);
        assert!(first.done >= 20 && first.done < 120, "{first:?}");
        assert_eq!(count_in(&config, "SELECT count(*) FROM urls WHERE state = 'in_flight'").await, 0);
        // Everything the server answered was committed: nothing lost.
        assert_eq!(
            count_in(&config, "SELECT count(*) FROM urls WHERE state = 'done'").await,
            server.hits().len() as i64
        );

        // Second run, same command: the rest, and only the rest.
        let second = crawl_lines(&config, &lines).await;
        assert!(!second.stopped);
        assert_eq!(first.done + second.done, 120);
        assert_eq!(count_in(&config, "SELECT count(*) FROM urls WHERE state = 'done'").await, 120);
        let mut per_path: HashMap<String, usize> = HashMap::new();
        for hit in server.hits() {
            *per_path.entry(hit.path).or_default() += 1;
        }
        assert_eq!(per_path.len(), 120);
        assert!(per_path.values().all(|&n| n == 1), "a URL was fetched twice");

        // Third run with one new URL: only that one is fetched.
        let mut more = lines.clone();
        more.push(server.url("/ok/new"));
        let third = crawl_lines(&config, &more).await;
        assert_eq!((third.done, third.attempts), (1, 1));
        assert_eq!(server.hits().len(), 121);
    }
}

#[tokio::test]
async fn a_crawl_without_input_on_a_finished_database_does_nothing() {
    for engine in engines("a_crawl_without_input_on_a_finished_database_does_nothing").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let lines: Vec<String> = (0..5).map(|i| server.url(&format!("/ok/{i}"))).collect();
        crawl_lines(&config, &lines).await;
        // Without input, a finished database is already complete: nothing to do.
        let summary = trawler::crawl(&config, None, &Shutdown::new()).await.unwrap();
        assert_eq!((summary.done, summary.attempts, summary.counts.done), (0, 0, 5));
    }
}

#[tokio::test]
async fn a_crawl_budget_ends_the_run_gracefully_and_a_rerun_goes_on() {
    use crate::util::{output_of, spawn_crawl_in, wait_within};
    for engine in engines("a_crawl_budget_ends_the_run_gracefully_and_a_rerun_goes_on").await {
        for (budget, limit, said) in [
            ("TRAWLER_CRAWL__MAX_BYTES", "20", "crawl.max_bytes (20 bytes) reached"),
            ("TRAWLER_CRAWL__MAX_DURATION", "1s", "crawl.max_duration (1s) reached"),
        ] {
            let server = TestServer::start();
            let dir = tempfile::tempdir().unwrap();
            // Each page is "finally" (7 bytes), 100 ms after it is asked for,
            // one at a time: 30 take 3 s.
            let lines: Vec<String> = (0..30).map(|i| server.url(&format!("/slow/100/{i}"))).collect();
            let mut env = engine.env();
            env.push((budget, limit));
            let (mut child, db) = spawn_crawl_in(dir.path(), &lines, &["--concurrency", "1"], &env);
            let (status, took) = wait_within(&mut child, Duration::from_secs(20));
            let (summary, log) = output_of(child);
            assert_eq!(status.code(), Some(0), "{log}");
            assert!(summary.starts_with("crawl stopped after") && summary.contains(said), "{summary}");
            assert!(log.contains(said), "{log}");
            assert!(took < Duration::from_secs(3), "{took:?}");
            // One PostgreSQL database serves both budgets: count this server's.
            let db = engine.reading(&db);
            let mine = server.url("/");
            let in_state = |state: &str| {
                format!("SELECT count(*) FROM results WHERE state = '{state}' AND url LIKE '{mine}%'")
            };
            let (done, queued) =
                (count_in(&db, &in_state("done")).await, count_in(&db, &in_state("queued")).await);
            assert!((3..25).contains(&done), "{budget}: {done} done");
            assert_eq!(done + queued, 30, "nothing lost");

            // The budget is per run: the same command goes on from there.
            let (db, _) = engine.crawl_to_end(dir.path(), &lines, &["--concurrency", "8"]);
            assert_eq!(count_in(&db, &in_state("done")).await, 30);
            assert!(server.hits_per_path().values().all(|n| *n == 1), "no page fetched twice");
        }
    }
}
