//! HTTPS: `fetch.ca_file` trusts a CA besides the system's, through the real
//! binary, against a local server whose certificate a test CA signed.

use std::time::Duration;

use crate::server::{Options, TestCa, TestServer};
use crate::util::{engines, output_of, result_in, spawn_crawl_in, wait_within};

#[tokio::test]
async fn a_ca_file_lets_the_crawl_trust_a_private_ca() {
    let test = "a_ca_file_lets_the_crawl_trust_a_private_ca";
    // Two crawls, each in a database of its own, on each engine.
    for (trusting, distrusting) in engines(test).await.into_iter().zip(engines(test).await) {
        let ca = TestCa::new();
        let server = TestServer::with_options(Options { tls: Some(ca.server.clone()), ..Options::default() });
        let url = format!("https://localhost:{}/ok/private", server.addr.port());

        let trusted = tempfile::tempdir().unwrap();
        let ca_file = trusted.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let toml = format!("[fetch]\nca_file = {:?}\n", ca_file.to_str().unwrap());
        let db = trusting.crawl_with_config(trusted.path(), std::slice::from_ref(&url), &toml);
        let row = result_in(&db, &url).await;
        assert_eq!((row.state.as_str(), row.http_status), ("done", Some(200)), "{:?}", row.error_message);

        // Without it the certificate is unknown: `tls`, not retried.
        let untrusted = tempfile::tempdir().unwrap();
        let db = distrusting.crawl_with_config(untrusted.path(), std::slice::from_ref(&url), "");
        let row = result_in(&db, &url).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref(), row.attempts), ("failed", Some("tls"), 1));
        assert_eq!(server.hits().len(), 1, "only the trusting crawl got a response");
    }
}

#[test]
fn a_ca_file_without_a_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, says) in [(&ca_file, "no PEM certificate"), (&missing, "No such file")] {
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, format!("[fetch]\nca_file = {:?}\n", path.to_str().unwrap())).unwrap();
        let config = ["--config", config.to_str().unwrap()];
        let (mut child, _) = spawn_crawl_in(dir.path(), &["http://127.0.0.1:9/".to_owned()], &config, &[]);
        let (status, _) = wait_within(&mut child, Duration::from_secs(30));
        let (_, log) = output_of(child);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains("fetch.ca_file") && log.contains(says), "{log}");
    }
}
