//! Sitemaps (sitemaps.org protocol 0.9) as a source of seeds: `--sitemap URL`
//! and, when following links, the `Sitemap:` lines of robots.txt; and RSS,
//! Atom and JSON feeds (`--feed URL`), whose entries' links are seeds as a
//! user's sitemap's URLs are ([`feed`]: RSS 0.9x, 1.0, 2.0, Atom 1.0, JSON
//! Feed 1.x).
//!
//! A sitemap is either a `<urlset>` of `<url><loc>` entries, which are
//! enqueued at depth 0, or a `<sitemapindex>` of `<sitemap><loc>` entries,
//! which are fetched in turn. XML is read with `quick-xml`. Per the protocol a
//! sitemap lists at most 50,000 URLs (the rest are ignored) in at most 50 MB,
//! uncompressed: a gzipped file (`sitemap.xml.gz`, served as
//! `application/gzip` without `Content-Encoding`) is decompressed up to that
//! size. At most [`MAX_SITEMAPS`] sitemaps are fetched per crawl, so an index
//! loop or a huge index cannot run away. Memory per sitemap or feed is its
//! body, decompressed, plus the URLs kept: documents are read as streams of
//! events, never as trees.
//!
//! What a sitemap may take the crawl to depends on its [`Origin`]:
//! - one named by host A's robots.txt is fetched only if it is in the
//!   crawl's scope (`discovery.scope`) from A, as are the sitemaps its index
//!   names, and it may list URLs on A only (the protocol's cross-submission
//!   rule);
//! - the user's own (`--sitemap`) is fetched as given, and the sitemaps its
//!   index names must be in scope from it.
//!
//! Listed URLs then pass the rules links pass (scope from A, or from the
//! user's sitemap; allow/deny; trap guards) and are normalized as links are;
//! the others are counted in the log. Every request for a sitemap, redirect
//! hops included, passes the crawl's gate as a worker's does (`gate.rs`):
//! scope of where it was named, its host's lease, robots.txt, the host's turn
//! and concurrency, credentials of its origin, `fetch.deny_ips`; its answer
//! updates the host's backoff. A redirect out of scope is not followed.

mod feed;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::fetch::{Fetcher, parse_http_url};
use crate::gate::{Errand, Gate, Interrupted, Stops};
use crate::job::{DropReason, ErrorKind, NewUrl};
use crate::links::Discovery;
use crate::redact::ForLog;
use crate::stats::CrawlStats;
use crate::store::{Store, StoreError};

pub use feed::parse_feed;

/// URLs read from one sitemap (sitemaps.org: "no more than 50,000 URLs").
pub const MAX_URLS_PER_SITEMAP: usize = 50_000;

/// Uncompressed size of one sitemap (sitemaps.org: 50 MB).
pub const MAX_SITEMAP_BYTES: NonZeroU64 = NonZeroU64::new(50 * 1024 * 1024).unwrap();

/// Sitemaps fetched per crawl, indexes included.
pub const MAX_SITEMAPS: usize = 1_000;

/// What a sitemap document lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sitemap {
    /// Page URLs (`<urlset>`).
    Urls(Vec<String>),
    /// Further sitemaps (`<sitemapindex>`).
    Index(Vec<String>),
}

/// Parses a sitemap or sitemap index, keeping at most `max` `<loc>` values:
/// the rest of the document is not read (sitemaps.org: URLs past 50,000
/// are ignored).
///
/// Errors: malformed XML before the cap, or a root element that is neither
/// `urlset` nor `sitemapindex`.
pub fn parse(xml: &[u8], max: usize) -> Result<Sitemap, String> {
    let mut reader = Reader::from_reader(xml);
    let at = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| {
        format!("{e} (at byte {})", reader.error_position())
    };
    let mut index = None;
    let mut locs = Vec::new();
    let mut loc: Option<String> = None;
    while locs.len() < max {
        match reader.read_event().map_err(|e| at(&reader, &e))? {
            Event::Start(e) => match e.local_name().as_ref() {
                b"urlset" if index.is_none() => index = Some(false),
                b"sitemapindex" if index.is_none() => index = Some(true),
                b"loc" => loc = Some(String::new()),
                _ => {}
            },
            text @ (Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)) => {
                if let Some(loc) = loc.as_mut() {
                    append_text(&text, loc).map_err(|e| at(&reader, &e))?;
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"loc" => {
                if let Some(loc) = loc.take() {
                    let loc = loc.trim();
                    if !loc.is_empty() {
                        locs.push(loc.to_owned());
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match index {
        Some(true) => Ok(Sitemap::Index(locs)),
        Some(false) => Ok(Sitemap::Urls(locs)),
        None => Err("not a sitemap: the root is neither <urlset> nor <sitemapindex>".to_owned()),
    }
}

/// Appends the text an XML text, CDATA or reference event stands for to
/// `text`: character references and the five predefined entities resolved,
/// any other entity dropped (no DTD is read, so none can expand).
fn append_text(event: &Event<'_>, text: &mut String) -> Result<(), String> {
    match event {
        Event::Text(t) => text.push_str(&t.decode().map_err(|e| e.to_string())?),
        Event::CData(c) => text.push_str(&c.decode().map_err(|e| e.to_string())?),
        Event::GeneralRef(r) => {
            if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
                text.push(c);
            } else if let Some(s) = resolve_predefined_entity(&r.decode().map_err(|e| e.to_string())?) {
                text.push_str(s);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The gzip magic number (RFC 1952 §2.3.1). No XML or JSON document starts
/// with these bytes, so a body that does is a gzipped file whatever its
/// `Content-Type` says (`application/gzip`, `application/x-gzip`,
/// `application/octet-stream`).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A fetched sitemap or feed as a document: a gzipped file (`.xml.gz`,
/// served without `Content-Encoding`, so not decoded by the fetch; sitemaps.org
/// allows it) decompressed, at most `max` bytes of it; any other body as it is.
///
/// Errors: corrupt gzip, or more than `max` bytes once decompressed (the
/// protocol's 50 MB cap; a gzip bomb stops there).
pub fn unpacked(body: Vec<u8>, max: NonZeroU64) -> Result<Vec<u8>, String> {
    if !body.starts_with(&GZIP_MAGIC) {
        return Ok(body);
    }
    let mut document = Vec::new();
    // Multi-member: `cat a.gz b.gz` is one valid gzip file (RFC 1952 §2.2).
    flate2::read::MultiGzDecoder::new(body.as_slice())
        .take(max.get() + 1)
        .read_to_end(&mut document)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    if document.len() as u64 > max.get() {
        return Err(format!("over {} bytes once decompressed", max.get()));
    }
    Ok(document)
}

/// The URLs a sitemap at `sitemap_url` lists that are crawled (as
/// seeds, depth 0), and the others counted by reason: each is judged
/// from the robots.txt that named the sitemap (and must be on its host),
/// or, for the user's sitemaps, from the sitemap's own location.
pub fn judge(
    discovery: &Discovery,
    origin: &Origin,
    sitemap_url: &Url,
    locs: &[String],
) -> (Vec<NewUrl>, BTreeMap<DropReason, u64>) {
    let anchor = match origin {
        Origin::Robots(robots_url) => robots_url,
        Origin::User => sitemap_url,
    };
    let mut dropped = BTreeMap::new();
    let mut urls = Vec::new();
    for loc in locs {
        let Ok(url) = parse_http_url(loc) else {
            *dropped.entry(DropReason::InvalidUrl).or_default() += 1;
            continue;
        };
        if matches!(origin, Origin::Robots(r) if r.host_str() != url.host_str()) {
            // Another host's URL in a sitemap a robots.txt named: dropped
            // before the rules normalize it (cross-submission).
            *dropped.entry(DropReason::OutOfScope).or_default() += 1;
            continue;
        }
        match discovery.listed(anchor, url) {
            Ok(seed) => urls.push(seed),
            Err(reason) => *dropped.entry(reason).or_default() += 1,
        }
    }
    (urls, dropped)
}

/// Where a sitemap came from, which decides what it may list (sitemaps.org,
/// "Sitemap file location" and "Sitemaps & Cross Submits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Named by the user (`--sitemap`): fetched as the user's choice; the
    /// URLs it lists are judged from its own location.
    User,
    /// Named by a `Sitemap:` line of this robots.txt (its URL). The sitemap
    /// file must be in the crawl's scope from there, and it may list URLs of
    /// that robots.txt's host only (cross-submission).
    Robots(Url),
}

/// A sitemap to fetch.
#[derive(Debug, Clone)]
struct Queued {
    url: String,
    origin: Origin,
    /// The sitemap index that named it, if one did.
    index: Option<Url>,
    /// An RSS or Atom feed (`--feed`), not a sitemap.
    feed: bool,
}

impl Queued {
    /// The URL the sitemap file (and each redirect hop to it) must be in
    /// scope of: none for the user's own sitemap.
    fn anchor(&self) -> Option<&Url> {
        match &self.origin {
            Origin::Robots(robots_url) => Some(robots_url),
            Origin::User => self.index.as_ref(),
        }
    }
}

/// A handle for submitting sitemap URLs to the crawl's sitemap task.
#[derive(Clone)]
pub struct SitemapQueue {
    tx: mpsc::UnboundedSender<Queued>,
    /// Sitemaps submitted and not yet processed: the crawl is not idle
    /// while this is above zero.
    pending: Arc<AtomicU64>,
}

/// The receiving end of a [`SitemapQueue`], for [`SitemapTask::run`].
pub struct SitemapReceiver(mpsc::UnboundedReceiver<Queued>);

impl SitemapQueue {
    /// A queue and the receiving end for [`SitemapTask::run`].
    pub fn new() -> (Self, SitemapReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, pending: Arc::default() }, SitemapReceiver(rx))
    }

    /// Asks for `url` to be fetched and its URLs enqueued.
    pub fn submit(&self, url: String, origin: Origin) {
        self.send(Queued { url, origin, index: None, feed: false });
    }

    /// Asks for the feed at `url` (`--feed`) to be fetched and its entries'
    /// links enqueued, judged as a user's sitemap's URLs are.
    pub fn submit_feed(&self, url: String) {
        self.send(Queued { url, origin: Origin::User, index: None, feed: true });
    }

    fn send(&self, queued: Queued) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(queued).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Sitemaps submitted and not processed yet.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }
}

/// Everything the sitemap task needs.
pub struct SitemapTask<S> {
    pub store: Arc<S>,
    pub queue: SitemapQueue,
    /// What every request passes (scope of where the sitemap was named,
    /// lease, robots.txt, its host's turn, credentials), as a worker's do.
    pub gate: Arc<Gate>,
    /// The rules listed URLs pass (scope, allow/deny, trap guards), as
    /// links do, and sitemap files too (scope).
    pub discovery: Discovery,
    pub stats: Arc<CrawlStats>,
    /// Woken when URLs were enqueued.
    pub wake: Arc<Notify>,
    /// Return (the crawl is stopping or over).
    pub done: CancellationToken,
}

/// How long a sitemap whose host another daemon holds waits before it is
/// tried again.
const DEFER_HELD: std::time::Duration = std::time::Duration::from_secs(5);

impl<S: Store> SitemapTask<S> {
    /// Processes submitted sitemaps until `done`, fetching with `fetcher`
    /// (the crawl's client with sitemaps' own limits: [`Fetcher::sibling`]
    /// with [`MAX_SITEMAP_BYTES`], bodies kept). Errors: a store failure.
    pub async fn run(self, fetcher: Fetcher, mut rx: SitemapReceiver) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        loop {
            let queued = tokio::select! {
                _ = self.done.cancelled() => return Ok(()),
                queued = rx.0.recv() => match queued { Some(queued) => queued, None => return Ok(()) },
            };
            let result = if seen.len() < MAX_SITEMAPS && seen.insert(queued.url.clone()) {
                match self.process(&fetcher, queued).await {
                    Ok(Some(held)) => {
                        seen.remove(&held.url);
                        self.defer(held);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            self.queue.pending.fetch_sub(1, Ordering::SeqCst);
            self.wake.notify_one();
            result?;
        }
    }

    /// Sends `queued` back into the queue after [`DEFER_HELD`], counted as
    /// pending meanwhile (a batch crawl does not end before it is read).
    fn defer(&self, queued: Queued) {
        let (queue, done) = (self.queue.clone(), self.done.clone());
        queue.pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::select! {
                _ = done.cancelled() => {}
                _ = tokio::time::sleep(DEFER_HELD) => queue.send(queued),
            }
            queue.pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Fetches and reads one sitemap. Returns it when a host it needs is
    /// another daemon's, to be tried again later.
    async fn process(&self, fetcher: &Fetcher, queued: Queued) -> Result<Option<Queued>, StoreError> {
        let url = queued.url.as_str();
        let Ok(sitemap_url) = parse_http_url(url) else {
            tracing::warn!(url = %ForLog(url), "sitemap URL is not an absolute http(s) URL");
            return Ok(None);
        };
        // Requests stay in scope of where the sitemap was named; the user's
        // own sitemap goes anywhere, and its redirects too.
        let errand = Errand::Sitemap { anchor: queued.anchor() };
        let stops = Stops { waiting: &self.done, sending: &self.done };
        let fetched = match self.gate.walk(fetcher.begin(url, false), &errand, stops).await {
            Ok(walked) => walked.fetched,
            Err(Interrupted::Stopped) => return Ok(None),
            Err(Interrupted::HostHeld(host)) => {
                tracing::debug!(url = %ForLog(url), %host, "sitemap's host is another daemon's: tried again later");
                return Ok(Some(queued));
            }
            // A sitemap is not parked (only a job is): tried again later.
            Err(Interrupted::LeaseEnded | Interrupted::Park(_)) => return Ok(Some(queued)),
            Err(Interrupted::Store(e)) => return Err(e),
        };
        let (Some(200..=299), None, Some(body)) =
            (fetched.record.http_status, fetched.error, fetched.record.body)
        else {
            tracing::warn!(
                url = %ForLog(url),
                status = fetched.record.http_status,
                error = fetched.record.error_kind.map(ErrorKind::as_str),
                message = %ForLog(fetched.record.error_message.as_deref().unwrap_or_default()),
                "sitemap not fetched"
            );
            return Ok(None);
        };
        let what = if queued.feed { "feed" } else { "sitemap" };
        let body = match unpacked(body, MAX_SITEMAP_BYTES) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(url = %ForLog(url), "{what} not read: {e}");
                return Ok(None);
            }
        };
        if queued.feed {
            match parse_feed(&body, &sitemap_url, MAX_URLS_PER_SITEMAP) {
                Err(e) => tracing::warn!(url = %ForLog(url), "feed not parsed: {e}"),
                Ok(links) => {
                    let (urls, dropped) = judge(&self.discovery, &queued.origin, &sitemap_url, &links);
                    let new = self.store.enqueue(&urls).await?;
                    self.stats.known.fetch_add(new, Ordering::Relaxed);
                    let dropped: u64 = dropped.values().sum();
                    tracing::info!(url = %ForLog(url), entries = links.len(), enqueued = new, dropped, "feed");
                }
            }
            return Ok(None);
        }
        match parse(&body, MAX_URLS_PER_SITEMAP) {
            Err(e) => tracing::warn!(url = %ForLog(url), "sitemap not parsed: {e}"),
            Ok(Sitemap::Index(sitemaps)) => {
                tracing::info!(url = %ForLog(url), sitemaps = sitemaps.len(), "sitemap index");
                for child in sitemaps {
                    let index = Some(sitemap_url.clone());
                    self.queue.send(Queued { url: child, origin: queued.origin.clone(), index, feed: false });
                }
            }
            Ok(Sitemap::Urls(locs)) => {
                let listed = locs.len();
                let (urls, dropped) = judge(&self.discovery, &queued.origin, &sitemap_url, &locs);
                let new = self.store.enqueue(&urls).await?;
                self.stats.known.fetch_add(new, Ordering::Relaxed);
                let dropped: u64 = dropped.values().sum();
                tracing::info!(url = %ForLog(url), listed, enqueued = new, dropped, "sitemap");
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urlsets_and_indexes() {
        let urlset = br#"<?xml version="1.0" encoding="UTF-8"?>
            <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
              <url><loc> http://example.org/a?x=1&amp;y=2 </loc><lastmod>2026-01-01</lastmod></url>
              <url><loc><![CDATA[http://example.org/b]]></loc></url>
              <url><loc>http://example.org/&#99;</loc></url>
            </urlset>"#;
        assert_eq!(
            parse(urlset, 10).unwrap(),
            Sitemap::Urls(vec![
                "http://example.org/a?x=1&y=2".into(),
                "http://example.org/b".into(),
                "http://example.org/c".into()
            ])
        );
        assert_eq!(parse(urlset, 1).unwrap(), Sitemap::Urls(vec!["http://example.org/a?x=1&y=2".into()]));
        let index = br#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
            <sitemap><loc>http://example.org/s1.xml</loc></sitemap></sitemapindex>"#;
        assert_eq!(parse(index, 10).unwrap(), Sitemap::Index(vec!["http://example.org/s1.xml".into()]));
        assert!(parse(b"<html><body>not xml at all", 10).is_err());
        assert!(parse(b"<urlset><url><loc>x</url>", 10).is_err(), "mismatched tags");
        // Past the cap nothing is read: not even the syntax error after it.
        let capped = b"<urlset><url><loc>http://example.org/1</loc></url><url><loc>x</url>";
        assert_eq!(parse(capped, 1).unwrap(), Sitemap::Urls(vec!["http://example.org/1".into()]));
        // Declared encodings are honoured (`quick-xml`'s `encoding`).
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><urlset><url><loc>http://example.org/caf\xe9</loc></url></urlset>";
        assert_eq!(parse(latin1, 10).unwrap(), Sitemap::Urls(vec!["http://example.org/caf\u{e9}".into()]));
    }

    #[test]
    fn gzipped_files_are_decompressed_within_the_cap() {
        use std::io::Write;
        let gzip = |plain: &[u8]| {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(plain).unwrap();
            encoder.finish().unwrap()
        };
        let max = NonZeroU64::new(1024).unwrap();
        let xml = b"<urlset><url><loc>http://example.org/a</loc></url></urlset>".to_vec();
        assert_eq!(unpacked(xml.clone(), max).unwrap(), xml, "not gzip: as it is");
        assert_eq!(unpacked(gzip(&xml), max).unwrap(), xml);
        // Two members are one file (RFC 1952 §2.2).
        let (a, b) = xml.split_at(20);
        assert_eq!(unpacked([gzip(a), gzip(b)].concat(), max).unwrap(), xml);
        // A bomb stops at the cap: 1 MiB of zeros, 1 KiB allowed.
        let bomb = gzip(&vec![0; 1 << 20]);
        assert!(bomb.len() < 8 * 1024);
        assert!(unpacked(bomb, max).unwrap_err().contains("over 1024 bytes once decompressed"));
        assert!(unpacked(gzip(&[b'x'; 1024]), max).is_ok(), "exactly the cap is allowed");
        let mut corrupt = gzip(&xml);
        corrupt.truncate(corrupt.len() / 2);
        assert!(unpacked(corrupt, max).unwrap_err().starts_with("not valid gzip"));
    }

    #[test]
    fn listed_urls_obey_scope_patterns_and_cross_submission() {
        use crate::config::{DiscoveryConfig, Scope};
        let discovery = |scope| {
            Discovery::new(DiscoveryConfig {
                scope,
                deny: vec![r"/private/".to_owned()].try_into().unwrap(),
                ..DiscoveryConfig::default()
            })
        };
        let locs: Vec<String> = [
            "http://www.example.org/a?utm_source=feed&id=1",
            "http://www.example.org/private/x",
            "http://shop.example.org/b",
            "http://other.example/c",
            "not a url",
        ]
        .map(String::from)
        .to_vec();
        let urls = |judged: &(Vec<NewUrl>, BTreeMap<DropReason, u64>)| {
            judged.0.iter().map(|u| u.url.clone()).collect::<Vec<_>>()
        };
        let robots = Origin::Robots(Url::parse("http://www.example.org/robots.txt").unwrap());
        let elsewhere = Url::parse("http://cdn.example.net/sitemap.xml").unwrap();
        // Named by www.example.org's robots.txt: only its own URLs, whatever
        // the scope and wherever the sitemap file is (sitemaps.org cross
        // submission), normalized as links are.
        for scope in [Scope::Host, Scope::Domain, Scope::Any] {
            let judged = judge(&discovery(scope), &robots, &elsewhere, &locs);
            assert_eq!(urls(&judged), ["http://www.example.org/a?id=1"], "{scope:?}");
            assert_eq!(judged.1[&DropReason::Denied], 1);
            assert_eq!(judged.1[&DropReason::InvalidUrl], 1);
            assert_eq!(judged.1[&DropReason::OutOfScope], 2, "the other hosts' URLs, {scope:?}");
        }
        // The user's own sitemap: judged from where it is, by the scope.
        let own = Url::parse("http://www.example.org/sitemap.xml").unwrap();
        let judged = judge(&discovery(Scope::Domain), &Origin::User, &own, &locs);
        assert_eq!(urls(&judged), ["http://www.example.org/a?id=1", "http://shop.example.org/b"]);
        assert_eq!(judged.1[&DropReason::OutOfScope], 1);
        let judged = judge(&discovery(Scope::Any), &Origin::User, &own, &locs);
        assert_eq!(judged.0.len(), 3);
    }
}
