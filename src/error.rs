//! [`CrawlError`], the one error a crawl ends with, in a module of its own:
//! the crawl, the task supervisor ([`crate::tasks`]) and the service
//! ([`crate::service`]) all name it, and the crawl starts the other two, so
//! it cannot live in the crawl without making them import it back.
//!
//! What crosses in: the errors of the modules below (store, input,
//! producer, HTTP client, descriptors). What crosses out: one enum that
//! `main` maps to an exit code.

use crate::descriptors::TooFewDescriptors;
use crate::fetch::ClientError;
use crate::frontier::ProducerError;
use crate::seeds::IngestError;
use crate::store::StoreError;

/// An operational failure: the crawl could not run or could not record.
/// (Failed fetches are not errors: they are rows in `attempts`.)
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    /// The database could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input (seed list) could not be read into the frontier.
    #[error(transparent)]
    Input(#[from] IngestError),
    /// The producer could not hand out claimed URLs.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// A file or socket outside the database: the input, an address, output.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built (a CA file, a host's secret).
    #[error("setting up the HTTP client: {0}")]
    Client(#[from] ClientError),
    /// A setting refused where it is used, not at load (`--since`, the
    /// metrics recorder).
    #[error("invalid setting: {0}")]
    Config(String),
    /// The process may not open enough files for the crawl's settings.
    #[error(transparent)]
    Descriptors(#[from] TooFewDescriptors),
    /// A task panicked: a bug, reported with the panic's message.
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    /// URLs were in flight but no result was committed for `quiet`
    /// (`crawl.stall_timeout`): a bug or a fault nothing else reports.
    #[error(
        "stalled: {in_flight} URLs in flight and no result committed for {}; \
         stopping so that a rerun (or systemd) starts afresh, the unfinished URLs queued again",
        humantime::format_duration(*quiet)
    )]
    Stalled { quiet: std::time::Duration, in_flight: u64 },
}
