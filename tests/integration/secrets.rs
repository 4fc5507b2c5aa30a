//! Secrets never reach the logs or the database, through the real binary at
//! debug level: URL credentials (seeds, links, redirects), secret query
//! values in logs, and control characters from input.

use crate::server::TestServer;
use crate::util::{engines, strings_in};

#[tokio::test]
async fn credentials_and_secret_query_values_are_never_logged_or_stored() {
    for engine in engines("credentials_and_secret_query_values_are_never_logged_or_stored").await {
        let server = TestServer::start_on("127.0.0.72");
        let dir = tempfile::tempdir().unwrap();
        let with_credentials = format!("http://alice:hunter2@{}/ok/seed", server.addr);
        let lines = [
            with_credentials,
            server.url("/ok/q?access_token=SECRET123&page=2"),
            // A login redirect's target, itself carrying a token (issue 23).
            server.url(&format!("/ok/login?next={}", encoded(&server.url("/ok/cb?token=NESTED789")))),
            server.url("/credlink"),
            server.url("/credredirect"),
            "junk \u{1b}[2J line".to_owned(),
        ];
        let debug = [("RUST_LOG", "info,trawler=debug")];
        let (db, log) = engine.crawl_to_end_with_env(dir.path(), &lines, &["--follow"], &debug);

        for secret in ["hunter2", "SECRET123", "NESTED789", "linkpass", "redirpass"] {
            assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
        }
        assert!(log.contains("access_token=***"), "{log}");
        assert!(log.contains("%3Ftoken%3D***"), "{log}");
        assert!(!log.contains('\u{1b}'), "a control character reached the log");
        assert!(log.contains(r"junk \u{1b}[2J line"), "{log}");

        // Nothing in the database holds a password; the seed with credentials
        // is reported with them redacted, and links and redirects lost theirs.
        let stored = [
            "SELECT url FROM urls",
            "SELECT coalesce(final_url, '') || coalesce(CAST(redirect_chain AS TEXT), '') ||
                    coalesce(error_message, '') FROM attempts",
            "SELECT text || reason FROM input_errors",
            "SELECT url FROM redirect_hops",
        ];
        let mut everything = String::new();
        for sql in stored {
            everything += &strings_in(&db, sql).await.join(" ");
        }
        for secret in ["hunter2", "linkpass", "redirpass", "alice", "bob:", "carol"] {
            assert!(!everything.contains(secret), "{secret} is stored: {everything}");
        }
        let rejected = strings_in(&db, "SELECT text || ' ' || reason FROM input_errors WHERE line = 1").await;
        let (text, reason) = rejected[0].split_once(' ').unwrap();
        assert_eq!(text, format!("http://***@{}/ok/seed", server.addr));
        assert!(reason.contains("credentials"), "{reason}");
        for path in ["/ok/linked", "/ok/redirected"] {
            assert_eq!(server.hits_of(path).len(), 1, "{path} was not fetched without its credentials");
        }
    }
}

/// `text` percent-encoded as a query value.
fn encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
