//! Building a crawl: every piece made and wired before any is spawned (the
//! HTTP client, the gate, the service's bound addresses, the channels and
//! the handles the tasks share), so that a failure leaves no task behind.
//! As vector's topology builder: [`Pieces::build`] returns the [`Pieces`],
//! and [`Running::spawn`](super::running::Running::spawn) starts them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{Notify, mpsc};

use super::budget::Budget;
use super::input::{Input, InputTask};
use super::recovery::Recovered;
use super::stall::StallGuard;
use crate::config::Config;
use crate::error::CrawlError;
use crate::fetch::{Fetcher, Pool};
use crate::frontier::Producer;
use crate::gate::{Credentials, Gate, Leasing, RateLimit};
use crate::job::{Completion, Job};
use crate::links::Discovery;
use crate::politeness::Politeness;
use crate::reload::{Live, Reloader};
use crate::robots::Robots;
use crate::service::Service;
use crate::shutdown::Shutdown;
use crate::sitemaps::{MAX_SITEMAP_BYTES, Origin, SitemapQueue, SitemapReceiver, SitemapTask};
use crate::stats::CrawlStats;
use crate::store::{Backend, PageLimits};
use crate::systemd::{Heartbeat, Notifier};
use crate::tasks::Tasks;
use crate::worker::WorkerContext;
use crate::writer::Writer;

/// Completions buffered between workers and the writer.
const RESULTS_CAPACITY: usize = 8_192;

/// The least room in the job channel: with one fast host (no delay), the
/// producer claims up to this many per round.
const CHANNEL_MIN: usize = 512;

/// A batch crawl ends when the frontier is empty; the service waits for more
/// work, serves its endpoints, recrawls and reloads.
pub(super) enum Mode {
    Batch,
    /// With a reloader, `SIGHUP` reloads the configuration.
    Service(Option<Reloader>),
}

/// The handles that every task of a crawl shares.
pub(super) struct Shared {
    pub store: Arc<Backend>,
    pub stats: Arc<CrawlStats>,
    /// Per-host politeness (the gate's, the producer's and the writer's):
    /// when each host's last request started is handed on with its lease
    /// when the crawl ends.
    pub politeness: Arc<Politeness>,
    /// Wakes the producer: URLs added, a result committed, a host freed.
    pub wake: Arc<Notify>,
}

/// Every task of a crawl, built and wired, none spawned yet.
pub(super) struct Pieces {
    pub shared: Shared,
    /// Tells systemd the crawl is ready, then that it is stopping.
    pub notifier: Arc<Notifier>,
    /// Claims due URLs into the job channel, whose one sender it holds.
    pub producer: Producer,
    /// What every fetch worker shares: the fetcher, the gate, the tokens.
    pub workers: Arc<WorkerContext>,
    /// How many workers run (`crawl.concurrency`).
    pub concurrency: usize,
    /// The job channel's receiving end: a clone for each worker.
    pub jobs: async_channel::Receiver<Job>,
    /// The completion channel's sending end: a clone for each worker. The
    /// writer ends once every clone is dropped.
    pub completions: mpsc::Sender<Completion>,
    pub writer: Writer<Backend>,
    /// The completion channel's receiving end, the writer's.
    pub results: mpsc::Receiver<Completion>,
    /// Reads sitemaps and feeds into the frontier; ends with its `done`.
    pub sitemaps: SitemapTask<Backend>,
    /// The sitemap task's fetcher: the workers', for larger bodies.
    pub sitemap_fetcher: Fetcher,
    /// The sitemap queue's receiving end, the sitemap task's.
    pub sitemap_rx: SitemapReceiver,
    /// Reads the input into the frontier (a batch crawl given one).
    pub input: Option<InputTask>,
    pub stall_guard: StallGuard,
    /// A batch crawl's budgets, when set (the service has no end to bring
    /// forward).
    pub budget: Option<Budget>,
    /// The service's endpoints and loops, bound (`trawler run`), and what
    /// a reload changes.
    pub service: Option<(Service, Live)>,
}

impl Pieces {
    /// Builds every piece of a crawl of `store`, whose recovery left
    /// `recovered`, in `mode`, reading `input` (if any), stopped by
    /// `shutdown`. The service reports a failure on `tasks` at `/healthz`.
    ///
    /// Errors: the HTTP client or a host's credentials cannot be set up, or
    /// the service cannot bind an address or install its metrics recorder.
    pub(super) async fn build(
        config: &Config,
        store: &Arc<Backend>,
        tasks: &Tasks,
        shutdown: &Shutdown,
        recovered: Recovered,
        input: Option<Input>,
        mode: Mode,
    ) -> Result<Self, CrawlError> {
        let Recovered { rules, stats } = recovered;
        let discovery = config
            .discovery
            .follow
            .then(|| Discovery::new(config.discovery.clone()).obeying_robots(config.robots.obey));
        let fetcher = fetcher(config, discovery.as_ref())?;
        let politeness = Arc::new(Politeness::new(rules, config.retry.retry_after_max));
        let (sitemap_queue, sitemap_rx) = sitemap_queue(config);
        let gate = gate(config, store, &politeness, &sitemap_queue, &fetcher)?;
        let service = match mode {
            Mode::Batch => None,
            Mode::Service(reloader) => Some(Service::bind(config, store, tasks, reloader).await?),
        };

        // Nothing below fails.
        let shared = Shared { store: store.clone(), stats, politeness, wake: Arc::new(Notify::new()) };
        let concurrency = config.crawl.concurrency.get() as usize;
        // The channel holds enough claimed jobs to keep every worker busy while the
        // producer's next claim waits behind a commit on the one write connection.
        // Politeness lets at most one job per host with a delay wait in it.
        let (job_tx, jobs) = async_channel::bounded((concurrency * 4).max(CHANNEL_MIN));
        let (completions, results) = mpsc::channel(RESULTS_CAPACITY);
        let sitemaps = sitemap_task(config, &shared, sitemap_queue.clone(), gate.clone());
        let sitemap_fetcher = fetcher.sibling(config.fetch.max_redirects, MAX_SITEMAP_BYTES, true);
        let parked = job_tx.downgrade();
        let workers = Arc::new(worker_context(config, &shared, shutdown, fetcher, gate, discovery, parked));
        let input_done = Arc::new(AtomicBool::new(input.is_none()));
        let input = input.map(|input| input_task(config, &shared, shutdown, input, &input_done));
        let daemon = service.is_some();
        let producer = producer(config, &shared, shutdown, job_tx, input_done, sitemap_queue, daemon);
        let writer = writer(config, &shared);
        let (stall_guard, stall_timeout) = StallGuard::new(config, store, &shared.stats);
        let notifier = Arc::new(Notifier::from_env());
        let budget = if service.is_none() { Budget::of(config, &shared.stats) } else { None };
        let service = service.map(|service| {
            let (ctx, store, notifier, wake) =
                (workers.clone(), store.clone(), notifier.clone(), shared.wake.clone());
            (service, Live { config: config.clone(), ctx, store, notifier, wake, stall_timeout })
        });
        Ok(Self {
            shared,
            notifier,
            producer,
            workers,
            concurrency,
            jobs,
            completions,
            writer,
            results,
            sitemaps,
            sitemap_fetcher,
            sitemap_rx,
            input,
            stall_guard,
            budget,
            service,
        })
    }
}

/// The workers' HTTP client: connections kept for `crawl.concurrency` and
/// the per-host limits, the hosts' settings, and link extraction when
/// following links (`discovery`).
///
/// Errors: a CA file or a host's secret cannot be read.
fn fetcher(config: &Config, discovery: Option<&Discovery>) -> Result<Fetcher, crate::fetch::ClientError> {
    let politeness = &config.politeness;
    let pool = Pool::for_politeness(
        config.crawl.concurrency.get(),
        config
            .hosts
            .values()
            .filter_map(|h| h.concurrency)
            .chain([politeness.per_host_concurrency])
            .map(|n| n.get()),
        config.hosts.values().filter_map(|h| h.delay).chain([politeness.per_host_delay]),
    );
    tracing::debug!(?pool, "idle HTTP connections kept");
    let fetcher = Fetcher::with_hosts(
        &config.fetch,
        &config.hosts,
        config.store.save_headers,
        config.store.save_body,
        pool,
    )?
    .with_robots_token(&config.robots.user_agent_token);
    Ok(match discovery {
        Some(discovery) => fetcher.with_link_extraction(discovery.max_links_per_page()),
        None => fetcher,
    })
}

/// The one gate every request passes (scope, lease, robots.txt,
/// politeness, rate limit, credentials), its robots.txt requests made with
/// `fetcher`'s client.
///
/// Errors: a host's credentials cannot be read.
fn gate(
    config: &Config,
    store: &Arc<Backend>,
    politeness: &Arc<Politeness>,
    sitemaps: &SitemapQueue,
    fetcher: &Fetcher,
) -> Result<Arc<Gate>, CrawlError> {
    Ok(Arc::new(Gate {
        politeness: politeness.clone(),
        rate: RateLimit::new(config.crawl.rate),
        robots: robots(config, store, politeness, sitemaps),
        robots_fetcher: Robots::fetcher(fetcher),
        scope: config.discovery.scope,
        following: config.discovery.follow,
        leasing: Leasing::of(store),
        credentials: Credentials::from_config(&config.hosts)?,
    }))
}

/// The robots.txt cache, or `None` (with a loud warning) when told to ignore
/// it. When following links, its `Sitemap:` lines go to `sitemaps`.
fn robots(
    config: &Config,
    store: &Arc<Backend>,
    politeness: &Arc<Politeness>,
    sitemaps: &SitemapQueue,
) -> Option<Arc<Robots>> {
    if !config.robots.obey {
        tracing::warn!(
            "robots.txt is IGNORED (robots.obey = false / --ignore-robots): only do this for sites you run"
        );
        return None;
    }
    let sitemaps = config.discovery.follow.then(|| sitemaps.clone());
    let robots = Robots::new(config.robots.clone(), politeness.clone(), sitemaps);
    // Daemons sharing a database share robots.txt too (PostgreSQL).
    let robots = match store.coordination() {
        Some(coordination) => robots.sharing(coordination),
        None => robots,
    };
    Some(Arc::new(robots))
}

/// The sitemap queue and its receiving end, holding `discovery.sitemaps`
/// and `discovery.feeds`.
fn sitemap_queue(config: &Config) -> (SitemapQueue, SitemapReceiver) {
    let (queue, rx) = SitemapQueue::new();
    config.discovery.sitemaps.iter().for_each(|s| queue.submit(s.clone(), Origin::User));
    config.discovery.feeds.iter().for_each(|f| queue.submit_feed(f.clone()));
    (queue, rx)
}

/// What every fetch worker shares: `fetcher` and `gate` for each request,
/// `discovery` for the links of each page, `shutdown`'s tokens, and
/// `parked`, the job channel that a parked job goes back into.
fn worker_context(
    config: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
    fetcher: Fetcher,
    gate: Arc<Gate>,
    discovery: Option<Discovery>,
    parked: async_channel::WeakSender<Job>,
) -> WorkerContext {
    WorkerContext {
        fetcher,
        retry: config.retry.clone(),
        gate,
        discovery,
        wake: shared.wake.clone(),
        stop: shutdown.stop_token().clone(),
        abort: shutdown.abort_token().clone(),
        bodies: config.store.save_body.then(|| shared.store.clone()),
        working: shared.stats.working.clone(),
        parked,
    }
}

/// The producer: claims into `jobs`, for as many hosts at a time as there
/// are workers, until stopped or (unless a `daemon`) the frontier, the
/// input (`input_done`) and the `sitemaps` queue are all exhausted.
fn producer(
    config: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
    jobs: async_channel::Sender<Job>,
    input_done: Arc<AtomicBool>,
    sitemaps: SitemapQueue,
    daemon: bool,
) -> Producer {
    Producer {
        store: shared.store.clone(),
        jobs,
        stop: shutdown.stop_token().clone(),
        wake: shared.wake.clone(),
        input_done,
        sitemaps,
        stats: shared.stats.clone(),
        politeness: shared.politeness.clone(),
        heartbeat: Arc::new(Heartbeat::new("producer")),
        exit_when_idle: !daemon,
        max_hosts: config.crawl.concurrency.get() as usize,
    }
}

/// The sitemap task: sitemaps and feeds from `queue` into the frontier,
/// through `gate` as every request, under the discovery rules.
fn sitemap_task(
    config: &Config,
    shared: &Shared,
    queue: SitemapQueue,
    gate: Arc<Gate>,
) -> SitemapTask<Backend> {
    SitemapTask {
        store: shared.store.clone(),
        queue,
        gate,
        discovery: Discovery::new(config.discovery.clone()),
        stats: shared.stats.clone(),
        wake: shared.wake.clone(),
        done: Default::default(),
    }
}

/// The input task for `input`, stopped by `shutdown`, setting `done` once
/// the input is read.
fn input_task(
    config: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
    input: Input,
    done: &Arc<AtomicBool>,
) -> InputTask {
    InputTask {
        input,
        store: shared.store.clone(),
        stop: shutdown.stop_token().clone(),
        wake: shared.wake.clone(),
        stats: shared.stats.clone(),
        done: done.clone(),
        strip: config.discovery.strip_query_params.clone(),
    }
}

/// The writer, committing with `config`'s page limits.
fn writer(config: &Config, shared: &Shared) -> Writer<Backend> {
    Writer {
        store: shared.store.clone(),
        stats: shared.stats.clone(),
        wake: shared.wake.clone(),
        limits: PageLimits {
            total: config.discovery.max_pages,
            per_host: config.discovery.max_pages_per_host,
            max_depth: config.discovery.max_depth,
        },
        heartbeat: Arc::new(Heartbeat::new("writer")),
        politeness: shared.politeness.clone(),
    }
}
