//! What one attempt ends with: [`Fetched`], everything observed, ready to
//! store, or the [`Refusal`] that kept a request from being sent.

use std::time::{Duration, SystemTime};

use crate::job::{AttemptRecord, ErrorKind};
use crate::links::Found;

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
