//! `trawler export --format warc`: the stored responses as a WARC 1.1 file
//! (ISO 28500:2017), each record its own gzip member (a `.warc.gz` that
//! standard tools read and seek in), written one record at a time.
//!
//! Records, per attempt with a final response, oldest first, after one
//! `warcinfo`:
//! - a `response` (the status line, the headers, the decoded body) and the
//!   `request` it answered, when the body is stored (`store.save_body`);
//! - a `revisit` when the response confirmed content written earlier in the
//!   file: a 304 to a conditional recrawl (profile `server-not-modified`),
//!   or a body identical to one already written (`identical-payload-digest`);
//! - a `metadata` record (`application/warc-fields`: status, type, size,
//!   digest) when the body was not stored, so the file says what is known.
//!
//! trawler stores bodies decoded (`Content-Encoding` undone, and the HTTP
//! client drops that header as it decodes) and does not keep request
//! headers: a `response` block's headers get the decoded `Content-Length`
//! and lose `Transfer-Encoding` (kept as `X-Trawler-Original-...`), and a
//! `request` block has the method, target and `Host` only. Digests are
//! SHA-256 in base32 (`sha256:...`, WARC 1.1 §5.9 leaves the algorithm open;
//! base32 as is customary for `sha1`).

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::store::ArchivedAttempt;

/// WARC 1.1 revisit profiles (§6.7.2, §6.7.3).
const NOT_MODIFIED_PROFILE: &str = "http://netpreserve.org/warc/1.1/revisit/server-not-modified";
const IDENTICAL_PROFILE: &str = "http://netpreserve.org/warc/1.1/revisit/identical-payload-digest";

/// Headers of a stored response that describe the transfer, not the decoded
/// body a `response` record holds.
const TRANSFER_HEADERS: [&str; 3] = ["content-encoding", "transfer-encoding", "content-length"];

/// What an export wrote, by record type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub responses: u64,
    pub revisits: u64,
    /// Attempts whose body was not stored, written as `metadata` records.
    pub without_body: u64,
}

/// Where a payload was first written: what a revisit refers to.
struct Original {
    uri: String,
    date: String,
    record_id: String,
}

/// Writes WARC records to `out`, remembering each payload digest written
/// (about 150 bytes per distinct body) so that later copies are revisits.
pub struct WarcWriter<W: Write> {
    out: W,
    written: Written,
    originals: HashMap<String, Original>,
}

impl<W: Write> WarcWriter<W> {
    /// Starts a file with its `warcinfo` record, naming `software`.
    ///
    /// Errors: `out` cannot be written.
    pub fn new(mut out: W, software: &str, date: &str) -> std::io::Result<Self> {
        let fields = format!(
            "software: {software}\r\nformat: WARC File Format 1.1\r\nconformsTo: http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\n"
        );
        let headers = [
            ("WARC-Type", "warcinfo".to_owned()),
            ("WARC-Record-ID", record_id()),
            ("WARC-Date", date.to_owned()),
            ("Content-Type", "application/warc-fields".to_owned()),
        ];
        write_record(&mut out, &headers, fields.as_bytes())?;
        Ok(Self { out, written: Written::default(), originals: HashMap::new() })
    }

    /// Whether [`attempt`](Self::attempt) writes `attempt`'s body: a `done`
    /// attempt whose content is not in the file yet. Otherwise it writes a
    /// revisit or a metadata record, and reading the body would be wasted.
    pub fn needs_body(&self, attempt: &ArchivedAttempt) -> bool {
        attempt.outcome == "done"
            && attempt.body_sha256.as_ref().is_some_and(|sha| !self.originals.contains_key(sha))
    }

    /// Writes the records of one attempt; `body` is its decoded body, when
    /// stored and [`needs_body`](Self::needs_body) says it is wanted.
    ///
    /// Errors: `out` cannot be written.
    pub fn attempt(&mut self, attempt: &ArchivedAttempt, body: Option<&[u8]>) -> std::io::Result<()> {
        let uri = attempt.final_url.clone().unwrap_or_else(|| attempt.url.clone());
        let date = attempt.fetched_at.clone();
        let status = attempt.http_status.unwrap_or(0);
        let payload_digest = attempt.body_sha256.as_deref().and_then(base32_digest);
        let original = attempt.body_sha256.as_deref().and_then(|sha| self.originals.get(sha));
        let not_modified = attempt.outcome == "not_modified";
        // Content already in the file: a 304, or the same body again.
        if let Some(original) = original {
            let profile = if not_modified { NOT_MODIFIED_PROFILE } else { IDENTICAL_PROFILE };
            let block = http_head(status, attempt, None);
            let mut headers = vec![
                ("WARC-Type", "revisit".to_owned()),
                ("WARC-Record-ID", record_id()),
                ("WARC-Date", date),
                ("WARC-Target-URI", uri),
                ("WARC-Profile", profile.to_owned()),
                ("WARC-Refers-To-Target-URI", original.uri.clone()),
                ("WARC-Refers-To-Date", original.date.clone()),
                ("WARC-Refers-To", original.record_id.clone()),
                ("Content-Type", "application/http;msgtype=response".to_owned()),
            ];
            headers.extend(payload_digest.map(|d| ("WARC-Payload-Digest", d)));
            self.written.revisits += 1;
            return write_record(&mut self.out, &headers, &block);
        }
        let Some(body) = body.filter(|_| !not_modified) else {
            self.written.without_body += 1;
            return write_record(&mut self.out, &metadata_headers(&uri, &date), &metadata_fields(attempt));
        };
        let response_id = record_id();
        let mut block = http_head(status, attempt, Some(body.len()));
        block.extend_from_slice(body);
        let mut headers = vec![
            ("WARC-Type", "response".to_owned()),
            ("WARC-Record-ID", response_id.clone()),
            ("WARC-Date", date.clone()),
            ("WARC-Target-URI", uri.clone()),
            ("Content-Type", "application/http;msgtype=response".to_owned()),
        ];
        headers.extend(payload_digest.map(|d| ("WARC-Payload-Digest", d)));
        write_record(&mut self.out, &headers, &block)?;
        let request = [
            ("WARC-Type", "request".to_owned()),
            ("WARC-Record-ID", record_id()),
            ("WARC-Date", date.clone()),
            ("WARC-Target-URI", uri.clone()),
            ("WARC-Concurrent-To", response_id.clone()),
            ("Content-Type", "application/http;msgtype=request".to_owned()),
        ];
        write_record(&mut self.out, &request, &request_block(&uri))?;
        self.written.responses += 1;
        if let Some(sha) = &attempt.body_sha256 {
            self.originals.insert(sha.clone(), Original { uri, date, record_id: response_id });
        }
        Ok(())
    }

    /// Flushes `out` and says what was written.
    ///
    /// Errors: `out` cannot be written.
    pub fn finish(mut self) -> std::io::Result<Written> {
        self.out.flush()?;
        Ok(self.written)
    }
}

/// A new `WARC-Record-ID`: a random UUID URN (WARC 1.1 §5.2).
fn record_id() -> String {
    format!("<urn:uuid:{}>", uuid::Uuid::new_v4())
}

/// `sha256:` and the digest in base32, from its lower-case hex.
fn base32_digest(hex: &str) -> Option<String> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).ok()?;
    Some(format!("sha256:{}", data_encoding::BASE32.encode(&bytes)))
}

/// One record, as its own gzip member: the version line, `headers`,
/// `Content-Length` and `WARC-Block-Digest` of `block`, the block, and the
/// two CRLFs that end a record (WARC 1.1 §4).
fn write_record(out: &mut impl Write, headers: &[(&str, String)], block: &[u8]) -> std::io::Result<()> {
    let mut record = Vec::with_capacity(block.len() + 512);
    record.extend_from_slice(b"WARC/1.1\r\n");
    for (name, value) in headers {
        record.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let digest = data_encoding::BASE32.encode(&Sha256::digest(block));
    record.extend_from_slice(format!("WARC-Block-Digest: sha256:{digest}\r\n").as_bytes());
    record.extend_from_slice(format!("Content-Length: {}\r\n\r\n", block.len()).as_bytes());
    record.extend_from_slice(block);
    record.extend_from_slice(b"\r\n\r\n");
    let mut member = GzEncoder::new(Vec::with_capacity(record.len() / 2), Compression::default());
    member.write_all(&record)?;
    out.write_all(&member.finish()?)
}

/// The status line and headers of a response record's block (or a
/// revisit's, with no `body_len`): the stored headers when there are, else
/// its `Content-Type`; transfer headers replaced as the module says.
fn http_head(status: i64, attempt: &ArchivedAttempt, body_len: Option<usize>) -> Vec<u8> {
    let reason = u16::try_from(status).map_or("", crate::fetch::reason_phrase);
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    let stored: Option<Vec<(String, String)>> =
        attempt.headers.as_deref().and_then(|json| serde_json::from_str(json).ok());
    match stored {
        Some(headers) => {
            for (name, value) in headers {
                let lower = name.to_ascii_lowercase();
                if TRANSFER_HEADERS.contains(&lower.as_str()) {
                    if body_len.is_some() && lower != "content-length" {
                        head.push_str(&format!("X-Trawler-Original-{name}: {value}\r\n"));
                    }
                    continue;
                }
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        None => {
            if let Some(content_type) = &attempt.content_type {
                head.push_str(&format!("Content-Type: {content_type}\r\n"));
            }
        }
    }
    if let Some(len) = body_len {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// What a request record can say: the method, the target and `Host`.
fn request_block(uri: &str) -> Vec<u8> {
    let (target, host) = match url::Url::parse(uri) {
        Ok(url) => {
            let target = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => String::new(),
            };
            (target, host)
        }
        Err(_) => ("/".to_owned(), String::new()),
    };
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

fn metadata_headers(uri: &str, date: &str) -> Vec<(&'static str, String)> {
    vec![
        ("WARC-Type", "metadata".to_owned()),
        ("WARC-Record-ID", record_id()),
        ("WARC-Date", date.to_owned()),
        ("WARC-Target-URI", uri.to_owned()),
        ("Content-Type", "application/warc-fields".to_owned()),
    ]
}

/// A response whose body was not stored, as `application/warc-fields`.
fn metadata_fields(attempt: &ArchivedAttempt) -> Vec<u8> {
    let mut fields = String::from("body-stored: no (store.save_body was off)\r\n");
    let mut field = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            fields.push_str(&format!("{name}: {value}\r\n"));
        }
    };
    field("outcome", Some(attempt.outcome.clone()));
    field("http-status", attempt.http_status.map(|s| s.to_string()));
    field("content-type", attempt.content_type.clone());
    field("body-bytes", attempt.body_bytes.map(|n| n.to_string()));
    field("body-sha256", attempt.body_sha256.clone());
    fields.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_base32_sha256() {
        // SHA-256 of the empty string.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            base32_digest(hex).as_deref(),
            Some("sha256:4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ====")
        );
        assert_eq!(base32_digest("not hex"), None);
    }

    #[test]
    fn a_request_block_names_the_target_and_host() {
        let block = request_block("http://127.0.0.1:8080/a/b?c=d");
        assert_eq!(block, b"GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
    }
}
