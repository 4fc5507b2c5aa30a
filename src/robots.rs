//! robots.txt, per RFC 9309, parsed and matched by the `texting_robots`
//! crate, on a copy of the file in which trawler has normalized what the
//! crate compares as written ([`for_matching`]): each `User-agent:` value to
//! its product token (`trawler/1.0` is `trawler`), and each rule's path as
//! URLs are normalized, so that `Disallow: /%7Ejoe/` matches `/~joe/`
//! (RFC 9309 §2.2.2).
//!
//! One robots.txt per origin (scheme, host, port; RFC 9309 §2.3), fetched
//! the first time a URL of that origin is about to be fetched, through the
//! crawl's gate (`gate.rs`: the host's turn, address policy, credentials of
//! the origin) like any other request, and cached for
//! `robots.cache_ttl`. Concurrent workers wait for the one fetch in progress
//! instead of fetching it again. How the fetch ends decides the rules
//! (RFC 9309 §2.3.1):
//! - 2xx: the file's rules for `robots.user_agent_token` (else `*`);
//! - 4xx, or a redirect chain that cannot be followed (more than 5, a loop,
//!   a bad `Location`): "unavailable", everything is allowed;
//! - 5xx, or a 2xx whose body could not be decoded (a corrupt gzip stream:
//!   the server's error, which Google treats as a 5xx, "Handling of errors
//!   and HTTP status codes"): "unreachable", everything is disallowed until
//!   `robots.unreachable_retry` has passed;
//! - no response at all (timeout, refused, DNS, TLS), or a 2xx body broken
//!   off by the connection or the timeout: also disallowed, but not cached:
//!   the URL's attempt fails with that error and is retried like any failed
//!   fetch, so a dead host fails as `connect`, not as a robots rule, and a
//!   connection that broke once does not park the host.
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
use crate::fetch::{Fetched, Fetcher, Refusal};
use crate::job::ErrorKind;
use crate::links::normalize_path_pattern;
use crate::politeness::Politeness;
use crate::sitemaps::{Origin, SitemapQueue};
use crate::store::Coordination;

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
    /// Do not fetch it now: robots.txt is unreachable (`why`); try again
    /// after `retry_in`.
    Unreachable { robots_url: String, retry_in: Duration, why: Unreachable },
}

/// Why robots.txt counts as unreachable (RFC 9309 §2.3.1.4).
#[derive(Debug, Clone, PartialEq)]
pub enum Unreachable {
    /// No answer to go by: no response, or a 2xx whose body the connection
    /// or the timeout broke off. The URL's attempt fails with this error
    /// (and its message) and is retried like a failed fetch.
    Failed(NoResponse),
    /// An answer that means "unreachable", said as `answered 503`: a 5xx,
    /// or a 2xx whose body could not be decoded.
    Answered(String),
}

/// What became of a robots.txt request that got no answer to go by.
#[derive(Debug, Clone, PartialEq)]
pub struct NoResponse {
    pub kind: ErrorKind,
    pub message: String,
    /// How long its request took (waiting for its turn not counted).
    pub took: Duration,
    /// The host name does not exist (NXDOMAIN).
    pub name_not_found: bool,
}

impl Verdict {
    /// Why the request must not be made now, or `None` when it may be.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Verdict::Allowed { .. } => None,
            Verdict::Disallowed { robots_url } => {
                Some(Refusal::new(ErrorKind::RobotsDisallowed, format!("disallowed by {robots_url}")))
            }
            // No answer from the host to go by: the attempt fails as the
            // fetch of robots.txt did, and is retried like one.
            Verdict::Unreachable { robots_url, why: Unreachable::Failed(failed), .. } => {
                let NoResponse { kind, message, took, name_not_found } = failed;
                Some(Refusal {
                    kind,
                    message: format!(
                        "robots.txt unreachable ({}: {message}): the page was not requested ({robots_url})",
                        kind.as_str()
                    ),
                    retry_after: None,
                    took,
                    name_not_found,
                })
            }
            Verdict::Unreachable { robots_url, retry_in, why: Unreachable::Answered(answer) } => {
                Some(Refusal {
                    kind: ErrorKind::RobotsUnreachable,
                    message: format!(
                        "robots.txt {answer}, which disallows the host for now: the page was not requested ({robots_url})"
                    ),
                    retry_after: Some(retry_in),
                    took: Duration::ZERO,
                    name_not_found: false,
                })
            }
        }
    }
}

enum Rules {
    AllowAll,
    /// Everything disallowed for now (RFC 9309 §2.3.1.4), and why.
    DisallowAll(Unreachable),
    /// The file, as [`for_matching`] prepared it.
    Parsed(Box<Robot>),
}

struct Entry {
    rules: Rules,
    crawl_delay: Option<Duration>,
    expires: Instant,
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
    shared: Option<Coordination>,
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
    pub fn sharing(mut self, coordination: Coordination) -> Self {
        self.shared = Some(coordination);
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
            Rules::DisallowAll(why) => Verdict::Unreachable {
                robots_url: robots_url(),
                retry_in: past(entry.expires),
                why: why.clone(),
            },
            // The URL's path and query normalized as the rules' paths were
            // (RFC 9309 §2.2.2): a redirect's target has not been.
            Rules::Parsed(robot) if robot.allowed(&normalize_path_pattern(&url[origin.len()..])) => {
                Verdict::Allowed { crawl_delay: entry.crawl_delay }
            }
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
        if let Some(coordination) = &self.shared {
            match coordination.shared_robots_txt(origin).await {
                Ok(Some(shared)) => {
                    let (rules, _) = self.rules(robots_url, None, shared.http_status, &shared.body, false);
                    let crawl_delay = self.crawl_delay(robots_url, &rules);
                    self.politeness.set_crawl_delay(host, crawl_delay);
                    return Entry { rules, crawl_delay, expires: Instant::now() + shared.expires_in };
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%robots_url, "cannot read the shared robots.txt ({e}): fetching it"),
            }
        }
        let fetched = fetch(robots_url.clone(), host.to_owned()).await;
        let now = Instant::now();
        let status = fetched.record.http_status;
        let error =
            fetched.error.map(|kind| (kind, fetched.record.error_message.as_deref().unwrap_or_default()));
        let body = fetched.record.body.as_deref().unwrap_or_default();
        let (mut rules, ttl) = self.rules(robots_url, error, status, body, redirect_failed(&fetched));
        if let Rules::DisallowAll(Unreachable::Failed(failed)) = &mut rules {
            // What the attempt that fails with it spent, and whether the
            // name is gone for good.
            failed.took = Duration::from_micros(fetched.record.elapsed_us);
            failed.name_not_found = fetched.name_not_found;
        }
        if let (Some(coordination), None | Some(ErrorKind::BodyTooLarge), Some(status)) =
            (&self.shared, fetched.error, status)
            && !ttl.is_zero()
            && let Err(e) = coordination.share_robots_txt(origin, status, body, ttl).await
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
        Entry { rules, crawl_delay, expires: now + ttl }
    }

    /// The rules an answer gives (RFC 9309 §2.3.1), and how long they stand:
    /// the fetch's `error` (kind and message) and `status`, the `body` read,
    /// and whether its redirects could not be followed to an answer.
    fn rules(
        &self,
        robots_url: &str,
        error: Option<(ErrorKind, &str)>,
        status: Option<u16>,
        body: &[u8],
        redirect_failed: bool,
    ) -> (Rules, Duration) {
        // A file over the cap is parsed as far as it was read (RFC 9309 §2.5).
        let error = error.filter(|(kind, _)| *kind != ErrorKind::BodyTooLarge);
        let failed = |(kind, message): (ErrorKind, &str)| {
            let message = message.to_owned();
            Unreachable::Failed(NoResponse { kind, message, took: Duration::ZERO, name_not_found: false })
        };
        match (status, error) {
            // No response, or a body the connection or the timeout broke
            // off: nothing the host answered to go by. Not cached: the
            // attempt fails with the cause and is retried like a fetch.
            (None, Some(error))
            | (Some(200..=299), Some(error @ (ErrorKind::Read | ErrorKind::Timeout, _))) => {
                (Rules::DisallowAll(failed(error)), Duration::ZERO)
            }
            (Some(200..=299), None) => match Robot::new(&self.config.user_agent_token, &for_matching(body)) {
                Ok(robot) => (Rules::Parsed(Box::new(robot)), self.config.cache_ttl),
                Err(e) => {
                    tracing::warn!(%robots_url, "unparsable robots.txt, treated as allowing all: {e}");
                    (Rules::AllowAll, self.config.cache_ttl)
                }
            },
            // The file exists but what came cannot be read: an invalid
            // response, the server's error as a 5xx is (RFC 9309 §2.3.1.4;
            // Google treats invalid responses as server errors).
            (Some(status @ 200..=299), Some((kind, message))) => {
                let answer = format!(
                    "answered {status} with a body that could not be decoded ({}: {message})",
                    kind.as_str()
                );
                tracing::warn!(%robots_url, "robots.txt {answer}: unreachable, the host is disallowed for now");
                (Rules::DisallowAll(Unreachable::Answered(answer)), self.config.unreachable_retry)
            }
            // More than five redirects (RFC 9309 §2.3.1.2), a loop, or a
            // `Location` that is no URL: unavailable, so allow all.
            _ if redirect_failed => (Rules::AllowAll, self.config.cache_ttl),
            (Some(status @ 500..=599), _) => {
                tracing::info!(%robots_url, status, "robots.txt unreachable: the host is disallowed for now");
                (
                    Rules::DisallowAll(Unreachable::Answered(format!("answered {status}"))),
                    self.config.unreachable_retry,
                )
            }
            // 4xx and everything else (RFC 9309 §2.3.1.3): unavailable, so
            // allow all, whatever became of the body.
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

/// How long from now until just past `expires`: whole milliseconds, rounded
/// up, and one more, as a URL's retry time is kept in milliseconds of
/// another clock; a retry due a moment before the entry expires would find
/// it still in force and be refused again.
fn past(expires: Instant) -> Duration {
    let left = expires.saturating_duration_since(Instant::now());
    Duration::from_millis(left.as_micros().div_ceil(1000) as u64 + 1)
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

/// Whether robots.txt's redirects could not be followed to an answer:
/// more than five, a loop, or a `Location` that is no http(s) URL.
fn redirect_failed(fetched: &Fetched) -> bool {
    matches!(fetched.error, Some(ErrorKind::RedirectLimit | ErrorKind::RedirectLoop | ErrorKind::InvalidUrl))
}

/// A robots.txt as `texting_robots` is to read it, for RFC 9309 matching
/// where the crate compares text as written. Lines are the crate's (ended
/// by CR, LF or NUL; a UTF-8 byte-order mark skipped), and only the values
/// of `User-agent`, `Allow` and `Disallow` lines are rewritten, each line
/// recognised as the crate's parser recognises it (its key spellings and
/// typos, `:` or spaces after the key, `#` starting a comment):
/// - a `User-agent` value becomes its product token ([`product_token`]);
/// - an `Allow` or `Disallow` path is normalized as URLs are
///   ([`normalize_path_pattern`]), as `check` normalizes the URL.
///
/// Every other byte is kept as it is.
fn for_matching(body: &[u8]) -> Vec<u8> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| matches!(b, b'\n' | b'\r' | 0)).map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        let (text, ending) = match line.last() {
            Some(b'\n' | b'\r' | 0) => line.split_at(line.len() - 1),
            _ => (line, &[][..]),
        };
        match rewritten(text) {
            Some(line) => out.extend_from_slice(line.as_bytes()),
            None => out.extend_from_slice(text),
        }
        out.extend_from_slice(ending);
        rest = after;
    }
    out
}

/// The keys whose values [`for_matching`] rewrites, with their spellings
/// as `texting_robots` 0.2 accepts them (`parser.rs`).
const KEYS: [(&str, &str); 10] = [
    ("user-agent", "User-agent"),
    ("user agent", "User-agent"),
    ("useragent", "User-agent"),
    ("allow", "Allow"),
    ("disallow", "Disallow"),
    ("dissallow", "Disallow"),
    ("dissalow", "Disallow"),
    ("disalow", "Disallow"),
    ("diasllow", "Disallow"),
    ("disallaw", "Disallow"),
];

/// One line of robots.txt with its value rewritten, if it is a line whose
/// value [`for_matching`] rewrites (and has a value).
fn rewritten(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?.trim_start_matches([' ', '\t']);
    let (after_key, key) = KEYS.iter().find_map(|(spelling, key)| {
        let head = line.get(..spelling.len())?;
        head.eq_ignore_ascii_case(spelling).then(|| (&line[spelling.len()..], *key))
    })?;
    let spaced = after_key.trim_start_matches([' ', '\t']);
    let value = match spaced.strip_prefix(':') {
        Some(value) => value,
        None if spaced.len() < after_key.len() => spaced,
        None => return None,
    };
    let value = value.split('#').next().unwrap_or_default().trim();
    match (key, value) {
        // An empty `Disallow:` allows everything: left to the crate.
        (_, "") => None,
        ("User-agent", agent) => Some(format!("User-agent: {}", product_token(agent))),
        (rule, path) => Some(format!("{rule}: {}", normalize_path_pattern(path))),
    }
}

/// The product token of a `User-agent` value, as Google's parser reads it
/// (`robots.cc`, `ExtractUserAgent`): its leading letters, `-` and `_`, the
/// characters RFC 9309 §2.2.1 allows in a token, so that a group for
/// `trawler/1.0` or `trawler bot` applies to `trawler`. `*` followed by
/// nothing or a space is `*`; a value with no such leading characters is
/// kept (it names no token, and matches none).
fn product_token(agent: &str) -> &str {
    if let Some(after) = agent.strip_prefix('*')
        && after.chars().next().is_none_or(char::is_whitespace)
    {
        return "*";
    }
    let end = agent.find(|c: char| !(c.is_ascii_alphabetic() || c == '-' || c == '_')).unwrap_or(agent.len());
    if end == 0 { agent } else { &agent[..end] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robots() -> Robots {
        let config = crate::config::Config::default();
        let politeness = Arc::new(Politeness::new(
            crate::politeness::HostRules::from_config(&config),
            Duration::from_secs(30),
        ));
        Robots::new(config.robots.clone(), politeness, None)
    }

    /// `txt`'s rules for `trawler`, as a fetched robots.txt is parsed.
    fn parsed(txt: &str) -> Robot {
        Robot::new("trawler", &for_matching(txt.as_bytes())).expect("parses")
    }

    /// Whether `robot` allows `path`, normalized as `Robots::check` does.
    fn allows(robot: &Robot, path: &str) -> bool {
        robot.allowed(&normalize_path_pattern(path))
    }

    #[test]
    fn percent_encoded_rules_match_urls_spelled_either_way() {
        let robot = parsed("User-agent: *\nDisallow: /%7Ejoe/\nDisallow: /%61dmin/\nDisallow: /a%3cd.html\n");
        for path in [
            "/~joe/x",
            "/%7Ejoe/x",
            "/%7ejoe/",
            "/admin/",
            "/%61dmin/a",
            "/a%3cd.html",
            "/a%3Cd.html",
            "/a<d.html",
        ] {
            assert!(!allows(&robot, path), "{path} is disallowed");
        }
        for path in ["/joe/", "/administrator", "/acd.html", "/a%3Ed.html", "/"] {
            assert!(allows(&robot, path), "{path} is allowed");
        }
        // Encoded reserved characters stay what they are: `%2F` is no `/`.
        let robot = parsed("User-agent: *\nDisallow: /a%2fb\nDisallow: /caf\u{e9}\n");
        assert!(!allows(&robot, "/a%2Fb") && allows(&robot, "/a/b"));
        assert!(!allows(&robot, "/caf%C3%A9") && !allows(&robot, "/caf%c3%a9/menu"));
    }

    #[test]
    fn wildcards_and_a_bare_query_mark_keep_their_meaning() {
        let robot = parsed("User-agent: *\nDisallow: /*?\nDisallow: /*.pdf$\nDisallow: *.php\n");
        assert!(allows(&robot, "/page") && allows(&robot, "/a.pdf.html"));
        assert!(!allows(&robot, "/page?a=1") && !allows(&robot, "/x/a.pdf") && !allows(&robot, "/x/a.php"));
    }

    #[test]
    fn a_group_for_our_product_token_with_a_version_or_words_applies() {
        for agent in ["trawler/1.0", "Trawler bot", "trawler (+https://example.org/bot)", "TRAWLER"] {
            let robot =
                parsed(&format!("User-agent: {agent}\nDisallow: /mine\n\nUser-agent: *\nDisallow: /\n"));
            assert!(allows(&robot, "/open") && !allows(&robot, "/mine"), "{agent}");
        }
        for other in ["trawlerbot", "trawler-ng/2", "mytrawler"] {
            let robot =
                parsed(&format!("User-agent: {other}\nDisallow: /\n\nUser-agent: *\nDisallow: /star\n"));
            assert!(allows(&robot, "/open") && !allows(&robot, "/star"), "{other} is another crawler");
        }
        assert_eq!(product_token("* any bot"), "*");
        assert_eq!(product_token("*"), "*");
        assert_eq!(product_token("*bot"), "*bot");
        assert_eq!(product_token("/weird"), "/weird");
        assert_eq!(product_token("Google-Extended"), "Google-Extended");
    }

    #[test]
    fn only_the_values_of_agent_and_rule_lines_are_rewritten() {
        let txt = "\u{feff}user-agent : trawler/2 # ours\r\n\tdisallow /%7Ea  # tilde\rDissallow:/b%7e\n\
                   Disallow:\nAllow: /%61\nSitemap: http://h/%7Es.xml\nCrawl-delay: 2\nallowance: /x\n";
        let prepared = String::from_utf8(for_matching(txt.as_bytes())).unwrap();
        assert_eq!(
            prepared,
            "User-agent: trawler\r\nDisallow: /~a\rDisallow: /b~\nDisallow:\nAllow: /a\n\
             Sitemap: http://h/%7Es.xml\nCrawl-delay: 2\nallowance: /x\n"
        );
        let robot = parsed(txt);
        assert!(!allows(&robot, "/~a/") && !allows(&robot, "/b~") && allows(&robot, "/c"));
        assert_eq!(robot.delay, Some(2.0));
        assert_eq!(robot.sitemaps, ["http://h/%7Es.xml"]);
    }

    #[tokio::test]
    async fn what_an_answer_means_follows_rfc_9309_and_says_why() {
        let robots = robots();
        let config = &robots.config;
        let url = "http://h.test/robots.txt";
        let rule = b"User-agent: *\nDisallow: /x\n";
        let corrupt = Some((ErrorKind::Protocol, "error decoding response body: invalid gzip header"));
        // A 2xx body that could not be decoded: the server's error, as a 5xx.
        let (rules, ttl) = robots.rules(url, corrupt, Some(200), b"", false);
        assert!(matches!(&rules, Rules::DisallowAll(Unreachable::Answered(why)) if why
                == "answered 200 with a body that could not be decoded (protocol: error decoding response body: invalid gzip header)"),);
        assert_eq!(ttl, config.unreachable_retry);
        // A body the connection broke off: not cached, the attempt fails as `read`.
        let (rules, ttl) = robots.rules(url, Some((ErrorKind::Read, "reset")), Some(200), b"User", false);
        assert!(
            matches!(&rules, Rules::DisallowAll(Unreachable::Failed(f)) if f.kind == ErrorKind::Read && f.message == "reset")
        );
        assert_eq!(ttl, Duration::ZERO);
        let (rules, ttl) = robots.rules(url, Some((ErrorKind::Connect, "refused")), None, b"", false);
        assert!(matches!(rules, Rules::DisallowAll(Unreachable::Failed(f)) if f.kind == ErrorKind::Connect));
        assert_eq!(ttl, Duration::ZERO);
        let (rules, _) = robots.rules(url, None, Some(503), b"", false);
        assert!(matches!(&rules, Rules::DisallowAll(Unreachable::Answered(why)) if why == "answered 503"));
        // A 4xx means unavailable whatever became of its body.
        let (rules, ttl) = robots.rules(url, corrupt, Some(404), b"", false);
        assert!(matches!(rules, Rules::AllowAll));
        assert_eq!(ttl, config.cache_ttl);
        let (rules, _) = robots.rules(url, Some((ErrorKind::RedirectLimit, "more")), Some(302), b"", true);
        assert!(matches!(rules, Rules::AllowAll));
        // Over the cap: parsed as far as it was read.
        let (rules, _) = robots.rules(url, Some((ErrorKind::BodyTooLarge, "large")), Some(200), rule, false);
        assert!(matches!(&rules, Rules::Parsed(robot) if !robot.allowed("/x")));
        let refusal = Verdict::Unreachable {
            robots_url: url.to_owned(),
            retry_in: Duration::from_secs(600),
            why: Unreachable::Answered("answered 503".to_owned()),
        }
        .refusal()
        .unwrap();
        assert_eq!(refusal.kind, ErrorKind::RobotsUnreachable);
        assert_eq!(
            refusal.message,
            "robots.txt answered 503, which disallows the host for now: the page was not requested \
             (http://h.test/robots.txt)"
        );
    }

    #[tokio::test]
    async fn a_full_cache_drops_the_least_recently_checked_origin() {
        let robots = robots();
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
