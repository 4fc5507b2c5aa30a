//! `trawler export --format warc`, read back with an independent WARC
//! reader (the `warc` crate): record types, headers, digests and bodies
//! against what the server sent. Through the real binary, on both engines.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use warc::{RecordType, WarcHeader, WarcReader};

use crate::server::{GZIP_PLAIN, TestServer};
use crate::util::{spawn_trawler_with_env, wait_within};

/// One record as read back: its type, headers by lower-case name, block.
#[derive(Debug)]
struct ReadBack {
    kind: RecordType,
    headers: BTreeMap<String, String>,
    block: Vec<u8>,
}

/// Runs `trawler export --format warc` on `db` into `dir/crawl.warc.gz`,
/// reads it back, and returns the records and what the export logged.
fn export(dir: &Path, db: &Path, env: &[(&str, &str)]) -> (Vec<ReadBack>, String) {
    let mut child =
        spawn_trawler_with_env(&["export", "--format", "warc", "--db", db.to_str().unwrap()], env);
    let mut bytes = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut bytes).unwrap();
    let (status, _) = wait_within(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    let file = dir.join("crawl.warc.gz");
    std::fs::write(&file, &bytes).unwrap();
    let records = WarcReader::from_path_gzip(&file)
        .unwrap()
        .iter_records()
        .map(|record| {
            let record = record.expect("a valid WARC record");
            let (header, block) = record.into_raw_parts();
            let headers = header
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value).into_owned()))
                .collect();
            let kind = RecordType::from(
                header.headers.get(&WarcHeader::WarcType).map_or("", |v| std::str::from_utf8(v).unwrap()),
            );
            ReadBack { kind, headers, block }
        })
        .collect();
    (records, log)
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", data_encoding::BASE32.encode(&Sha256::digest(bytes)))
}

/// The body of an HTTP message block: what follows its head.
fn http_body(block: &[u8]) -> &[u8] {
    let at = block.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    &block[at..]
}

#[tokio::test]
async fn a_warc_holds_responses_requests_and_revisits_that_a_reader_checks() {
    for engine in crate::util::engines("a_warc_holds_responses_requests_and_revisits").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let (a, b, g, v) =
            (server.url("/ok/a"), server.url("/ok/b"), server.url("/gzip/g"), server.url("/versioned/v"));
        let lines = [a.clone(), b.clone(), g.clone(), v.clone()];
        let mut env = vec![
            ("TRAWLER_STORE__SAVE_BODY", "true"),
            ("TRAWLER_STORE__SAVE_HEADERS", "true"),
            ("TRAWLER_CRAWL__RECRAWL_AFTER", "1s"),
        ];
        let db = dir.path().join("crawl.db");
        let (first, _) = engine.crawl_to_end_with_env(dir.path(), &lines, &[], &env);
        crate::util::age_visits(&first, Duration::from_millis(1100)).await;
        engine.crawl_to_end_with_env(dir.path(), &lines, &[], &env);
        env.extend(engine.env());
        let (records, _) = export(dir.path(), &db, &env);

        assert_eq!(records[0].kind, RecordType::WarcInfo);
        let of = |uri: &str, kind: RecordType| -> Vec<&ReadBack> {
            records.iter().filter(|r| r.kind == kind && r.headers["warc-target-uri"] == uri).collect()
        };
        let ok_body = b"<!doctype html><title>ok</title><p>hello";
        // /ok/a and /ok/b serve one body: one response, the other copies revisits.
        let ok_responses: Vec<&ReadBack> =
            [&a, &b].iter().flat_map(|u| of(u, RecordType::Response)).collect();
        assert_eq!(ok_responses.len(), 1, "{records:#?}");
        let response = ok_responses[0];
        assert_eq!(http_body(&response.block), ok_body);
        assert_eq!(response.headers["warc-payload-digest"], digest(ok_body));
        assert_eq!(response.headers["warc-block-digest"], digest(&response.block));
        assert_eq!(response.headers["content-type"], "application/http;msgtype=response");
        assert!(response.block.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let ok_revisits: Vec<&ReadBack> = [&a, &b].iter().flat_map(|u| of(u, RecordType::Revisit)).collect();
        assert_eq!(ok_revisits.len(), 3, "the copy, and both URLs on the second visit");
        for revisit in &ok_revisits {
            assert!(revisit.headers["warc-profile"].ends_with("/revisit/identical-payload-digest"));
            assert_eq!(revisit.headers["warc-payload-digest"], digest(ok_body));
            assert_eq!(revisit.headers["warc-refers-to-target-uri"], response.headers["warc-target-uri"]);
            assert_eq!(revisit.headers["warc-refers-to"], response.headers["warc-record-id"]);
        }
        // Each response has its request, linked to it.
        let request = of(&response.headers["warc-target-uri"], RecordType::Request);
        assert_eq!(request.len(), 1);
        assert_eq!(request[0].headers["warc-concurrent-to"], response.headers["warc-record-id"]);
        assert!(
            request[0].block.starts_with(b"GET /ok/"),
            "{:?}",
            String::from_utf8_lossy(&request[0].block)
        );

        // A gzip-encoded body is archived decoded, with the headers that
        // describe it decoded (reqwest drops Content-Encoding as it decodes).
        let gzip = of(&g, RecordType::Response);
        assert_eq!(gzip.len(), 1);
        assert_eq!(http_body(&gzip[0].block), GZIP_PLAIN);
        assert_eq!(gzip[0].headers["warc-payload-digest"], digest(GZIP_PLAIN));
        let head =
            String::from_utf8_lossy(&gzip[0].block[..gzip[0].block.len() - GZIP_PLAIN.len()]).to_lowercase();
        assert!(!head.contains("\r\ncontent-encoding:"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", GZIP_PLAIN.len())), "{head}");

        // The 304 of the recrawl is a revisit of the first visit's response.
        let first = of(&v, RecordType::Response);
        let not_modified = of(&v, RecordType::Revisit);
        assert_eq!((first.len(), not_modified.len()), (1, 1));
        let revisit = not_modified[0];
        assert!(revisit.headers["warc-profile"].ends_with("/revisit/server-not-modified"));
        assert!(revisit.block.starts_with(b"HTTP/1.1 304 Not Modified\r\n"));
        assert_eq!(revisit.headers["warc-payload-digest"], first[0].headers["warc-payload-digest"]);
        assert_eq!(revisit.headers["warc-refers-to"], first[0].headers["warc-record-id"]);
        assert_eq!(http_body(&revisit.block), b"", "a revisit holds no payload");
        let kinds = |kind: RecordType| records.iter().filter(|r| r.kind == kind).count();
        assert_eq!(
            (kinds(RecordType::Response), kinds(RecordType::Request), kinds(RecordType::Revisit)),
            (3, 3, 5)
        );
    }
}

#[tokio::test]
async fn without_stored_bodies_a_warc_says_what_it_knows_and_so_does_the_log() {
    for engine in crate::util::engines("without_stored_bodies_a_warc_says_what_it_knows").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let url = server.url("/ok/plain");
        engine.crawl_to_end(dir.path(), std::slice::from_ref(&url), &[]);
        let (records, log) = export(dir.path(), &dir.path().join("crawl.db"), &engine.env());
        let kinds: Vec<&RecordType> = records.iter().map(|r| &r.kind).collect();
        assert_eq!(kinds, [&RecordType::WarcInfo, &RecordType::Metadata]);
        let fields = String::from_utf8_lossy(&records[1].block).into_owned();
        assert!(fields.contains("http-status: 200\r\n"), "{fields}");
        let sha = format!("{:x}", Sha256::digest(b"<!doctype html><title>ok</title><p>hello"));
        assert!(fields.contains(&format!("body-sha256: {sha}\r\n")), "{fields}");
        assert!(log.contains("store.save_body was off"), "{log}");
    }
}
