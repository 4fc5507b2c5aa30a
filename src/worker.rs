//! A worker: receive a job, wait for its host's turn and the global rate
//! limiter, fetch, decide, tell politeness how the host behaved, hand the
//! completion to the writer. A fixed pool of these drains the job channel.
//! Each redirect hop is a request of its own: robots.txt, turn, delay and
//! concurrency of its host, and its answer updates that host.
//!
//! Only waiting (for a job, a slot, a turn, the limiter) races the stop
//! token: a request that started runs to its end (bounded by
//! `fetch.timeout`) unless `abort` is cancelled, and handing its completion
//! to the writer is never raced, so a finished fetch is always committed. A retry does not occupy the worker:
//! the URL goes back to the frontier with its not-before time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use crate::config::RetryConfig;
use crate::fetch::{ErrorKind, Fetched, Fetcher};
use crate::frontier::{now_ms, wants_refill};
use crate::links::Discovery;
use crate::politeness::{HostSignal, Politeness};
use crate::redact::ForLog;
use crate::retry::{Decision, decide};
use crate::robots::{Refusal, Robots};
use crate::store::{AttemptRecord, Backend, DropReason, HopLease, HostLeases, NewUrl, Store, StoreError};
use crate::store::{Completion, Job, Next};

/// What every worker shares.
pub struct WorkerContext {
    pub fetcher: Fetcher,
    pub retry: RetryConfig,
    /// The global request-rate limit (`crawl.rate`), replaceable by a reload.
    pub rate: RateLimit,
    /// Per-host limits, shared with the producer.
    pub politeness: Arc<Politeness>,
    /// robots.txt rules, unless `robots.obey` is off.
    pub robots: Option<Arc<Robots>>,
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
    /// Where hosts are leased (PostgreSQL): no request to a host starts past
    /// its lease's deadline, and a redirect hop to another host leases that
    /// host first. `None`: no leases to check (SQLite).
    pub leasing: Option<Leasing>,
}

/// Where hosts are leased (PostgreSQL): the store that leases them and the
/// leases this daemon holds (the store's own, [`Backend::host_leases`]),
/// for workers and the sitemap task alike.
#[derive(Clone)]
pub struct Leasing {
    pub store: Arc<Backend>,
    pub leases: Arc<HostLeases>,
}

impl Leasing {
    /// `store`'s leasing, if it leases hosts.
    pub fn of(store: &Arc<Backend>) -> Option<Self> {
        store.host_leases().map(|leases| Self { store: store.clone(), leases })
    }

    /// Takes (or keeps) `host`'s lease for a request no claim put under one
    /// (a redirect hop to another host, a sitemap; [`Backend::lease_hop`]);
    /// a lease new here tells politeness when the host's last request may
    /// have started. Returns whether this daemon holds the host: `false`
    /// when another daemon does.
    ///
    /// Errors: the database could not be asked.
    pub async fn for_request(&self, politeness: &Politeness, host: &str) -> Result<bool, StoreError> {
        match self.store.lease_hop(host).await? {
            HopLease::Held { last_start } => {
                if let Some(ago) = last_start {
                    politeness.handed_over(host, ago);
                }
                Ok(true)
            }
            HopLease::HeldByAnother => Ok(false),
        }
    }
}

/// A job whose host's turn is further away than this is parked (see
/// [`WorkerContext::park`]) rather than waited for by its worker.
const PARK_BEYOND: Duration = Duration::from_millis(10);

impl WorkerContext {
    /// Sends `job` back into the job channel at `turn`, without holding a
    /// worker until then. A new host's first job waits a whole delay after
    /// its robots.txt request: a quarter of a second of a worker per host,
    /// which across thousands of hosts was a third of the crawl's time.
    /// The job stays counted against its host (politeness) and in flight
    /// (the store); if the crawl stops first it is dropped here and its URL
    /// requeued with every other unfinished lease on the way out.
    fn park(&self, job: Job, turn: Instant) {
        let (jobs, stop) = (self.parked.clone(), self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(turn) => {
                    if let Some(jobs) = jobs.upgrade() {
                        let _ = jobs.send(job).await;
                    }
                }
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

/// The global request-rate limit, `None` for none. A reload replaces it with
/// [`RateLimit::set`]; a worker waiting on the old limiter stops waiting and
/// asks the new one, so lowering a very slow rate takes effect at once.
pub struct RateLimit(watch::Sender<Option<Arc<DefaultDirectRateLimiter>>>);

impl RateLimit {
    /// A limit of `rate` request starts per second, or none.
    pub fn new(rate: Option<f64>) -> Self {
        Self(watch::Sender::new(rate.map(|r| Arc::new(rate_limiter(r)))))
    }

    /// Replaces the limit (a fresh limiter: the new rate starts from a full
    /// burst).
    pub fn set(&self, rate: Option<f64>) {
        self.0.send_replace(rate.map(|r| Arc::new(rate_limiter(r))));
    }

    /// Waits until a request may start under the limit in force. Cancel safe.
    pub async fn until_ready(&self) {
        let mut changes = self.0.subscribe();
        loop {
            let Some(limiter) = changes.borrow_and_update().clone() else { return };
            tokio::select! {
                _ = limiter.until_ready() => return,
                _ = changes.changed() => {}
            }
        }
    }
}

/// A `governor` limiter allowing `rate` request starts per second. The burst
/// is 10 ms worth of requests (at least one), so a high rate is not throttled
/// by timer granularity while a low one stays evenly spaced.
pub fn rate_limiter(rate: f64) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let burst = ((rate / 100.0).ceil() as u32).max(1);
    let quota = Quota::with_period(period)
        .expect("period is above zero")
        .allow_burst(std::num::NonZeroU32::new(burst).expect("burst is at least one"));
    RateLimiter::direct(quota)
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
    /// Its host's turn is later than [`PARK_BEYOND`]: to be parked until then.
    Parked(Job, Instant),
    /// Stopped before the request started, or aborted during it.
    Stopped,
}

/// One job from robots.txt to completion, or parked when its host's turn
/// is not near.
async fn attempt(ctx: &WorkerContext, job: Job, jobs: &async_channel::Receiver<Job>) -> Attempted {
    let checked = (std::time::SystemTime::now(), Instant::now());
    if ctx.leasing.as_ref().is_some_and(|l| !l.leases.may_start(&job.host, job.lease)) {
        // Not even the host's robots.txt: the host may be another daemon's.
        ctx.politeness.skip_start(&job.host);
        return lease_ended(ctx, job);
    }
    let Ok(refusal) = robots_refusal(ctx, &job.url, &job.host).await else { return Attempted::Stopped };
    if refusal.is_none()
        && let Some(turn) = ctx.politeness.next_turn(&job.host, Instant::now() + PARK_BEYOND)
    {
        return Attempted::Parked(job, turn);
    }
    let mut handed_over = None;
    let (fetched, signal, started) = match refusal {
        None => match fetch_in_turn(ctx, &job).await {
            Ok(InTurn { fetched, signal, started, redirect_handed_over }) => {
                handed_over = redirect_handed_over;
                (fetched, signal, started)
            }
            Err(Interrupted::Stopped) => return Attempted::Stopped,
            Err(Interrupted::LeaseEnded) => return lease_ended(ctx, job),
        },
        Some(Refusal { kind, message, retry_after }) => {
            // No request made: the host's state is as it was now.
            ctx.politeness.skip_start(&job.host);
            let mut fetched = Fetched::without_request(kind, message, retry_after);
            // The attempt's time went to robots.txt: fetching it (and
            // failing, perhaps after seconds), or waiting for that fetch.
            fetched.record.started_at = Some(checked.0);
            fetched.record.elapsed_ms = checked.1.elapsed().as_millis() as u64;
            fetched.record.elapsed_us = checked.1.elapsed().as_micros() as u64;
            // robots.txt is the job's origin's: its port is the job URL's.
            let signal = host_signal(&fetched, port_of(&job.url));
            (fetched, signal, Instant::now())
        }
    };
    let next = if fetched.out_of_descriptors {
        // Not an attempt, and not the host's doing (its signal is neutral).
        warn_out_of_descriptors(&fetched);
        Next::Requeue(now_ms() + DEFERRED_FOR.as_millis() as i64)
    } else {
        let decision = decide(
            &ctx.retry,
            job.attempt,
            fetched.record.http_status,
            fetched.error,
            fetched.retry_after,
            rand::random(),
        );
        match decision {
            Decision::Done if fetched.not_modified => Next::NotModified,
            Decision::Done if fetched.skipped => Next::Skipped,
            Decision::Done => Next::Done,
            Decision::Failed => Next::Failed,
            Decision::Retry(delay) => Next::RetryAt(now_ms() + delay.as_millis() as i64),
        }
    };
    let (mut links, dropped_links) = match (&ctx.discovery, next) {
        (Some(discovery), Next::Done) => discover(discovery, &job, &fetched),
        _ => (Vec::new(), Vec::new()),
    };
    if let Some(target) = handed_over.filter(|_| next == Next::Done) {
        // Its host is another daemon's: the target is crawled there, as a
        // URL of its own at this one's depth.
        let host = target.host_str().unwrap_or_default().to_owned();
        links.push(NewUrl { url: target.into(), host, depth: job.depth, found_on: Some(job.url_id) });
    }
    // What a retry gets is first of all its URL's (a 503 again for one path).
    let signal = if job.attempt > 1 { signal.of_retry() } else { signal };
    let host_backoff = ctx.politeness.finished(&job.host, signal, started, Instant::now(), rand::random());
    // Above the refill mark the producer has nothing to do, and waking it
    // on every fetch costs; a freed host slot only matters below it.
    if wants_refill(jobs.len(), jobs.capacity().unwrap_or(0)) {
        ctx.wake.notify_one();
    }
    if let Some(change) = host_backoff {
        change.log(&job.host);
    }
    let mut record = fetched.record;
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
        Next::Done | Next::NotModified | Next::Skipped | Next::Failed => ctx.politeness.recrawl(&job.host),
    };
    let completion = Completion {
        url_id: job.url_id,
        lease: job.lease,
        host: job.host,
        host_backoff_until_ms: host_backoff.map(|change| now_ms() + change.left().as_millis() as i64),
        attempt: job.attempt,
        record,
        next,
        links,
        dropped_links,
        recrawl_after,
        revisit: job.revisit,
        adaptive,
    };
    Attempted::Completed(completion)
}

/// The completion of a job whose host's lease ended (or passed its
/// deadline) before its request could start: no request made, no attempt;
/// the URL goes back to the queue if the lease is still this daemon's, and
/// is left to the host's new owner otherwise (the store fences it).
fn lease_ended(ctx: &WorkerContext, job: Job) -> Attempted {
    tracing::debug!(url = %ForLog(&job.url), "the host's lease ended before the request: back to the frontier");
    ctx.politeness.finished(&job.host, HostSignal::Neutral, Instant::now(), Instant::now(), 0.0);
    ctx.wake.notify_one();
    Attempted::Completed(Completion {
        url_id: job.url_id,
        lease: job.lease,
        host: job.host,
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
/// one level deeper found on this one, and the dropped ones by reason.
fn discover(discovery: &Discovery, job: &Job, fetched: &Fetched) -> (Vec<NewUrl>, Vec<(DropReason, u64)>) {
    let (Some(found), Some(page)) = (&fetched.found, fetched.record.final_url.as_deref()) else {
        return (Vec::new(), Vec::new());
    };
    let Ok(page) = url::Url::parse(page) else { return (Vec::new(), Vec::new()) };
    let judged = discovery.judge(&page, job.depth, found);
    let links = judged
        .links
        .into_iter()
        .map(|l| NewUrl { url: l.url, host: l.host, depth: job.depth + 1, found_on: Some(job.url_id) })
        .collect();
    (links, judged.dropped.into_iter().collect())
}

/// Whether links on this job's page could be followed (not at max depth).
fn follows_from(ctx: &WorkerContext, job: &Job) -> bool {
    ctx.discovery.as_ref().is_some_and(|d| d.follows_from(job.depth))
}

/// The crawl was told to stop while waiting.
struct Stopped;

/// What [`fetch_in_turn`] fetched.
struct InTurn {
    fetched: Fetched,
    /// What the answers say about the job's host.
    signal: HostSignal,
    /// When the job's host's last request started.
    started: Instant,
    /// The target of a redirect to a host another daemon holds: not
    /// requested here, to be crawled as a URL of its own.
    redirect_handed_over: Option<Url>,
}

/// Why a job's requests ended before it had an answer.
enum Interrupted {
    /// The crawl was told to stop before a request started, or aborted one.
    Stopped,
    /// The lease of the job's host ended, or reached its deadline, before a
    /// request to it could start.
    LeaseEnded,
}

/// What robots.txt says about a request for `url` on `host`: `None` when it
/// may be made (or robots.txt is ignored). Fetches the host's robots.txt
/// first if it is not cached.
async fn robots_refusal(ctx: &WorkerContext, url: &str, host: &str) -> Result<Option<Refusal>, Stopped> {
    let Some(robots) = &ctx.robots else { return Ok(None) };
    let verdict = tokio::select! {
        biased;
        _ = ctx.stop.cancelled() => return Err(Stopped),
        verdict = robots.check(url, host) => verdict,
    };
    Ok(verdict.refusal())
}

/// Fetches the job's URL, each request in its host's turn: the first
/// request in the job's host's (whose slot the producer took), and every
/// redirect hop as a request of its own to its host, checked against that
/// host's robots.txt, waiting for its turn and delay, and, on another host,
/// for a free slot under that host's concurrency, whose politeness state
/// its answer then updates. Returns what was fetched, with what it says
/// about the job's host and when the job's host's last request started.
///
/// Where hosts are leased (PostgreSQL), every request needs its host's
/// lease: the job's, or, for a hop to another host, a lease taken for it
/// ([`Backend::lease_hop`]). A hop to a host another daemon holds is not
/// requested: the attempt ends at the redirect, whose target is handed over
/// (as distributed crawlers such as Heritrix and StormCrawler queue every
/// redirect target), so the other daemon's politeness stays whole.
///
/// Errors: stopped before a request started, or aborted during one; or a
/// request was due after its host's lease's deadline, or the hop's host
/// could not be leased.
async fn fetch_in_turn(ctx: &WorkerContext, job: &Job) -> Result<InTurn, Interrupted> {
    let mut attempt = ctx.fetcher.begin(&job.url, follows_from(ctx, job));
    attempt.conditional(&job.revisit.validators);
    // The job's host: what its last answer said, and when that request began.
    let mut own = (HostSignal::Neutral, Instant::now());
    // The host and port of the last request sent, and its turn.
    let mut last: Option<(String, u16, Instant)> = None;
    let mut redirect_handed_over = None;
    while let Some(url) = attempt.next_url() {
        let url = url.clone();
        let host = url.host_str().unwrap_or_default().to_owned();
        let foreign = host != job.host;
        if attempt.requests() > 0 {
            if let Some((previous, port, turn)) = last.take() {
                // Its answer was a redirect: the host is healthy.
                own = settle(ctx, job, &previous, HostSignal::Healthy { port }, turn, own);
            }
            if let Some(refusal) = hop_out_of_scope(ctx, job, &url) {
                attempt.refuse(refusal.kind, refusal.message);
                break;
            }
            // Its host's lease before any request to it, robots.txt's too.
            if foreign && let Some(leasing) = &ctx.leasing {
                match leasing.for_request(&ctx.politeness, &host).await {
                    Ok(true) => {}
                    Ok(false) => {
                        redirect_handed_over = attempt.hand_over();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%host, "cannot lease a redirect's host: {e}; the URL goes back to the frontier");
                        return Err(Interrupted::LeaseEnded);
                    }
                }
            }
            let refusal =
                robots_refusal(ctx, url.as_str(), &host).await.map_err(|Stopped| Interrupted::Stopped)?;
            if let Some(refusal) = refusal {
                let message = format!("redirect to {url}: {}", refusal.message);
                attempt.refuse(refusal.kind, message);
                break;
            }
        }
        if foreign {
            tokio::select! {
                biased;
                _ = ctx.stop.cancelled() => return Err(Interrupted::Stopped),
                _ = ctx.politeness.acquire(&host) => {}
            }
        }
        let release = |ctx: &WorkerContext| {
            if foreign {
                ctx.politeness.finished(&host, HostSignal::Neutral, Instant::now(), Instant::now(), 0.0);
            }
        };
        // The rate limit first: the request must start right after its turn.
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return { release(ctx); Err(Interrupted::Stopped) },
            _ = ctx.rate.until_ready() => {}
        }
        let turn = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return { release(ctx); Err(Interrupted::Stopped) },
            turn = ctx.politeness.wait_turn(&host) => turn,
        };
        if let Some(Leasing { leases, .. }) = &ctx.leasing {
            let held = if foreign { leases.may_start_any(&host) } else { leases.may_start(&host, job.lease) };
            if !held {
                release(ctx);
                return Err(Interrupted::LeaseEnded);
            }
        }
        tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return { release(ctx); Err(Interrupted::Stopped) },
            _ = attempt.request() => {}
        }
        let port = url.port_or_known_default().unwrap_or_default();
        last = Some((host, port, turn));
    }
    let fetched = attempt.finish();
    if let Some((host, port, turn)) = last {
        own = settle(ctx, job, &host, host_signal(&fetched, port), turn, own);
    }
    Ok(InTurn { fetched, signal: own.0, started: own.1, redirect_handed_over })
}

/// Why a redirect hop to `url` must not be requested: when following links,
/// a discovered page (not a seed, which is the user's choice, as are its
/// redirects) may only redirect within the crawl's scope from its own URL,
/// as its links must (Scrapy's offsite filtering of redirects does the same).
fn hop_out_of_scope(ctx: &WorkerContext, job: &Job, url: &Url) -> Option<Refusal> {
    let discovery = ctx.discovery.as_ref().filter(|_| job.depth > 0)?;
    let from = Url::parse(&job.url).ok()?;
    (!discovery.in_scope(&from, url)).then(|| Refusal {
        kind: ErrorKind::OutOfScope,
        message: format!("redirect to {url}, out of the crawl's scope: not requested"),
        retry_after: None,
    })
}

/// Puts what the answer of a request to `host` (sent at `turn`) says into
/// politeness: at once for another host than the job's (releasing the slot
/// the hop took), or as the job's host's latest state, returned, which the
/// job's completion settles.
fn settle(
    ctx: &WorkerContext,
    job: &Job,
    host: &str,
    signal: HostSignal,
    turn: Instant,
    own: (HostSignal, Instant),
) -> (HostSignal, Instant) {
    if host == job.host {
        return (signal, turn);
    }
    if let Some(change) = ctx.politeness.finished(host, signal, turn, Instant::now(), rand::random()) {
        change.log(host);
    }
    own
}

/// What an attempt whose last request went to `port` says about its host:
/// 429 and 503 ask the whole host to slow down (RFC 6585 §4, RFC 9110
/// §15.6.4); any other response shows it serves on that port; no answer at
/// all (a timeout before any response, DNS) counts towards a host backoff,
/// and so does a connection refused or reset, unless the host answers on
/// another port. A response that began and then broke or stalled says
/// nothing of the host: it answered, and the URL is retried.
pub(crate) fn host_signal(fetched: &Fetched, port: u16) -> HostSignal {
    if fetched.out_of_descriptors {
        // This process's limit, not the host's doing.
        return HostSignal::Neutral;
    }
    // The last request's own: a status may be an earlier redirect's.
    let answered = fetched.record.ttfb_ms.is_some();
    match (fetched.error, fetched.record.http_status) {
        (None, Some(429 | 503)) => HostSignal::Throttled { retry_after: fetched.retry_after },
        (None, _) => HostSignal::Healthy { port },
        (Some(_), _) if answered => HostSignal::Neutral,
        (Some(ErrorKind::Timeout | ErrorKind::Dns), _) => HostSignal::Unreachable,
        (Some(ErrorKind::Connect), _) => HostSignal::ConnectFailed { port },
        (Some(_), _) => HostSignal::Neutral,
    }
}

/// The port of `url` (its scheme's default when it names none).
fn port_of(url: &str) -> u16 {
    Url::parse(url).ok().and_then(|u| u.port_or_known_default()).unwrap_or_default()
}
