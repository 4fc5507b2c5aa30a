//! The one gate every request passes, whatever asked for it: a job's page,
//! each redirect hop, robots.txt, a sitemap, a feed. [`Gate::walk`] drives
//! an [`Attempt`] a request at a time and clears each one in this order:
//!
//! 1. **scope**: a hop of a discovered page (depth > 0, when following links)
//!    stays in `discovery.scope` of the page (as Scrapy's offsite filter
//!    does redirects); a sitemap and its hops stay in scope of the robots.txt
//!    or index that named it; seeds, their hops and robots.txt go anywhere;
//! 2. **lease** (PostgreSQL): a request needs its host's lease, the job's
//!    own or one taken for it ([`Leasing`]); a page's hop to a host another
//!    daemon holds is handed over, a sitemap waits;
//! 3. **robots.txt** of the request's origin (not for robots.txt itself),
//!    fetched through this gate first if it is not cached;
//! 4. **politeness**: a slot under the host's concurrency (the producer
//!    took the job's own; robots.txt rides on the request that needs it),
//!    the global rate limit, and the host's turn, which is taken again once
//!    a new connection is set up, so the gap the site sees is never under
//!    the delay ([`Politeness::connected`]);
//! 5. **the lease again** at the turn, and once more just before the
//!    request is handed to the HTTP client: no request starts past its
//!    deadline, even from a process that froze in between;
//! 6. **credentials by origin** ([`Credentials`]): secrets go to the origin
//!    they were configured for, and nowhere else;
//! 7. **address policy**, applied by the fetch itself on the addresses it
//!    connects to (`fetch/addresses.rs`), so no DNS answer can get around it.
//!
//! Each answer then goes to its host's politeness state (backoff), except
//! robots.txt's, which decide the rules instead.

mod credentials;
mod rate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use credentials::{Credentials, unreadable_secrets};
pub use rate::RateLimit;

use crate::config::Scope;
use crate::fetch::Refusal;
use crate::fetch::{Attempt, Cleared, ConnectedHook, Fetched, Fetcher, SendCheck};
use crate::job::{ErrorKind, Job};
use crate::links::in_scope;
use crate::politeness::{HostSignal, Politeness};
use crate::robots::Robots;
use crate::store::{Backend, Coordination, HopLease, HostLeases, StoreError};

/// Everything a request is judged by, shared by the workers, the sitemap
/// task and robots.txt.
pub struct Gate {
    /// Per-host concurrency, delay and backoff.
    pub politeness: Arc<Politeness>,
    /// The global request-rate limit (`crawl.rate`), replaceable by a reload.
    pub rate: RateLimit,
    /// robots.txt rules, unless `robots.obey` is off.
    pub robots: Option<Arc<Robots>>,
    /// robots.txt requests: the crawl's client with robots.txt's limits
    /// ([`Robots::fetcher`]).
    pub robots_fetcher: Fetcher,
    /// `discovery.scope`, for hops and sitemaps.
    pub scope: Scope,
    /// Whether links are followed: only then do a page's hops keep to scope.
    pub following: bool,
    /// Where hosts are leased (PostgreSQL); `None` on SQLite.
    pub leasing: Option<Leasing>,
    /// What requests carry for their host and origin.
    pub credentials: Credentials,
}

/// What one walk is for, which decides the checks its requests get.
pub enum Errand<'a> {
    /// A job's page. The producer took a slot of the job's host for it,
    /// under the job's lease.
    Page(&'a Job),
    /// A sitemap or feed; its requests stay in scope of `anchor` (the
    /// robots.txt or index that named it), when there is one.
    Sitemap { anchor: Option<&'a Url> },
    /// An origin's robots.txt, for a request about to be made there.
    RobotsTxt,
}

/// The tokens a walk stops on.
#[derive(Clone, Copy)]
pub struct Stops<'a> {
    /// Stop waiting (for a lease, robots.txt, a slot, a turn).
    pub waiting: &'a CancellationToken,
    /// Drop the request in flight.
    pub sending: &'a CancellationToken,
}

/// What a walk fetched.
pub struct Walked {
    pub fetched: Fetched,
    /// For a page: what the answers said of the job's host and when its
    /// last request started, which the job's completion settles
    /// ([`Politeness::finished`]). `Neutral` and the walk's start when no
    /// request was made to it.
    pub own: (HostSignal, Instant),
    /// The target of a page's redirect to a host another daemon holds: not
    /// requested here, to be crawled as a URL of its own.
    pub handed_over: Option<Url>,
}

/// How the checks before a request's turn ended ([`Gate::check`]).
enum Checked {
    /// The request may wait for its turn.
    Passed,
    /// The attempt ended before the request: refused (the attempt says
    /// why), or handed over at a redirect to `handed_over`.
    Ended { handed_over: Option<Url> },
}

/// Why a walk ended before its attempt did.
#[derive(Debug)]
pub enum Interrupted {
    /// The crawl stopped before a request started, or aborted one.
    Stopped,
    /// The job's lease ended, or reached its deadline, before a request to
    /// its host could start.
    LeaseEnded,
    /// A host the walk needs is another daemon's (a sitemap's), or its lease
    /// lapsed before the request's turn: to be tried again later.
    HostHeld(String),
    /// A lease could not be asked for: the database failed.
    Store(StoreError),
    /// A job's first request was cleared, but its host's turn is later
    /// than [`PARK_BEYOND`]: the job is to be parked until `0` rather than
    /// hold a worker (nothing was sent; the walk is made again then).
    Park(Instant),
}

/// A job whose host's turn is further away than this is parked
/// ([`Interrupted::Park`]) rather than waited for by its worker. A new
/// host's first job waits a whole delay after its robots.txt request: a
/// quarter of a second of a worker per host, which across thousands of
/// hosts was a third of the crawl's time.
pub const PARK_BEYOND: std::time::Duration = std::time::Duration::from_millis(10);

impl Gate {
    /// What robots.txt says about `url` on `host`: `None` when it may be
    /// requested (or robots.txt is ignored). Fetches the origin's robots.txt
    /// through this gate first if it is not cached. Cancel safe.
    pub async fn robots_refusal(&self, url: &Url, host: &str, stops: Stops<'_>) -> Option<Refusal> {
        let robots = self.robots.as_ref()?;
        let fetch = |robots_url: String, host: String| self.fetch_robots_txt(robots_url, host, stops);
        robots.check(url.as_str(), host, &fetch).await.refusal()
    }

    /// Fetches a robots.txt through the gate ([`Errand::RobotsTxt`]) for a
    /// request to `host`. Boxed, as it is a walk inside a walk.
    fn fetch_robots_txt<'a>(
        &'a self,
        robots_url: String,
        host: String,
        stops: Stops<'a>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
        Box::pin(async move {
            let attempt = self.robots_fetcher.begin(&robots_url, false);
            match self.walk(attempt, &Errand::RobotsTxt, stops).await {
                Ok(walked) => walked.fetched,
                // The crawl is stopping, or a lease could not be asked for:
                // no rules, not cached.
                Err(why) => Fetched::without_request(
                    ErrorKind::Timeout,
                    format!("robots.txt of {host} not fetched: {why:?}"),
                    None,
                ),
            }
        })
    }

    /// Makes `attempt`'s requests, each cleared by the gate (see the module
    /// docs) for `errand`, until its response is final or a check refuses
    /// a request (which ends the attempt with the check's error, no
    /// request made).
    ///
    /// Errors: see [`Interrupted`].
    pub async fn walk(
        &self,
        mut attempt: Attempt<'_>,
        errand: &Errand<'_>,
        stops: Stops<'_>,
    ) -> Result<Walked, Interrupted> {
        let mut own = (HostSignal::Neutral, Instant::now());
        let first_port = attempt.next_url().and_then(Url::port_or_known_default).unwrap_or_default();
        // The host and port of the last request sent, and its turn.
        let mut last: Option<(String, u16, Instant)> = None;
        let mut handed_over = None;
        while let Some(url) = attempt.next_url() {
            let url = url.clone();
            let host = url.host_str().unwrap_or_default().to_owned();
            let hop = attempt.requests() > 0;
            if let Some((previous, port, turn)) = last.take() {
                // Its answer was a redirect: the host serves on that port.
                own = self.settle(errand, &previous, HostSignal::Healthy { port }, turn, own);
            }
            match self.check(&mut attempt, errand, &url, hop, stops).await? {
                Checked::Passed => {}
                Checked::Ended { handed_over: target } => {
                    handed_over = target;
                    break;
                }
            }
            if let (Errand::Page(_), false) = (errand, hop)
                && let Some(turn) = self.politeness.next_turn(&host, Instant::now() + PARK_BEYOND)
            {
                return Err(Interrupted::Park(turn));
            }
            let turn = self.turn(errand, &host, stops).await?;
            let may_send = self.may_send(errand, &host, hop);
            if may_send.as_ref().is_some_and(|may| !may()) {
                return Err(self.lease_lost(errand, host, turn));
            }
            let cleared = Cleared {
                headers: self.credentials.for_request(&url),
                on_connected: Some(self.paced(&host, turn)),
                may_send,
            };
            tokio::select! {
                biased;
                _ = stops.sending.cancelled() => {
                    self.release(errand, &host, turn);
                    return Err(Interrupted::Stopped);
                }
                _ = attempt.request(cleared) => {}
            }
            if attempt.withheld() {
                return Err(self.lease_lost(errand, host, turn));
            }
            let port = url.port_or_known_default().unwrap_or_default();
            last = Some((host, port, turn));
        }
        let fetched = attempt.finish();
        match last {
            Some((host, port, turn)) => {
                own = self.settle(errand, &host, host_signal(&fetched, port), turn, own);
            }
            // No request made to the job's host: what its refusal says
            // (robots.txt unreachable counts as the host unreachable).
            None => own.0 = host_signal(&fetched, first_port),
        }
        Ok(Walked { fetched, own, handed_over })
    }

    /// The checks before a request's turn: scope, lease, robots.txt. A
    /// refusal ends `attempt` with the check's error, no request made; a
    /// page's hop to a host another daemon holds ends it at the redirect,
    /// whose target is handed over.
    ///
    /// Errors: see [`Interrupted`].
    async fn check(
        &self,
        attempt: &mut Attempt<'_>,
        errand: &Errand<'_>,
        url: &Url,
        hop: bool,
        stops: Stops<'_>,
    ) -> Result<Checked, Interrupted> {
        let ended = Ok(Checked::Ended { handed_over: None });
        let host = url.host_str().unwrap_or_default();
        if let Some(refusal) = self.out_of_scope(errand, url, hop) {
            attempt.refuse(refusal);
            return ended;
        }
        // A job's first request, refused before its turn, makes the host
        // wait for no start.
        let unstarted = || {
            if let (Errand::Page(job), false) = (errand, hop) {
                self.politeness.skip_start(&job.host);
            }
        };
        match self.lease(errand, host, hop).await {
            Ok(true) => {}
            Ok(false) => match errand {
                Errand::Page(_) if hop => return Ok(Checked::Ended { handed_over: attempt.hand_over() }),
                Errand::Page(_) => {
                    unstarted();
                    return Err(Interrupted::LeaseEnded);
                }
                Errand::Sitemap { .. } => return Err(Interrupted::HostHeld(host.to_owned())),
                Errand::RobotsTxt => {
                    // Not followed, as a chain of more than five redirects
                    // is not (RFC 9309 §2.3.1.2).
                    let message = format!("robots.txt redirects to {url}, whose host another daemon holds");
                    attempt.refuse(Refusal::new(ErrorKind::RedirectLimit, message));
                    return ended;
                }
            },
            Err(e) => return Err(Interrupted::Store(e)),
        }
        if !matches!(errand, Errand::RobotsTxt) {
            let refusal = tokio::select! {
                biased;
                _ = stops.waiting.cancelled() => return Err(Interrupted::Stopped),
                refusal = self.robots_refusal(url, host, stops) => refusal,
            };
            if let Some(mut refusal) = refusal {
                unstarted();
                if hop {
                    refusal.message = format!("redirect to {url}: {}", refusal.message);
                }
                attempt.refuse(refusal);
                return ended;
            }
        }
        Ok(Checked::Passed)
    }

    /// Why a request for `url` must not be made: it leaves the scope the
    /// errand must keep to (see the module docs).
    fn out_of_scope(&self, errand: &Errand<'_>, url: &Url, hop: bool) -> Option<Refusal> {
        let page;
        let from = match errand {
            Errand::Page(job) if hop && self.following && job.depth > 0 => {
                page = Url::parse(&job.url).ok()?;
                &page
            }
            Errand::Sitemap { anchor: Some(anchor) } => *anchor,
            _ => return None,
        };
        if in_scope(self.scope, from, url) {
            return None;
        }
        let message = match hop {
            true => format!("redirect to {url}, out of the crawl's scope: not requested"),
            false => format!("sitemap out of the crawl's scope: {url} not requested"),
        };
        Some(Refusal::new(ErrorKind::OutOfScope, message))
    }

    /// Whether this daemon holds `host` for the request, taking its lease if
    /// it is free where the request has none yet (a hop to another host, a
    /// sitemap, a hop of robots.txt). Always, where hosts are not leased.
    async fn lease(&self, errand: &Errand<'_>, host: &str, hop: bool) -> Result<bool, StoreError> {
        let Some(leasing) = &self.leasing else { return Ok(true) };
        match errand {
            Errand::Page(job) if host == job.host => Ok(leasing.leases.may_start(host, job.lease)),
            // robots.txt is fetched for a request whose host is held.
            Errand::RobotsTxt if !hop => Ok(true),
            _ => leasing.for_request(&self.politeness, host).await,
        }
    }

    /// Whether the lease held on `host` still allows the request, asked at
    /// its turn and again just before it is sent ([`Cleared::may_send`]):
    /// the job's own lease for a page's request to its host, whichever this
    /// daemon holds for any other. `None` where hosts are not leased, and
    /// for robots.txt, fetched for a request whose host is held.
    fn may_send(&self, errand: &Errand<'_>, host: &str, hop: bool) -> Option<SendCheck> {
        let leases = self.leasing.as_ref()?.leases.clone();
        let host = host.to_owned();
        match errand {
            Errand::Page(job) if host == job.host => {
                let token = job.lease;
                Some(Arc::new(move || leases.may_start(&host, token)))
            }
            Errand::RobotsTxt if !hop => None,
            _ => Some(Arc::new(move || leases.may_start_any(&host))),
        }
    }

    /// Gives back what the request to `host` at `turn` took, its lease no
    /// longer allowing it: why the walk ends.
    fn lease_lost(&self, errand: &Errand<'_>, host: String, turn: Instant) -> Interrupted {
        self.release(errand, &host, turn);
        match errand {
            Errand::Sitemap { .. } => Interrupted::HostHeld(host),
            _ => Interrupted::LeaseEnded,
        }
    }

    /// Whether the request takes a slot of its host's concurrency of its
    /// own: not a job's request to its own host (the producer took that
    /// slot), nor robots.txt (made for a request that has one).
    fn takes_slot(errand: &Errand<'_>, host: &str) -> bool {
        match errand {
            Errand::Page(job) => host != job.host,
            Errand::Sitemap { .. } => true,
            Errand::RobotsTxt => false,
        }
    }

    /// Waits for a slot (if the request takes one), the rate limit and the
    /// host's turn; returns the turn. Cancel safe: a slot taken is given
    /// back when stopped.
    async fn turn(&self, errand: &Errand<'_>, host: &str, stops: Stops<'_>) -> Result<Instant, Interrupted> {
        if Self::takes_slot(errand, host) {
            tokio::select! {
                biased;
                _ = stops.waiting.cancelled() => return Err(Interrupted::Stopped),
                _ = self.politeness.acquire(host) => {}
            }
        }
        // The rate limit first: the request must start right after its turn.
        tokio::select! {
            biased;
            _ = stops.waiting.cancelled() => {
                self.release(errand, host, Instant::now());
                return Err(Interrupted::Stopped);
            }
            _ = self.rate.until_ready() => {}
        }
        tokio::select! {
            biased;
            _ = stops.waiting.cancelled() => {
                self.release(errand, host, Instant::now());
                Err(Interrupted::Stopped)
            }
            turn = self.politeness.wait_turn(host) => Ok(turn),
        }
    }

    /// Gives back the slot a request took, with nothing said of the host.
    fn release(&self, errand: &Errand<'_>, host: &str, turn: Instant) {
        if Self::takes_slot(errand, host) {
            self.politeness.finished(host, HostSignal::Neutral, turn, Instant::now(), 0.0);
        }
    }

    /// The hook that takes `host`'s turn again once a request's new
    /// connection is ready ([`Politeness::connected`]).
    fn paced(&self, host: &str, turn: Instant) -> ConnectedHook {
        let (politeness, host) = (self.politeness.clone(), host.to_owned());
        Arc::new(move || {
            let (politeness, host) = (politeness.clone(), host.clone());
            Box::pin(async move { politeness.connected(&host, turn).await })
        })
    }

    /// Puts what the answer of a request to `host` (sent at `turn`) says
    /// into politeness: at once where the request took a slot of its own
    /// (releasing it), as the job's host's latest state for a page's own
    /// host (returned, for the job's completion to settle), or nowhere for
    /// robots.txt (its answer decides the rules).
    fn settle(
        &self,
        errand: &Errand<'_>,
        host: &str,
        signal: HostSignal,
        turn: Instant,
        own: (HostSignal, Instant),
    ) -> (HostSignal, Instant) {
        match errand {
            Errand::Page(job) if host == job.host => return (signal, turn),
            Errand::RobotsTxt => return own,
            _ => {}
        }
        if let Some(change) = self.politeness.finished(host, signal, turn, Instant::now(), rand::random()) {
            change.log(host);
        }
        own
    }
}

/// Where hosts are leased (PostgreSQL): the store that leases them and the
/// leases this daemon holds (the store's own, [`Coordination::host_leases`]).
#[derive(Clone)]
pub struct Leasing {
    pub coordination: Coordination,
    pub leases: Arc<HostLeases>,
}

impl Leasing {
    /// `store`'s leasing, if it leases hosts.
    pub fn of(store: &Arc<Backend>) -> Option<Self> {
        let coordination = store.coordination()?;
        Some(Self { leases: coordination.host_leases(), coordination })
    }

    /// Takes (or keeps) `host`'s lease for a request no claim put under one
    /// (a redirect hop to another host, a sitemap; [`Coordination::lease_hop`]);
    /// a lease new here tells politeness when the host's last request may
    /// have started. Returns whether this daemon holds the host: `false`
    /// when another daemon does.
    ///
    /// Errors: the database could not be asked.
    pub async fn for_request(&self, politeness: &Politeness, host: &str) -> Result<bool, StoreError> {
        match self.coordination.lease_hop(host).await? {
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

/// What an attempt whose last request went to `port` says about its host:
/// 429 and 503 ask the whole host to slow down (RFC 6585 §4, RFC 9110
/// §15.6.4); any other response shows it serves on that port; no answer at
/// all (a timeout before any response, DNS) counts towards a host backoff,
/// and so does a connection refused or reset, unless the host answers on
/// another port. A response that began and then broke or stalled says
/// nothing of the host: it answered, and the URL is retried.
pub fn host_signal(fetched: &Fetched, port: u16) -> HostSignal {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::fetch::Pool;
    use crate::job::Revisit;
    use crate::politeness::HostRules;

    fn gate_for(config: &Config) -> Gate {
        let pages = Fetcher::new(&config.fetch, false, false, Pool::for_politeness(1, [1], [])).unwrap();
        Gate {
            politeness: Arc::new(Politeness::new(HostRules::from_config(config), Duration::from_secs(30))),
            rate: RateLimit::new(None),
            robots: None,
            robots_fetcher: Robots::fetcher(&pages),
            scope: config.discovery.scope,
            following: config.discovery.follow,
            leasing: None,
            credentials: Credentials::default(),
        }
    }

    fn job(url: &str, depth: u32) -> Job {
        let host = Url::parse(url).unwrap().host_str().unwrap().to_owned();
        Job { url_id: 1, url: url.into(), host, attempt: 1, depth, lease: 1, revisit: Revisit::default() }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn scope_binds_discovered_pages_hops_and_sitemaps_not_seeds_or_robots_txt() {
        let mut config = Config::default();
        config.discovery.follow = true;
        let gate = gate_for(&config);
        let away = url("http://elsewhere.test/x");
        let (seed, found) = (job("http://site.test/a", 0), job("http://site.test/b", 1));
        assert!(gate.out_of_scope(&Errand::Page(&seed), &away, true).is_none(), "a seed's hops go anywhere");
        let refused = gate.out_of_scope(&Errand::Page(&found), &away, true).expect("a discovered page's hop");
        assert_eq!(refused.kind, ErrorKind::OutOfScope);
        assert!(gate.out_of_scope(&Errand::Page(&found), &url("http://site.test/c"), true).is_none());
        let named_by = url("http://site.test/robots.txt");
        let sitemap = Errand::Sitemap { anchor: Some(&named_by) };
        assert!(gate.out_of_scope(&sitemap, &away, false).is_some(), "a sitemap named elsewhere");
        assert!(gate.out_of_scope(&Errand::Sitemap { anchor: None }, &away, false).is_none(), "the user's");
        assert!(gate.out_of_scope(&Errand::RobotsTxt, &away, true).is_none());
        // Not following links: a page's redirects are not held to scope.
        config.discovery.follow = false;
        let not_following = gate_for(&config);
        assert!(not_following.out_of_scope(&Errand::Page(&found), &away, true).is_none());
    }

    #[test]
    fn only_requests_no_one_took_a_slot_for_take_one() {
        let page = job("http://site.test/a", 0);
        assert!(!Gate::takes_slot(&Errand::Page(&page), "site.test"), "the producer took it");
        assert!(Gate::takes_slot(&Errand::Page(&page), "other.test"), "a hop to another host");
        assert!(Gate::takes_slot(&Errand::Sitemap { anchor: None }, "site.test"));
        assert!(!Gate::takes_slot(&Errand::RobotsTxt, "site.test"), "rides on the request it is for");
    }

    #[test]
    fn what_an_answer_says_of_its_host() {
        let answered = |status: u16| {
            let mut fetched = Fetched::without_request(ErrorKind::Timeout, String::new(), None);
            (fetched.error, fetched.record.error_kind) = (None, None);
            (fetched.record.http_status, fetched.record.ttfb_ms) = (Some(status), Some(5));
            fetched
        };
        assert_eq!(host_signal(&answered(404), 8080), HostSignal::Healthy { port: 8080 });
        assert_eq!(host_signal(&answered(503), 80), HostSignal::Throttled { retry_after: None });
        let refused = Fetched::without_request(ErrorKind::Connect, String::new(), None);
        assert_eq!(host_signal(&refused, 8443), HostSignal::ConnectFailed { port: 8443 });
        let timed_out = Fetched::without_request(ErrorKind::Timeout, String::new(), None);
        assert_eq!(host_signal(&timed_out, 80), HostSignal::Unreachable);
        let mut broken = answered(200);
        broken.error = Some(ErrorKind::Read);
        assert_eq!(host_signal(&broken, 80), HostSignal::Neutral, "it answered; the body broke");
    }

    #[tokio::test]
    async fn a_refused_request_is_never_sent() {
        // Every address is denied: the walk ends without a connection, as
        // the refusal of the request, for any errand.
        let mut config = Config::default();
        config.fetch.deny_ips = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        config.fetch.resolve.insert("site.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        let gate = gate_for(&config);
        let pages = Fetcher::new(&config.fetch, false, false, Pool::for_politeness(1, [1], [])).unwrap();
        let token = CancellationToken::new();
        let stops = Stops { waiting: &token, sending: &token };
        for target in ["http://site.test/robots.txt", "http://127.0.0.1:9/robots.txt"] {
            let walked = gate.walk(pages.begin(target, false), &Errand::RobotsTxt, stops).await.unwrap();
            assert_eq!(walked.fetched.error, Some(ErrorKind::BlockedAddress), "{target}");
            assert_eq!(walked.fetched.record.http_status, None);
        }
        // A sitemap named by another host's robots.txt, out of scope: not
        // even resolved.
        let named_by = url("http://other.test/robots.txt");
        let sitemap = Errand::Sitemap { anchor: Some(&named_by) };
        let walked =
            gate.walk(pages.begin("http://site.test/sitemap.xml", false), &sitemap, stops).await.unwrap();
        assert_eq!(walked.fetched.error, Some(ErrorKind::OutOfScope));
        assert_eq!(walked.fetched.record.dns_ms, None);
    }
}
