//! A worker: receive a job, make its requests through the crawl's gate
//! (`gate.rs`: scope, lease, robots.txt, its host's turn and the global
//! rate limit, credentials; each redirect hop a request of its own), decide,
//! tell politeness how the host behaved, hand the completion to the writer.
//! A fixed pool of these drains the job channel.
//!
//! Only waiting (for a job, a slot, a turn, the limiter) races the stop
//! token: a request that started runs to its end (bounded by
//! `fetch.timeout`) unless `abort` is cancelled, and handing its completion
//! to the writer is never raced, so a finished fetch is always committed. A retry does not occupy the worker:
//! the URL goes back to the frontier with its not-before time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use crate::clock::now_ms;
use crate::config::RetryConfig;
use crate::fetch::{Fetched, Fetcher};
use crate::frontier::wants_refill;
use crate::gate::{Errand, Gate, Interrupted, Stops, Walked};
use crate::job::{AttemptRecord, Completion, DropReason, ErrorKind, Job, NewUrl, Next};
use crate::links::Discovery;
use crate::politeness::HostSignal;
use crate::redact::ForLog;
use crate::retry::{Decision, decide_fetched};
use crate::store::{Backend, Store, StoreError};

/// What every worker shares.
pub struct WorkerContext {
    pub fetcher: Fetcher,
    pub retry: RetryConfig,
    /// What every request passes: scope, leases, robots.txt, politeness
    /// (shared with the producer), the rate limit, credentials.
    pub gate: Arc<Gate>,
    /// Link-following rules, when `discovery.follow` is on.
    pub discovery: Option<Discovery>,
    /// Wakes the producer when a fetch finishes (its host has a free slot).
    pub wake: Arc<Notify>,
    /// Take no new job.
    pub stop: CancellationToken,
    /// Drop the fetch in flight.
    pub abort: CancellationToken,
    /// Where bodies are stored, when `store.save_body` is on.
    pub bodies: Option<Arc<Backend>>,
    /// Jobs a worker is working on now (at most one per worker).
    pub working: Arc<AtomicU64>,
    /// The job channel, for parked jobs to go back into at their turn
    /// (weak: the channel still closes when the producer ends).
    pub parked: async_channel::WeakSender<Job>,
}

impl WorkerContext {
    /// Sends `job` back into the job channel at `turn`, without holding a
    /// worker until then. A new host's first job waits a whole delay after
    /// its robots.txt request: a quarter of a second of a worker per host,
    /// which across thousands of hosts was a third of the crawl's time.
    /// The job stays counted against its host (politeness) and in flight
    /// (the store); if the crawl stops first it is dropped here and its URL
    /// requeued with every other unfinished lease on the way out.
    fn park(&self, job: Job, turn: Instant) {
        let (jobs, stop, politeness) = (self.parked.clone(), self.stop.clone(), self.gate.politeness.clone());
        tokio::spawn(async move {
            let mut turn = turn;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(turn) => break,
                    // A backoff that held the host back was cut short.
                    moved = politeness.turn_moved(&job.host, turn) => turn = moved,
                }
            }
            if let Some(jobs) = jobs.upgrade() {
                let _ = jobs.send(job).await;
            }
        });
    }
}

/// Counts a job in [`WorkerContext::working`] while it lives.
struct Working<'a>(&'a AtomicU64);

impl<'a> Working<'a> {
    fn start(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one worker until the channel closes, `stop` is cancelled between
/// jobs, `abort` is cancelled mid-fetch, or the writer is gone.
///
/// Errors: a body could not be stored (`store.save_body`).
pub async fn run(
    ctx: Arc<WorkerContext>,
    jobs: async_channel::Receiver<Job>,
    results: mpsc::Sender<Completion>,
) -> Result<(), StoreError> {
    loop {
        let job = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Ok(()),
            job = jobs.recv() => match job {
                Ok(job) => job,
                Err(_) => return Ok(()),
            },
        };
        // Everything logged about this fetch, robots.txt and politeness
        // included, carries the URL's id, host and attempt.
        let span = tracing::info_span!("fetch", url_id = job.url_id, host = %job.host, attempt = job.attempt);
        let working = Working::start(&ctx.working);
        let mut completion = match attempt(&ctx, job, &jobs).instrument(span).await {
            Attempted::Completed(completion) => completion,
            Attempted::Parked(job, turn) => {
                ctx.park(job, turn);
                // This worker is free again: the producer may take on a new
                // host for it (it counts free workers when hosts are leased).
                drop(working);
                ctx.wake.notify_one();
                continue;
            }
            Attempted::Stopped => return Ok(()),
        };
        if let Some(bodies) = &ctx.bodies {
            save_body(bodies, &mut completion.record).await?;
        }
        if results.send(completion).await.is_err() {
            return Ok(());
        }
    }
}

/// The zstd level bodies are stored at: zstd's default, a good ratio at a
/// few hundred MB/s.
const BODY_ZSTD_LEVEL: i32 = 3;

/// Stores the attempt's body, once per distinct content: compressed (off
/// the async threads), committed on its own before the completion goes to
/// the writer, and dropped from the record, so that pending completions
/// never hold bodies. A body read only in part (over the cap) is not stored.
async fn save_body(store: &Backend, record: &mut AttemptRecord) -> Result<(), StoreError> {
    let (Some(body), Some(sha256)) = (record.body.take(), record.body_sha256.as_deref()) else {
        return Ok(());
    };
    if store.has_body(sha256).await? {
        return Ok(());
    }
    let bytes = body.len() as u64;
    let compressed = tokio::task::spawn_blocking(move || compress(&body))
        .await
        .expect("compressing a body does not panic")
        .map_err(|e| StoreError::Database { context: "compress a body", source: Box::new(e) })?;
    store.save_body(sha256, bytes, &compressed).await
}

/// `body` as one zstd frame. The output buffer has room for zstd's worst
/// case but is zero-allocated, so only the pages zstd writes are resident:
/// a worker holds about its body plus the compressed body, never more.
fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(body.len())];
    let n = zstd::bulk::compress_to_buffer(body, &mut out, BODY_ZSTD_LEVEL)?;
    out.truncate(n);
    Ok(out)
}

/// How a job left its worker.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per job and matched at once; boxing would cost an allocation per page"
)]
enum Attempted {
    Completed(Completion),
    /// Its host's turn is later than [`PARK_BEYOND`](crate::gate::PARK_BEYOND): to be parked until then.
    Parked(Job, Instant),
    /// Stopped before the request started, or aborted during it.
    Stopped,
}

/// One job from robots.txt to completion, or parked when its host's turn
/// is not near. Every request passes the crawl's gate ([`Gate::walk`]).
async fn attempt(ctx: &WorkerContext, job: Job, jobs: &async_channel::Receiver<Job>) -> Attempted {
    let page = match request(ctx, &job).await {
        Ok(page) => page,
        Err(NotRequested::Stopped) => return Attempted::Stopped,
        Err(NotRequested::Park(turn)) => return Attempted::Parked(job, turn),
        Err(NotRequested::LeaseEnded) => return lease_ended(ctx, job),
    };
    let next = next_step(ctx, &job, &page.fetched);
    // What a retry gets is first of all its URL's (a 503 again for one path).
    let signal = if job.attempt > 1 { page.signal.of_retry() } else { page.signal };
    let host_backoff =
        ctx.gate.politeness.finished(&job.host, signal, page.started, Instant::now(), rand::random());
    // Above the refill mark the producer has nothing to do, and waking it
    // on every fetch costs; a freed host slot only matters below it.
    if wants_refill(jobs.len(), jobs.capacity().unwrap_or(0)) {
        ctx.wake.notify_one();
    }
    if let Some(change) = host_backoff {
        change.log(&job.host);
    }
    Attempted::Completed(completion(ctx, job, page, next, host_backoff.is_some()))
}

/// What a job's requests brought.
struct Page {
    fetched: Fetched,
    /// What the answers said of the job's host, and when its last request
    /// started (for [`Politeness::finished`](crate::politeness::Politeness::finished)).
    signal: HostSignal,
    started: Instant,
    /// The target of a redirect to a host another daemon holds.
    handed_over: Option<Url>,
}

/// Why a job made no request now.
enum NotRequested {
    Stopped,
    /// Its host's turn is this far off: park it.
    Park(Instant),
    /// Its host's lease ended (or could not be asked for) first.
    LeaseEnded,
}

/// The job's requests, through the gate ([`Gate::walk`]): its host's
/// lease, robots.txt (fetched first if it is not cached, so that a new
/// host's page waits its turn after robots.txt's, parked), its turn. A
/// refusal (robots.txt, say) is a page with no request.
async fn request(ctx: &WorkerContext, job: &Job) -> Result<Page, NotRequested> {
    let stops = Stops { waiting: &ctx.stop, sending: &ctx.abort };
    let mut attempt = ctx.fetcher.begin(&job.url, follows_from(ctx, job));
    attempt.conditional(&job.revisit.validators);
    match ctx.gate.walk(attempt, &Errand::Page(job), stops).await {
        Ok(Walked { fetched, own: (signal, started), handed_over }) => {
            Ok(Page { fetched, signal, started, handed_over })
        }
        Err(Interrupted::Stopped) => Err(NotRequested::Stopped),
        Err(Interrupted::Park(turn)) => Err(NotRequested::Park(turn)),
        Err(Interrupted::LeaseEnded | Interrupted::HostHeld(_)) => Err(NotRequested::LeaseEnded),
        Err(Interrupted::Store(e)) => {
            tracing::warn!("cannot lease a redirect's host: {e}; the URL goes back to the frontier");
            Err(NotRequested::LeaseEnded)
        }
    }
}

/// What becomes of the URL after what `fetched` says: the retry decision,
/// or a deferral when the request could not be made for lack of file
/// descriptors (not an attempt, and not the host's doing).
fn next_step(ctx: &WorkerContext, job: &Job, fetched: &Fetched) -> Next {
    if fetched.out_of_descriptors {
        warn_out_of_descriptors(fetched);
        return Next::Requeue(now_ms() + DEFERRED_FOR.as_millis() as i64);
    }
    match decide_fetched(&ctx.retry, job.attempt, fetched, rand::random()) {
        Decision::Done if fetched.not_modified => Next::NotModified,
        Decision::Done if fetched.skipped => Next::Skipped,
        Decision::Done => Next::Done,
        Decision::Failed => Next::Failed,
        Decision::Retry(delay) => Next::RetryAt(now_ms() + delay.as_millis() as i64),
    }
}

/// The completion the writer records for `job`: its attempt's record, the
/// links it found (and a handed-over redirect target), its recrawl time.
fn completion(
    ctx: &WorkerContext,
    job: Job,
    page: Page,
    next: Next,
    host_backoff_changed: bool,
) -> Completion {
    let Page { fetched, handed_over, .. } = page;
    let (mut links, dropped_links, canonical) = match (&ctx.discovery, next) {
        (Some(discovery), Next::Done) => discover(discovery, &job, &fetched),
        _ => (Vec::new(), Vec::new(), None),
    };
    if let Some(target) = handed_over.filter(|_| next == Next::Done) {
        // Its host is another daemon's: the target is crawled there, as a
        // URL of its own at this one's depth.
        let host = target.host_str().unwrap_or_default().to_owned();
        links.push(NewUrl { url: target.into(), host, depth: job.depth, found_on: Some(job.url_id) });
    }
    let mut record = fetched.record;
    record.canonical_url = canonical;
    if fetched.error.is_none() && !next.is_done() && next != Next::Skipped {
        // A response arrived, but with a status worth retrying.
        record.error_kind = Some(ErrorKind::HttpStatus);
        record.error_message = record.http_status.map(|s| format!("HTTP {s}"));
    }
    tracing::debug!(
        url = %ForLog(&job.url),
        status = record.http_status,
        error = record.error_kind.map(ErrorKind::as_str),
        elapsed_ms = record.elapsed_ms,
        outcome = next.outcome(),
        "fetched"
    );
    let (recrawl_after, adaptive) = match next {
        Next::RetryAt(_) | Next::Requeue(_) => (None, None),
        Next::Done | Next::NotModified | Next::Skipped | Next::Failed => {
            ctx.gate.politeness.recrawl(&job.host)
        }
    };
    Completion {
        url_id: job.url_id,
        lease: job.lease,
        host: job.host,
        host_backoff_changed,
        host_backoff_until_ms: None,
        attempt: job.attempt,
        record,
        next,
        links,
        dropped_links,
        recrawl_after,
        revisit: job.revisit,
        adaptive,
    }
}

/// The completion of a job whose host's lease ended (or passed its
/// deadline) before its request could start: no request made, no attempt;
/// the URL goes back to the queue if the lease is still this daemon's, and
/// is left to the host's new owner otherwise (the store fences it).
fn lease_ended(ctx: &WorkerContext, job: Job) -> Attempted {
    tracing::debug!(url = %ForLog(&job.url), "the host's lease ended before the request: back to the frontier");
    ctx.gate.politeness.finished(&job.host, HostSignal::Neutral, Instant::now(), Instant::now(), 0.0);
    ctx.wake.notify_one();
    Attempted::Completed(Completion {
        url_id: job.url_id,
        lease: job.lease,
        host: job.host,
        host_backoff_changed: false,
        host_backoff_until_ms: None,
        attempt: job.attempt,
        record: AttemptRecord::default(),
        next: Next::Requeue(now_ms()),
        links: Vec::new(),
        dropped_links: Vec::new(),
        recrawl_after: None,
        revisit: job.revisit,
        adaptive: None,
    })
}

/// How long a URL whose request could not be made for lack of file
/// descriptors waits before it is claimed again.
const DEFERRED_FOR: Duration = Duration::from_secs(1);

/// How often running out of file descriptors is warned about, at most.
const DESCRIPTORS_WARN_EVERY: Duration = Duration::from_secs(10);

/// When the last out-of-descriptors warning was printed, and how many
/// requests were deferred since.
static DESCRIPTORS_WARNED: std::sync::Mutex<(Option<Instant>, u64)> = std::sync::Mutex::new((None, 0));

/// Warns loudly that a request was deferred for lack of file descriptors,
/// at most every [`DESCRIPTORS_WARN_EVERY`], with the count since the last
/// warning.
fn warn_out_of_descriptors(fetched: &Fetched) {
    let mut warned = DESCRIPTORS_WARNED.lock().unwrap_or_else(|p| p.into_inner());
    warned.1 += 1;
    if warned.0.is_some_and(|at| at.elapsed() < DESCRIPTORS_WARN_EVERY) {
        return;
    }
    tracing::warn!(
        deferred = warned.1,
        error = fetched.record.error_message.as_deref().unwrap_or_default(),
        "OUT OF FILE DESCRIPTORS: requests are deferred (not counted as attempts, hosts not \
         blamed); raise the limit (LimitNOFILE=, ulimit -n) or lower crawl.concurrency"
    );
    *warned = (Some(Instant::now()), 0);
}

/// The links of a fetched page that discovery's rules let through, as URLs
/// one level deeper found on this one, the dropped ones by reason, and the
/// page's canonical URL.
fn discover(
    discovery: &Discovery,
    job: &Job,
    fetched: &Fetched,
) -> (Vec<NewUrl>, Vec<(DropReason, u64)>, Option<String>) {
    let (Some(found), Some(page)) = (&fetched.found, fetched.record.final_url.as_deref()) else {
        return (Vec::new(), Vec::new(), None);
    };
    let Ok(page) = url::Url::parse(page) else { return (Vec::new(), Vec::new(), None) };
    let judged = discovery.judge(&page, job.depth, found);
    let links = judged
        .links
        .into_iter()
        .map(|l| NewUrl { url: l.url, host: l.host, depth: job.depth + 1, found_on: Some(job.url_id) })
        .collect();
    (links, judged.dropped.into_iter().collect(), judged.canonical)
}

/// Whether links on this job's page could be followed (not at max depth).
fn follows_from(ctx: &WorkerContext, job: &Job) -> bool {
    ctx.discovery.as_ref().is_some_and(|d| d.follows_from(job.depth))
}
