//! A job and what becomes of it: the crawl's vocabulary, shared by the
//! fetch, the worker, the writer and the store.
//!
//! A [`NewUrl`] enters the frontier; a [`Job`] is a URL handed to a
//! worker under a lease. Each try at it is an attempt, whose observations
//! are an [`AttemptRecord`] (an [`ErrorKind`] when it got no final
//! response); the worker decides what
//! comes [`Next`], and sends the [`Completion`] to the writer. The store
//! writes it as an `attempts` row with its [`Outcome`] and moves the URL
//! to its [`UrlState`]; links a page could not follow are counted by
//! [`DropReason`]. The column values these stand for are the public
//! schema (`migrations/`, README "The database").

use std::time::{Duration, SystemTime};

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

/// Why a link found on a page was not enqueued: `dropped_links.reason`,
/// written by [`DropReason::as_str`] only, in the order of the schema's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Outside `discovery.scope` of the page that links to it.
    OutOfScope,
    /// The page is at `discovery.max_depth`: its links would be deeper.
    Depth,
    /// `rel=nofollow`, with `discovery.respect_nofollow`.
    Nofollow,
    /// Matches a `discovery.deny` pattern.
    Denied,
    /// Matches no `discovery.allow` pattern.
    NotAllowed,
    /// Not an http(s) URL (`mailto:`, `javascript:`...).
    NotHttp,
    /// Does not resolve to a URL.
    InvalidUrl,
    /// Longer than `discovery.max_url_length`.
    TooLong,
    /// More path segments than `discovery.max_path_segments`.
    TooManySegments,
    /// A path segment repeated more than `discovery.max_repeated_segment` times.
    RepeatedSegment,
    /// Past `discovery.max_links_per_page` on its page.
    TooManyLinks,
    /// The store holds `discovery.max_pages` URLs already.
    MaxPages,
    /// Its host has `discovery.max_pages_per_host` URLs stored already.
    MaxPagesPerHost,
    /// The page says `nofollow` for this crawler: its robots meta tag
    /// (`robots` or `robots.user_agent_token`) or `X-Robots-Tag` header
    /// (schema version 7).
    PageNofollow,
}

impl DropReason {
    /// The name stored in `dropped_links.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OutOfScope => "out_of_scope",
            DropReason::Depth => "depth",
            DropReason::Nofollow => "nofollow",
            DropReason::Denied => "denied",
            DropReason::NotAllowed => "not_allowed",
            DropReason::NotHttp => "not_http",
            DropReason::InvalidUrl => "invalid_url",
            DropReason::TooLong => "too_long",
            DropReason::TooManySegments => "too_many_segments",
            DropReason::RepeatedSegment => "repeated_segment",
            DropReason::TooManyLinks => "too_many_links",
            DropReason::MaxPages => "max_pages",
            DropReason::MaxPagesPerHost => "max_pages_per_host",
            DropReason::PageNofollow => "page_nofollow",
        }
    }
}

/// A URL to enqueue: already parsed and checked to be absolute http(s).
#[derive(Debug, Clone)]
pub struct NewUrl {
    /// The URL's serialization (`url::Url::as_str`), the de-duplication key.
    pub url: String,
    /// Its host (lower-case), kept for per-host queries and scheduling.
    pub host: String,
    /// Links followed from a seed to reach it (seeds are 0).
    pub depth: u32,
    /// The page it was found on (`urls.id`); `None` for seeds.
    pub found_on: Option<i64>,
}

/// A claimed URL, handed from the producer to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub url_id: i64,
    pub url: String,
    /// The URL's host, the key of per-host politeness.
    pub host: String,
    /// The number of the attempt about to be made (1 = first).
    pub attempt: u32,
    /// The URL's depth (seeds are 0).
    pub depth: u32,
    /// The claim's lease token, returned with the completion.
    pub lease: i64,
    /// What the URL's earlier visits left, for a conditional recrawl.
    pub revisit: Revisit,
}

/// What a URL's earlier visits left for the next one (`urls` columns of
/// schema version 6); all `None` on a first visit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revisit {
    /// The validators to send (RFC 9110 §13.1.2 `If-None-Match`, §13.1.3
    /// `If-Modified-Since`): the last final response's `ETag` and
    /// `Last-Modified`, as received.
    pub validators: Validators,
    /// SHA-256 (lower-case hex) of the URL's content now.
    pub body_sha256: Option<String>,
    /// The URL's own recrawl interval (ms), with `crawl.adaptive_recrawl`.
    pub recrawl_interval_ms: Option<i64>,
}

/// A response's validators (RFC 9110 §8.8), as the header values it sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to make a request conditional with.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// Where a URL is in the frontier: `urls.state`, written by
/// [`UrlState::as_str`] only, in the order of the schema's CHECK list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UrlState {
    /// Waiting to be claimed once due (`not_before_ms`).
    Queued,
    /// Claimed under a lease by a running crawler.
    InFlight,
    /// A final HTTP response was received.
    Done,
    /// A final error, or attempts ran out.
    Failed,
}

impl UrlState {
    /// Every state, in the schema's order.
    pub const ALL: [UrlState; 4] = [UrlState::Queued, UrlState::InFlight, UrlState::Done, UrlState::Failed];

    /// The name stored in `urls.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            UrlState::Queued => "queued",
            UrlState::InFlight => "in_flight",
            UrlState::Done => "done",
            UrlState::Failed => "failed",
        }
    }

    /// The state named `name` in `urls.state`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// How an attempt ended, as the worker decided (see `retry.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A final HTTP response: the URL is `done`.
    Done,
    /// A 304 Not Modified to a conditional recrawl: the URL is `done` with
    /// the content it had.
    NotModified,
    /// A 2xx whose type `fetch.accept_content_types` leaves out: the URL is
    /// `done`, its body not read.
    Skipped,
    /// A final error, or attempts ran out: the URL is `failed`.
    Failed,
    /// Try again once the wall clock reaches this time, in Unix ms.
    RetryAt(i64),
    /// Not an attempt: this process could not make the request (out of
    /// file descriptors). No `attempts` row is written; the URL is queued
    /// again for this time (Unix ms) with its attempt count unchanged.
    Requeue(i64),
}

impl Next {
    /// The state the URL moves to.
    pub fn state(self) -> UrlState {
        match self {
            Next::Done | Next::NotModified | Next::Skipped => UrlState::Done,
            Next::Failed => UrlState::Failed,
            Next::RetryAt(_) | Next::Requeue(_) => UrlState::Queued,
        }
    }

    /// The attempt's `outcome` column when it takes effect ([`Outcome`]),
    /// or "requeue" (never stored: a requeue is not an attempt), for logs
    /// and metrics.
    pub fn outcome(self) -> &'static str {
        Outcome::of(self).map_or("requeue", Outcome::as_str)
    }

    /// When the URL is due again, if it stays queued (Unix ms).
    pub fn due_at(self) -> Option<i64> {
        match self {
            Next::RetryAt(ms) | Next::Requeue(ms) => Some(ms),
            Next::Done | Next::NotModified | Next::Skipped | Next::Failed => None,
        }
    }

    /// Whether the URL got a final response (`done`, its content new or
    /// confirmed).
    pub fn is_done(self) -> bool {
        matches!(self, Next::Done | Next::NotModified)
    }
}

/// What one attempt observed; becomes one row of `attempts`.
#[derive(Debug, Clone, Default)]
pub struct AttemptRecord {
    pub started_at: Option<SystemTime>,
    pub fetched_at: Option<SystemTime>,
    pub elapsed_ms: u64,
    /// The same duration in µs, for latency percentiles (not stored).
    pub elapsed_us: u64,
    /// Time spent resolving host names, over the attempt's requests (a
    /// cached answer takes about 0 ms); `None` when no name was resolved
    /// (IP-literal URLs, or no request made).
    pub dns_ms: Option<u64>,
    /// Time to first byte of the last request: from its start (connect,
    /// TLS and sending included, when it needed a new connection) to its
    /// response's headers; `None` when it got no response.
    pub ttfb_ms: Option<u64>,
    pub http_status: Option<u16>,
    /// Why the attempt did not end with a final response, if it did not.
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    pub final_url: Option<String>,
    /// URLs visited before `final_url`, in order.
    pub redirect_chain: Vec<String>,
    /// The requests made after the first, one per redirect followed
    /// (`redirect_hops` rows).
    pub hops: Vec<Hop>,
    pub content_type: Option<String>,
    pub body_bytes: Option<u64>,
    /// Lower-case hex SHA-256 of the decoded body.
    pub body_sha256: Option<String>,
    /// The final response's validators (`ETag`, `Last-Modified`).
    pub validators: Validators,
    /// JSON array of `[name, value]` pairs, when configured.
    pub headers: Option<String>,
    /// The body, when configured (the worker moves it to `bodies`).
    pub body: Option<Vec<u8>>,
    /// For a 2xx final response: whether it says `noindex` for this crawler
    /// (`X-Robots-Tag`, or a robots meta tag of a page parsed for links);
    /// `None` when that is not known (no 2xx, or an HTML page not parsed
    /// and no header saying so). Schema version 7.
    pub noindex: Option<bool>,
    /// The page's `<link rel=canonical>`, resolved and normalized, for a
    /// page parsed for links. Schema version 7.
    pub canonical_url: Option<String>,
}

/// A request an attempt made after its first one, following a redirect.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The URL requested.
    pub url: String,
    /// Its host, the key of per-host politeness.
    pub host: String,
    /// When the request was sent.
    pub started_at: SystemTime,
    /// Its response's status; `None` when it got no response.
    pub http_status: Option<u16>,
}

/// An attempt's `outcome` column: what the crawler decided after it, or
/// that it came too late to decide anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final response; the URL is `done`.
    Done,
    /// A 304 to a conditional recrawl; the URL is `done` with its content.
    NotModified,
    /// A 2xx of a type `fetch.accept_content_types` leaves out; `done`.
    Skipped,
    /// A final error, or attempts ran out; the URL is `failed`.
    Failed,
    /// The URL is queued again (`attempts.retry_at`).
    Retry,
    /// Reported after the URL's lease ended (it was handed out again): the
    /// attempt is kept and changes nothing else.
    StaleLease,
}

impl Outcome {
    /// The value stored in `attempts.outcome` (schema version 8).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::NotModified => "not_modified",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Retry => "retry",
            Outcome::StaleLease => "stale_lease",
        }
    }

    /// The outcome of an attempt whose completion says `next`, if it is
    /// an attempt at all (a requeue is not).
    pub(crate) fn of(next: Next) -> Option<Self> {
        Some(match next {
            Next::Done => Outcome::Done,
            Next::NotModified => Outcome::NotModified,
            Next::Skipped => Outcome::Skipped,
            Next::Failed => Outcome::Failed,
            Next::RetryAt(_) => Outcome::Retry,
            Next::Requeue(_) => return None,
        })
    }
}

/// The end of one claim: the attempt made and the URL's next state.
#[derive(Debug, Clone)]
pub struct Completion {
    pub url_id: i64,
    pub lease: i64,
    pub host: String,
    /// Whether this attempt's answer began the host's backoff or cut it
    /// short (politeness decides; see [`crate::politeness::BackoffChange`]).
    pub host_backoff_changed: bool,
    /// For a completion that changed the host's backoff, when the backoff
    /// ends (Unix ms): replaces the stored end, so that a cut one lets the
    /// host be claimed again sooner. Set by the writer only, to politeness'
    /// end at the commit, so that the last commit stores the latest decision
    /// whatever order completions arrive in; `None` until then.
    pub host_backoff_until_ms: Option<i64>,
    /// The attempt's number within the URL's current visit (1 = first; a
    /// recrawl starts again at 1). The URL's `attempts` counts all visits.
    pub attempt: u32,
    pub record: AttemptRecord,
    pub next: Next,
    /// Links found on the page that passed discovery's rules, to enqueue.
    pub links: Vec<NewUrl>,
    /// Links found on the page that were dropped, counted by reason.
    pub dropped_links: Vec<(DropReason, u64)>,
    /// The host's `recrawl_after`, if any: a finished URL is due again that
    /// long after the store records it as finished. Ignored for a retry.
    pub recrawl_after: Option<std::time::Duration>,
    /// What the claim said of the URL's earlier visits.
    pub revisit: Revisit,
    /// `crawl.adaptive_recrawl`'s bounds, when it is on.
    pub adaptive: Option<AdaptiveRecrawl>,
}

/// Adaptive revisit, after Nutch's `AdaptiveFetchSchedule`: a URL found
/// unchanged waits `1 + INCREASE` times longer next time, a changed one
/// `1 - DECREASE` times as long, between `min` and `max`. The rates are
/// Nutch's defaults (`db.fetch.schedule.adaptive.inc_rate` 0.4,
/// `dec_rate` 0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveRecrawl {
    pub min: Duration,
    pub max: Duration,
}

impl AdaptiveRecrawl {
    pub const INCREASE: f64 = 0.4;
    pub const DECREASE: f64 = 0.2;

    /// The next interval after one of `interval`, given whether the visit
    /// found the content `changed`, within `min..=max`.
    pub fn next(self, interval: Duration, changed: bool) -> Duration {
        let factor = if changed { 1.0 - Self::DECREASE } else { 1.0 + Self::INCREASE };
        Duration::try_from_secs_f64(interval.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .clamp(self.min, self.max)
    }
}
