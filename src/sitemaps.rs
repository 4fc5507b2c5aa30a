//! Sitemaps (sitemaps.org protocol 0.9) as a source of seeds: `--sitemap URL`
//! and, when following links, the `Sitemap:` lines of robots.txt.
//!
//! A sitemap is either a `<urlset>` of `<url><loc>` entries, which are
//! enqueued at depth 0, or a `<sitemapindex>` of `<sitemap><loc>` entries,
//! which are fetched in turn. XML is read with `quick-xml`. Per the protocol a
//! sitemap lists at most 50,000 URLs (the rest are ignored) and only URLs of
//! its own host (others are dropped and counted in the log). At most
//! [`MAX_SITEMAPS`] sitemaps are fetched per crawl, so an index loop or a huge
//! index cannot run away. Sitemap fetches go through the host's politeness
//! turn like any request.

use std::collections::HashSet;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::FetchConfig;
use crate::fetch::{Fetcher, parse_http_url};
use crate::politeness::Politeness;
use crate::redact::ForLog;
use crate::stats::CrawlStats;
use crate::store::{NewUrl, Store, StoreError};

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

/// Parses a sitemap or sitemap index, keeping at most `max` `<loc>` values.
///
/// Errors: malformed XML, or a root element that is neither `urlset` nor
/// `sitemapindex`.
pub fn parse(xml: &[u8], max: usize) -> Result<Sitemap, String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut index = None;
    let mut locs = Vec::new();
    let mut loc: Option<String> = None;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| e.to_string())?;
        match event {
            Event::Start(e) => match e.local_name().as_ref() {
                b"urlset" if index.is_none() => index = Some(false),
                b"sitemapindex" if index.is_none() => index = Some(true),
                b"loc" => loc = Some(String::new()),
                _ => {}
            },
            Event::Text(t) => {
                if let Some(loc) = loc.as_mut() {
                    loc.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::CData(c) => {
                if let Some(loc) = loc.as_mut() {
                    loc.push_str(&c.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(loc) = loc.as_mut() {
                    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
                        loc.push(c);
                    } else if let Some(text) =
                        resolve_predefined_entity(&r.decode().map_err(|e| e.to_string())?)
                    {
                        loc.push_str(text);
                    }
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"loc" => {
                if let Some(loc) = loc.take() {
                    let loc = loc.trim();
                    if !loc.is_empty() && locs.len() < max {
                        locs.push(loc.to_owned());
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    match index {
        Some(true) => Ok(Sitemap::Index(locs)),
        Some(false) => Ok(Sitemap::Urls(locs)),
        None => Err("not a sitemap: the root is neither <urlset> nor <sitemapindex>".to_owned()),
    }
}

/// A handle for submitting sitemap URLs to the crawl's sitemap task.
#[derive(Clone)]
pub struct SitemapQueue {
    tx: mpsc::UnboundedSender<String>,
    /// Sitemaps submitted and not yet processed: the crawl is not idle
    /// while this is above zero.
    pending: Arc<AtomicU64>,
}

impl SitemapQueue {
    /// A queue and the receiving end for [`run`].
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, pending: Arc::default() }, rx)
    }

    /// Asks for `url` to be fetched and its URLs enqueued.
    pub fn submit(&self, url: String) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(url).is_err() {
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
    pub politeness: Arc<Politeness>,
    pub stats: Arc<CrawlStats>,
    /// Woken when URLs were enqueued.
    pub wake: Arc<Notify>,
    /// Return (the crawl is stopping or over).
    pub done: CancellationToken,
}

impl<S: Store> SitemapTask<S> {
    /// Processes submitted sitemaps until `done`. Errors: a store failure.
    pub async fn run(
        self,
        fetch: &FetchConfig,
        mut rx: mpsc::UnboundedReceiver<String>,
    ) -> Result<(), StoreError> {
        let fetch = FetchConfig { max_body_bytes: MAX_SITEMAP_BYTES, ..fetch.clone() };
        let fetcher = match Fetcher::new(&fetch, false, true, 2) {
            Ok(fetcher) => fetcher,
            Err(e) => {
                tracing::error!("sitemaps disabled: cannot build their HTTP client: {e}");
                return Ok(());
            }
        };
        let mut seen = HashSet::new();
        loop {
            let url = tokio::select! {
                _ = self.done.cancelled() => return Ok(()),
                url = rx.recv() => match url { Some(url) => url, None => return Ok(()) },
            };
            let result = if seen.len() < MAX_SITEMAPS && seen.insert(url.clone()) {
                self.process(&fetcher, &url).await
            } else {
                Ok(())
            };
            self.queue.pending.fetch_sub(1, Ordering::SeqCst);
            self.wake.notify_one();
            result?;
        }
    }

    async fn process(&self, fetcher: &Fetcher, url: &str) -> Result<(), StoreError> {
        let Ok(sitemap_url) = parse_http_url(url) else {
            tracing::warn!(url = %ForLog(url), "sitemap URL is not an absolute http(s) URL");
            return Ok(());
        };
        let host = sitemap_url.host_str().unwrap_or_default().to_owned();
        tokio::select! {
            _ = self.done.cancelled() => return Ok(()),
            _ = self.politeness.wait_turn(&host) => {}
        }
        let fetched = fetcher.fetch(url).await;
        let (Some(200..=299), None, Some(body)) =
            (fetched.record.http_status, fetched.error, fetched.record.body)
        else {
            tracing::warn!(url = %ForLog(url), status = fetched.record.http_status, error = fetched.record.error_kind.map(crate::fetch::ErrorKind::as_str), "sitemap not fetched");
            return Ok(());
        };
        match parse(&body, MAX_URLS_PER_SITEMAP) {
            Err(e) => tracing::warn!(url = %ForLog(url), "sitemap not parsed: {e}"),
            Ok(Sitemap::Index(sitemaps)) => {
                tracing::info!(url = %ForLog(url), sitemaps = sitemaps.len(), "sitemap index");
                sitemaps.into_iter().for_each(|s| self.queue.submit(s));
            }
            Ok(Sitemap::Urls(locs)) => {
                let listed = locs.len();
                let urls: Vec<NewUrl> = locs
                    .iter()
                    .filter_map(|loc| parse_http_url(loc).ok())
                    .map(|mut u| {
                        crate::redact::strip_credentials(&mut u);
                        u
                    })
                    .filter(|u| u.host_str() == Some(host.as_str()))
                    .map(|u| NewUrl { host: host.clone(), url: u.into(), depth: 0, found_on: None })
                    .collect();
                let new = self.store.enqueue(&urls).await?;
                self.stats.known.fetch_add(new, Ordering::Relaxed);
                tracing::info!(url = %ForLog(url), listed, enqueued = new, dropped = listed - urls.len(), "sitemap");
            }
        }
        Ok(())
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
    }
}
