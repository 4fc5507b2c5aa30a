//! reqwest's errors as our [`ErrorKind`]s. reqwest exposes timeouts, connect
//! errors and body errors as predicates; DNS and TLS failures are told apart
//! by the errors in the source chain.

use super::addresses::BlockedAddress;
use super::attempt::Progress;
use crate::job::ErrorKind;

pub(super) struct Failure(pub(super) ErrorKind, pub(super) String);

/// The failure of a request whose name did not resolve: as reqwest would
/// report it from its connect ([`classify`]).
pub(super) fn lookup_failure(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    progress: &mut Progress,
) -> Failure {
    if let Some(blocked) = error.downcast_ref::<BlockedAddress>() {
        return Failure(ErrorKind::BlockedAddress, blocked.to_string());
    }
    progress.out_of_descriptors = out_of_descriptors(error);
    if super::addresses::name_does_not_exist(error) {
        progress.name_not_found = true;
        return Failure(ErrorKind::Dns, format!("dns error: the name does not exist (NXDOMAIN): {error}"));
    }
    Failure(ErrorKind::Dns, format!("dns error: {error}"))
}

/// Maps reqwest's error to our kind. reqwest exposes timeouts, connect errors
/// and body errors as predicates; DNS and TLS failures are only told apart by
/// the messages of hyper-util's and rustls's errors in the source chain.
pub(super) fn classify(error: reqwest::Error) -> Failure {
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
pub(super) fn closed_before_response(error: &reqwest::Error) -> bool {
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
pub(super) fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
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
pub(super) fn source_of<'a, E: std::error::Error + 'static>(
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
pub(super) fn connection_broke(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    source_of::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | TimedOut
        )
    })
}

pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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
