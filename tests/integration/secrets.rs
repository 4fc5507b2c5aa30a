//! Secrets never reach the logs or the database, through the real binary at
//! debug level: URL credentials (seeds, links, redirects), secret query
//! values in logs, and control characters from input.

use crate::server::TestServer;
use crate::util::{crawl_to_end, reader};

#[tokio::test]
async fn credentials_and_secret_query_values_are_never_logged_or_stored() {
    let server = TestServer::start_on("127.0.0.72");
    let dir = tempfile::tempdir().unwrap();
    let with_credentials = format!("http://alice:hunter2@{}/ok/seed", server.addr);
    let lines = [
        with_credentials,
        server.url("/ok/q?access_token=SECRET123&page=2"),
        server.url("/credlink"),
        server.url("/credredirect"),
        "junk \u{1b}[2J line".to_owned(),
    ];
    let (db, log) = crawl_to_end(dir.path(), &lines, &["--follow"], &[("RUST_LOG", "info,trawler=debug")]);

    for secret in ["hunter2", "SECRET123", "linkpass", "redirpass"] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    assert!(log.contains("access_token=***"), "{log}");
    assert!(!log.contains('\u{1b}'), "a control character reached the log");
    assert!(log.contains(r"junk \u{1b}[2J line"), "{log}");

    // Nothing in the database holds a password; the seed with credentials
    // is reported with them redacted, and links and redirects lost theirs.
    let pool = reader(&db).await;
    let everything: String = sqlx::query_scalar(
        "SELECT coalesce((SELECT group_concat(url, ' ') FROM urls), '') || ' ' ||
                coalesce((SELECT group_concat(coalesce(final_url, '') || coalesce(redirect_chain, '') ||
                                  coalesce(error_message, ''), ' ') FROM attempts), '') || ' ' ||
                coalesce((SELECT group_concat(text || reason, ' ') FROM input_errors), '') || ' ' ||
                coalesce((SELECT group_concat(url, ' ') FROM redirect_hops), '')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for secret in ["hunter2", "linkpass", "redirpass", "alice", "bob:", "carol"] {
        assert!(!everything.contains(secret), "{secret} is stored: {everything}");
    }
    let rejected: (String, String) = sqlx::query_as("SELECT text, reason FROM input_errors WHERE line = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rejected.0, format!("http://***@{}/ok/seed", server.addr));
    assert!(rejected.1.contains("credentials"), "{}", rejected.1);
    for path in ["/ok/linked", "/ok/redirected"] {
        assert_eq!(server.hits_of(path).len(), 1, "{path} was not fetched without its credentials");
    }
}
