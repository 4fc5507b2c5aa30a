//! One fetch attempt over HTTP: the only code that knows reqwest.
//!
//! A [`Fetcher`] holds one shared `reqwest::Client` (connection pool, gzip /
//! brotli / deflate decoding, rustls). Redirects are followed here rather than
//! by reqwest, a request at a time ([`Attempt`]), so that the caller can check
//! and pace every hop, every hop is recorded, and loops are named as such.
//! The attempt's requests (connect, every redirect, headers and body) are
//! bounded by `fetch.timeout` in all, and the decoded body by
//! `fetch.max_body_bytes`, so a hostile server can neither hang a worker nor
//! bloat the process. Failures come back as data ([`Fetched::error`]), never
//! as a Rust error.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use reqwest::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION, RETRY_AFTER,
};
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::FetchConfig;
use crate::links::{Directives, Found, LinkExtractor, is_html};
use crate::redact::ForLog;
use crate::store::{AttemptRecord, Hop, Validators};

/// Why an attempt did not end with a final HTTP response: the fixed set
/// stored in `attempts.error_kind`, by [`ErrorKind::as_str`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `fetch.timeout` (the whole attempt) or `fetch.connect_timeout` ran out.
    Timeout,
    /// The TCP connection was refused, reset or closed before a response.
    Connect,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The connection failed while the body was being read: reset, or
    /// closed before the declared `Content-Length` (compressed or not).
    Read,
    /// The server's response was not valid HTTP or its encoding was corrupt.
    Protocol,
    /// More than `fetch.max_redirects` redirects.
    RedirectLimit,
    /// A redirect led back to a URL already visited in this attempt.
    RedirectLoop,
    /// The body (decoded) exceeded `fetch.max_body_bytes`.
    BodyTooLarge,
    /// The URL, or a redirect's `Location`, is not an absolute http(s) URL.
    InvalidUrl,
    /// robots.txt disallows the URL; no request was made.
    RobotsDisallowed,
    /// The host's robots.txt answered 5xx or could not be fetched, which
    /// means "disallow all for now" (RFC 9309 §2.3.1.4); no request was made.
    RobotsUnreachable,
    /// The address the host resolved to (or the IP literal) is refused by
    /// `fetch.deny_ips`; no connection was made.
    BlockedAddress,
    /// A redirect led out of the crawl's scope (`discovery.scope`, when
    /// following links); its target was not requested.
    OutOfScope,
    /// A response arrived, with a status worth retrying (408, 429, 5xx):
    /// set by the worker when the retry policy says so, never by a fetch.
    HttpStatus,
}

impl ErrorKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Dns => "dns",
            ErrorKind::Tls => "tls",
            ErrorKind::Read => "read",
            ErrorKind::Protocol => "protocol",
            ErrorKind::RedirectLimit => "redirect_limit",
            ErrorKind::RedirectLoop => "redirect_loop",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::RobotsDisallowed => "robots_disallowed",
            ErrorKind::RobotsUnreachable => "robots_unreachable",
            ErrorKind::BlockedAddress => "blocked_address",
            ErrorKind::OutOfScope => "out_of_scope",
            ErrorKind::HttpStatus => "http_status",
        }
    }

    /// Whether another attempt may succeed: network conditions, not the
    /// content. DNS failures count, as in Scrapy's default `RETRY_EXCEPTIONS`,
    /// because resolvers fail transiently under load.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Connect
                | ErrorKind::Dns
                | ErrorKind::Read
                | ErrorKind::RobotsUnreachable
        )
    }
}

/// The result of one attempt.
#[derive(Debug)]
pub struct Fetched {
    /// Everything observed, ready to store (its `error_kind` mirrors `error`).
    pub record: AttemptRecord,
    /// Set when no final response was received.
    pub error: Option<ErrorKind>,
    /// The server's `Retry-After`, when the final response carried a valid one.
    pub retry_after: Option<Duration>,
    /// Links in the body, when extraction is on and the final response was
    /// a 2xx HTML page.
    pub found: Option<Found>,
    /// The request could not be made for lack of this process's own
    /// resources: out of file descriptors (`EMFILE`, `ENFILE`) when opening
    /// a socket or resolving a name. Not the host's fault, and not an
    /// attempt at the URL.
    pub out_of_descriptors: bool,
    /// The final response was `304 Not Modified` to the validators the
    /// attempt sent ([`Attempt::conditional`]): the URL's content is as it
    /// was, and the record has no content fields (type, size, hash).
    pub not_modified: bool,
    /// The final response was a 2xx of a type `fetch.accept_content_types`
    /// leaves out: its body was not read, and the record's
    /// `error_message` says which type it was.
    pub skipped: bool,
}

impl Fetched {
    /// An attempt that ended before any request: `kind` says why.
    pub fn without_request(kind: ErrorKind, message: String, retry_after: Option<Duration>) -> Self {
        let now = SystemTime::now();
        let record = AttemptRecord {
            started_at: Some(now),
            fetched_at: Some(now),
            error_kind: Some(kind),
            error_message: Some(message),
            ..Default::default()
        };
        Fetched {
            record,
            error: Some(kind),
            retry_after,
            found: None,
            out_of_descriptors: false,
            not_modified: false,
            skipped: false,
        }
    }
}

/// What stays true across redirects and survives a timeout mid-attempt.
#[derive(Default)]
struct Progress {
    record: AttemptRecord,
    retry_after: Option<Duration>,
    found: Option<Found>,
    out_of_descriptors: bool,
    /// Validators the next request sends (the attempt's first only).
    conditional: Option<Validators>,
    /// Why the final response's body was not read, if it was not.
    skipped: Option<String>,
    /// The final response was a 304 to validators this attempt sent.
    not_modified: bool,
}

struct Failure(ErrorKind, String);

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
    /// What is sent to one host only, by host name (`[hosts."..."]`).
    host_headers: Arc<HashMap<String, HeaderMap>>,
    /// The client for the hosts that may present any certificate
    /// (`[hosts."..."] accept_invalid_certs`), and those hosts.
    insecure: Option<(reqwest::Client, Arc<std::collections::HashSet<String>>)>,
    /// Where requests may go (`fetch.deny_ips`, `fetch.allow_ips`).
    addresses: Arc<AddressPolicy>,
    /// The client's resolver, also used to time each request's lookup.
    resolver: Arc<Resolver>,
}

/// Which addresses requests may go to: those not in `fetch.deny_ips`, and
/// those in `fetch.allow_ips`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// is judged as the IPv4 address it carries too, so writing an address
/// another way cannot get around a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(config: &FetchConfig) -> Self {
        Self { deny: config.deny_ips.clone(), allow: config.allow_ips.clone() }
    }

    /// Whether a connection to `ip` may be made.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let forms = [ip, ip.to_canonical()];
        let listed = |nets: &[IpNet]| forms.iter().any(|ip| nets.iter().any(|net| net.contains(ip)));
        !listed(&self.deny) || listed(&self.allow)
    }
}

/// The error a refused address fails with, found in reqwest's error chain by
/// [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("address {ip} of {host} is refused by fetch.deny_ips")]
struct BlockedAddress {
    host: String,
    ip: IpAddr,
}

/// `fetch.resolve`: host names answered without DNS, exact names first,
/// then `*.` domains, longest first.
#[derive(Debug, Default)]
struct Overrides {
    names: HashMap<String, Vec<IpAddr>>,
    /// (`".example.test"`, addresses), longest suffix first.
    domains: Vec<(String, Vec<IpAddr>)>,
}

impl Overrides {
    fn new(config: &BTreeMap<String, Vec<IpAddr>>) -> Self {
        let mut overrides = Self::default();
        for (name, addresses) in config {
            match name.strip_prefix('*') {
                Some(suffix) => overrides.domains.push((suffix.to_owned(), addresses.clone())),
                None => {
                    overrides.names.insert(name.clone(), addresses.clone());
                }
            }
        }
        overrides.domains.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        overrides
    }

    /// The addresses `host` (lower case, as `url` gives it) is answered
    /// with, if it is overridden.
    fn lookup(&self, host: &str) -> Option<&[IpAddr]> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.names.get(host).map(Vec::as_slice).or_else(|| {
            self.domains
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, addresses)| addresses.as_slice())
        })
    }
}

/// Where names not in `fetch.resolve` are looked up.
enum Lookup {
    /// hickory-dns's async resolver, configured from `/etc/resolv.conf` and
    /// answering from `/etc/hosts` first; it caches answers for their TTL
    /// (at most 8,192 of them; hickory-resolver's `ResolverOpts` defaults).
    Hickory(Box<hickory_resolver::TokioResolver>),
    /// getaddrinfo(3) on tokio's blocking pool, uncached (reqwest's default),
    /// where the system's resolver configuration cannot be read.
    System,
}

impl Lookup {
    fn new() -> Self {
        let built = hickory_resolver::TokioResolver::builder_tokio().and_then(|builder| builder.build());
        match built {
            Ok(resolver) => Self::Hickory(Box::new(resolver)),
            Err(e) => {
                tracing::warn!(
                    "DNS: the system's resolver configuration is unusable ({e}); using getaddrinfo"
                );
                Self::System
            }
        }
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, BoxError> {
        match self {
            Self::Hickory(resolver) => Ok(resolver.lookup_ip(host).await?.iter().collect()),
            Self::System => Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect()),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Name resolution for every request: `fetch.resolve`, else DNS
/// ([`Lookup`]), less the addresses the policy refuses, so that the check
/// is on the very addresses connected to (no DNS rebinding between a check
/// and the connect). A name with only refused addresses fails with
/// [`BlockedAddress`]. The attempt resolves a request's name itself first,
/// to time it (`attempts.dns_ms`); the connect, if one is needed, then
/// asks again and is answered from the cache.
struct Resolver {
    policy: Arc<AddressPolicy>,
    overrides: Overrides,
    /// Built on first use, inside the runtime hickory's sockets need.
    lookup: std::sync::OnceLock<Lookup>,
    /// Names answered without `policy`: the configured proxies'.
    exempt: std::collections::HashSet<String>,
}

impl Resolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, BoxError> {
        let resolved = match self.overrides.lookup(host) {
            Some(addresses) => addresses.to_vec(),
            None => self.lookup.get_or_init(Lookup::new).ips(host).await?,
        };
        if self.exempt.contains(host) {
            return Ok(resolved);
        }
        let permitted: Vec<IpAddr> = resolved.iter().copied().filter(|ip| self.policy.permits(*ip)).collect();
        match (permitted.is_empty(), resolved.first()) {
            (true, Some(refused)) => Err(Box::new(BlockedAddress { host: host.to_owned(), ip: *refused })),
            _ => Ok(permitted),
        }
    }
}

/// [`Resolver`] as reqwest's resolver.
struct CheckedResolver(Arc<Resolver>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        Box::pin(async move {
            let ips = resolver.resolve(name.as_str()).await?;
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as reqwest::dns::Addrs)
        })
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("fetch.ca_file {}: {reason}", path.display())]
    CaFile { path: std::path::PathBuf, reason: String },
    /// A `[hosts."..."]` secret could not be read, or is no header value.
    #[error("{key}: {reason}")]
    Secret { key: String, reason: String },
    #[error(transparent)]
    Client(#[from] reqwest::Error),
}

/// The certificates in the PEM file at `path` (`fetch.ca_file`).
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let fail = |reason: String| ClientError::CaFile { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// How the client keeps idle connections. reqwest's defaults (no limit per
/// host, 90 s) make descriptors and memory grow with the number of hosts a
/// crawl touches rather than with its concurrency; hyper-util's pool has
/// no total cap (hyper issue 2236), so the crawl bounds each host instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Idle connections kept per host: no more than requests the host may
    /// have in flight at once (politeness).
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept: long enough for the host's next
    /// turn after its delay, short enough that hosts waiting their turn by
    /// the thousand do not each hold one.
    pub idle_timeout: Duration,
}

impl Pool {
    /// The shortest and longest idle timeouts [`Pool::for_politeness`] gives.
    pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
        (Duration::from_millis(500), Duration::from_secs(90));

    /// Limits that fit politeness: idle connections per host up to the
    /// largest per-host concurrency (at most `concurrency`), kept for twice
    /// the longest per-host delay, within [`Pool::IDLE_TIMEOUT_RANGE`]
    /// (500 ms for the default 250 ms delay).
    pub fn for_politeness(
        concurrency: u32,
        per_host_concurrency: impl IntoIterator<Item = u32>,
        per_host_delays: impl IntoIterator<Item = Duration>,
    ) -> Self {
        let per_host = per_host_concurrency.into_iter().max().unwrap_or(1).clamp(1, concurrency);
        let delay = per_host_delays.into_iter().max().unwrap_or_default();
        let (least, most) = Self::IDLE_TIMEOUT_RANGE;
        Self { max_idle_per_host: per_host as usize, idle_timeout: (delay * 2).clamp(least, most) }
    }
}

impl Fetcher {
    /// Builds the shared client: user agent, connect timeout, no automatic
    /// redirects, no proxy from the environment, idle connections as `pool`
    /// says, `fetch.ca_file`'s certificates trusted besides the system's.
    ///
    /// Errors: `fetch.ca_file` unreadable or without a certificate;
    /// reqwest's, when the TLS backend cannot initialise.
    pub fn new(
        config: &FetchConfig,
        save_headers: bool,
        save_body: bool,
        pool: Pool,
    ) -> Result<Self, ClientError> {
        Self::with_hosts(config, &BTreeMap::new(), save_headers, save_body, pool)
    }

    /// [`Fetcher::new`] with the request settings of `hosts`
    /// (`[hosts."..."]`): headers, credentials and cookies sent to each
    /// host only, its proxy, and whether any certificate is accepted from it.
    ///
    /// Errors: as [`Fetcher::new`]; a secret that cannot be read.
    pub fn with_hosts(
        config: &FetchConfig,
        hosts: &BTreeMap<String, crate::config::HostOverride>,
        save_headers: bool,
        save_body: bool,
        pool: Pool,
    ) -> Result<Self, ClientError> {
        let addresses = Arc::new(AddressPolicy::new(config));
        let proxies = Proxies::new(config, hosts);
        // A proxy named by its host name is connected to as the config
        // says: its address is not a crawl target, so deny_ips does not
        // apply to it (the target's address does, before each request).
        let exempt = proxies.names();
        let resolver = Arc::new(Resolver {
            policy: addresses.clone(),
            overrides: Overrides::new(&config.resolve),
            lookup: std::sync::OnceLock::new(),
            exempt,
        });
        let build = |insecure: bool| -> Result<reqwest::Client, ClientError> {
            let mut client = reqwest::Client::builder()
                .user_agent(&config.user_agent)
                .connect_timeout(config.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(pool.max_idle_per_host)
                .pool_idle_timeout(pool.idle_timeout)
                .dns_resolver(Arc::new(CheckedResolver(resolver.clone())));
            if !config.proxy_from_env {
                client = client.no_proxy();
            }
            if let Some(proxy) = proxies.reqwest() {
                client = client.proxy(proxy);
            }
            if let Some(path) = &config.ca_file {
                client = client.tls_certs_merge(read_ca_file(path)?);
            }
            if insecure {
                client = client.tls_danger_accept_invalid_certs(true);
            }
            Ok(client.build()?)
        };
        let client = build(false)?;
        let lax: std::collections::HashSet<String> =
            hosts.iter().filter(|(_, h)| h.accept_invalid_certs).map(|(name, _)| name.clone()).collect();
        for host in &lax {
            tracing::warn!(
                host = %host,
                "hosts.\"{host}\".accept_invalid_certs: ANY certificate is accepted from this host, \
                 so anyone on the network path can read and change what it serves"
            );
        }
        let insecure = if lax.is_empty() { None } else { Some((build(true)?, Arc::new(lax))) };
        let mut host_headers = HashMap::new();
        for (name, host) in hosts {
            let headers = host_request_headers(name, host)?;
            if !headers.is_empty() {
                host_headers.insert(name.clone(), headers);
            }
        }
        Ok(Self {
            client,
            host_headers: Arc::new(host_headers),
            insecure,
            config: config.clone(),
            save_headers,
            save_body,
            extract_links: None,
            robots_token: crate::config::RobotsConfig::default().user_agent_token.into(),
            keep_prefix: false,
            accept: AcceptTypes::from_config(&config.accept_content_types).map(Arc::new),
            addresses,
            resolver,
        })
    }

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
            host_headers: self.host_headers.clone(),
            insecure: self.insecure.clone(),
            addresses: self.addresses.clone(),
            resolver: self.resolver.clone(),
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

    /// Makes one attempt at `url`, following redirects without any gate
    /// between hops, within `fetch.timeout`. Cancel safe: dropping it
    /// abandons the attempt and records nothing. (The crawl's workers drive
    /// an [`Attempt`] themselves, so that each hop waits its host's turn.)
    pub async fn fetch(&self, url: &str) -> Fetched {
        let mut attempt = self.begin(url, true);
        while attempt.next_url().is_some() {
            attempt.request().await;
        }
        attempt.finish()
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
        }
    }

    /// One request to `url`: `Some(next)` when it answered with a redirect
    /// that may be followed, `None` when its response was final (and read).
    async fn request_once(
        &self,
        url: &Url,
        extract: bool,
        progress: &mut Progress,
    ) -> Result<Option<Url>, Failure> {
        let sent = Instant::now();
        progress.record.ttfb_ms = None;
        let conditional = progress.conditional.take();
        let response = self.send(url, conditional.as_ref()).await.map_err(|e| {
            progress.out_of_descriptors = out_of_descriptors(&e);
            classify(e)
        })?;
        progress.record.ttfb_ms = Some(sent.elapsed().as_millis() as u64);
        let status = response.status();
        progress.record.http_status = Some(status.as_u16());
        progress.record.final_url = Some(url.to_string());
        if let Some(hop) = progress.record.hops.last_mut() {
            hop.http_status = Some(status.as_u16());
        }
        progress.not_modified = status == reqwest::StatusCode::NOT_MODIFIED && conditional.is_some();
        if status.is_redirection()
            && let Some(location) = response.headers().get(LOCATION)
        {
            return self.next_hop(url, location.as_bytes(), &mut progress.record).map(Some);
        }
        self.read_final(response, extract, progress).await.map(|()| None)
    }

    /// Sends one GET for `url`. A pooled keep-alive connection that the
    /// server closed just as the request went out fails before any byte of
    /// a response; GET is idempotent, so it is sent again at once, once, on
    /// a fresh connection, within the same attempt (RFC 9110 §9.2.2).
    /// With `conditional`, the request carries its validators
    /// (`If-None-Match`, `If-Modified-Since`; RFC 9110 §13.1.2, §13.1.3); one
    /// that is no valid header value is left out.
    async fn send(
        &self,
        url: &Url,
        conditional: Option<&Validators>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut headers = conditional.map(conditional_headers).unwrap_or_default();
        let host = url.host_str().unwrap_or_default();
        // The host's own headers go to that host only: never to another
        // one, a redirect's target included.
        if let Some(own) = self.host_headers.get(host) {
            headers.extend(own.clone());
        }
        let client = match &self.insecure {
            Some((lax, hosts)) if hosts.contains(host) => lax,
            _ => &self.client,
        };
        match client.get(url.clone()).headers(headers.clone()).send().await {
            Err(e) if closed_before_response(&e) => {
                tracing::debug!(
                    url = %ForLog(url.as_str()),
                    "connection closed before the response: sent again on a fresh one"
                );
                client.get(url.clone()).headers(headers).send().await
            }
            other => other,
        }
    }

    /// Resolves a redirect's `Location` against the current URL (RFC 9110
    /// §10.2.2 allows relative references) and checks the hop is allowed.
    fn next_hop(&self, current: &Url, location: &[u8], record: &mut AttemptRecord) -> Result<Url, Failure> {
        if record.redirect_chain.len() >= self.config.max_redirects as usize {
            return Err(Failure(
                ErrorKind::RedirectLimit,
                format!("more than {} redirects", self.config.max_redirects),
            ));
        }
        let location = String::from_utf8_lossy(location);
        let next = current
            .join(location.trim())
            .map_err(|e| {
                let location = crate::redact::credentials_in_text(&location).into_owned();
                Failure(ErrorKind::InvalidUrl, format!("redirect to {location:?}: {e}"))
            })
            .and_then(|u| {
                check_http(&u)
                    .map_err(|why| Failure(ErrorKind::InvalidUrl, format!("redirect to {u}: {why}")))?;
                Ok(u)
            })?;
        let mut next = next;
        next.set_fragment(None);
        // Credentials in a Location are neither sent nor recorded.
        crate::redact::strip_credentials(&mut next);
        record.redirect_chain.push(current.to_string());
        if record.redirect_chain.iter().any(|seen| seen == next.as_str()) {
            return Err(Failure(ErrorKind::RedirectLoop, format!("redirect back to {next}")));
        }
        Ok(next)
    }

    async fn read_final(
        &self,
        mut response: reqwest::Response,
        extract: bool,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let headers = response.headers();
        let record = &mut progress.record;
        record.content_type = header_text(headers, CONTENT_TYPE.as_str());
        record.validators = Validators {
            etag: header_text(headers, ETAG.as_str()),
            last_modified: header_text(headers, LAST_MODIFIED.as_str()),
        };
        progress.retry_after = headers.get(RETRY_AFTER).and_then(|v| parse_retry_after(v.as_bytes()));
        if self.save_headers {
            record.headers = Some(headers_json(headers));
        }
        // Page-level robots directives (links.rs): the header's now, a
        // parsed page's meta tags once it is read.
        let x_robots_tag = headers.get_all("x-robots-tag").iter().map(HeaderValue::as_bytes);
        let said = Directives::from_x_robots_tag(x_robots_tag, &self.robots_token);
        if response.status().is_success() {
            record.noindex =
                (said.noindex || !is_html(record.content_type.as_deref())).then_some(said.noindex);
        }
        if let Some(accept) = self.accept.as_deref().filter(|_| response.status().is_success()) {
            let media_type = record.content_type.as_deref().unwrap_or("application/octet-stream");
            if !accept.accepts(media_type) {
                progress.skipped = Some(format!(
                    "Content-Type {media_type} is not in fetch.accept_content_types: body not read"
                ));
                return Ok(());
            }
        }
        let max = self.config.max_body_bytes.get();
        let declared = header_text(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        // A compressed body's Content-Length is the encoded size: only a
        // declared size already over the cap can be refused before reading.
        if declared.is_some_and(|n| n > max) && !self.keep_prefix {
            return Err(body_too_large(max));
        }
        let mut hasher = Sha256::new();
        let mut len: u64 = 0;
        // The declared length, when under the cap, is the size to expect (a
        // compressed body's is a start): no reallocation on the way.
        let expected = declared.unwrap_or(0).min(max) as usize;
        let mut kept = self.save_body.then(|| Vec::with_capacity(expected));
        let mut extractor = self
            .extract_links
            .filter(|_| extract && response.status().is_success() && is_html(record.content_type.as_deref()))
            .map(|max| LinkExtractor::new(max, &self.robots_token, record.content_type.as_deref()));
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            len += chunk.len() as u64;
            if len > max {
                record.body_bytes = Some(len);
                // What fits under the cap stays available to callers that
                // use a prefix (robots.txt, RFC 9309 §2.5).
                if let Some(mut kept) = kept {
                    let room = (max as usize).saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    record.body = Some(kept);
                }
                return Err(body_too_large(max));
            }
            hasher.update(&chunk);
            if let Some(extractor) = extractor.as_mut() {
                extractor.write(&chunk);
            }
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(&chunk);
            }
        }
        record.body_bytes = Some(len);
        record.body_sha256 = Some(format!("{:x}", hasher.finalize()));
        record.body = kept;
        progress.found = extractor.map(|extractor| {
            let mut found = extractor.finish();
            found.directives = found.directives.union(said);
            found
        });
        if let Some(found) = &progress.found {
            progress.record.noindex = Some(found.directives.noindex);
        }
        Ok(())
    }
}

/// One attempt in progress: a request at a time, so that the caller can
/// check and pace each redirect hop (robots.txt, politeness) before it is
/// sent. The requests' own time is bounded by `fetch.timeout` in all; time
/// spent between them (waiting for a host's turn) does not count.
pub struct Attempt<'f> {
    fetcher: &'f Fetcher,
    /// Where the next request goes; `None` once the attempt has ended.
    next: Option<Url>,
    extract: bool,
    progress: Progress,
    /// When the first request was sent.
    started_at: Option<SystemTime>,
    /// Time spent in requests so far.
    spent: Duration,
    /// How the attempt ended, once it has.
    outcome: Option<Result<(), Failure>>,
}

impl Attempt<'_> {
    /// The URL the next request goes to, or `None` when the attempt is over.
    pub fn next_url(&self) -> Option<&Url> {
        self.next.as_ref()
    }

    /// Requests made so far (redirects followed plus one, once started).
    pub fn requests(&self) -> usize {
        self.progress.record.redirect_chain.len() + usize::from(self.started_at.is_some())
    }

    /// Makes the attempt's first request conditional on `validators` (the
    /// URL's last response's, for a recrawl), if there are any: a `304 Not
    /// Modified` to it ends the attempt with [`Fetched::not_modified`].
    pub fn conditional(&mut self, validators: &Validators) {
        if self.started_at.is_none() && !validators.is_empty() {
            self.progress.conditional = Some(validators.clone());
        }
    }

    /// Sends the next request. Afterwards [`next_url`](Self::next_url) is
    /// the redirect's target, or `None` when the response was final or the
    /// request failed. Cancel safe as [`Fetcher::fetch`] is.
    pub async fn request(&mut self) {
        let Some(url) = self.next.take() else { return };
        // An IP literal is never resolved, so the resolver cannot check it.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.fetcher.addresses.permits(*ip)) {
            let refused = BlockedAddress { host: url.host_str().unwrap_or_default().to_owned(), ip };
            self.next = Some(url);
            self.refuse(ErrorKind::BlockedAddress, refused.to_string());
            return;
        }
        let now = SystemTime::now();
        if self.started_at.is_none() {
            self.started_at = Some(now);
        } else {
            let host = url.host_str().unwrap_or_default().to_owned();
            self.progress.record.hops.push(Hop {
                url: url.to_string(),
                host,
                started_at: now,
                http_status: None,
            });
        }
        let limit = self.fetcher.config.timeout;
        let start = Instant::now();
        // A name is resolved first, timed, within the attempt's time; the
        // connect then gets the same answer from the resolver's cache.
        let name = url.host_str().filter(|_| literal.is_none());
        let mut dns = None;
        let fetcher = self.fetcher;
        let progress = &mut self.progress;
        let sent = tokio::time::timeout(limit.saturating_sub(self.spent), async {
            if let Some(name) = name {
                let resolving = Instant::now();
                let resolved = fetcher.resolver.resolve(name).await;
                dns = Some(resolving.elapsed());
                resolved.map_err(|e| lookup_failure(&*e, progress))?;
            }
            fetcher.request_once(&url, self.extract, progress).await
        })
        .await;
        self.spent += start.elapsed();
        if let Some(dns) = dns {
            let total = self.progress.record.dns_ms.unwrap_or(0) + dns.as_millis() as u64;
            self.progress.record.dns_ms = Some(total);
        }
        match sent {
            Ok(Ok(Some(next))) => self.next = Some(next),
            Ok(Ok(None)) => self.outcome = Some(Ok(())),
            Ok(Err(failure)) => self.outcome = Some(Err(failure)),
            Err(_) => {
                let took = humantime::format_duration(limit);
                self.outcome =
                    Some(Err(Failure(ErrorKind::Timeout, format!("attempt took longer than {took}"))));
            }
        }
    }

    /// Ends the attempt at the redirect it just followed, without requesting
    /// the target, which is returned (`None` if there is none): the attempt
    /// ends as that redirect's response (its status; `final_url` the URL
    /// that answered it; the redirects before it), for the target to be
    /// crawled as a URL of its own.
    pub fn hand_over(&mut self) -> Option<Url> {
        let target = self.next.take()?;
        self.progress.record.redirect_chain.pop();
        self.outcome = Some(Ok(()));
        Some(target)
    }

    /// Ends the attempt without sending the next request: `kind` (e.g.
    /// robots.txt disallows the redirect's target) says why.
    pub fn refuse(&mut self, kind: ErrorKind, message: String) {
        if let Some(url) = self.next.take() {
            self.progress.record.final_url = Some(url.to_string());
            self.progress.record.http_status = None;
            self.outcome = Some(Err(Failure(kind, message)));
        }
    }

    /// What the attempt observed, ready to store.
    pub fn finish(self) -> Fetched {
        let mut record = self.progress.record;
        let now = SystemTime::now();
        record.started_at = Some(self.started_at.unwrap_or(now));
        record.fetched_at = Some(now);
        record.elapsed_ms = self.spent.as_millis() as u64;
        record.elapsed_us = self.spent.as_micros() as u64;
        let error = match self.outcome {
            Some(Ok(())) => None,
            Some(Err(Failure(kind, message))) => {
                record.error_kind = Some(kind);
                record.error_message = Some(message);
                Some(kind)
            }
            None => {
                // Ended before its last request (a caller stopped it).
                record.error_kind = Some(ErrorKind::Timeout);
                Some(ErrorKind::Timeout)
            }
        };
        let not_modified = self.progress.not_modified && error.is_none();
        if not_modified {
            // No content came (the empty body read says nothing of it): the
            // store keeps the URL's own.
            (record.content_type, record.body_bytes, record.body_sha256) = (None, None, None);
        }
        let skipped = match self.progress.skipped.filter(|_| error.is_none()) {
            Some(why) => {
                record.error_message = Some(why);
                true
            }
            None => false,
        };
        Fetched {
            record,
            error,
            retry_after: self.progress.retry_after,
            found: self.progress.found,
            out_of_descriptors: self.progress.out_of_descriptors,
            not_modified,
            skipped,
        }
    }
}

/// Media types worth reading a body of (`fetch.accept_content_types`):
/// whole types (`text/*`) and exact ones (`text/html`), compared without
/// parameters and case (RFC 9110 §8.3.1), as the `mime` crate parses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptTypes {
    /// Exact `type/subtype`s, lower-case.
    exact: Vec<String>,
    /// Types every subtype of which is accepted (`*` for all).
    whole: Vec<String>,
}

impl AcceptTypes {
    /// The types listed in `fetch.accept_content_types`; `None` when the
    /// list is empty (every type) or an entry is no media type (the config
    /// is checked for that at start).
    pub fn from_config(list: &[String]) -> Option<Self> {
        if list.is_empty() {
            return None;
        }
        let mut accept = Self { exact: Vec::new(), whole: Vec::new() };
        for entry in list {
            match Self::parse(entry)? {
                (kind, None) => accept.whole.push(kind),
                (kind, Some(subtype)) => accept.exact.push(format!("{kind}/{subtype}")),
            }
        }
        Some(accept)
    }

    /// `(type, Some(subtype))` of a media type, `(type, None)` for `type/*`
    /// (and `*/*`), lower-case; `None` when `text` is neither.
    pub fn parse(text: &str) -> Option<(String, Option<String>)> {
        let parsed: mime::Mime = text.trim().parse().ok()?;
        let kind = parsed.type_().as_str().to_ascii_lowercase();
        match parsed.subtype() {
            mime::STAR => Some((kind, None)),
            subtype => (kind != "*").then(|| (kind, Some(subtype.as_str().to_ascii_lowercase()))),
        }
    }

    /// Whether a response of `content_type` (a header value, parameters
    /// and all) is accepted. One that does not parse is not.
    pub fn accepts(&self, content_type: &str) -> bool {
        let Ok(parsed) = content_type.trim().parse::<mime::Mime>() else { return false };
        let kind = parsed.type_().as_str().to_ascii_lowercase();
        let essence = format!("{kind}/{}", parsed.subtype().as_str().to_ascii_lowercase());
        self.exact.contains(&essence) || self.whole.iter().any(|w| w == "*" || *w == kind)
    }
}

/// The headers `[hosts."name"]` sends to its host: plain `headers`, then
/// `secret_headers`, basic or bearer `Authorization` and `Cookie`, read
/// from their secrets now and marked sensitive (hyper leaves them out of
/// its debug output).
///
/// Errors: a secret that cannot be read, or a name or value that is no
/// valid header; the message names the key, never the value.
fn host_request_headers(name: &str, host: &crate::config::HostOverride) -> Result<HeaderMap, ClientError> {
    use crate::config::read_secret;
    use reqwest::header::{AUTHORIZATION, COOKIE, HeaderName};
    let fail =
        |key: &str, reason: String| ClientError::Secret { key: format!("hosts.\"{name}\".{key}"), reason };
    let header_name = |key: &str, header: &str| {
        HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| fail(key, format!("{header:?} is not a header name")))
    };
    // A secret read from `reference`, made a header value by `form`.
    let secret = |key: &str, reference: &str, form: &dyn Fn(String) -> String| {
        let text = read_secret(reference).map_err(|reason| fail(key, reason))?;
        let mut value = HeaderValue::from_str(&form(text))
            .map_err(|_| fail(key, "not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        Ok::<_, ClientError>(value)
    };
    let plain = |text: String| text;
    let mut headers = HeaderMap::new();
    for (header, value) in &host.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| fail("headers", format!("{header}: not a valid header value")))?;
        headers.insert(header_name("headers", header)?, value);
    }
    for (header, reference) in &host.secret_headers {
        headers.insert(header_name("secret_headers", header)?, secret("secret_headers", reference, &plain)?);
    }
    if let (Some(user), Some(reference)) = (&host.basic_auth_user, &host.basic_auth_password) {
        // RFC 7617 §2: base64 of user-id ":" password, UTF-8.
        let basic = |password: String| {
            format!("Basic {}", data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes()))
        };
        headers.insert(AUTHORIZATION, secret("basic_auth_password", reference, &basic)?);
    }
    if let Some(reference) = &host.bearer_token {
        headers.insert(AUTHORIZATION, secret("bearer_token", reference, &|token| format!("Bearer {token}"))?);
    }
    if let Some(reference) = &host.cookies {
        headers.insert(COOKIE, secret("cookies", reference, &plain)?);
    }
    Ok(headers)
}

/// Where requests go through a proxy: `fetch.proxy` for every host not in
/// `fetch.no_proxy`, and each `[hosts."..."] proxy` for its host.
#[derive(Clone)]
struct Proxies {
    default: Option<Url>,
    no_proxy: Vec<String>,
    per_host: HashMap<String, Url>,
}

impl Proxies {
    fn new(config: &FetchConfig, hosts: &BTreeMap<String, crate::config::HostOverride>) -> Self {
        // The config was validated: every proxy parses.
        let parse = |text: &String| Url::parse(text).ok();
        Self {
            default: config.proxy.as_ref().and_then(parse),
            no_proxy: config.no_proxy.iter().map(|h| h.to_ascii_lowercase()).collect(),
            per_host: hosts
                .iter()
                .filter_map(|(name, h)| Some((name.clone(), parse(h.proxy.as_ref()?)?)))
                .collect(),
        }
    }

    /// The proxy for a request to `host`, if any.
    fn for_host(&self, host: &str) -> Option<Url> {
        if let Some(own) = self.per_host.get(host) {
            return Some(own.clone());
        }
        let bypass = self.no_proxy.iter().any(|entry| match entry.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")) || host == domain,
            None => host == entry,
        });
        if bypass { None } else { self.default.clone() }
    }

    /// The proxies' host names (not IP literals), which the resolver
    /// answers without applying `deny_ips`.
    fn names(&self) -> std::collections::HashSet<String> {
        self.default
            .iter()
            .chain(self.per_host.values())
            .filter(|u| matches!(u.host(), Some(url::Host::Domain(_))))
            .filter_map(|u| u.host_str().map(str::to_owned))
            .collect()
    }

    /// One reqwest proxy that asks [`Proxies::for_host`], or `None` when
    /// no proxy is configured.
    fn reqwest(&self) -> Option<reqwest::Proxy> {
        if self.default.is_none() && self.per_host.is_empty() {
            return None;
        }
        let proxies = self.clone();
        Some(reqwest::Proxy::custom(move |url| proxies.for_host(url.host_str()?)))
    }
}

/// The reason phrase RFC 9110 §15 gives `status` ("Not Modified"), or ""
/// for a status it does not name.
pub fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

/// `If-None-Match` and `If-Modified-Since` for `validators`, leaving out
/// one that is no valid header value.
fn conditional_headers(validators: &Validators) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let valid = |text: Option<&str>| text.and_then(|t| HeaderValue::from_str(t).ok());
    if let Some(etag) = valid(validators.etag.as_deref()) {
        headers.insert(IF_NONE_MATCH, etag);
    }
    if let Some(date) = valid(validators.last_modified.as_deref()) {
        headers.insert(IF_MODIFIED_SINCE, date);
    }
    headers
}

fn body_too_large(max: u64) -> Failure {
    Failure(ErrorKind::BodyTooLarge, format!("body larger than {max} bytes"))
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

/// `Retry-After` is delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date
/// in the past means "now".
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn headers_json(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

/// The failure of a request whose name did not resolve: as reqwest would
/// report it from its connect ([`classify`]).
fn lookup_failure(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    progress: &mut Progress,
) -> Failure {
    if let Some(blocked) = error.downcast_ref::<BlockedAddress>() {
        return Failure(ErrorKind::BlockedAddress, blocked.to_string());
    }
    progress.out_of_descriptors = out_of_descriptors(error);
    Failure(ErrorKind::Dns, format!("dns error: {error}"))
}

/// Maps reqwest's error to our kind. reqwest exposes timeouts, connect errors
/// and body errors as predicates; DNS and TLS failures are only told apart by
/// the messages of hyper-util's and rustls's errors in the source chain.
fn classify(error: reqwest::Error) -> Failure {
    let message = error_chain(&error);
    let lower = message.to_ascii_lowercase();
    let kind = if source_of::<BlockedAddress>(&error).is_some() {
        ErrorKind::BlockedAddress
    } else if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_connect() {
        if lower.contains("dns error") || lower.contains("failed to lookup address") {
            ErrorKind::Dns
        } else if ["certificate", "tls", "handshake", "rustls"].iter().any(|w| lower.contains(w)) {
            ErrorKind::Tls
        } else {
            ErrorKind::Connect
        }
    } else if error.is_body() || error.is_decode() {
        // With compression on, reqwest reports every failure while reading
        // the body as a decode error, a connection reset included: what
        // broke is told by the io::Error underneath.
        if connection_broke(&error) || !error.is_decode() { ErrorKind::Read } else { ErrorKind::Protocol }
    } else if lower.contains("connection closed before message completed")
        || lower.contains("connection reset")
        || lower.contains("broken pipe")
    {
        // hyper's IncompleteMessage: the server closed a (pooled) connection
        // before answering. Transient.
        ErrorKind::Connect
    } else {
        ErrorKind::Protocol
    };
    Failure(kind, message)
}

/// Whether a request failed because its connection was closed or reset
/// before any response arrived (hyper's "incomplete message" on a stale
/// pooled connection), rather than timing out or failing to connect.
fn closed_before_response(error: &reqwest::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    if error.is_timeout() || error.is_connect() || error.is_body() || error.is_decode() {
        return false;
    }
    source_of::<hyper::Error>(error).is_some_and(hyper::Error::is_incomplete_message)
        || source_of::<std::io::Error>(error)
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe))
}

/// Whether an I/O error in `error`'s source chain is `EMFILE` (this
/// process's descriptor limit, `RLIMIT_NOFILE`) or `ENFILE` (the system's),
/// as `socket(2)` and `getaddrinfo(3)` report running out (errno(3)).
fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The first error of type `E` in `error`'s source chain.
fn source_of<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Whether the source chain holds an I/O error of a connection that broke
/// (closed before the declared length, reset, timed out), as opposed to
/// data that could not be decoded (a corrupt gzip stream is an `Other`).
fn connection_broke(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    source_of::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | TimedOut
        )
    })
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_types_match_without_parameters_or_case() {
        let list = ["text/HTML", "image/*"].map(str::to_owned);
        let accept = AcceptTypes::from_config(&list).unwrap();
        assert!(accept.accepts("text/html; charset=utf-8"));
        assert!(accept.accepts("Image/PNG"));
        assert!(!accept.accepts("text/plain"));
        assert!(!accept.accepts("application/xhtml+xml"));
        assert!(!accept.accepts("not a type"));
        let all = AcceptTypes::from_config(&["*/*".to_owned()]).unwrap();
        assert!(all.accepts("application/pdf"));
        assert_eq!(AcceptTypes::from_config(&[]), None, "empty: every type, nothing checked");
        assert_eq!(AcceptTypes::parse("html"), None);
        assert_eq!(AcceptTypes::parse("*/html"), None);
    }

    #[test]
    fn resolve_overrides_match_names_then_the_longest_domain() {
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        let config = BTreeMap::from([
            ("*.example.test".to_owned(), ip("127.0.0.2")),
            ("*.deep.example.test".to_owned(), ip("127.0.0.3")),
            ("www.deep.example.test".to_owned(), ip("::1")),
        ]);
        let overrides = Overrides::new(&config);
        let found = |host| overrides.lookup(host).map(|a| a[0].to_string());
        assert_eq!(found("a.example.test").as_deref(), Some("127.0.0.2"));
        assert_eq!(found("a.deep.example.test").as_deref(), Some("127.0.0.3"));
        assert_eq!(found("www.deep.example.test.").as_deref(), Some("::1"));
        // The domain itself is not under `*.`, nor is a name that only ends alike.
        assert_eq!(found("example.test"), None);
        assert_eq!(found("badexample.test"), None);
    }

    #[test]
    fn idle_connections_fit_politeness() {
        let ms = Duration::from_millis;
        let default = Pool::for_politeness(256, [2], [ms(250)]);
        assert_eq!(default, Pool { max_idle_per_host: 2, idle_timeout: ms(500) });
        // An override with more concurrency or a longer delay raises them,
        // within the crawl's concurrency and reqwest's 90 s default.
        let overridden = Pool::for_politeness(4, [2, 8], [ms(250), Duration::from_secs(20)]);
        assert_eq!(overridden, Pool { max_idle_per_host: 4, idle_timeout: Duration::from_secs(40) });
        assert_eq!(
            Pool::for_politeness(4, [1], [Duration::from_secs(600)]).idle_timeout,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        let parsed = parse_retry_after(later.as_bytes()).unwrap();
        assert!(parsed > Duration::from_secs(85) && parsed <= Duration::from_secs(90), "{parsed:?}");
        assert_eq!(parse_retry_after(b"soon"), None);
        assert_eq!(parse_retry_after(b"-5"), None);
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
