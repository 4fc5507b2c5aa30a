//! robots.txt, per RFC 9309, parsed by the `texting_robots` crate.
//!
//! One robots.txt per origin (scheme, host, port; RFC 9309 §2.3), fetched
//! the first time a URL of that origin is about to be fetched, through the
//! crawl's gate (`gate.rs`: the host's turn, address policy, credentials of
//! the origin) like any other request, and cached for
//! `robots.cache_ttl`. Concurrent workers wait for the one fetch in progress
//! instead of fetching it again. How the fetch ends decides the rules
//! (RFC 9309 §2.3.1):
//! - 2xx: the file's rules for `robots.user_agent_token` (else `*`);
//! - 4xx, or more than 5 redirects: "unavailable", everything is allowed;
//! - 5xx: "unreachable", everything is disallowed until
//!   `robots.unreachable_retry` has passed;
//! - no response at all (timeout, refused, DNS, TLS): also disallowed, but
//!   not cached: the URL's attempt fails with that error and is retried like
//!   any failed fetch, so a dead host fails as `connect`, not as a robots rule.
//!
//! The cache keeps at most [`MAX_CACHED_ORIGINS`] origins, so memory is
//! bounded whatever the crawl's size; past that the least recently checked
//! origin is dropped (the `lru` crate), never one the crawl is working on.

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use texting_robots::Robot;
use tokio::time::Instant;
use url::Url;

use crate::config::RobotsConfig;
use crate::fetch::{ErrorKind, Fetched, Fetcher};
use crate::politeness::Politeness;
use crate::sitemaps::{Origin, SitemapQueue};
use crate::store::Backend;

/// Origins whose rules are kept in memory; past this the least recently
/// checked one is dropped (and fetched again if it is needed again). The
/// hosts a crawl is working on at once (jobs claimed, in flight or parked
/// for their turn: a few times `crawl.concurrency`) must fit, or a job whose
/// origin was dropped while it waited for its turn would fetch robots.txt
/// again, taking that turn again.
pub const MAX_CACHED_ORIGINS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// The most of a robots.txt that is read: RFC 9309 §2.5 asks crawlers to
/// parse at least 500 KiB.
pub const MAX_ROBOTS_BYTES: NonZeroU64 = NonZeroU64::new(512 * 1024).unwrap();

/// Redirects followed for robots.txt (RFC 9309 §2.3.1.2: at least five).
const MAX_ROBOTS_REDIRECTS: u32 = 5;

/// How robots.txt is requested: given the robots.txt URL and the host of
/// the request it is fetched for, returns what was fetched. The crawl's gate
/// (`gate.rs`) passes its own walk, so robots.txt passes the gate too.
pub type FetchRobotsTxt<'a> = dyn Fn(String, String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Fetched> + Send + 'a>>
    + Send
    + Sync
    + 'a;

/// What robots.txt says about one URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fetch it; the origin's `Crawl-delay`, if any, already clamped.
    Allowed { crawl_delay: Option<Duration> },
    /// Do not fetch it, ever (under these rules).
    Disallowed { robots_url: String },
    /// Do not fetch it now: robots.txt is unreachable; try again after
    /// `retry_in`. `cause` is the fetch error when there was no response.
    Unreachable { robots_url: String, retry_in: Duration, cause: Option<NoResponse> },
}

/// Why robots.txt got no response at all.
#[derive(Debug, Clone, PartialEq)]
pub struct NoResponse {
    pub kind: ErrorKind,
    pub message: String,
    /// How long its request took (waiting for its turn not counted).
    pub took: Duration,
    /// The host name does not exist (NXDOMAIN).
    pub name_not_found: bool,
}

/// Why robots.txt rules a request out now: the error that ends the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
    /// When to try again, for a robots.txt that answered 5xx.
    pub retry_after: Option<Duration>,
    /// Time the attempt spent on requests of its own: the robots.txt
    /// request that got no response, which fails the attempt with it.
    pub took: Duration,
    /// That request found the host name does not exist (NXDOMAIN).
    pub name_not_found: bool,
}

impl Verdict {
    /// Why the request must not be made now, or `None` when it may be.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Verdict::Allowed { .. } => None,
            Verdict::Disallowed { robots_url } => Some(Refusal {
                kind: ErrorKind::RobotsDisallowed,
                message: format!("disallowed by {robots_url}"),
                retry_after: None,
                took: Duration::ZERO,
                name_not_found: false,
            }),
            // No response from the host at all: the attempt fails as the
            // fetch of robots.txt did, and is retried like one.
            Verdict::Unreachable {
                robots_url,
                cause: Some(NoResponse { kind, message, took, name_not_found }),
                ..
            } => Some(Refusal {
                kind,
                message: format!(
                    "robots.txt unreachable ({}: {message}): the page was not requested ({robots_url})",
                    kind.as_str()
                ),
                retry_after: None,
                took,
                name_not_found,
            }),
            Verdict::Unreachable { robots_url, retry_in, cause: None } => Some(Refusal {
                kind: ErrorKind::RobotsUnreachable,
                message: format!(
                    "robots.txt answered 5xx, which disallows the host for now: the page was not requested ({robots_url})"
                ),
                retry_after: Some(retry_in),
                took: Duration::ZERO,
                name_not_found: false,
            }),
        }
    }
}

enum Rules {
    AllowAll,
    DisallowAll,
    Parsed(Box<Robot>),
}

struct Entry {
    rules: Rules,
    crawl_delay: Option<Duration>,
    expires: Instant,
    /// Why robots.txt got no response, for `DisallowAll` entries.
    cause: Option<NoResponse>,
}

/// One origin's cached rules. Checks read `entry` (a plain read lock, held
/// for no await); a fetch takes `fetching` first, so one worker fetches while
/// the others wait for its result instead of fetching too.
#[derive(Default)]
struct OriginSlot {
    entry: RwLock<Option<Arc<Entry>>>,
    fetching: tokio::sync::Mutex<()>,
}

type Slot = Arc<OriginSlot>;

/// The robots.txt cache and fetcher, shared by the workers.
pub struct Robots {
    config: RobotsConfig,
    /// Where `Sitemap:` lines go, when following links.
    sitemaps: Option<SitemapQueue>,
    politeness: Arc<Politeness>,
    /// Most recently checked last.
    origins: Mutex<lru::LruCache<String, Slot>>,
    /// Where robots.txt is shared with other daemons (PostgreSQL's
    /// `robots_txt` table): read before fetching, written after.
    shared: Option<Arc<Backend>>,
}

impl Robots {
    /// Builds the cache. `politeness` learns each host's `Crawl-delay`.
    pub fn new(config: RobotsConfig, politeness: Arc<Politeness>, sitemaps: Option<SitemapQueue>) -> Self {
        Self {
            config,
            politeness,
            sitemaps,
            origins: Mutex::new(lru::LruCache::new(MAX_CACHED_ORIGINS)),
            shared: None,
        }
    }

    /// The fetcher robots.txt is requested with: the crawl's client
    /// (`pages`'s: same user agent, timeouts, address policy and connection
    /// pool) with robots.txt's own limits: 5 redirects, 512 KiB, a file over
    /// the cap parsed as far as the cap (RFC 9309 §2.5) even when its
    /// Content-Length says how large it is.
    pub fn fetcher(pages: &Fetcher) -> Fetcher {
        pages.sibling(MAX_ROBOTS_REDIRECTS, MAX_ROBOTS_BYTES, true).keeping_prefix()
    }

    /// Shares robots.txt through `store` with the other daemons crawling
    /// its database: a file one of them fetched is used until it expires
    /// instead of being fetched again (one request per origin for the whole
    /// crawl, not per daemon), and a file this one fetches is written for
    /// them. Only what the answer alone decides is shared (a 2xx file, a
    /// 4xx or a 5xx); a fetch that got no response, or broke off, is this
    /// daemon's alone. The daemon that fetched a file reads its `Sitemap:`
    /// lines; the others do not.
    pub fn sharing(mut self, store: Arc<Backend>) -> Self {
        self.shared = Some(store);
        self
    }

    /// What robots.txt says about `url` (whose host is `host`), fetching the
    /// origin's robots.txt with `fetch` first if it is not cached. Cancel
    /// safe: a fetch abandoned halfway leaves the origin uncached.
    pub async fn check(&self, url: &str, host: &str, fetch: &FetchRobotsTxt<'_>) -> Verdict {
        let Some(origin) = origin_of(url) else {
            return Verdict::Allowed { crawl_delay: None };
        };
        let slot = self.slot(origin);
        let entry = match cached(&slot) {
            Some(entry) => entry,
            None => {
                let _fetching = slot.fetching.lock().await;
                match cached(&slot) {
                    Some(entry) => entry,
                    None => {
                        let entry = Arc::new(self.fetch(origin, host, fetch).await);
                        *slot.entry.write().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
                        entry
                    }
                }
            }
        };
        let robots_url = || format!("{origin}/robots.txt");
        match &entry.rules {
            Rules::AllowAll => Verdict::Allowed { crawl_delay: None },
            Rules::DisallowAll => Verdict::Unreachable {
                robots_url: robots_url(),
                retry_in: entry.expires.saturating_duration_since(Instant::now()),
                cause: entry.cause.clone(),
            },
            Rules::Parsed(robot) if robot.allowed(url) => Verdict::Allowed { crawl_delay: entry.crawl_delay },
            Rules::Parsed(_) => Verdict::Disallowed { robots_url: robots_url() },
        }
    }

    fn slot(&self, origin: &str) -> Slot {
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.get_or_insert_ref(origin, Slot::default).clone()
    }

    /// The rules of `origin`'s robots.txt: another daemon's copy when one
    /// is shared and unexpired, else fetched with `fetch` (and shared).
    async fn fetch(&self, origin: &str, host: &str, fetch: &FetchRobotsTxt<'_>) -> Entry {
        let robots_url = &format!("{origin}/robots.txt");
        if let Some(store) = &self.shared {
            match store.shared_robots_txt(origin).await {
                Ok(Some(shared)) => {
                    let (rules, _) = self.rules(robots_url, None, shared.http_status, &shared.body, false);
                    let crawl_delay = self.crawl_delay(robots_url, &rules);
                    self.politeness.set_crawl_delay(host, crawl_delay);
                    return Entry {
                        rules,
                        crawl_delay,
                        expires: Instant::now() + shared.expires_in,
                        cause: None,
                    };
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%robots_url, "cannot read the shared robots.txt ({e}): fetching it"),
            }
        }
        let fetched = fetch(robots_url.clone(), host.to_owned()).await;
        let now = Instant::now();
        let status = fetched.record.http_status;
        let cause = match (fetched.error, status) {
            (Some(kind), None) => Some(NoResponse {
                kind,
                message: fetched.record.error_message.clone().unwrap_or_default(),
                took: Duration::from_micros(fetched.record.elapsed_us),
                name_not_found: fetched.name_not_found,
            }),
            _ => None,
        };
        let body = fetched.record.body.as_deref().unwrap_or_default();
        let (rules, ttl) = self.rules(robots_url, fetched.error, status, body, redirect_limit(&fetched));
        if let (Some(store), None | Some(ErrorKind::BodyTooLarge), Some(status)) =
            (&self.shared, fetched.error, status)
            && !ttl.is_zero()
            && let Err(e) = store.share_robots_txt(origin, status, body, ttl).await
        {
            tracing::warn!(%robots_url, "cannot share robots.txt with the other daemons: {e}");
        }
        let crawl_delay = self.crawl_delay(robots_url, &rules);
        if let (Rules::Parsed(robot), Some(queue)) = (&rules, &self.sitemaps) {
            // The sitemap is judged against the host whose robots.txt named
            // it (a redirected robots.txt still speaks for that host, RFC
            // 9309 §2.3.1.2).
            if let Ok(named_by) = Url::parse(robots_url) {
                let origin = Origin::Robots(named_by);
                robot.sitemaps.iter().for_each(|s| queue.submit(s.clone(), origin.clone()));
            }
        }
        self.politeness.set_crawl_delay(host, crawl_delay);
        Entry { rules, crawl_delay, expires: now + ttl, cause }
    }

    /// The rules an answer gives (RFC 9309 §2.3.1), and how long they stand:
    /// `error` and `status` of the fetch, the `body` read, and whether it
    /// followed more redirects than allowed.
    fn rules(
        &self,
        robots_url: &str,
        error: Option<ErrorKind>,
        status: Option<u16>,
        body: &[u8],
        redirect_limit: bool,
    ) -> (Rules, Duration) {
        match (error, status) {
            // A file over the cap is parsed as far as it was read (RFC 9309 §2.5).
            (None | Some(ErrorKind::BodyTooLarge), Some(200..=299)) => {
                match Robot::new(&self.config.user_agent_token, body) {
                    Ok(robot) => (Rules::Parsed(Box::new(robot)), self.config.cache_ttl),
                    Err(e) => {
                        tracing::warn!(%robots_url, "unparsable robots.txt, treated as allowing all: {e}");
                        (Rules::AllowAll, self.config.cache_ttl)
                    }
                }
            }
            // No response: not cached, the attempt fails with the cause.
            (Some(_), None) => (Rules::DisallowAll, Duration::ZERO),
            (None, Some(500..=599)) | (Some(_), _) if !redirect_limit => {
                tracing::info!(%robots_url, ?status, error = error.map(ErrorKind::as_str), "robots.txt unreachable: host disallowed for now");
                (Rules::DisallowAll, self.config.unreachable_retry)
            }
            // 4xx and everything else (RFC 9309 §2.3.1.3), and a redirect chain
            // longer than five (§2.3.1.2): unavailable, so allow all.
            _ => (Rules::AllowAll, self.config.cache_ttl),
        }
    }

    /// The `Crawl-delay` `rules` ask for, clamped.
    fn crawl_delay(&self, robots_url: &str, rules: &Rules) -> Option<Duration> {
        match rules {
            Rules::Parsed(robot) => robot.delay.and_then(|secs| self.clamp_crawl_delay(robots_url, secs)),
            _ => None,
        }
    }

    fn clamp_crawl_delay(&self, robots_url: &str, secs: f32) -> Option<Duration> {
        let asked = Duration::try_from_secs_f32(secs).ok().filter(|d| !d.is_zero())?;
        if asked > self.config.max_crawl_delay {
            tracing::info!(
                %robots_url,
                crawl_delay_s = secs,
                max_s = self.config.max_crawl_delay.as_secs_f32(),
                "Crawl-delay clamped to robots.max_crawl_delay"
            );
            return Some(self.config.max_crawl_delay);
        }
        Some(asked)
    }
}

/// The unexpired cached entry of `slot`, if any.
fn cached(slot: &OriginSlot) -> Option<Arc<Entry>> {
    let entry = slot.entry.read().unwrap_or_else(|p| p.into_inner());
    entry.as_ref().filter(|e| e.expires > Instant::now()).cloned()
}

/// The origin (`scheme://host[:port]`, RFC 6454) of a URL serialized by the
/// `url` crate, which has already lower-cased it, dropped a default port and
/// given it a path starting with `/`: everything before that `/`.
fn origin_of(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..].find(['/', '?', '#']).map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

fn redirect_limit(fetched: &Fetched) -> bool {
    matches!(fetched.error, Some(ErrorKind::RedirectLimit | ErrorKind::RedirectLoop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_cache_drops_the_least_recently_checked_origin() {
        let config = crate::config::Config::default();
        let politeness = Arc::new(Politeness::new(
            crate::politeness::HostRules::from_config(&config),
            Duration::from_secs(30),
        ));
        let robots = Robots::new(config.robots.clone(), politeness, None);
        let origin = |i: usize| format!("http://h{i}.test");
        let busy = robots.slot(&origin(0));
        for i in 1..MAX_CACHED_ORIGINS.get() {
            robots.slot(&origin(i));
        }
        // Checked again (a job back from its turn): now the most recent.
        let again = robots.slot(&origin(0));
        assert!(Arc::ptr_eq(&busy, &again));
        robots.slot("http://new.test");
        let origins = robots.origins.lock().unwrap();
        assert_eq!(origins.len(), MAX_CACHED_ORIGINS.get());
        assert!(origins.contains(&origin(0)), "the origin in use was kept");
        assert!(!origins.contains(&origin(1)), "the least recently checked was dropped");
    }

    #[test]
    fn the_origin_is_the_serialized_url_up_to_its_path() {
        assert_eq!(origin_of("http://127.0.0.1:8080/a/b?c"), Some("http://127.0.0.1:8080"));
        assert_eq!(origin_of("https://example.org/"), Some("https://example.org"));
        assert_eq!(origin_of("https://example.org?q"), Some("https://example.org"));
        assert_eq!(origin_of("not a url"), None);
        for url in ["http://example.org:80/x", "HTTPS://Example.ORG:443/y", "http://[::1]:81/z"] {
            let parsed = url::Url::parse(url).unwrap();
            assert_eq!(
                origin_of(parsed.as_str()),
                Some(parsed.origin().ascii_serialization().as_str()),
                "{url}"
            );
        }
    }
}
