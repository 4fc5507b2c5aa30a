//! The input task: a batch crawl's seed list read into the frontier while
//! the crawl runs, which tells the producer when it is all in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::seeds::{IngestError, IngestReport, SeedSource, ingest};
use crate::stats::CrawlStats;
use crate::store::Backend;

/// An input to read: its source (named in reports) and the opened reader.
pub(super) type Input = (SeedSource, Box<dyn tokio::io::AsyncRead + Send + Unpin>);

/// Reads an [`Input`] into the frontier.
pub(super) struct InputTask {
    pub input: Input,
    pub store: Arc<Backend>,
    /// Stop reading (what was read is committed).
    pub stop: CancellationToken,
    /// Woken as URLs are added, and once the input is read.
    pub wake: Arc<Notify>,
    pub stats: Arc<CrawlStats>,
    /// Set once the input is read (or reading failed or stopped): the
    /// producer's sign that no more seeds come.
    pub done: Arc<AtomicBool>,
    /// `discovery.strip_query_params`, applied to every URL read.
    pub strip: Vec<String>,
}

impl InputTask {
    /// Reads the input to its end or until stopped, then marks it read and
    /// wakes the producer.
    ///
    /// Errors: the input cannot be read or the store written.
    pub(super) async fn run(self) -> Result<IngestReport, IngestError> {
        let (source, reader) = self.input;
        let report =
            ingest(&*self.store, &source, reader, &self.stop, &self.wake, &self.stats, &self.strip).await;
        self.done.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        report
    }
}
