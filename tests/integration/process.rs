//! The real `trawler` binary as an operator runs it: signals, crashes, a
//! second instance, bad settings.

use std::time::Duration;

use crate::server::TestServer;
use crate::util::{
    Stderr, column_in, count_in, engines, eventually, output_of, scalar, signal, spawn_crawl,
    spawn_crawl_with_env, spawn_trawler_with_env, wait_within, write_input,
};

fn slow_urls(server: &TestServer, n: usize, ms: u64) -> Vec<String> {
    (0..n).map(|i| server.url(&format!("/slow/{ms}/{i}"))).collect()
}

#[tokio::test]
async fn sigterm_mid_crawl_exits_0_loses_nothing_and_a_rerun_completes() {
    for engine in engines("sigterm_mid_crawl_exits_0_loses_nothing_and_a_rerun_completes").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let input = write_input(dir.path(), &slow_urls(&server, 150, 40));
        let db = dir.path().join("crawl.db");
        let (input, flags) = (input.to_str().unwrap(), ["--concurrency", "4", "--grace", "3s"]);

        let mut child = spawn_crawl_with_env(input, &db, &flags, &engine.env());
        eventually("20 fetches", Duration::from_secs(20), async || server.hits().len() >= 20).await;
        signal(&child, libc::SIGTERM);
        let (status, _) = wait_within(&mut child, Duration::from_secs(4));
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
        let (stdout, _) = output_of(child);
        assert!(stdout.contains("crawl stopped"), "{stdout}");

        let done = count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'done'").await;
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'in_flight'").await,
            0
        );
        // Every fetch the server answered before the stop was committed.
        assert_eq!(done, server.hits().len() as i64);
        assert!(done < 150);

        let mut rerun = spawn_crawl_with_env(input, &db, &flags, &engine.env());
        let (status, _) = wait_within(&mut rerun, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0));
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM results WHERE state = 'done'").await,
            150
        );
        let per_path = server.hits_per_path();
        assert_eq!(per_path.len(), 150);
        assert!(per_path.values().all(|&n| n == 1), "a finished URL was fetched again");
    }
}

#[tokio::test]
async fn a_second_signal_cancels_fetches_and_exits_130() {
    for engine in engines("a_second_signal_cancels_fetches_and_exits_130").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let input = write_input(dir.path(), &slow_urls(&server, 10, 20_000));
        let db = dir.path().join("crawl.db");
        let flags = ["--concurrency", "3", "--timeout", "60s", "--grace", "60s"];
        let mut child = spawn_crawl_with_env(input.to_str().unwrap(), &db, &flags, &engine.env());
        let stderr = Stderr::collect(&mut child);
        eventually("3 fetches in flight", Duration::from_secs(20), async || server.hits().len() >= 3).await;
        signal(&child, libc::SIGINT);
        // The second signal once the first is taken, as a second.
        stderr.wait_for("SIGINT: stopping").await;
        signal(&child, libc::SIGTERM);
        let (status, took) = wait_within(&mut child, Duration::from_secs(5));
        assert_eq!(status.code(), Some(130));
        assert!(took < Duration::from_secs(3), "took {took:?}");
        // Nothing finished, nothing stranded: all ten are queued for the next run.
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'queued'").await,
            10
        );
        assert_eq!(count_in(&engine.reading(&db), "SELECT count(*) FROM attempts").await, 0);
    }
}

/// On PostgreSQL a killed daemon's hosts wait for their leases to lapse:
/// `postgres::after_kill_9_a_rerun_on_postgres_crawls_every_url_once_more_at_most`
/// crawls with a short lease.
#[tokio::test]
async fn after_kill_9_a_rerun_crawls_every_url() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &slow_urls(&server, 100, 30));
    let db = dir.path().join("crawl.db");
    let input = input.to_str().unwrap();
    let mut child = spawn_crawl(input, &db, &["--concurrency", "4"]);
    eventually("30 fetches", Duration::from_secs(20), async || server.hits().len() >= 30).await;
    signal(&child, libc::SIGKILL);
    wait_within(&mut child, Duration::from_secs(5));
    let committed = scalar(&db, "SELECT count(*) FROM urls WHERE state = 'done'").await;
    assert!(committed > 0);

    let mut rerun = spawn_crawl(input, &db, &["--concurrency", "4"]);
    let (status, _) = wait_within(&mut rerun, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let (_, stderr) = output_of(rerun);
    assert!(stderr.contains("requeued URLs left in flight"), "{stderr}");
    assert_eq!(scalar(&db, "SELECT count(*) FROM urls WHERE state = 'done'").await, 100);
    // Only URLs in flight at the kill may have been fetched twice.
    let per_path = server.hits_per_path();
    assert_eq!(per_path.len(), 100);
    let twice = per_path.values().filter(|&&n| n > 1).count();
    assert!(twice <= 4 * 2 + 4, "{twice} URLs fetched twice");
}

#[tokio::test]
async fn a_second_trawler_on_the_same_database_is_refused() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &slow_urls(&server, 20, 200));
    let db = dir.path().join("crawl.db");
    let input = input.to_str().unwrap();
    let mut first = spawn_crawl(input, &db, &["--concurrency", "2"]);
    eventually("the first crawler to fetch", Duration::from_secs(20), async || !server.hits().is_empty())
        .await;

    let mut second = spawn_crawl(input, &db, &["--concurrency", "2"]);
    let (status, _) = wait_within(&mut second, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let (_, stderr) = output_of(second);
    assert!(stderr.contains("in use by another trawler"), "{stderr}");
    // Readers are not locked out while the crawl writes.
    assert_eq!(scalar(&db, "SELECT count(*) FROM urls").await, 20);

    signal(&first, libc::SIGTERM);
    let (status, _) = wait_within(&mut first, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_settings_exit_1_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &["http://127.0.0.1:9/".to_owned()]);
    let db = dir.path().join("crawl.db");
    let child = spawn_crawl(input.to_str().unwrap(), &db, &["--concurrency", "0"]);
    let (_, stderr) = output_of(child);
    assert!(stderr.contains("crawl.concurrency"), "{stderr}");
    assert!(!db.exists(), "nothing is created for a refused config");

    let config = dir.path().join("trawler.toml");
    std::fs::write(&config, "[fetch]\ntimeout = \"fast\"\n").unwrap();
    let mut child =
        crate::util::spawn_trawler(&["crawl", input.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    let (status, _) = wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let (_, stderr) = output_of(child);
    assert!(stderr.contains("fetch.timeout") && stderr.contains("trawler.toml"), "{stderr}");

    let mut child = spawn_crawl(dir.path().join("missing.txt").to_str().unwrap(), &db, &[]);
    let (status, _) = wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let (_, stderr) = output_of(child);
    assert!(stderr.contains("missing.txt"), "{stderr}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &[server.url("/ok/1"), "bogus".to_owned()]);
    let db = dir.path().join("crawl.db");
    let mut child = spawn_crawl(input.to_str().unwrap(), &db, &["--log-format", "json"]);
    let (status, _) = wait_within(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let (stdout, stderr) = output_of(child);
    assert!(stdout.contains("1 done (1 × 2xx), 0 failed"), "{stdout}");
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().any(|l| l["level"] == "WARN" && l["line"] == 2), "{stderr}");
}

#[tokio::test]
async fn urls_can_come_from_stdin() {
    use std::io::Write;
    for engine in engines("urls_can_come_from_stdin").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawl.db");
        let mut child = spawn_crawl_with_env("-", &db, &[], &engine.env());
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}\n{}\nnope", server.url("/ok/a"), server.url("/ok/b")).unwrap();
        drop(stdin);
        let (status, _) = wait_within(&mut child, Duration::from_secs(20));
        assert_eq!(status.code(), Some(0));
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM results WHERE state = 'done'").await,
            2
        );
        assert_eq!(
            count_in(
                &engine.reading(&db),
                "SELECT count(*) FROM input_errors WHERE source = '-' AND line = 3"
            )
            .await,
            1
        );
    }
}

#[tokio::test]
async fn sigterm_stops_a_crawl_fed_by_a_pipe_that_stays_open() {
    use std::io::Write;
    for engine in engines("sigterm_stops_a_crawl_fed_by_a_pipe_that_stays_open").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawl.db");
        let mut child = spawn_crawl_with_env("-", &db, &["--grace", "2s"], &engine.env());
        let stderr = Stderr::collect(&mut child);
        let mut stdin = child.stdin.take().unwrap();
        // A line that is no URL after it: its warning, logged as the line
        // is read, says that the URL before it has been read too.
        writeln!(stdin, "{}\nnot a url", server.url("/ok/fed")).unwrap();
        stdin.flush().unwrap();
        // URLs are enqueued in batches of 1,000 or at the end of input, so this
        // one waits in memory; the stop must end the crawl promptly and keep it.
        // Signal once the crawl has read it (a URL still in the pipe, or read
        // but not yet taken from the line reader, is not yet ours; a loaded
        // start on PostgreSQL may take a while).
        stderr.wait_for_within("skipping input line", Duration::from_secs(20)).await;
        signal(&child, libc::SIGTERM);
        let (status, _) = wait_within(&mut child, Duration::from_secs(3));
        assert_eq!(status.code(), Some(0));
        drop(stdin);
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'queued'").await,
            1
        );
    }
}

#[tokio::test]
async fn stats_and_export_match_the_database() {
    for engine in engines("stats_and_export_match_the_database").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            server.url("/ok/1"),
            server.url("/ok/2"),
            server.url("/status/404/x"),
            server.url("/loop/a"),
            "junk".into(),
        ];
        let input = write_input(dir.path(), &lines);
        let db = dir.path().join("crawl.db");
        let mut crawl = spawn_crawl_with_env(input.to_str().unwrap(), &db, &[], &engine.env());
        assert_eq!(wait_within(&mut crawl, Duration::from_secs(20)).0.code(), Some(0));
        let db_arg = db.to_str().unwrap();

        let mut stats = spawn_trawler_with_env(&["stats", "--json", "--db", db_arg], &engine.env());
        assert_eq!(wait_within(&mut stats, Duration::from_secs(10)).0.code(), Some(0));
        let (stdout, _) = output_of(stats);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((report["done"].as_i64(), report["failed"].as_i64()), (Some(3), Some(1)));
        assert_eq!(report["invalid_lines"].as_i64(), Some(1));
        assert_eq!(
            report["outcomes"],
            serde_json::json!([["2xx", 2], ["4xx", 1], ["invalid_url", 1], ["redirect_loop", 1]])
        );
        assert_eq!(
            report["attempts_last_hour"].as_i64(),
            Some(count_in(&engine.reading(&db), "SELECT count(*) FROM attempts").await)
        );
        // The quantiles are the attempts' elapsed times at n × q, rounded
        // down, on both engines (PostgreSQL's p95 of five was none).
        let mut elapsed: Vec<i64> = column_in(&engine.reading(&db), "SELECT elapsed_ms FROM attempts").await;
        elapsed.sort();
        let at = |q: f64| elapsed.get((elapsed.len() as f64 * q) as usize).copied();
        assert!(elapsed.len() >= 4, "{elapsed:?}");
        assert_eq!(
            (report["latency_p50_ms"].as_i64(), report["latency_p95_ms"].as_i64()),
            (at(0.5), at(0.95)),
            "{elapsed:?}"
        );

        let mut csv = spawn_trawler_with_env(&["export", "--format", "csv", "--db", db_arg], &engine.env());
        assert_eq!(wait_within(&mut csv, Duration::from_secs(10)).0.code(), Some(0));
        let (stdout, _) = output_of(csv);
        let rows: Vec<&str> = stdout.lines().collect();
        assert!(rows[0].starts_with("url_id,url,host,state,http_status"), "{}", rows[0]);
        assert_eq!(
            rows.len() as i64 - 1,
            count_in(&engine.reading(&db), "SELECT count(*) FROM results").await
        );

        let mut failed =
            spawn_trawler_with_env(&["export", "--state", "failed", "--db", db_arg], &engine.env());
        assert_eq!(wait_within(&mut failed, Duration::from_secs(10)).0.code(), Some(0));
        let (stdout, _) = output_of(failed);
        let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 2, "the redirect loop and the rejected line");
        assert!(rows.iter().all(|r| r["state"] == "failed"));
    }
}

#[tokio::test]
async fn a_reader_without_write_access_can_read_a_stopped_crawls_database() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &[server.url("/ok/1"), server.url("/ok/2"), "junk".to_owned()]);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("crawl.db");
    let mut crawl = spawn_crawl(input.to_str().unwrap(), &db, &[]);
    assert_eq!(wait_within(&mut crawl, Duration::from_secs(20)).0.code(), Some(0));

    // The analyst can read the directory and the file, and write neither: as
    // root, by running as `nobody`; otherwise the directory is made
    // read-only for us.
    for path in [dir.path(), data.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let as_root = unsafe { libc::geteuid() } == 0;
    if !as_root {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let reader = |args: &[&str]| {
        let mut command = match as_root {
            true => {
                let mut c = std::process::Command::new("setpriv");
                c.args([
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    env!("CARGO_BIN_EXE_trawler"),
                ]);
                c
            }
            false => std::process::Command::new(env!("CARGO_BIN_EXE_trawler")),
        };
        command.args(args).args(["--db", db.to_str().unwrap()]).output().expect("run trawler as a reader")
    };
    let stats = reader(&["stats", "--json"]);
    let stderr = String::from_utf8_lossy(&stats.stderr);
    assert!(stats.status.success(), "trawler stats as a reader: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!((report["done"].as_i64(), report["invalid_lines"].as_i64()), (Some(2), Some(1)));
    let export = reader(&["export", "--format", "csv"]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 1 + 3);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `trawler export … | head`: a reader that goes away ends the export
/// quietly with exit 0, as `sqlite3` or `grep` end.
#[tokio::test]
async fn export_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    for engine in engines("export_into_a_closed_pipe_ends_quietly").await {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawl.db");
        // Queued URLs are exported too: far more than a pipe's buffer.
        let urls: Vec<String> = (0..5000).map(|i| format!("http://127.0.0.1:9/never/fetched/{i}")).collect();
        let input = write_input(dir.path(), &urls);
        let mut enqueue = spawn_trawler_with_env(
            &["enqueue", "--db", db.to_str().unwrap(), "--file", input.to_str().unwrap()],
            &engine.env(),
        );
        assert_eq!(wait_within(&mut enqueue, Duration::from_secs(20)).0.code(), Some(0));
        for format in ["jsonl", "csv"] {
            let mut export = spawn_trawler_with_env(
                &["export", "--db", db.to_str().unwrap(), "--format", format],
                &engine.env(),
            );
            let mut head = [0u8; 1024];
            export.stdout.as_mut().unwrap().read_exact(&mut head).unwrap();
            drop(export.stdout.take());
            let (status, _) = wait_within(&mut export, Duration::from_secs(20));
            let (_, log) = output_of(export);
            assert_eq!(status.code(), Some(0), "{format}: {log}");
            assert!(!log.contains("ERROR") && !log.to_lowercase().contains("broken pipe"), "{format}: {log}");
        }
    }
}

/// The progress line's `in_flight` counts fetches the workers are on, at
/// most `--concurrency`; jobs claimed and waiting in memory are `claimed`.
#[tokio::test]
async fn progress_counts_fetches_in_flight_apart_from_claimed_jobs() {
    for engine in engines("progress_counts_fetches_in_flight_apart_from_claimed_jobs").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        // 2 workers, 300 ms a page: 6 s, past the first progress line at 5 s.
        let input = write_input(dir.path(), &slow_urls(&server, 40, 300));
        let db = dir.path().join("crawl.db");
        let mut child =
            spawn_crawl_with_env(input.to_str().unwrap(), &db, &["--concurrency", "2"], &engine.env());
        let (status, _) = wait_within(&mut child, Duration::from_secs(60));
        let (_, log) = output_of(child);
        assert_eq!(status.code(), Some(0), "{log}");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(" progress ")).collect();
        assert!(!lines.is_empty(), "{log}");
        for line in lines {
            let field = |name: &str| -> u64 {
                let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name}: {line}"));
                line[at + name.len() + 2..].split(' ').next().unwrap().parse().unwrap()
            };
            assert!(field("in_flight") <= 2, "{line}");
            assert!(field("claimed") >= field("in_flight"), "{line}");
        }
    }
}
