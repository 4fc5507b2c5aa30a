//! Faults an operator meets after weeks of running: another process holding
//! the database's write lock, a task that fails, a full disk. The real
//! binary, local servers; each test waits on facts (rows, log lines,
//! notifications), never on time alone.

use std::time::Duration;

use crate::server::TestServer;
use crate::util::{
    Daemon, HeldLock, Stderr, count_in, engines, eventually, output_of, result_in, scalar, signal,
    spawn_crawl, spawn_crawl_with_env, spawn_trawler_with_env, wait_within, write_input,
};

#[tokio::test]
async fn a_database_locked_by_another_writer_is_waited_out_and_the_crawl_goes_on() {
    for engine in engines("a_database_locked_by_another_writer_is_waited_out_and_the_crawl_goes_on").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = (0..60).map(|i| server.url(&format!("/slow/20/{i}"))).collect();
        let input = write_input(dir.path(), &urls);
        let db = dir.path().join("crawl.db");
        let mut child = spawn_crawl_with_env(
            input.to_str().unwrap(),
            &db,
            &["--concurrency", "4"],
            &[&[("TRAWLER_STORE__BUSY_WARNING", "1s")], &engine.env()[..]].concat(),
        );
        let stderr = Stderr::collect(&mut child);
        eventually("a few results", Duration::from_secs(20), async || server.hits().len() >= 8).await;

        // An analyst's long write: the crawl must wait, say so, and go on after.
        let lock = engine.hold_write_lock(&db).await;
        let log = stderr.wait_for("database locked by another writer for").await;
        assert!(child.try_wait().unwrap().is_none(), "the crawl ended under the lock:\n{log}");
        stderr.wait_for("database locked by another writer for 2 s").await;
        lock.release().await;

        let (status, _) = wait_within(&mut child, Duration::from_secs(30));
        let log = stderr.all();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(log.contains("database writable again after"), "{log}");
        assert!(!log.contains("ERROR"), "{log}");
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM results WHERE state = 'done'").await,
            60
        );
        let per_path = server.hits_per_path();
        assert_eq!(per_path.len(), 60);
        assert!(per_path.values().all(|&n| n == 1), "a URL was fetched twice: {per_path:?}");
    }
}

#[tokio::test]
async fn healthz_and_the_watchdog_tell_a_lock_wait_from_a_stall() {
    for engine in engines("healthz_and_the_watchdog_tell_a_lock_wait_from_a_stall").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        // A watchdog of 2 s: WATCHDOG=1 every second while the pipeline is alive.
        let daemon = engine.start_daemon(
            dir.path(),
            "[store]\nbusy_warning = \"1s\"\n",
            &[("WATCHDOG_USEC", "2000000")],
        );
        assert_eq!(daemon.healthz().await.0, 200);
        // Idle by design (nothing queued): the watchdog is still fed.
        assert!(daemon.next_message().contains("WATCHDOG=1"));
        assert!(daemon.next_message().contains("WATCHDOG=1"));

        // The recrawl sweep writes every second, so a held lock blocks writes
        // even with nothing to fetch; add work too.
        daemon.enqueue(&[server.url("/ok/before"), server.url("/ok/during")]);
        let lock = engine.hold_write_lock(&daemon.db).await;
        let health = daemon.healthz_until("503", |status, _| status == 503).await;
        assert!(health.contains("blocked by another process's lock"), "{health}");
        if let HeldLock::Postgres(_, pid) = &lock {
            // The warning names the session to end, if it must be.
            daemon
                .stderr
                .wait_for(&format!("blocked by session {pid} (user postgres, idle in transaction"))
                .await;
        }
        // Waiting out a lock is a known, reported cause: no restart.
        assert!(daemon.next_message().contains("WATCHDOG=1"));

        lock.release().await;
        daemon.healthz_until("200", |status, _| status == 200).await;
        daemon.stderr.wait_for("database writable again after").await;
        let db = engine.reading(&daemon.db);
        eventually("the URLs to be fetched", Duration::from_secs(10), async || server.hits().len() == 2)
            .await;
        daemon.stop();
        assert_eq!(count_in(&db, "SELECT count(*) FROM results WHERE state = 'done'").await, 2);
    }
}

#[tokio::test]
async fn a_task_that_fails_stops_the_crawl_at_once_with_its_error_last_and_exit_1() {
    for engine in engines("a_task_that_fails_stops_the_crawl_at_once_with_its_error_last_and_exit_1").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawl.db");
        let urls: Vec<String> = (0..20).map(|i| server.url(&format!("/slow/200/{i}"))).collect();
        let mut args = vec!["enqueue", "--db", db.to_str().unwrap()];
        args.extend(urls.iter().map(String::as_str));
        let mut enqueue = spawn_trawler_with_env(&args, &engine.env());
        assert_eq!(wait_within(&mut enqueue, Duration::from_secs(10)).0.code(), Some(0));

        // The input is a directory: it opens, and the first read fails.
        let unreadable = dir.path().join("not-a-file");
        std::fs::create_dir(&unreadable).unwrap();
        let flags = ["--concurrency", "2", "--grace", "20s"];
        let mut child = spawn_crawl_with_env(unreadable.to_str().unwrap(), &db, &flags, &engine.env());
        let (status, _) = wait_within(&mut child, Duration::from_secs(15));
        let (_, stderr) = output_of(child);
        assert_eq!(status.code(), Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains("ERROR") && last.contains("not-a-file"),
            "the error is not the last line:\n{stderr}"
        );
        // It stopped instead of crawling on, and kept every fetch it made.
        let done = count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'done'").await;
        assert!(done < 20, "the crawl went on after its input failed");
        assert_eq!(done, server.hits().len() as i64, "{stderr}");
        assert_eq!(
            count_in(&engine.reading(&db), "SELECT count(*) FROM urls WHERE state = 'queued'").await,
            20 - done
        );
    }
}

#[tokio::test]
async fn a_full_disk_ends_the_crawl_with_a_clear_error_and_a_rerun_finishes_it() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (full, saved) = (dir.path().join("small-disk"), dir.path().join("saved"));
    std::fs::create_dir_all(&full).unwrap();
    std::fs::create_dir_all(&saved).unwrap();
    let urls: Vec<String> = (0..60).map(|i| server.url(&format!("/big/65536?{i}"))).collect();
    let input = write_input(dir.path(), &urls);
    // A 1 MiB file system of the test's own (a private mount namespace, so
    // nothing outside sees it), filled by stored bodies of 64 KiB each. The
    // database is copied out before the namespace goes away.
    let script = r#"mount -t tmpfs -o size=1m tmpfs "$1" || exit 99
        "$2" crawl "$3" --db "$1/crawl.db" --concurrency 4 --grace 2s; rc=$?
        cp "$1"/crawl.db* "$4"/; exit $rc"#;
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .args([
            full.as_os_str(),
            env!("CARGO_BIN_EXE_trawler").as_ref(),
            input.as_os_str(),
            saved.as_os_str(),
        ])
        .env("RUST_LOG", "info")
        .env("TRAWLER_STORE__SAVE_BODY", "true")
        .env("TRAWLER_POLITENESS__PER_HOST_DELAY", "0s")
        .env("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "4")
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(99), "cannot mount a tmpfs here:\n{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("disk full: free space and rerun"), "not the last line:\n{stderr}");
    assert!(!stderr.contains("transaction depth"), "the failed transaction was reused:\n{stderr}");

    // What was committed is intact, and a rerun with room finishes the rest.
    let db = saved.join("crawl.db");
    let committed = scalar(&db, "SELECT count(*) FROM urls WHERE state = 'done'").await;
    assert!(committed < 60, "the disk never filled up");
    let mut rerun = spawn_crawl(input.to_str().unwrap(), &db, &[]);
    let (status, _) = wait_within(&mut rerun, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", output_of(rerun).1);
    assert_eq!(scalar(&db, "SELECT count(*) FROM results WHERE state = 'done'").await, 60);
    assert_eq!(scalar(&db, "SELECT count(*) FROM attempts WHERE body_bytes = 65536").await, 60);
}

#[tokio::test]
async fn the_wal_is_truncated_while_the_service_runs_unless_a_reader_pins_it() {
    let server = TestServer::start_on("127.0.0.73");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), "[store]\ncheckpoint_every = \"1s\"\n");
    let wal = dir.path().join("service.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let urls = |from: usize| (from..from + 30).map(|i| server.url(&format!("/ok/{i}"))).collect::<Vec<_>>();

    daemon.enqueue(&urls(0));
    eventually("30 fetches", Duration::from_secs(10), async || server.hits().len() == 30).await;
    eventually("the WAL to be truncated", Duration::from_secs(10), async || wal_size() == 0).await;

    // An analyst's open read transaction pins the WAL: it may not be reset.
    let analyst = crate::util::reader(&daemon.db).await;
    let mut snapshot = analyst.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM urls").fetch_one(&mut *snapshot).await.unwrap();
    daemon.enqueue(&urls(30));
    eventually("30 more fetches", Duration::from_secs(10), async || server.hits().len() == 60).await;
    daemon.stderr.wait_for("a reader is keeping the WAL from being truncated").await;
    assert!(wal_size() > 0);

    snapshot.rollback().await.unwrap();
    analyst.close().await;
    daemon.stderr.wait_for("WAL checkpointed and truncated again").await;
    eventually("the WAL to be truncated", Duration::from_secs(10), async || wal_size() == 0).await;
    daemon.stop();
}

#[tokio::test]
async fn a_descriptor_limit_too_low_for_the_concurrency_is_refused_at_start_with_the_numbers() {
    use std::os::unix::process::CommandExt;
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), &[server.url("/ok/never")]);
    let db = dir.path().join("crawl.db");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"));
    command
        .args(["crawl", input.to_str().unwrap(), "--db", db.to_str().unwrap(), "--concurrency", "64"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Soft and hard 100: the hard limit cannot be raised from inside.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 100, rlim_max: 100 };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut child = command.spawn().unwrap();
    let (status, _) = wait_within(&mut child, Duration::from_secs(10));
    let (_, stderr) = output_of(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("needs about 192 open files (crawl.concurrency = 64")
            && last.contains("may open only 100 (RLIMIT_NOFILE, hard limit 100)")
            && last.contains("LimitNOFILE="),
        "{stderr}"
    );
    assert!(server.hits().is_empty(), "a request was made");
}

#[tokio::test]
async fn running_out_of_descriptors_defers_requests_without_blaming_the_host_or_counting_attempts() {
    for engine in
        engines("running_out_of_descriptors_defers_requests_without_blaming_the_host_or_counting_attempts")
            .await
    {
        let server = TestServer::start_on("127.0.0.76");
        let dir = tempfile::tempdir().unwrap();
        let toml =
            "[crawl]\nconcurrency = 8\n[politeness]\nper_host_concurrency = 8\nper_host_delay = \"0s\"\n";
        let daemon = engine.start_daemon(dir.path(), toml, &[]);
        let db = engine.reading(&daemon.db);
        let pid = daemon.child.id();
        // Warm up: robots.txt and one page fetched, every database connection open.
        daemon.enqueue(&[server.url("/ok/warm")]);
        wait_for_done(&db, 1, &daemon).await;

        // Leave one spare descriptor (and the one or two of the idle pooled
        // connection, closed within a second): eight fetches at once cannot all
        // open a socket.
        let hard = crate::util::hard_descriptor_limit(pid);
        crate::util::set_descriptor_limit(pid, crate::util::open_descriptors(pid) + 1, hard);
        let urls: Vec<String> = (0..12).map(|i| server.url(&format!("/slow/300/{i}"))).collect();
        daemon.enqueue(&urls);
        daemon.stderr.wait_for("OUT OF FILE DESCRIPTORS").await;

        crate::util::set_descriptor_limit(pid, hard.min(4096), hard);
        wait_for_done(&db, 13, &daemon).await;
        let log = daemon.stderr.text();
        // Not an attempt: one row per URL, and every URL done on its first.
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts").await, 13, "{log}");
        assert_eq!(count_in(&db, "SELECT CAST(max(attempts) AS BIGINT) FROM urls").await, 1, "{log}");
        // Not the host's fault.
        assert!(!log.contains("host backs off"), "{log}");
        assert_eq!(count_in(&db, "SELECT max(backoff_until_ms) FROM hosts").await, 0, "{log}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let metrics =
            http.get(format!("http://{}/metrics", daemon.admin)).send().await.unwrap().text().await.unwrap();
        let deferred = metrics
            .lines()
            .find_map(|l| l.strip_prefix("trawler_requests_deferred_total "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        assert!(deferred.is_some_and(|n| n > 0), "{metrics}");
        daemon.stop();
    }
}

/// Waits (up to 30 s) until `n` URLs of the database are done; panics
/// with what `daemon` logged otherwise.
async fn wait_for_done(db: &trawler::config::Config, n: i64, daemon: &Daemon) {
    eventually(&format!("{n} URLs done"), Duration::from_secs(30), async || {
        let done = count_in(db, "SELECT count(*) FROM urls WHERE state = 'done'").await;
        if done >= n { Ok(()) } else { Err(format!("{done} done; the log:\n{}", daemon.stderr.text())) }
    })
    .await
}

#[tokio::test]
async fn an_idle_connection_is_kept_for_twice_its_hosts_delay_not_for_minutes() {
    for engine in engines("an_idle_connection_is_kept_for_twice_its_hosts_delay_not_for_minutes").await {
        let server = TestServer::start_on("127.0.0.77");
        let dir = tempfile::tempdir().unwrap();
        // The tests' environment sets a short delay; this one needs its own.
        let delay = [("TRAWLER_POLITENESS__PER_HOST_DELAY", "2s")];
        let daemon = engine.start_daemon(dir.path(), "", &delay);
        let db = engine.reading(&daemon.db);
        daemon.enqueue(&[server.url("/ok/once")]);
        wait_for_done(&db, 1, &daemon).await;
        let open = || crate::util::connections_to(server.addr);
        assert_eq!(open(), 1, "the fetch's connection is pooled");
        // Kept for the host's next turn (4 s: hyper-util's reaper closes it
        // within one more period), not for 1 s, nor for reqwest's default 90 s.
        let idle = std::time::Instant::now();
        eventually("the idle connection closed", Duration::from_secs(15), async || open() == 0).await;
        assert!(idle.elapsed() >= Duration::from_secs(3), "closed after {:?}", idle.elapsed());
        daemon.stop();
    }
}

/// A stop while another process's lock holds the results back waits the
/// grace period, then gives up on the lock and exits 1, saying so: no lock
/// can keep the process from exiting. Nothing committed is lost, and the
/// URL whose result could not be written is fetched again by the next run.
#[tokio::test]
async fn a_stop_under_a_lock_gives_up_after_the_grace_period() {
    for engine in engines("a_stop_under_a_lock_gives_up_after_the_grace_period").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = engine.start_daemon(
            dir.path(),
            "[store]\nbusy_warning = \"1s\"\n[shutdown]\ngrace = \"1s\"\n",
            &[],
        );
        // The lock is taken while the page is on its way: its result waits.
        let url = server.url("/slow/1500/held-back");
        daemon.enqueue(std::slice::from_ref(&url));
        eventually("the request", Duration::from_secs(10), async || server.hits().len() == 1).await;
        let lock = engine.hold_write_lock(&daemon.db).await;
        daemon.stderr.wait_for("database locked by another writer for").await;

        signal(&daemon.child, libc::SIGTERM);
        let (status, took) = wait_within(&mut daemon.child, Duration::from_secs(15));
        let log = daemon.stderr.all();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(log.lines().last().unwrap_or_default().contains("gave up waiting to stop"), "{log}");
        lock.release().await;

        let db = engine.reading(&daemon.db);
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts").await, 0, "no result was written");
        let input = write_input(dir.path(), &[]);
        let mut rerun = spawn_crawl_with_env(input.to_str().unwrap(), &daemon.db, &[], &engine.env());
        let (status, _) = wait_within(&mut rerun, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", output_of(rerun).1);
        assert_eq!(result_in(&db, &url).await.state, "done");
        assert_eq!(server.hits().len(), 2, "fetched again, once");
    }
}
