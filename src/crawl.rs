//! One crawl from start to summary: open the store, recover the frontier,
//! build the pieces, spawn them, wait for them in order, requeue what did
//! not finish.
//!
//! ```text
//! seeds ─▶ store ─▶ producer ─▶ async_channel<Job> (bounded) ─▶ N workers
//!                                                                  │
//!           store ◀── writer (one transaction per batch) ◀── mpsc<Completion>
//! ```
//!
//! [`start`] recovers the frontier ([`recovery`]), builds everything that
//! can fail and wires the rest ([`builder`]), then spawns every task on one
//! supervised tracker ([`Tasks`]) and returns them as a [`Running`]
//! ([`running`]); [`Running::drain`] takes them down. Teardown order is what
//! makes a stop lose nothing: the producer ends (and drops the job sender),
//! the workers end (finishing or, on abort, dropping their fetch), their
//! completion senders drop, the writer drains and commits the rest, and only
//! then are URLs still in flight put back in the queue. A task that fails
//! (or panics) stops all the others this same way, and the crawl ends with
//! its error.
//!
//! | file | what it holds |
//! |---|---|
//! | `crawl.rs` | the entry points ([`crawl`], [`serve`], [`enqueue`]): open, start, drain, release |
//! | `crawl/recovery.rs` | the frontier as an earlier run left it, put right before anything starts |
//! | `crawl/builder.rs` | every piece built and wired, none spawned |
//! | `crawl/running.rs` | spawning the pieces, and draining them in order |
//! | `crawl/input.rs` | the pipeline's input task: the seed list into the frontier |
//! | `crawl/stall.rs` | side task: the stall guard |
//! | `crawl/budget.rs` | side task: a batch crawl's budgets |
//! | `crawl/stopping.rs` | side tasks: `STOPPING=1` and the grace timer |
//! | `crawl/upkeep.rs` | side tasks: WAL checkpoints, host leases, lock waits |
//! | `crawl/memory.rs` | side task: freed heap memory back to the kernel |
//!
//! The service's own side tasks (endpoints, gauges, recrawl sweep, reloads,
//! watchdog) are in [`crate::service`].

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::CrawlError;
use crate::reload::Reloader;
use crate::seeds::{IngestReport, SeedSource, ingest};
use crate::shutdown::Shutdown;
use crate::stats::{CrawlStats, Summary};
use crate::store::{Backend, Store};
use crate::tasks::Tasks;

use builder::{Mode, Pieces};
use input::Input;
use running::Running;

mod budget;
mod builder;
mod input;
mod memory;
mod recovery;
mod running;
mod stall;
mod stopping;
mod upkeep;

/// Runs a crawl of the store at `config.store.path`, first adding the URLs in
/// `seeds` (if any), until every URL is finished (returns the summary) or
/// `shutdown` stops it (the summary says `stopped`; unfinished URLs are queued
/// again for the next run).
///
/// Errors: [`CrawlError`] when the input cannot be read, the database cannot
/// be opened or written, the HTTP client cannot be built, or any task fails
/// (which stops the others the graceful way first).
pub async fn crawl(
    config: &Config,
    seeds: Option<SeedSource>,
    shutdown: &Shutdown,
) -> Result<Summary, CrawlError> {
    run(config, seeds, shutdown, Mode::Batch).await
}

/// Runs the crawler as a service: like [`crawl`] without input, but an empty
/// frontier does not end it; it waits for URLs that `trawler enqueue` (or
/// anything else) adds to the database, and sees them within a second. Ends
/// only when `shutdown` stops it, or a task fails.
///
/// Errors: as [`crawl`].
///
/// With `reloader`, `SIGHUP` reloads the configuration (see [`crate::reload`]).
pub async fn serve(
    config: &Config,
    shutdown: &Shutdown,
    reloader: Option<Reloader>,
) -> Result<Summary, CrawlError> {
    run(config, None, shutdown, Mode::Service(reloader)).await
}

/// Opens the store, starts the crawl and drains it; then, whatever
/// happened, puts URLs still in flight back in the queue and hands this
/// daemon's hosts on, and fills in the summary's end state.
///
/// Errors: as [`crawl`].
async fn run(
    config: &Config,
    seeds: Option<SeedSource>,
    shutdown: &Shutdown,
    mode: Mode,
) -> Result<Summary, CrawlError> {
    let started = Instant::now();
    let limit = crate::descriptors::ensure(config, matches!(mode, Mode::Service(_)))?;
    tracing::debug!(limit, "open files allowed (RLIMIT_NOFILE)");
    let input = match &seeds {
        Some(source) => Some(source.open().await?),
        None => None,
    };
    let store = Arc::new(Backend::open(&config.store, config.fetch.timeout).await?);
    let tasks = Tasks::new(shutdown.clone());
    let (result, last_starts) = match start(config, &store, &tasks, seeds.zip(input), shutdown, mode).await {
        Ok(running) => {
            let politeness = running.politeness.clone();
            let result = running.drain(started).await;
            (result, politeness.last_starts(tokio::time::Instant::now()))
        }
        Err(e) => (Err(e), Vec::new()),
    };
    // Whatever happened, claims that did not finish go back to the queue,
    // and other daemons may take this one's hosts at once.
    match store.release(&last_starts).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(urls = n, "returned unfinished URLs to the frontier"),
        Err(e) => tracing::warn!("unfinished URLs stay in flight, for the next run to requeue: {e}"),
    }
    let mut summary = result?;
    summary.counts = store.counts().await?;
    store.close().await;
    Ok(summary)
}

/// Recovers the frontier, builds the pieces, then spawns them on `tasks`.
/// Nothing is spawned until nothing more can fail, so an error here leaves
/// no task behind.
///
/// Errors: the store cannot be recovered, the HTTP client or the discovery
/// rules cannot be built, or an address (admin, API) cannot be bound.
async fn start(
    config: &Config,
    store: &Arc<Backend>,
    tasks: &Tasks,
    input: Option<Input>,
    shutdown: &Shutdown,
    mode: Mode,
) -> Result<Running, CrawlError> {
    let recovered = recovery::recover(config, store).await?;
    let pieces = Pieces::build(config, store, tasks, shutdown, recovered, input, mode).await?;
    Ok(Running::spawn(pieces, config, tasks, shutdown))
}

/// Adds the URLs read from `input` (named `source` in reports) to the
/// database, as `trawler enqueue` does. Works while a crawler owns the
/// database: then it opens it without the owner's lock
/// ([`Backend::open_to_enqueue`]) and the crawler picks the URLs up within a
/// second.
///
/// Errors: the database cannot be opened or written, or the input read.
pub async fn enqueue(
    config: &Config,
    source: &SeedSource,
    input: impl tokio::io::AsyncRead + Unpin,
) -> Result<IngestReport, CrawlError> {
    let store = Backend::open_to_enqueue(&config.store).await?;
    let stats = Arc::new(CrawlStats::default());
    let strip = &config.discovery.strip_query_params;
    let report =
        ingest(&store, source, input, &CancellationToken::new(), &Notify::new(), &stats, strip).await;
    store.close().await;
    Ok(report?)
}
