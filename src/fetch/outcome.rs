//! What one attempt ends with: the error kinds stored in
//! `attempts.error_kind`, and [`Fetched`], everything observed, ready to store.

use std::time::{Duration, SystemTime};

use crate::links::Found;
use crate::store::AttemptRecord;

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
    /// The attempt failed as [`ErrorKind::Dns`] because a name does not
    /// exist (an NXDOMAIN answer), which another try soon is unlikely to
    /// change: final after one retry ([`crate::retry::decide`]).
    pub name_not_found: bool,
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
            name_not_found: false,
            not_modified: false,
            skipped: false,
        }
    }
}

/// Why a request is not made: the error that ends its attempt
/// ([`Attempt::refuse`](super::Attempt::refuse)), as the crawl's gate, or
/// robots.txt, decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
    /// When to try again (a robots.txt that answered 5xx).
    pub retry_after: Option<Duration>,
    /// Time the attempt spent on requests of its own: the robots.txt
    /// request that got no response, which fails the attempt with it.
    pub took: Duration,
    /// That request found the host name does not exist (NXDOMAIN).
    pub name_not_found: bool,
}

impl Refusal {
    /// A refusal that cost no request.
    pub fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message, retry_after: None, took: Duration::ZERO, name_not_found: false }
    }
}
