//! Reading seed URLs from a file or stdin into the frontier, streaming.
//!
//! One URL per line; blank lines and lines starting with `#` are skipped. A
//! line that is not an absolute http(s) URL is reported (line number, text,
//! why) in the log and in `input_errors`, and reading goes on. Memory stays
//! bounded whatever the input's size: lines are read into one reused buffer
//! capped at [`MAX_LINE_BYTES`], and URLs go to the store in batches of
//! [`BATCH`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fetch::parse_http_url;
use crate::job::NewUrl;
use crate::links;
use crate::redact::{self, ForLog};
use crate::stats::CrawlStats;
use crate::store::{InputError, Store, StoreError};

/// The longest line accepted, in bytes. Longer lines are rejected as a whole;
/// 8 KiB is the request-line limit of common servers (nginx's
/// `large_client_header_buffers`), so a longer URL could not be fetched anyway.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// URLs per store transaction.
const BATCH: usize = 1_000;

/// Invalid lines logged one by one; after that they go to the database only.
const MAX_LOGGED_ERRORS: u64 = 100;

/// Where seed URLs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    File(PathBuf),
    Stdin,
    /// URLs given as command-line arguments (`trawler enqueue URL...`).
    Arguments,
}

impl SeedSource {
    /// `-` means stdin, anything else a path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" { SeedSource::Stdin } else { SeedSource::File(PathBuf::from(arg)) }
    }

    /// The name recorded in `input_errors.source`.
    pub fn name(&self) -> String {
        match self {
            SeedSource::File(path) => path.display().to_string(),
            SeedSource::Stdin => "-".to_owned(),
            SeedSource::Arguments => "arguments".to_owned(),
        }
    }

    /// Opens the input. Errors: the file cannot be opened (reported before any
    /// crawling starts).
    pub async fn open(&self) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(match self {
            SeedSource::File(path) => Box::new(tokio::fs::File::open(path).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })?),
            SeedSource::Stdin => Box::new(tokio::io::stdin()),
            SeedSource::Arguments => Box::new(tokio::io::empty()),
        })
    }
}

/// What reading the input found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    /// Lines read, blank and comment lines included.
    pub lines: u64,
    /// Lines that named a URL (valid ones).
    pub urls: u64,
    /// URLs not in the database before.
    pub new_urls: u64,
    /// Lines rejected.
    pub invalid: u64,
}

/// A failure that stops ingestion: the input could not be read, or the store
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading {source_name}: {error}")]
    Read { source_name: String, error: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads `input` to its end (or until `stop`, committing what was read so
/// far), enqueueing valid URLs (normalized with `strip`, the crawl's
/// `discovery.strip_query_params`) and recording invalid lines. Adds each batch's new URLs to `stats.known` and
/// wakes the producer through `wake`.
pub async fn ingest<S: Store>(
    store: &S,
    source: &SeedSource,
    input: impl AsyncRead + Unpin,
    stop: &CancellationToken,
    wake: &Notify,
    stats: &Arc<CrawlStats>,
    strip: &[String],
) -> Result<IngestReport, IngestError> {
    let source_name = source.name();
    let mut lines = LineReader::new(BufReader::with_capacity(64 * 1024, input));
    let mut report = IngestReport::default();
    let mut urls = Vec::with_capacity(BATCH);
    let mut errors = Vec::new();
    loop {
        // Racing the stop token matters for a pipe that never closes: a stop
        // must not wait for the next line. A line cut off here is not lost:
        // the next run reads the input again.
        let line = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            line = lines.next_line() => line
                .map_err(|error| IngestError::Read { source_name: source_name.clone(), error })?,
        };
        let Some(line) = line else { break };
        report.lines += 1;
        match classify_line(line, strip) {
            Line::Skip => {}
            Line::Url(url) => {
                report.urls += 1;
                urls.push(url);
            }
            Line::Invalid { text, reason } => {
                report.invalid += 1;
                if report.invalid <= MAX_LOGGED_ERRORS {
                    tracing::warn!(source = %source_name, line = report.lines, text = %ForLog(&text), "skipping input line: {reason}");
                }
                if report.invalid == MAX_LOGGED_ERRORS {
                    tracing::warn!("further invalid lines are recorded in the input_errors table only");
                }
                errors.push(InputError { source: source_name.clone(), line: report.lines, text, reason });
            }
        }
        if urls.len() >= BATCH || errors.len() >= BATCH {
            flush(store, &mut urls, &mut errors, &mut report, wake, stats).await?;
            if stop.is_cancelled() {
                return Ok(report);
            }
        }
    }
    flush(store, &mut urls, &mut errors, &mut report, wake, stats).await?;
    Ok(report)
}

async fn flush<S: Store>(
    store: &S,
    urls: &mut Vec<NewUrl>,
    errors: &mut Vec<InputError>,
    report: &mut IngestReport,
    wake: &Notify,
    stats: &CrawlStats,
) -> Result<(), StoreError> {
    report.new_urls += add(store, urls, errors, wake, stats).await?;
    urls.clear();
    errors.clear();
    Ok(())
}

/// Records rejected seeds, enqueues the valid ones, counts the new ones in
/// `stats.known` and wakes the producer if there are any. Returns how many
/// were new. The one way seeds enter the frontier: from a file, stdin, the
/// command line or the HTTP API.
///
/// Errors: the store could not be written.
pub async fn add<S: Store>(
    store: &S,
    urls: &[NewUrl],
    errors: &[InputError],
    wake: &Notify,
    stats: &CrawlStats,
) -> Result<u64, StoreError> {
    if !errors.is_empty() {
        store.record_input_errors(errors).await?;
    }
    if urls.is_empty() {
        return Ok(0);
    }
    let new = store.enqueue(urls).await?;
    stats.known.fetch_add(new, Ordering::Relaxed);
    if new > 0 {
        wake.notify_one();
    }
    Ok(new)
}

enum Line {
    Skip,
    Url(NewUrl),
    Invalid { text: String, reason: String },
}

/// The longest excerpt of a rejected line kept in the report.
const MAX_REPORTED_CHARS: usize = 300;

fn classify_line(line: RawLine<'_>, strip: &[String]) -> Line {
    let bytes = match line {
        RawLine::Complete(bytes) => bytes,
        RawLine::TooLong(prefix) => {
            let text = String::from_utf8_lossy(prefix);
            let reason = format!("line longer than {MAX_LINE_BYTES} bytes");
            return Line::Invalid { text: excerpt(text.trim()), reason };
        }
    };
    match parse_seed(&String::from_utf8_lossy(bytes), strip) {
        Ok(None) => Line::Skip,
        Ok(Some(url)) => Line::Url(url),
        Err(SeedError { text, reason }) => Line::Invalid { text, reason },
    }
}

/// A seed that is not an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeedError {
    /// The text given (at most 300 characters of it).
    pub text: String,
    /// Why it was rejected.
    pub reason: String,
}

/// One seed given as text (a line of a file, an item of an API request),
/// trimmed, a leading byte-order mark (U+FEFF, which editors put at the
/// start of a file) skipped: `Ok(None)` for a blank line or a `#` comment,
/// `Ok(Some(url))` for an absolute http(s) URL of at most
/// [`MAX_LINE_BYTES`], normalized by [`links::normalize`] with `strip` (the
/// crawl's `discovery.strip_query_params`), as every URL of every source is.
///
/// Errors: [`SeedError`] for anything else.
pub fn parse_seed(text: &str, strip: &[String]) -> Result<Option<NewUrl>, SeedError> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    if text.len() > MAX_LINE_BYTES {
        return Err(SeedError { text: excerpt(text), reason: format!("longer than {MAX_LINE_BYTES} bytes") });
    }
    match parse_http_url(text) {
        Ok(url) if redact::has_credentials(&url) => Err(SeedError {
            text: excerpt(text),
            reason: "has credentials (user:password@), which are never stored or sent: \
                     not crawled"
                .to_owned(),
        }),
        Ok(mut url) => {
            links::normalize(&mut url, strip);
            let host = url.host_str().unwrap_or_default().to_owned();
            Ok(Some(NewUrl { url: url.into(), host, depth: 0, found_on: None }))
        }
        Err(reason) => Err(SeedError { text: excerpt(text), reason }),
    }
}

/// What is recorded of a rejected line: its start, credentials redacted,
/// and characters that would not show (controls, zero-width and other
/// format characters, a byte-order mark) escaped as `\u{feff}`, so that a
/// message never blames an invisible character silently.
fn excerpt(text: &str) -> String {
    let head: String = text.chars().take(MAX_REPORTED_CHARS).collect();
    let mut shown = String::with_capacity(head.len());
    for c in redact::credentials_in_text(&head).chars() {
        if is_invisible(c) {
            shown.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Control characters, and the Unicode format (Cf) characters that text
/// editors hide: soft hyphen, zero-width space/joiners, direction marks and
/// embeddings, word joiner and invisible operators, byte-order mark.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

enum RawLine<'a> {
    Complete(&'a [u8]),
    /// The first [`MAX_LINE_BYTES`] of a longer line; the rest was discarded.
    TooLong(&'a [u8]),
}

/// Splits a byte stream at `\n` into lines of at most [`MAX_LINE_BYTES`],
/// discarding the rest of a longer line instead of buffering it (tokio's
/// `read_line` would grow its buffer without bound).
struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: Vec::with_capacity(256) }
    }

    /// The next line, `None` at the end of input. Not cancel safe: a line
    /// partly read when the future is dropped is lost.
    async fn next_line(&mut self) -> std::io::Result<Option<RawLine<'_>>> {
        self.line.clear();
        let mut overflow = false;
        let mut read_any = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let (chunk, consumed, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            if chunk.len() > room {
                overflow = true;
            }
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.inner.consume(consumed);
            if end {
                break;
            }
        }
        if self.line.last() == Some(&b'\r') && !overflow {
            self.line.pop();
        }
        Ok(Some(if overflow { RawLine::TooLong(&self.line) } else { RawLine::Complete(&self.line) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<(bool, String)> {
        let mut reader = LineReader::new(BufReader::with_capacity(16, input));
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(match line {
                RawLine::Complete(b) => (true, String::from_utf8_lossy(b).into_owned()),
                RawLine::TooLong(b) => (false, String::from_utf8_lossy(b).len().to_string()),
            });
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_across_buffer_boundaries() {
        let got = lines_of(b"http://a.example/\r\n\n# c\nhttp://b.example/no-newline").await;
        let want = ["http://a.example/", "", "# c", "http://b.example/no-newline"];
        assert_eq!(got, want.iter().map(|s| (true, s.to_string())).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn overlong_lines_are_cut_and_the_next_line_survives() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 3];
        input.extend_from_slice(b"\nhttp://ok.example/\n");
        let got = lines_of(&input).await;
        assert_eq!(got, vec![(false, MAX_LINE_BYTES.to_string()), (true, "http://ok.example/".into())]);
    }

    #[test]
    fn classifies_lines() {
        let strip = crate::config::DiscoveryConfig::default().strip_query_params;
        let classify = |line: &[u8]| classify_line(RawLine::Complete(line), &strip);
        assert!(matches!(classify(b"  "), Line::Skip));
        assert!(matches!(classify(b"# note"), Line::Skip));
        match classify(b" http://Example.org/a#x ") {
            Line::Url(u) => {
                assert_eq!(u.url, "http://example.org/a");
                assert_eq!(u.host, "example.org");
            }
            _ => panic!("expected a URL"),
        }
        match classify(b"example.org/page") {
            Line::Invalid { text, reason } => {
                assert_eq!(text, "example.org/page");
                assert!(reason.contains("relative URL"), "{reason}");
            }
            _ => panic!("expected an invalid line"),
        }
        // A file saved with a byte-order mark: its first line is a URL.
        match classify("\u{feff}http://example.org/".as_bytes()) {
            Line::Url(u) => assert_eq!(u.url, "http://example.org/"),
            _ => panic!("expected a URL"),
        }
        // Seeds are normalized as discovered links are.
        match classify(b"http://example.org/%7euser/?utm_source=x&id=1") {
            Line::Url(u) => assert_eq!(u.url, "http://example.org/~user/?id=1"),
            _ => panic!("expected a URL"),
        }
        // Invisible characters are shown escaped.
        match classify("\u{200b}example.org/\u{7}page".as_bytes()) {
            Line::Invalid { text, .. } => assert_eq!(text, "\\u{200b}example.org/\\u{7}page"),
            _ => panic!("expected an invalid line"),
        }
    }
}
