//! The service's HTTP API: `POST /urls` and `GET /urls/{id}`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::TestServer;
use crate::util::{count_in, engines, eventually, limit_descriptors};

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn urls_posted_to_the_api_are_crawled_and_their_state_is_served() {
    for engine in engines("urls_posted_to_the_api_are_crawled_and_their_state_is_served").await {
        let server = TestServer::start_on("127.0.0.55");
        let dir = tempfile::tempdir().unwrap();
        let daemon = engine.start_daemon(dir.path(), "[api]\nlisten = \"127.0.0.1:0\"\n", &[]);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let endpoint = format!("http://{}/urls", daemon.api());

        // JSON: valid URLs are added (a repeat counts as known), a bad one is
        // reported with its position and does not spoil the rest.
        let (a, b) = (server.url("/ok/a"), server.url("/ok/b"));
        let response = http
            .post(&endpoint)
            .header("content-type", "application/json")
            .body(json!([a, b, "nope", a]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let added = json_of(response).await;
        assert_eq!(
            (added["received"].as_u64(), added["new"].as_u64(), added["known"].as_u64()),
            (Some(4), Some(2), Some(1))
        );
        assert_eq!(added["invalid"][0]["item"], 3);
        assert_eq!(added["invalid"][0]["text"], "nope");
        assert!(added["invalid"][0]["reason"].as_str().unwrap().contains("relative URL"), "{added}");
        let id_of_a = added["urls"][0]["id"].as_i64().unwrap();
        assert_eq!(added["urls"][0]["url"], a.as_str());
        assert_eq!(added["urls"][2]["id"].as_i64(), Some(id_of_a), "a repeated URL has its stored id");

        eventually("the posted URLs to be fetched", Duration::from_secs(5), async || {
            server.hits().len() == 2
        })
        .await;
        let state = eventually("the first URL's state to be done", Duration::from_secs(5), async || {
            let state = json_of(http.get(format!("{endpoint}/{id_of_a}")).send().await.unwrap()).await;
            if state["state"] == "done" { Ok(state) } else { Err(state) }
        })
        .await;
        assert_eq!(state["http_status"], 200);
        assert_eq!(state["url"], a.as_str());
        assert_eq!(http.get(format!("{endpoint}/999999")).send().await.unwrap().status(), 404);

        // Newline-separated text, with a comment and a blank line.
        let c = server.url("/ok/c");
        let text = format!("{c}\n\n# a comment\nftp://example.org/\n");
        let response = http.post(&endpoint).body(text).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let added = json_of(response).await;
        assert_eq!(
            (added["new"].as_u64(), added["invalid"][0]["item"].as_u64()),
            (Some(1), Some(4)),
            "{added}"
        );
        eventually("the third URL", Duration::from_secs(5), async || server.hits().len() == 3).await;

        // A body that says JSON and is not an array of strings adds nothing.
        let response = http
            .post(&endpoint)
            .header("content-type", "application/json")
            .body(r#"{"urls": ["http://127.0.0.55/ok/d"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body = json_of(response).await;
        assert!(body["error"].as_str().unwrap().contains("JSON array"), "{body}");

        let db = engine.reading(&daemon.db);
        daemon.stop();
        assert_eq!(count_in(&db, "SELECT count(*) FROM urls").await, 3);
        assert_eq!(count_in(&db, "SELECT count(*) FROM results WHERE error_kind = 'invalid_url'").await, 2);
    }
}

#[tokio::test]
async fn slow_clients_cannot_starve_the_service() {
    use std::io::{Read, Write};
    for engine in engines("slow_clients_cannot_starve_the_service").await {
        let server = TestServer::start_on("127.0.0.56");
        let dir = tempfile::tempdir().unwrap();
        let toml = "[api]\nlisten = \"127.0.0.1:0\"\nmax_connections = 8\nheader_timeout = \"1s\"\n";
        let daemon = engine.start_daemon(dir.path(), toml, &[]);
        let listen = daemon.api();
        // Fewer descriptors than the slow clients below: without a connection
        // cap, accepting them would leave none for fetches.
        limit_descriptors(daemon.child.id(), 96);

        // A slowloris: 120 connections (within the listen backlog of 128) that
        // send part of their headers, then nothing. Only the first 8 are
        // accepted; the rest wait in the backlog.
        let slow: Vec<std::net::TcpStream> = (0..120)
            .map(|_| {
                let mut conn = std::net::TcpStream::connect(&listen).unwrap();
                conn.write_all(b"POST /urls HTTP/1.1\r\nHost: trawler\r\n").unwrap();
                conn
            })
            .collect();

        // The admin endpoints and fetches carry on.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let health = http.get(format!("http://{}/healthz", daemon.admin)).send().await.unwrap();
        assert_eq!(health.status(), 200);
        daemon.enqueue(&[server.url("/ok/under-attack")]);
        eventually("the URL to be fetched", Duration::from_secs(10), async || server.hits().len() == 1).await;

        // The first slow client is cut off once its header time is up.
        let mut first = slow.into_iter().next().unwrap();
        first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let n = first.read(&mut buf).expect("the server closes a slow client's connection");
        assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{:?}", &buf[..n]);
        drop(first);

        let db = engine.reading(&daemon.db);
        daemon.stop();
        assert_eq!(count_in(&db, "SELECT count(*) FROM results WHERE state = 'done'").await, 1);
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts WHERE error_kind IS NOT NULL").await, 0);
    }
}
