//! Settings: defaults, then a TOML file, then `TRAWLER_*` environment variables,
//! then command-line flags (each layer overrides the one before), merged with
//! `figment` and checked once at start-up.
//!
//! Each component receives only its own section (`FetchConfig`, `RetryConfig`,
//! ...), never the whole [`Config`]. Durations are written the `humantime` way
//! (`"10s"`, `"500ms"`, `"2m"`). `config/trawler.toml` documents every key.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The default `User-Agent`: names the crawler and its version, as RFC 9309
/// §2.2.1 expects of a crawler's product token.
pub const DEFAULT_USER_AGENT: &str = concat!("trawler/", env!("CARGO_PKG_VERSION"));

/// The shortest `recrawl_after` accepted: below it a URL would be fetched
/// again before its result was worth anything.
pub const MIN_RECRAWL_AFTER: Duration = Duration::from_secs(1);

/// A setting that could not be loaded or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag could not be parsed; the
    /// message names the key and where its value came from.
    #[error("{}", describe(.0))]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but is not allowed.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// The whole effective configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub crawl: CrawlConfig,
    pub politeness: PolitenessConfig,
    pub robots: RobotsConfig,
    pub discovery: DiscoveryConfig,
    /// Per-host overrides of the politeness limits, keyed by host name as it
    /// appears in URLs (lower-case, no port): `[hosts."example.org"]`.
    pub hosts: BTreeMap<String, HostOverride>,
    pub fetch: FetchConfig,
    pub retry: RetryConfig,
    pub store: StoreConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub api: ApiConfig,
}

/// The service's HTTP API for adding URLs and reading their state (see
/// `api.rs`). Off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where `trawler run` serves `POST /urls` and `GET /urls/{id}`
    /// (an IP address and port). It has no authentication: keep it on
    /// loopback or behind a proxy that has.
    pub listen: Option<SocketAddr>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: NonZeroUsize,
    /// Time for a client to send a request's headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time to handle one request, reading its body included (408 after).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `POST /urls` requests handled at once (each may hold a 16 MiB body
    /// and its parsed URLs in memory); more wait their turn.
    pub max_posts_in_flight: NonZeroUsize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: NonZeroUsize::new(128).unwrap(),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_posts_in_flight: NonZeroUsize::new(2).unwrap(),
        }
    }
}

/// The service's admin endpoints (see `admin.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `trawler run` serves /metrics, /healthz and /readyz
    /// (an IP address and port; loopback by default: put a proxy in front to
    /// expose it).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9187)) }
    }
}

/// How hard one host may be hit (see `politeness.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolitenessConfig {
    /// Requests in flight to one host at once.
    pub per_host_concurrency: NonZeroU32,
    /// Least time between two request starts to one host.
    #[serde(with = "humantime_serde")]
    pub per_host_delay: Duration,
    /// Host-level backoff after a 429 or 503, or after
    /// `connect_failures_before_backoff` requests in a row with no answer:
    /// the whole host waits `backoff_base * 2^(n-1)` (n = backoffs in a row
    /// with only throttles and failures between, capped at
    /// `backoff_max`, equal jitter), or its `Retry-After` (capped by
    /// `retry.retry_after_max`) when it sent one. The rule:
    /// [`crate::politeness`]'s `backoff` module.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Requests in a row that get no answer (timeouts, DNS failures,
    /// refused connections while the host answers on no other port), each
    /// sent after the previous failure came back, that put a host in backoff.
    pub connect_failures_before_backoff: NonZeroU32,
}

impl Default for PolitenessConfig {
    fn default() -> Self {
        Self {
            per_host_concurrency: NonZeroU32::new(2).unwrap(),
            per_host_delay: Duration::from_millis(250),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(600),
            connect_failures_before_backoff: NonZeroU32::new(3).unwrap(),
        }
    }
}

/// robots.txt handling (RFC 9309; see `robots.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RobotsConfig {
    /// Obey robots.txt. `--ignore-robots` turns this off (and says so loudly).
    pub obey: bool,
    /// The product token matched against `User-agent:` lines (RFC 9309
    /// §2.2.1), case-insensitively; groups for `*` apply when none matches.
    pub user_agent_token: String,
    /// How long a fetched robots.txt is used before it is fetched again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// After a 5xx or an unreachable robots.txt the host counts as disallowed
    /// (RFC 9309 §2.3.1.4) and its robots.txt is fetched again after this long.
    #[serde(with = "humantime_serde")]
    pub unreachable_retry: Duration,
    /// The largest `Crawl-delay` honoured; a larger one is clamped (and logged).
    #[serde(with = "humantime_serde")]
    pub max_crawl_delay: Duration,
}

impl Default for RobotsConfig {
    fn default() -> Self {
        Self {
            obey: true,
            user_agent_token: "trawler".to_owned(),
            cache_ttl: Duration::from_secs(24 * 3600),
            unreachable_retry: Duration::from_secs(600),
            max_crawl_delay: Duration::from_secs(30),
        }
    }
}

/// Link following (see `links.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Extract links from HTML responses and enqueue those that pass the
    /// rules below. Flag: `--follow`.
    pub follow: bool,
    /// Links are followed from pages of depth < max_depth (seeds are 0).
    pub max_depth: u32,
    /// Which links are in scope, relative to the page they are on.
    pub scope: Scope,
    /// If not empty, a link must match one of these regexes (`regex` crate
    /// syntax, matched against the normalized URL).
    pub allow: Patterns,
    /// A link matching any of these regexes is dropped.
    pub deny: Patterns,
    /// Drop links marked `rel=nofollow`.
    pub respect_nofollow: bool,
    /// Query parameters removed before de-duplication; `name*` matches by
    /// prefix, case-insensitively.
    pub strip_query_params: Vec<String>,
    /// Trap guards: longer URLs are dropped (bytes).
    pub max_url_length: usize,
    /// Trap guards: URLs with more path segments are dropped.
    pub max_path_segments: usize,
    /// Trap guards: a URL with one path segment more often than this is
    /// dropped (`/a/a/a/...`).
    pub max_repeated_segment: usize,
    /// Links kept per page (same-document `#...` references do not count);
    /// the rest are counted as `too_many_links`, with a warning the first
    /// time. The default, 100,000, is about 4× the largest index page
    /// measured: 26,088 links in the Rust docs' `core/all.html` (5,000 lost
    /// a fifth of those docs).
    pub max_links_per_page: usize,
    /// Most URLs in the database in all; discovered links past it are
    /// dropped as `max_pages` (seeds are always added). `None` = no cap.
    pub max_pages: Option<u64>,
    /// Most URLs in the database per host; past it, `max_pages_per_host`.
    pub max_pages_per_host: Option<u64>,
    /// Sitemaps (or sitemap indexes) whose URLs are seeds. Flag: `--sitemap`.
    /// When following, robots.txt `Sitemap:` lines are added to these.
    pub sitemaps: Vec<String>,
    /// RSS or Atom feeds whose entries' links are seeds, read at the start
    /// of each crawl and judged as a `--sitemap`'s URLs. Flag: `--feed`.
    pub feeds: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            follow: false,
            max_depth: 3,
            scope: Scope::Host,
            allow: Patterns::default(),
            deny: Patterns::default(),
            respect_nofollow: true,
            strip_query_params: ["utm_*", "gclid", "fbclid", "jsessionid", "phpsessid", "sessionid", "sid"]
                .map(String::from)
                .to_vec(),
            max_url_length: 2048,
            max_path_segments: 32,
            max_repeated_segment: 3,
            max_links_per_page: 100_000,
            max_pages: None,
            max_pages_per_host: None,
            sitemaps: Vec::new(),
            feeds: Vec::new(),
        }
    }
}

/// How far links may lead from the page they are found on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The same host.
    Host,
    /// The same registrable domain (Public Suffix List): `a.example.org` and
    /// `b.example.org`, but not `example.co.uk` and `other.co.uk`.
    Domain,
    /// Anywhere.
    Any,
}

/// Limits for one host that differ from `[politeness]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostOverride {
    /// Replaces `politeness.per_host_delay` for this host.
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// Replaces `politeness.per_host_concurrency` for this host.
    pub concurrency: Option<NonZeroU32>,
    /// Replaces `crawl.recrawl_after` for this host.
    #[serde(with = "humantime_serde")]
    pub recrawl_after: Option<Duration>,
    /// Request headers sent to this host only (its pages, robots.txt and
    /// sitemaps; not a redirect hop to another host). Plain values: a
    /// secret goes in `secret_headers`.
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are secrets, each a secret reference ([`read_secret`]):
    /// `"env:NAME"` or `"file:PATH"`, read at start.
    pub secret_headers: BTreeMap<String, String>,
    /// HTTP basic authentication (RFC 7617): the user, and the password as
    /// a secret reference ([`read_secret`]).
    pub basic_auth_user: Option<String>,
    pub basic_auth_password: Option<String>,
    /// A bearer token (RFC 6750) as a secret reference ([`read_secret`]).
    pub bearer_token: Option<String>,
    /// A `Cookie` header value (`"a=1; b=2"`) as a secret reference ([`read_secret`]).
    pub cookies: Option<String>,
    /// The proxy this host's requests go through, instead of `fetch.proxy`
    /// (`http://`, `https://` or `socks5://`; no credentials in it).
    pub proxy: Option<String>,
    /// Accept any certificate from this host: an expired or self-signed
    /// one, or another name's. Logged as a warning at start. Off.
    pub accept_invalid_certs: bool,
}

/// The keys of `[hosts."..."]` that `SIGHUP` reloads: politeness and
/// recrawling. The request settings are the HTTP client's, built at start.
pub const RELOADABLE_HOST_KEYS: [&str; 3] = ["delay", "concurrency", "recrawl_after"];

/// Reads the secret that `reference` names. A secret in the config is a
/// reference, never the secret itself: `"env:NAME"` (an environment
/// variable) or `"file:PATH"` (a file's contents, trailing line breaks
/// removed), so `trawler config` can print every setting.
///
/// Errors: not `env:` or `file:`, an unset or empty variable, an unreadable
/// or empty file; the message names the variable or file, never a value.
pub fn read_secret(reference: &str) -> Result<String, String> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    } else {
        return Err("secrets are \"env:NAME\" or \"file:PATH\", never written inline".to_owned());
    };
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(format!("{reference} is empty"));
    }
    Ok(value)
}

/// Whether `text` is a secret reference [`read_secret`] takes.
pub fn is_secret_reference(text: &str) -> bool {
    text.starts_with("env:") || text.starts_with("file:")
}

/// What a `[hosts."KEY"]` key names (see `gate/credentials.rs` for where
/// each sends what).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// A host as URLs carry it: lower case, IDNA, an IPv4 address in dotted
    /// form (`2130706433` is `127.0.0.1`), an IPv6 one in brackets. Its
    /// limits and plain headers apply to every scheme and port of it; its
    /// secrets go to `https://` on port 443 only.
    Host(String),
    /// One origin, `scheme://host[:port]` as the `url` crate serializes it
    /// (RFC 6454; a default port left out): its headers and secrets go there
    /// only.
    Origin(String),
}

impl HostKey {
    /// Reads a key, normalized the way URLs are (the `url` crate's WHATWG
    /// host parsing).
    ///
    /// Errors: why the key can never match a request: not a host, a port
    /// without a scheme, a path, credentials, another scheme than http(s).
    pub fn parse(key: &str) -> Result<Self, String> {
        if key.contains("://") {
            let url = url::Url::parse(key)
                .map_err(|e| format!("not an origin such as \"https://example.org:8443\": {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("an origin is http:// or https://".to_owned());
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(
                    "no credentials in a key: they are secrets (basic_auth_user, basic_auth_password)"
                        .to_owned(),
                );
            }
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                return Err("an origin has no path, query or fragment".to_owned());
            }
            return Ok(Self::Origin(url.origin().ascii_serialization()));
        }
        if let Ok(ip) = key.parse::<std::net::Ipv6Addr>() {
            return Ok(Self::Host(format!("[{ip}]")));
        }
        let url = url::Url::parse(&format!("http://{key}/"))
            .map_err(|e| format!("not a host name or address: {e}"))?;
        let bracketed = key.starts_with('[') && key.ends_with(']');
        if url.port().is_some() || (key.contains(':') && !bracketed) {
            return Err(format!(
                "a port needs a scheme: name the origin, as \"https://{key}\" or \"http://{key}\""
            ));
        }
        if !url.username().is_empty()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err("not a host name or address".to_owned());
        }
        Ok(Self::Host(url.host_str().unwrap_or_default().to_owned()))
    }

    /// The key as written once normalized.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Host(text) | Self::Origin(text) => text,
        }
    }
}

/// `hosts` with every key normalized ([`HostKey::parse`]), so that
/// `[hosts."Example.ORG"]` is the `example.org` that URLs carry.
///
/// Errors: a key that names no host or origin, or two keys that name the
/// same one; both name the keys as written.
pub fn normalize_host_keys(
    hosts: BTreeMap<String, HostOverride>,
) -> Result<BTreeMap<String, HostOverride>, ConfigError> {
    let mut normalized = BTreeMap::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (key, host) in hosts {
        let invalid = |reason: String| ConfigError::Invalid { key: format!("hosts.\"{key}\""), reason };
        let parsed = HostKey::parse(&key).map_err(invalid)?;
        let name = parsed.as_str().to_owned();
        if let Some(other) = written.get(&name) {
            return Err(invalid(format!(
                "names the same host as hosts.\"{other}\" ({name}: keys are compared as URLs are)"
            )));
        }
        written.insert(name.clone(), key.clone());
        normalized.insert(name, host);
    }
    Ok(normalized)
}

/// Checks one `[hosts."key"]` entry: a normalized key (a config built in
/// code skips [`normalize_host_keys`]), only what an origin may set under
/// an origin key, secrets as references, and one well-formed credential.
///
/// Errors: [`ConfigError::Invalid`] naming `hosts."key".field`.
fn validate_host(key: &str, host: &HostOverride) -> Result<(), ConfigError> {
    let invalid = |field: &str, reason: &str| {
        Err(ConfigError::Invalid { key: format!("hosts.\"{key}\"{field}"), reason: reason.to_owned() })
    };
    match HostKey::parse(key) {
        Err(why) => return invalid("", &why),
        Ok(parsed) if parsed.as_str() != key => {
            return invalid("", &format!("write it as \"{}\", as URLs carry it", parsed.as_str()));
        }
        Ok(HostKey::Origin(_)) => {
            let per_host = [
                ("delay", host.delay.is_some()),
                ("concurrency", host.concurrency.is_some()),
                ("recrawl_after", host.recrawl_after.is_some()),
                ("proxy", host.proxy.is_some()),
                ("accept_invalid_certs", host.accept_invalid_certs),
            ];
            if let Some((field, _)) = per_host.iter().find(|(_, set)| *set) {
                return invalid(
                    &format!(".{field}"),
                    "politeness, recrawling, proxies and certificates are a host's: set them under its name",
                );
            }
        }
        Ok(HostKey::Host(_)) => {}
    }
    let secrets = host.secret_headers.values().map(Some).chain([
        host.basic_auth_password.as_ref(),
        host.bearer_token.as_ref(),
        host.cookies.as_ref(),
    ]);
    if secrets.flatten().any(|s| !is_secret_reference(s)) {
        return invalid(
            "",
            "secret_headers, basic_auth_password, bearer_token and cookies are \"env:NAME\" or \"file:PATH\", never written inline",
        );
    }
    if host.basic_auth_user.is_some() && host.bearer_token.is_some() {
        return invalid(".bearer_token", "one Authorization: basic_auth_user or bearer_token");
    }
    if host.basic_auth_user.is_some() != host.basic_auth_password.is_some() {
        return invalid(".basic_auth_user", "needs basic_auth_password, and the other way round");
    }
    if host.basic_auth_user.as_deref().is_some_and(|u| u.contains(':') || u.chars().any(char::is_control)) {
        return invalid(
            ".basic_auth_user",
            "a user name holds no ':' and no control character (RFC 7617 §2)",
        );
    }
    Ok(())
}

/// The worker pool and the global rate limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlConfig {
    /// Worker tasks, i.e. the most fetches in flight at once.
    pub concurrency: NonZeroU32,
    /// Global cap on request starts, in requests/s; `None` (or absent) = no cap
    /// beyond `concurrency`. Fractions are allowed (`0.5` = one every 2 s).
    pub rate: Option<f64>,
    /// How long after a URL finished (done or failed) it is put back in the
    /// frontier to be fetched again, keeping its earlier attempts. `None` (or
    /// absent) = never. `[hosts."..."] recrawl_after` overrides it per host.
    #[serde(with = "humantime_serde")]
    pub recrawl_after: Option<Duration>,
    /// Adaptive revisit (Nutch's `AdaptiveFetchSchedule`): each URL keeps
    /// an interval of its own, starting at its `recrawl_after`, 1.4 times
    /// longer after a visit that found it unchanged (a 304, or the same
    /// body) and 0.8 times as long after one that found it changed, within
    /// `recrawl_min..=recrawl_max`. Off by default.
    pub adaptive_recrawl: bool,
    /// The shortest interval adaptive revisit gives a URL.
    #[serde(with = "humantime_serde")]
    pub recrawl_min: Duration,
    /// The longest interval adaptive revisit gives a URL.
    #[serde(with = "humantime_serde")]
    pub recrawl_max: Duration,
    /// A batch crawl (`trawler crawl`) that has run this long stops as the
    /// first SIGTERM stops it (fetches in flight get `shutdown.grace`,
    /// unfinished URLs stay queued for a rerun) and exits 0, its summary
    /// saying why: Scrapy's `CLOSESPIDER_TIMEOUT`. Unset = no limit.
    #[serde(with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// A batch crawl that has read this many body bytes (decoded, as
    /// committed) stops the same way. Unset = no limit.
    pub max_bytes: Option<u64>,
    /// URLs in flight with no result committed for this long means the crawl
    /// has stalled: it stops with an error (exit status 1). Raised at start
    /// to [`Config::longest_quiet`] when shorter, so that no legitimate
    /// wait counts as a stall.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl Default for CrawlConfig {
    fn default() -> Self {
        Self {
            concurrency: NonZeroU32::new(32).unwrap(),
            rate: None,
            recrawl_after: None,
            adaptive_recrawl: false,
            recrawl_min: Duration::from_secs(60 * 60),
            recrawl_max: Duration::from_secs(30 * 24 * 60 * 60),
            max_duration: None,
            max_bytes: None,
            stall_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// How one attempt is made (see `fetch.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Total time for one attempt's requests: connect, redirects, headers and
    /// body (not the waits for a redirect target's turn between them).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time to establish one TCP (and TLS) connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Sent as `User-Agent` on every request.
    pub user_agent: String,
    /// Redirects followed per attempt; one more is a `redirect_limit` failure.
    pub max_redirects: u32,
    /// Largest decoded body read, in bytes; a larger one fails as `body_too_large`.
    pub max_body_bytes: NonZeroU64,
    /// Addresses never connected to, as CIDR blocks (`"10.0.0.0/8"`,
    /// `"::1/128"`): checked on the address a host name resolves to, at
    /// connect time, and on IP literals, for every request (redirect hops,
    /// robots.txt, sitemaps). A refused URL fails as `blocked_address`.
    pub deny_ips: Vec<IpNet>,
    /// Exceptions to `deny_ips` (an address in both may be connected to).
    pub allow_ips: Vec<IpNet>,
    /// Host names answered without DNS, as `/etc/hosts` or curl's
    /// `--resolve` do: a name (`"staging.example.org"`) or every name under
    /// a domain (`"*.example.test"`, not the domain itself) to the addresses
    /// connected to. An exact name wins over a `*.` pattern, and a longer
    /// pattern over a shorter one. The addresses still go through
    /// `deny_ips`, and the URL keeps its host name (the `Host` header, TLS
    /// name, politeness and robots.txt are the name's).
    pub resolve: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// DNS servers asked instead of those of `/etc/resolv.conf` (UDP, then
    /// TCP), as `"ip:port"`: a local caching resolver for a crawl of many
    /// hosts, say. Empty = the system's configuration.
    pub nameservers: Vec<SocketAddr>,
    /// A PEM file of CA certificates trusted for HTTPS besides the system's
    /// (an internal CA, a test server's self-signed one). Read at start: a
    /// file that cannot be read or holds no certificate stops the start.
    pub ca_file: Option<std::path::PathBuf>,
    /// Media types worth a body (`"text/html"`, or `"text/*"` for a whole
    /// type). A 2xx response of another `Content-Type` (one without is
    /// `application/octet-stream`, RFC 9110 §8.3) is not read: its attempt
    /// ends after the headers with outcome `skipped`. Empty = every type.
    pub accept_content_types: Vec<String>,
    /// A proxy for every request (`http://`, `https://` or `socks5://`
    /// host:port; no credentials in it), unless the host has its own
    /// `[hosts."..."] proxy` or is in `no_proxy`. Unset = direct. The
    /// target's address still goes through `deny_ips` before the request
    /// is sent to the proxy.
    pub proxy: Option<String>,
    /// Hosts reached directly despite `proxy`: a name, or `.` and a domain
    /// for every name under it (`".corp.example"`), as curl's `NO_PROXY`.
    pub no_proxy: Vec<String>,
    /// Also use the proxies the environment names (`HTTP_PROXY`,
    /// `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, as reqwest reads them), after
    /// the config's. Off: a crawler's requests go where its config says.
    pub proxy_from_env: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            max_redirects: 10,
            max_body_bytes: NonZeroU64::new(10 * 1024 * 1024).unwrap(),
            deny_ips: Vec::new(),
            allow_ips: Vec::new(),
            resolve: BTreeMap::new(),
            nameservers: Vec::new(),
            ca_file: None,
            accept_content_types: Vec::new(),
            proxy: None,
            no_proxy: Vec::new(),
            proxy_from_env: false,
        }
    }
}

/// When a failed attempt is tried again (see `retry.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per URL in all, the first one included.
    pub max_attempts: NonZeroU32,
    /// Backoff before the first retry; it doubles for each further retry.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Upper bound of the backoff before jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Upper bound on a server's `Retry-After` that is honoured.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::new(4).unwrap(),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(600),
        }
    }
}

/// The SQLite database (see `store/sqlite.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database file; created if missing. Unused when `url` is set.
    pub path: PathBuf,
    /// A PostgreSQL database instead of the SQLite file:
    /// `postgres://user@host:port/db` (libpq's URI form; a password in
    /// `PGPASSWORD` rather than here). The database must exist; trawler
    /// creates its tables. `--db` takes either a path or such a URL.
    pub url: Option<String>,
    /// PostgreSQL: how long a daemon's lease on a host lasts without renewal,
    /// by the database's clock. Renewed every third of it; a daemon starts no
    /// request to a host later than its last renewal was sent plus this
    /// minus `fetch.timeout`, and a crashed daemon's hosts go to the others
    /// this long after its last renewal. At least twice `fetch.timeout`;
    /// unset: [`StoreConfig::lease`] picks one.
    #[serde(with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// SQLite `synchronous` in WAL mode: `"normal"` survives a process crash,
    /// `"full"` also survives a power cut (sqlite.org/pragma.html#pragma_synchronous).
    pub synchronous: Synchronous,
    /// Store each response's headers (JSON) with its attempt.
    pub save_headers: bool,
    /// Store each distinct response body once, zstd-compressed, in `bodies`
    /// (at most `fetch.max_body_bytes` each).
    pub save_body: bool,
    /// Writes blocked this long by another process's lock (an analyst's
    /// `BEGIN IMMEDIATE`, a backup) are reported: a warning now and every
    /// this long while it lasts, and `/healthz` answers 503. The crawl keeps
    /// waiting for the lock however long it is held.
    #[serde(with = "humantime_serde")]
    pub busy_warning: Duration,
    /// How long a crawl waits for its database to come back when it goes
    /// away (PostgreSQL: a server restart or failover, a session ended, a
    /// database refusing connections, a network cut): every task tries
    /// again with backoff, `/healthz` answers 503, what was fetched is kept;
    /// past this, the crawl stops with exit status 1 naming the cause. At
    /// least twice [`StoreConfig::lease`] on PostgreSQL, so that a daemon
    /// riding an outage out outlives its leases (others take its hosts,
    /// and its late results are kept as `stale_lease`); unset:
    /// [`StoreConfig::outage_grace`] picks one.
    #[serde(with = "humantime_serde")]
    pub outage_grace: Option<Duration>,
    /// How often the WAL is checkpointed and truncated while a crawl runs.
    #[serde(with = "humantime_serde")]
    pub checkpoint_every: Duration,
}

impl StoreConfig {
    /// The host lease length (PostgreSQL): `store.lease` if set, otherwise
    /// [`DEFAULT_LEASE`] or twice `request_timeout` (`fetch.timeout`),
    /// whichever is longer, so that a long timeout alone never makes the
    /// configuration invalid.
    pub fn lease(&self, request_timeout: Duration) -> Duration {
        self.lease.unwrap_or_else(|| DEFAULT_LEASE.max(request_timeout.saturating_mul(2)))
    }

    /// How long a crawl waits for its database to come back: `outage_grace`
    /// if set, otherwise [`DEFAULT_OUTAGE_GRACE`] or twice the lease
    /// ([`StoreConfig::lease`] for `request_timeout`), whichever is longer,
    /// so that a long lease alone never makes the configuration invalid.
    pub fn outage_grace(&self, request_timeout: Duration) -> Duration {
        self.outage_grace
            .unwrap_or_else(|| DEFAULT_OUTAGE_GRACE.max(self.lease(request_timeout).saturating_mul(2)))
    }
}

/// How long a crawl waits for its database to come back when
/// `store.outage_grace` is unset and the lease is at most half of it.
pub const DEFAULT_OUTAGE_GRACE: Duration = Duration::from_secs(120);

/// The host lease length when `store.lease` is unset and `fetch.timeout` is
/// at most half of it: a crashed daemon's hosts wait about a minute.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("trawler.db"),
            url: None,
            lease: None,
            synchronous: Synchronous::Normal,
            save_headers: false,
            save_body: false,
            busy_warning: Duration::from_secs(5),
            outage_grace: None,
            checkpoint_every: Duration::from_secs(60),
        }
    }
}

/// SQLite's `synchronous` setting, limited to the two that are safe in WAL mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    Full,
}

/// Graceful stop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After the first SIGINT/SIGTERM, how long fetches in flight may take to
    /// finish before they are cancelled.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(10) }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Which events are logged: a `tracing_subscriber::EnvFilter` directive
    /// such as `"info"` or `"warn,trawler=debug"`. `RUST_LOG`, when set,
    /// is used instead. Checked at load.
    pub level: LogFilter,
    /// Query parameters whose values are logged as `***`: those whose name
    /// contains one of these, case-insensitive (see `redact.rs`).
    pub redact_params: Vec<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: LogFilter("info".to_owned()),
            redact_params: crate::redact::DEFAULT_SECRET_PARAMS.map(str::to_owned).to_vec(),
        }
    }
}

/// A checked `log.level`: comma-separated `tracing_subscriber::EnvFilter`
/// directives, each a level (`info`) or `target=level` (`trawler=debug`,
/// `trawler[fetch]=trace`). A word that is not a level, such as `verbose`,
/// is refused rather than read as a target name that matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogFilter {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        use tracing_subscriber::filter::LevelFilter;
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
            if level.parse::<LevelFilter>().is_err() {
                return Err(format!(
                    "{directive:?}: expected a level (off, error, warn, info, debug, trace), \
                     or target=level such as trawler=debug"
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&text).map_err(|e| e.to_string())?;
        Ok(Self(text))
    }
}

impl std::str::FromStr for LogFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::try_from(text.to_owned())
    }
}

impl From<LogFilter> for String {
    fn from(filter: LogFilter) -> String {
        filter.0
    }
}

/// Regexes (`regex` crate syntax) compiled once, at load: a bad one is
/// refused naming its key, and nothing compiles them again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Patterns {
    sources: Vec<String>,
    set: regex::RegexSet,
}

impl Patterns {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Whether `text` matches any of them.
    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }
}

impl TryFrom<Vec<String>> for Patterns {
    type Error = regex::Error;

    fn try_from(sources: Vec<String>) -> Result<Self, regex::Error> {
        let set = regex::RegexSet::new(&sources)?;
        Ok(Self { sources, set })
    }
}

impl From<Patterns> for Vec<String> {
    fn from(patterns: Patterns) -> Vec<String> {
        patterns.sources
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

/// `text` for people, `json` (one object per line) for log shippers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// The longest a crawl may legitimately go without committing a result
    /// while URLs are in flight: an attempt's robots.txt fetch and its
    /// requests take at most `fetch.timeout` each, and each of its requests
    /// (the first and up to `fetch.max_redirects` hops, plus robots.txt) may
    /// first wait for its host's turn: the longest per-host delay, the
    /// Crawl-delay cap, a host backoff or Retry-After (at most
    /// `politeness.backoff_max` / `retry.retry_after_max`), or the global
    /// rate limit's interval; plus a minute's margin.
    pub fn longest_quiet(&self) -> Duration {
        let delays = self.hosts.values().filter_map(|h| h.delay).chain([self.politeness.per_host_delay]);
        let rate_interval = self.crawl.rate.map(|r| Duration::from_secs_f64(1.0 / r)).unwrap_or_default();
        let longest_wait = delays
            .chain([
                self.robots.max_crawl_delay,
                self.politeness.backoff_max,
                self.retry.retry_after_max,
                rate_interval,
            ])
            .max()
            .unwrap_or_default();
        let requests = self.fetch.max_redirects.saturating_add(2);
        longest_wait.saturating_mul(requests) + self.fetch.timeout.saturating_mul(2) + Duration::from_secs(60)
    }

    /// `crawl.stall_timeout`, raised to [`longest_quiet`](Self::longest_quiet)
    /// when shorter.
    pub fn stall_timeout(&self) -> Duration {
        self.crawl.stall_timeout.max(self.longest_quiet())
    }

    /// Layers defaults, the TOML file at `file` (if any), `TRAWLER_SECTION__KEY`
    /// environment variables and `overrides` (the flags, as a partial config
    /// whose absent fields are skipped), then validates the result.
    ///
    /// Errors: [`ConfigError::Load`] for a missing file, bad syntax, an unknown
    /// key or a value of the wrong type; [`ConfigError::Invalid`] for a value out
    /// of range. Both name the key.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config".to_owned(),
                    reason: format!("{} is not a readable file", file.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            // Only `SECTION__KEY` variables are settings: TRAWLER_CONFIG and
            // the like are read by clap instead.
            .merge(Env::prefixed("TRAWLER_").filter(|key| key.as_str().contains("__")).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        let config = Config { hosts: normalize_host_keys(config.hosts)?, ..config };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot express: upper bounds, least durations
    /// and relations between keys (counts are `NonZero*`, so a zero is
    /// already refused by serde with the key named), section by section in
    /// the order of the file. Errors: [`ConfigError::Invalid`] naming the
    /// first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.crawl.validate()?;
        self.politeness.validate()?;
        self.robots.validate()?;
        validate_hosts(&self.hosts)?;
        self.fetch.validate(&self.hosts)?;
        self.retry.validate()?;
        self.store.validate(self.fetch.timeout)
    }

    /// The effective configuration as TOML, for `trawler config`, with the
    /// password of `store.url` replaced by `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = shown.store.url.map(|url| crate::redact::ForLog(&url).to_string());
        toml::to_string_pretty(&shown).expect("every config value has a TOML form")
    }
}

/// A refusal of `key`'s value, for `reason`.
fn invalid(key: &str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key: key.to_owned(), reason: reason.to_owned() })
}

impl CrawlConfig {
    /// `[crawl]`: the worker count, the rate, and the recrawl intervals.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency.get() > 10_000 {
            return invalid("crawl.concurrency", "must be at most 10000");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0)
        {
            return invalid("crawl.rate", "must be a number of requests/s above 0 and at most 1000000");
        }
        if self.recrawl_after.is_some_and(|d| d < MIN_RECRAWL_AFTER) {
            return invalid("crawl.recrawl_after", "must be at least 1s");
        }
        if self.recrawl_min < MIN_RECRAWL_AFTER {
            return invalid("crawl.recrawl_min", "must be at least 1s");
        }
        if self.recrawl_max < self.recrawl_min {
            return invalid("crawl.recrawl_max", "must not be below crawl.recrawl_min");
        }
        Ok(())
    }
}

impl PolitenessConfig {
    /// `[politeness]`: a backoff that starts above zero and may grow.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return invalid(
                "politeness.backoff_max",
                "backoff_base must be above zero and backoff_max not below it",
            );
        }
        Ok(())
    }
}

impl RobotsConfig {
    /// `[robots]`: the product token that robots.txt groups are matched by.
    fn validate(&self) -> Result<(), ConfigError> {
        let token = &self.user_agent_token;
        if token.trim().is_empty()
            || !token.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
        {
            return invalid("robots.user_agent_token", "must be letters, '-' and '_' only (RFC 9309 §2.2.1)");
        }
        Ok(())
    }
}

/// `[hosts."..."]`: each key and its settings ([`validate_host`]), and
/// recrawl intervals of at least [`MIN_RECRAWL_AFTER`].
fn validate_hosts(hosts: &BTreeMap<String, HostOverride>) -> Result<(), ConfigError> {
    if hosts.values().any(|h| h.recrawl_after.is_some_and(|d| d < MIN_RECRAWL_AFTER)) {
        return invalid("hosts.<host>.recrawl_after", "must be at least 1s");
    }
    for (key, host) in hosts {
        validate_host(key, host)?;
    }
    Ok(())
}

impl FetchConfig {
    /// `[fetch]`: media types, proxies (the hosts' too), `resolve` entries,
    /// timeouts and the User-Agent.
    fn validate(&self, hosts: &BTreeMap<String, HostOverride>) -> Result<(), ConfigError> {
        if let Some(bad) =
            self.accept_content_types.iter().find(|t| crate::fetch::AcceptTypes::parse(t).is_none())
        {
            return invalid(
                "fetch.accept_content_types",
                &format!("{bad:?} is not a media type such as \"text/html\" or \"text/*\""),
            );
        }
        let mut proxies = hosts.values().filter_map(|h| h.proxy.as_ref()).chain(self.proxy.as_ref());
        if proxies.any(|proxy| !is_proxy_url(proxy)) {
            return invalid(
                "fetch.proxy (or hosts.<host>.proxy)",
                "an http://, https:// or socks5:// URL with a host and no credentials",
            );
        }
        self.validate_resolve()?;
        if self.timeout.is_zero() {
            return invalid("fetch.timeout", "must be above zero");
        }
        if self.connect_timeout.is_zero() {
            return invalid("fetch.connect_timeout", "must be above zero");
        }
        if self.user_agent.trim().is_empty() {
            return invalid("fetch.user_agent", "must not be empty");
        }
        if reqwest_safe_header(&self.user_agent).is_err() {
            return invalid("fetch.user_agent", "must be visible ASCII (an HTTP header value)");
        }
        Ok(())
    }

    /// `fetch.resolve`: lower-case names (or `*.` and a domain), each with
    /// an address.
    fn validate_resolve(&self) -> Result<(), ConfigError> {
        for (name, addresses) in &self.resolve {
            let host = name.strip_prefix("*.").unwrap_or(name);
            if host.is_empty() || host.contains(['*', '/', ':', ' ']) || host != host.to_ascii_lowercase() {
                return invalid(
                    "fetch.resolve",
                    "keys are lower-case host names, or *. and a domain (\"*.example.test\")",
                );
            }
            if addresses.is_empty() {
                return invalid("fetch.resolve", "each name needs at least one address");
            }
        }
        Ok(())
    }
}

/// Whether `proxy` is a proxy URL reqwest can use and the logs may show:
/// http, https or socks5, with a host and no credentials.
fn is_proxy_url(proxy: &str) -> bool {
    url::Url::parse(proxy).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h")
            && url.host_str().is_some()
            && url.username().is_empty()
            && url.password().is_none()
    })
}

impl RetryConfig {
    /// `[retry]`: a bounded number of attempts and a backoff that may grow.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts.get() > 100 {
            return invalid("retry.max_attempts", "must be at most 100");
        }
        if self.backoff_base.is_zero() {
            return invalid("retry.backoff_base", "must be above zero");
        }
        if self.backoff_max < self.backoff_base {
            return invalid("retry.backoff_max", "must not be below retry.backoff_base");
        }
        Ok(())
    }
}

impl StoreConfig {
    /// `[store]`: periods, the database's address, and on PostgreSQL a
    /// lease and an outage grace long enough for `fetch_timeout`
    /// (`fetch.timeout`).
    fn validate(&self, fetch_timeout: Duration) -> Result<(), ConfigError> {
        if self.checkpoint_every < Duration::from_secs(1) {
            return invalid("store.checkpoint_every", "must be at least 1s");
        }
        if self.busy_warning < Duration::from_secs(1) {
            return invalid("store.busy_warning", "must be at least 1s");
        }
        if self.path.as_os_str().is_empty() {
            return invalid("store.path", "must not be empty");
        }
        if let Some(url) = &self.url
            && !is_postgres_url(url)
        {
            return invalid("store.url", "must be a postgres:// or postgresql:// URL");
        }
        if self.url.is_some() && self.lease(fetch_timeout) < fetch_timeout.saturating_mul(2) {
            // Renewals a third of the lease apart must keep the deadline
            // (last renewal sent + lease - fetch.timeout) ahead of the next.
            return invalid("store.lease", "must be at least twice fetch.timeout (on PostgreSQL)");
        }
        if let Some(grace) = self.outage_grace {
            if grace < Duration::from_secs(1) {
                return invalid("store.outage_grace", "must be at least 1s");
            }
            if self.url.is_some() && grace < self.lease(fetch_timeout).saturating_mul(2) {
                // Riding an outage out past its leases' lapse is what hands
                // its hosts to the other daemons without losing its results.
                return invalid("store.outage_grace", "must be at least twice store.lease (on PostgreSQL)");
            }
        }
        Ok(())
    }
}

/// Whether `text` names a PostgreSQL database (`postgres://` or
/// `postgresql://`, the schemes libpq accepts), not a SQLite file.
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// figment's errors, one per line, each naming its key as written in the
/// file (`crawl.rate`; figment's own message would say `default.crawl.rate`,
/// after its profile, which trawler does not use) and where the value came
/// from.
fn describe(error: &figment::Error) -> String {
    let lines: Vec<String> = error
        .clone()
        .into_iter()
        .map(|e| {
            let mut line = e.kind.to_string();
            if !e.path.is_empty() {
                line += &format!(" for key `{}`", e.path.join("."));
            }
            if let Some(md) = &e.metadata {
                match &md.source {
                    Some(source) => line += &format!(" in {source} {}", md.name),
                    None => line += &format!(" in {}", md.name),
                }
            }
            line
        })
        .collect();
    lines.join("\n")
}

fn reqwest_safe_header(value: &str) -> Result<(), ()> {
    value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)).then_some(()).ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct NoOverrides {}

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_lease_must_outlast_two_request_timeouts_on_postgresql_only() {
        let mut config = Config::default();
        config.fetch.timeout = Duration::from_secs(31);
        config.validate().expect("SQLite leases no hosts: any timeout goes");
        config.store.url = Some("postgres://trawler@127.0.0.1/crawl".into());
        config.store.lease = Some(Duration::from_secs(60));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("store.lease") && err.contains("twice fetch.timeout"), "{err}");
        config.store.lease = Some(Duration::from_secs(62));
        config.validate().unwrap();
    }

    #[test]
    fn an_outage_grace_must_outlast_two_leases_on_postgresql_only() {
        let mut config = Config::default();
        config.store.outage_grace = Some(Duration::from_secs(30));
        config.validate().expect("SQLite leases no hosts");
        config.store.url = Some("postgres://trawler@127.0.0.1/crawl".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("store.outage_grace") && err.contains("twice store.lease"), "{err}");
        config.store.outage_grace = Some(Duration::from_secs(120));
        config.validate().expect("twice the default lease");
        config.store.outage_grace = None;
        config.fetch.timeout = Duration::from_secs(45);
        config.validate().expect("unset: long enough for any lease");
        assert_eq!(config.store.outage_grace(config.fetch.timeout), Duration::from_secs(180));
        config.store.outage_grace = Some(Duration::ZERO);
        assert!(config.validate().unwrap_err().to_string().contains("at least 1s"));
    }

    #[test]
    fn an_unset_lease_outlasts_two_request_timeouts() {
        let mut config = Config::default();
        config.store.url = Some("postgres://trawler@127.0.0.1/crawl".into());
        assert_eq!(config.store.lease(config.fetch.timeout), DEFAULT_LEASE);
        config.fetch.timeout = Duration::from_secs(45);
        config.validate().expect("no lease set: one long enough is picked");
        assert_eq!(config.store.lease(config.fetch.timeout), Duration::from_secs(90));
    }

    #[test]
    fn file_then_overrides_win_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[fetch]\ntimeout = \"1500ms\"\n[crawl]\nconcurrency = 7\n").unwrap();
        let overrides = serde_json::json!({ "crawl": { "concurrency": 9 } });
        let config = Config::load(Some(&file), overrides).unwrap();
        assert_eq!(config.fetch.timeout, Duration::from_millis(1500));
        assert_eq!(config.crawl.concurrency.get(), 9);
        assert_eq!(config.retry.max_attempts.get(), 4);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[crawl]\nconcurrency = 0\n").unwrap();
        let err = Config::load(Some(&file), NoOverrides::default()).unwrap_err().to_string();
        assert!(err.contains("crawl.concurrency"), "{err}");

        std::fs::write(&file, "[fetch]\ntimeout = \"soon\"\n").unwrap();
        let err = Config::load(Some(&file), NoOverrides::default()).unwrap_err().to_string();
        assert!(err.contains("for key `fetch.timeout` in "), "{err}");
        assert!(err.contains("t.toml"), "{err}");

        std::fs::write(&file, "[fetch]\ntimeoutt = \"1s\"\n").unwrap();
        let err = Config::load(Some(&file), NoOverrides::default()).unwrap_err().to_string();
        assert!(err.contains("timeoutt"), "{err}");
    }

    #[test]
    fn values_are_parsed_into_types_at_load_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        for (toml, key) in [
            ("[log]\nlevel = \"verbose!!\"\n", "log.level"),
            ("[log]\nlevel = \"verbose\"\n", "log.level"),
            ("[log]\nlevel = \"info,trawler=loud\"\n", "log.level"),
            ("[admin]\nlisten = \"localhost:80:80\"\n", "admin.listen"),
            ("[api]\nlisten = \"9188\"\n", "api.listen"),
            ("[fetch]\ndeny_ips = [\"10.0.0.0/33\"]\n", "fetch.deny_ips"),
            ("[discovery]\ndeny = [\"(unclosed\"]\n", "discovery.deny"),
            ("[politeness]\nper_host_concurrency = 0\n", "politeness.per_host_concurrency"),
            ("[hosts.\"a.example\"]\nconcurrency = 0\n", "concurrency"),
            ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
            ("[fetch]\nmax_body_bytes = 0\n", "fetch.max_body_bytes"),
            ("[api]\nmax_posts_in_flight = 0\n", "api.max_posts_in_flight"),
            ("[fetch.resolve]\n\"*\" = [\"127.0.0.1\"]\n", "fetch.resolve"),
            ("[fetch.resolve]\n\"Big.example\" = [\"127.0.0.1\"]\n", "fetch.resolve"),
            ("[fetch.resolve]\n\"a.example\" = []\n", "fetch.resolve"),
            ("[fetch.resolve]\n\"a.example\" = [\"localhost\"]\n", "fetch.resolve"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Config::load(Some(&file), NoOverrides::default()).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        std::fs::write(&file, "[log]\nlevel = \"warn,trawler=debug,trawler[fetch]=trace\"\n").unwrap();
        let config = Config::load(Some(&file), NoOverrides::default()).unwrap();
        assert_eq!(config.log.level.as_str(), "warn,trawler=debug,trawler[fetch]=trace");
    }

    #[test]
    fn the_service_example_config_refuses_internal_addresses() {
        use crate::fetch::AddressPolicy;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/trawler.toml");
        let config = Config::load(Some(&path), NoOverrides::default()).unwrap();
        let policy = AddressPolicy::new(&config.fetch);
        for internal in
            ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "::1", "::ffff:10.0.0.1", "fd00::1"]
        {
            assert!(!policy.permits(internal.parse().unwrap()), "{internal} is not refused");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(policy.permits(public.parse().unwrap()), "{public} is refused");
        }
        let default = AddressPolicy::new(&Config::default().fetch);
        assert!(default.permits("127.0.0.1".parse().unwrap()), "batch crawls of loopback sites stay easy");
    }

    #[test]
    fn a_stall_timeout_shorter_than_the_longest_legitimate_wait_is_raised() {
        let mut config = Config::default();
        // 12 requests (10 redirect hops, the first, robots.txt) each after a
        // 10 min backoff, two 30 s timeouts, a minute's margin.
        assert_eq!(config.longest_quiet(), Duration::from_secs(12 * 600 + 2 * 30 + 60));
        assert_eq!(config.stall_timeout(), config.longest_quiet(), "15 min is raised");
        config.crawl.stall_timeout = Duration::from_secs(24 * 3600);
        assert_eq!(config.stall_timeout(), Duration::from_secs(24 * 3600), "a longer one is kept");
        // A slow global rate is a wait too.
        config.crawl.rate = Some(0.0001);
        assert_eq!(config.longest_quiet(), Duration::from_secs(12 * 10_000 + 2 * 30 + 60));
        // With short waits, so is the timeout.
        let mut quick = Config::default();
        quick.politeness.backoff_max = Duration::from_secs(1);
        quick.retry.retry_after_max = Duration::from_secs(1);
        quick.robots.max_crawl_delay = Duration::from_secs(1);
        quick.fetch.max_redirects = 0;
        assert_eq!(quick.longest_quiet(), Duration::from_secs(2 + 60 + 60));
    }

    /// config/trawler.toml documents the defaults: it must parse to exactly
    /// them, and name every key (commented out where the default is unset).
    #[test]
    fn the_shipped_example_is_the_defaults_with_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/trawler.toml");
        let example = std::fs::read_to_string(&path).unwrap();
        assert_eq!(Config::load(Some(&path), NoOverrides::default()).unwrap(), Config::default());
        let mut defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        // Keys unset by default are documented commented out.
        let crawl = defaults.get_mut("crawl").unwrap().as_table_mut().unwrap();
        crawl.insert("rate".into(), 0.into());
        crawl.insert("recrawl_after".into(), 0.into());
        defaults.insert(
            "api".into(),
            toml::Value::Table([("listen".to_owned(), 0.into())].into_iter().collect()),
        );
        let keys = [
            "delay",
            "concurrency",
            "recrawl_after",
            "headers",
            "secret_headers",
            "basic_auth_user",
            "basic_auth_password",
            "bearer_token",
            "cookies",
            "proxy",
            "accept_invalid_certs",
        ];
        let hosts = example
            .lines()
            .skip_while(|l| !l.starts_with("# [hosts."))
            .take(keys.len() + 1)
            .collect::<Vec<_>>();
        assert_eq!(hosts.len(), keys.len() + 1, "a commented [hosts.\"...\"] example with every key");
        let example_host: HostOverride =
            toml::from_str(&hosts[1..].iter().map(|l| &l[2..]).collect::<Vec<_>>().join("\n")).unwrap();
        assert_eq!(example_host.delay, Some(Duration::from_secs(2)), "the example parses");
        for (line, key) in hosts[1..].iter().zip(keys) {
            assert!(line.starts_with(&format!("# {key} =")), "{hosts:?}");
        }
        for (section, keys) in defaults {
            if section == "hosts" {
                continue;
            }
            assert!(example.contains(&format!("[{section}]")), "section {section} undocumented");
            for key in keys.as_table().unwrap().keys() {
                let documented = example.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{key} ="))
                });
                assert!(documented, "{section}.{key} is not in config/trawler.toml");
            }
        }
    }

    #[test]
    fn effective_config_prints_every_section() {
        let text = Config::default().to_toml();
        for section in [
            "[crawl]",
            "[politeness]",
            "[robots]",
            "[discovery]",
            "[fetch]",
            "[retry]",
            "[store]",
            "[shutdown]",
            "[log]",
            "[admin]",
            "[api]",
        ] {
            assert!(text.contains(section), "{text}");
        }
    }
}
