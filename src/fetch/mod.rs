//! One fetch attempt over HTTP: the only code that knows reqwest.
//!
//! A [`Fetcher`] holds one shared `reqwest::Client` (connection pool, gzip /
//! brotli / deflate decoding, rustls). Redirects are followed here rather than
//! by reqwest, a request at a time ([`Attempt`]), so that the crawl's one gate
//! (`gate.rs`) can check and pace every hop, every hop is recorded, and loops
//! are named as such. The attempt's requests (connect, every redirect, headers
//! and body) are bounded by `fetch.timeout` in all, and the decoded body by
//! `fetch.max_body_bytes`, so a hostile server can neither hang a worker nor
//! bloat the process. Failures come back as data ([`Fetched::error`]), never
//! as a Rust error.
//!
//! | file | what it holds |
//! |---|---|
//! | `outcome.rs` | what an attempt ends with: [`Fetched`], [`Refusal`] |
//! | `addresses.rs` | the address policy (`fetch.deny_ips`) and name resolution |
//! | `client.rs` | building the reqwest clients: pool, certificates, proxies |
//! | `proxies.rs` | which proxy, if any, carries a request |
//! | `sending.rs` | one request while it is sent: its route, its turn as sent |
//! | `attempt.rs` | the request, redirect and body state machine ([`Attempt`]) |
//! | `content.rs` | content types, response headers, `Retry-After` |
//! | `errors.rs` | reqwest's errors as our [`ErrorKind`]s |

mod addresses;
mod attempt;
mod client;
mod content;
mod errors;
mod outcome;
mod proxies;
mod sending;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::config::FetchConfig;

pub use addresses::AddressPolicy;
pub use attempt::Attempt;
pub use client::{ClientError, Pool};
pub use content::{AcceptTypes, parse_retry_after, reason_phrase};
pub use outcome::{Fetched, Refusal};
// What a fetch fails with is the crawl's vocabulary (`crate::job`).
pub use crate::job::ErrorKind;
pub use sending::{Cleared, ConnectedHook, SendCheck};

use addresses::Resolver;
use attempt::Progress;
use errors::Failure;

/// Makes attempts with one shared client. Cheap to share behind an `Arc`.
pub struct Fetcher {
    client: reqwest::Client,
    config: FetchConfig,
    save_headers: bool,
    save_body: bool,
    /// Extract up to this many links from 2xx HTML bodies.
    extract_links: Option<usize>,
    /// The product token whose page-level robots directives apply
    /// (`robots.user_agent_token`): `X-Robots-Tag: TOKEN: noindex`,
    /// `<meta name="TOKEN">` (`links::Directives`).
    robots_token: Arc<str>,
    /// Read a body over the cap up to the cap (and keep that prefix) even
    /// when its declared length is over it, rather than refusing it before
    /// reading: for robots.txt (RFC 9309 §2.5).
    keep_prefix: bool,
    /// `fetch.accept_content_types`: 2xx bodies of other types are not read.
    accept: Option<Arc<AcceptTypes>>,
    /// The client for the hosts that may present any certificate
    /// (`[hosts."..."] accept_invalid_certs`), and those hosts.
    insecure: Option<(reqwest::Client, Arc<std::collections::HashSet<String>>)>,
    /// Where requests may go (`fetch.deny_ips`, `fetch.allow_ips`).
    addresses: Arc<AddressPolicy>,
    /// The client's resolver, also used to check and time each request's
    /// lookup.
    resolver: Arc<Resolver>,
    /// Which requests go through a proxy, and which.
    proxies: Arc<proxies::Proxies>,
}

impl Fetcher {
    /// Another fetcher on the same client (one connection pool, resolver and
    /// TLS set-up for the whole crawl: building a client loads the root
    /// certificates, and a connection opened for robots.txt then serves the
    /// host's pages) with its own per-attempt limits: `max_redirects`,
    /// `max_body_bytes` (bytes) and whether bodies are kept. It extracts no
    /// links, stores no headers and reads every type (robots.txt is
    /// `text/plain`, a sitemap XML).
    pub fn sibling(&self, max_redirects: u32, max_body_bytes: NonZeroU64, save_body: bool) -> Self {
        Self {
            client: self.client.clone(),
            config: FetchConfig { max_redirects, max_body_bytes, ..self.config.clone() },
            save_headers: false,
            save_body,
            extract_links: None,
            robots_token: self.robots_token.clone(),
            keep_prefix: false,
            accept: None,
            insecure: self.insecure.clone(),
            addresses: self.addresses.clone(),
            resolver: self.resolver.clone(),
            proxies: self.proxies.clone(),
        }
    }

    /// Read the first `fetch.max_body_bytes` of a larger body and keep them
    /// (with [`ErrorKind::BodyTooLarge`]) even when the declared
    /// `Content-Length` is over the cap, for callers that use a prefix.
    pub fn keeping_prefix(self) -> Self {
        Self { keep_prefix: true, ..self }
    }

    /// Reads page-level robots directives for `token`
    /// (`robots.user_agent_token`; without this, trawler's default).
    pub fn with_robots_token(self, token: &str) -> Self {
        Self { robots_token: token.into(), ..self }
    }

    /// Also extract links (at most `max_links` per page) from the bodies of
    /// 2xx HTML responses, streaming, as they are read.
    pub fn with_link_extraction(self, max_links: usize) -> Self {
        Self { extract_links: Some(max_links), ..self }
    }

    /// Starts an attempt at `url`, extracting links from its final response
    /// only if `extract` (and extraction is on): pages whose links could not
    /// be followed anyway (at the maximum depth) are not parsed. Nothing is
    /// sent until [`Attempt::request`].
    pub fn begin(&self, url: &str, extract: bool) -> Attempt<'_> {
        let (next, outcome) = match parse_http_url(url) {
            Ok(url) => (Some(url), None),
            Err(why) => (None, Some(Err(Failure(ErrorKind::InvalidUrl, why)))),
        };
        Attempt {
            fetcher: self,
            next,
            extract,
            progress: Progress::default(),
            started_at: None,
            spent: Duration::ZERO,
            outcome,
            withheld: false,
        }
    }
}

/// Parses `text` as an absolute http(s) URL with a host, fragment removed.
///
/// Errors: a sentence saying why, for input reports.
pub fn parse_http_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| e.to_string())?;
    check_http(&url)?;
    url.set_fragment(None);
    Ok(url)
}

fn check_http(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "http" | "https" => Err("no host".to_owned()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_keeps_the_time_and_the_cause_of_what_refused_it() {
        let config = FetchConfig::default();
        let fetcher = Fetcher::new(&config, false, false, Pool::for_politeness(1, [1], [])).unwrap();
        let mut attempt = fetcher.begin("http://gone.test/a", false);
        let took = Duration::from_millis(30);
        let message = "robots.txt unreachable (dns: the name does not exist)".to_owned();
        attempt.refuse(Refusal { took, name_not_found: true, ..Refusal::new(ErrorKind::Dns, message) });
        assert!(attempt.next_url().is_none(), "nothing more is sent");
        let fetched = attempt.finish();
        assert_eq!((fetched.error, fetched.name_not_found), (Some(ErrorKind::Dns), true));
        assert_eq!((fetched.record.elapsed_ms, fetched.record.http_status), (30, None));
        let started = fetched.record.started_at.unwrap();
        assert!(fetched.record.fetched_at.unwrap().duration_since(started).unwrap() >= took);
    }

    #[tokio::test]
    async fn a_request_whose_clearance_no_longer_holds_is_withheld_and_nothing_is_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/a", listener.local_addr().unwrap());
        let fetcher =
            Fetcher::new(&FetchConfig::default(), false, false, Pool::for_politeness(1, [1], [])).unwrap();
        let mut attempt = fetcher.begin(&url, false);
        let lapsed: SendCheck = std::sync::Arc::new(|| false);
        attempt.request(Cleared { may_send: Some(lapsed), ..Cleared::default() }).await;
        assert!(attempt.withheld());
        // Had it been sent, its connection would be waiting to be accepted
        // by now: the request is made before `request` returns.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was opened");
    }

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        assert_eq!(
            parse_http_url("HTTP://Example.COM:80/a/../b#frag").unwrap().as_str(),
            "http://example.com/b"
        );
        assert!(parse_http_url("/relative").unwrap_err().contains("relative URL"));
        assert!(parse_http_url("ftp://example.com/").unwrap_err().contains("ftp"));
        assert!(parse_http_url("mailto:someone@example.com").is_err());
        assert!(parse_http_url("http://").is_err());
    }
}
