//! `trawler run` while it runs: SIGHUP reloads, and recrawl_after.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::server::TestServer;
use crate::util::{Stderr, scalar, signal, spawn_trawler, spawn_trawler_with_env, wait_until, wait_within};

/// A `trawler run` on a config file of the test's, with its notify socket and
/// stderr.
struct Daemon {
    child: Child,
    stderr: Stderr,
    notify: UnixDatagram,
    config: PathBuf,
    db: PathBuf,
}

impl Daemon {
    /// Starts the service with `toml` as its config file and waits for `READY=1`.
    fn start(dir: &Path, toml: &str) -> Self {
        let (config, db) = (dir.join("trawler.toml"), dir.join("service.db"));
        std::fs::write(&config, toml).unwrap();
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let mut child = spawn_trawler_with_env(
            &["run", "--config", config.to_str().unwrap(), "--db", db.to_str().unwrap()],
            &[
                ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
                ("TRAWLER_ADMIN__LISTEN", admin.as_str()),
                // The log level comes from the config file, as in production.
                ("RUST_LOG", ""),
            ],
        );
        let stderr = Stderr::collect(&mut child);
        let daemon = Self { child, stderr, notify, config, db };
        assert!(daemon.next_message().contains("READY=1"));
        daemon
    }

    fn next_message(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).expect("a notification within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Writes `toml` as the config file and sends SIGHUP; returns once the
    /// reload is over (`READY=1` again).
    fn reload(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
        signal(&self.child, libc::SIGHUP);
        assert!(self.next_message().contains("RELOADING=1"));
        assert!(self.next_message().contains("READY=1"));
    }

    fn enqueue(&self, urls: &[String]) {
        let mut args = vec!["enqueue", "--db", self.db.to_str().unwrap()];
        args.extend(urls.iter().map(String::as_str));
        let mut enqueue = spawn_trawler(&args);
        assert_eq!(wait_within(&mut enqueue, Duration::from_secs(10)).0.code(), Some(0));
    }

    fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let (status, _) = wait_within(&mut self.child, Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{}", self.stderr.text());
    }
}

#[tokio::test]
async fn sighup_applies_rate_and_log_level_and_rejects_a_bad_config() {
    let server = TestServer::start_on("127.0.0.52");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), "[crawl]\nrate = 1.0\n");
    let urls: Vec<String> = (0..30).map(|i| server.url(&format!("/ok/{i}"))).collect();
    daemon.enqueue(&urls);

    // At 1 request/s the first requests are a second apart.
    wait_until(Duration::from_secs(5), "two fetches at the old rate", || server.hits().len() >= 2);
    let hits = server.hits();
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(900), "{hits:?}");
    assert!(!daemon.stderr.text().contains("fetched"), "debug events are off at level info");

    // A faster rate, debug logging, and a setting that needs a restart.
    daemon.reload("[crawl]\nrate = 1000.0\nconcurrency = 4\n[log]\nlevel = \"info,trawler=debug\"\n");
    let log = daemon.stderr.wait_for("configuration reloaded");
    assert!(log.contains("changed=crawl.rate, log.level"), "{log}");
    assert!(log.contains("`crawl.concurrency` changed; it takes effect after a restart"), "{log}");
    wait_until(Duration::from_secs(5), "the rest at the new rate", || server.hits().len() == 30);
    // One span per fetch, with the URL's id, host and attempt.
    let log = daemon.stderr.wait_for("fetched");
    let fetch_line = log.lines().find(|l| l.contains("fetched")).unwrap();
    for field in ["fetch{", "url_id=", "host=127.0.0.52", "attempt=1"] {
        assert!(fetch_line.contains(field), "{field} missing in {fetch_line}");
    }

    // A config that does not validate, then one that does not parse: both
    // rejected, and the running settings stay (the fast rate keeps working).
    daemon.reload("[crawl]\nrate = -5.0\n");
    let log = daemon.stderr.wait_for("configuration rejected");
    assert!(log.contains("crawl.rate"), "{log}");
    daemon.reload("[crawl\nrate = 1\n");
    wait_until(Duration::from_secs(5), "the second rejection", || {
        daemon.stderr.text().matches("configuration rejected").count() == 2
    });
    let more: Vec<String> = (30..40).map(|i| server.url(&format!("/ok/{i}"))).collect();
    daemon.enqueue(&more);
    wait_until(Duration::from_secs(5), "new URLs at the kept rate", || server.hits().len() == 40);
    assert!(daemon.child.try_wait().unwrap().is_none(), "a bad config must not stop the service");

    daemon.stop();
}

#[tokio::test]
async fn finished_urls_are_fetched_again_when_recrawl_after_says_so() {
    let (often, never) = (TestServer::start_on("127.0.0.53"), TestServer::start_on("127.0.0.54"));
    let dir = tempfile::tempdir().unwrap();
    let per_host = "[hosts.\"127.0.0.53\"]\nrecrawl_after = \"1s\"\n";
    let daemon = Daemon::start(dir.path(), per_host);
    daemon.enqueue(&[often.url("/ok/page"), never.url("/ok/page")]);

    // Only the host with a recrawl_after is fetched again, as a new visit.
    wait_until(Duration::from_secs(8), "a recrawl of 127.0.0.53", || often.hits().len() >= 3);
    assert_eq!(never.hits().len(), 1);
    let db = daemon.db.clone();
    let visits = "SELECT count(*) FROM attempts a JOIN urls u ON u.id = a.url_id
                  WHERE u.host = '127.0.0.53' AND a.attempt = 1";
    assert!(scalar(&db, visits).await >= 2, "each visit starts at attempt 1 and keeps the earlier ones");
    assert!(scalar(&db, "SELECT recrawls FROM urls WHERE host = '127.0.0.53'").await >= 1);

    // A reload that sets the default recrawls the other host too.
    daemon.reload(&format!("[crawl]\nrecrawl_after = \"1s\"\n{per_host}"));
    wait_until(Duration::from_secs(8), "a recrawl of 127.0.0.54", || never.hits().len() >= 2);
    daemon.stop();
    let states = "SELECT count(*) FROM results WHERE state IN ('done', 'queued')";
    assert_eq!(scalar(&db, states).await, 2, "a stop between visits loses nothing");
}
