//! Per-host politeness: at most `per_host_concurrency` requests in flight to a
//! host, at least `per_host_delay` between two request starts to it, and
//! host-level backoff when it throttles (429/503) or cannot be reached at
//! all (the rule, with its tests: `politeness/backoff.rs`).
//!
//! Two parties share one [`Politeness`]:
//! - the producer asks which hosts may take a job now ([`Politeness::busy_hosts`],
//!   [`Politeness::slots`]) and only claims URLs of the others, so a slow or
//!   throttled host never holds a worker while other hosts have work;
//! - a worker, just before it fetches, reserves the host's next start time
//!   ([`Politeness::wait_turn`]); reservations are spaced by the delay, so the
//!   gap holds even if the job channel reordered jobs of one host.
//!
//! Only hosts active right now are in memory (in flight, within their delay,
//! or in backoff); the set of hosts with queued work lives in the store, so
//! memory does not grow with the frontier. Host backoff is also persisted by
//! the writer (`hosts.backoff_until_ms`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, HostOverride, PolitenessConfig};
use crate::job::AdaptiveRecrawl;
use crate::store::RecrawlPolicy;

mod backoff;

pub use backoff::{BackoffChange, HostSignal};
use backoff::{BackoffRules, HostBackoff};

#[derive(Debug, Default)]
struct HostState {
    /// Jobs handed out and not finished (in the channel or fetching).
    in_flight: u32,
    /// Of those, jobs not yet past [`Politeness::wait_turn`].
    unstarted: u32,
    /// Earliest start of the host's next request.
    next_start: Option<Instant>,
    /// When its last request actually started (its turn, or later if the
    /// task woke late).
    last_start: Option<Instant>,
    /// Host-level backoff, and what decides the next one.
    backoff: HostBackoff,
    /// Notified when the host's backoff is cut short, for requests and
    /// parked jobs waiting for a turn it had pushed back
    /// ([`Politeness::wait_turn`], [`Politeness::turn_moved`]); made for the
    /// first of them.
    cut: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The host's robots.txt `Crawl-delay`, when it raises the delay.
    crawl_delay: Option<Duration>,
}

impl HostState {
    fn is_idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.backoff.is_settled(now) && self.next_start.is_none_or(|t| t <= now)
    }
}

/// The shared per-host state. See the module docs.
pub struct Politeness {
    /// Cap on a `Retry-After` that is honoured (`retry.retry_after_max`).
    retry_after_max: Duration,
    inner: Mutex<Inner>,
    /// Notified whenever a request finishes, for redirect hops waiting for
    /// a free slot on their host ([`Politeness::acquire`]).
    freed: tokio::sync::Notify,
}

/// The rules and the active hosts under one lock: every decision reads both,
/// and a reload ([`Politeness::set_rules`]) swaps the rules between two
/// decisions, never during one.
#[derive(Default)]
struct Inner {
    rules: HostRules,
    hosts: HashMap<String, HostState>,
}

/// The per-host settings that `SIGHUP` can change: `[politeness]`, the
/// `[hosts."..."]` overrides and `crawl.recrawl_after`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRules {
    pub politeness: PolitenessConfig,
    /// Keyed by host name as in URLs (lower-case, no port).
    pub overrides: BTreeMap<String, HostOverride>,
    /// `crawl.recrawl_after`: how long after it finished a URL is fetched
    /// again, for hosts without their own `recrawl_after`. `None` = never.
    pub recrawl_after: Option<Duration>,
    /// `crawl.adaptive_recrawl`'s bounds, when it is on.
    pub adaptive: Option<AdaptiveRecrawl>,
}

impl HostRules {
    /// The rules in `config`.
    pub fn from_config(config: &Config) -> Self {
        let crawl = &config.crawl;
        Self {
            politeness: config.politeness.clone(),
            overrides: config.hosts.clone(),
            recrawl_after: crawl.recrawl_after,
            adaptive: crawl
                .adaptive_recrawl
                .then_some(AdaptiveRecrawl { min: crawl.recrawl_min, max: crawl.recrawl_max }),
        }
    }

    /// The limits for `host`: its `[hosts."..."]` override, else `[politeness]`.
    pub fn limits(&self, host: &str) -> HostLimits {
        let o = self.overrides.get(host);
        HostLimits {
            concurrency: o.and_then(|o| o.concurrency).unwrap_or(self.politeness.per_host_concurrency).get(),
            delay: o.and_then(|o| o.delay).unwrap_or(self.politeness.per_host_delay),
        }
    }

    /// How long after it finished a URL of `host` is due again, if ever.
    pub fn recrawl_after(&self, host: &str) -> Option<Duration> {
        self.overrides.get(host).and_then(|o| o.recrawl_after).or(self.recrawl_after)
    }

    /// The recrawl schedule as the store takes it: the default, and the hosts
    /// that have their own.
    pub fn recrawl_policy(&self) -> RecrawlPolicy {
        RecrawlPolicy {
            adaptive: self.adaptive.is_some(),
            default: self.recrawl_after,
            per_host: self
                .overrides
                .iter()
                .filter_map(|(host, o)| Some((host.clone(), o.recrawl_after?)))
                .collect(),
        }
    }
}

/// One host's limits after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub concurrency: u32,
    pub delay: Duration,
}

impl Politeness {
    pub fn new(rules: HostRules, retry_after_max: Duration) -> Self {
        Self {
            retry_after_max,
            inner: Mutex::new(Inner { rules, hosts: HashMap::new() }),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Puts new rules in force (a config reload). Jobs already handed out
    /// keep their place; the next decision for each host uses the new limits.
    pub fn set_rules(&self, rules: HostRules) {
        self.lock().rules = rules;
    }

    /// When a finished URL of `host` is due again under the rules in
    /// force: [`HostRules::recrawl_after`], and `crawl.adaptive_recrawl`'s
    /// bounds when it is on. One look, once per finished fetch.
    pub fn recrawl(&self, host: &str) -> (Option<Duration>, Option<AdaptiveRecrawl>) {
        let rules = &self.lock().rules;
        (rules.recrawl_after(host), rules.adaptive)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many more jobs `host` may be handed at `now`: 0 while it is at its
    /// concurrency, within its delay (or has a job waiting to start), or in
    /// backoff; 1 when a delay applies (the next start must wait for this
    /// one); otherwise its free concurrency.
    pub fn slots(&self, host: &str, now: Instant) -> u32 {
        let inner = self.lock();
        let limits = inner.rules.limits(host);
        match inner.hosts.get(host) {
            None => {
                if limits.delay.is_zero() {
                    limits.concurrency
                } else {
                    1
                }
            }
            Some(state) => slots_of(state, limits, now),
        }
    }

    /// Hosts that may not be handed a job at `now`, for the producer to skip.
    pub fn busy_hosts(&self, now: Instant) -> Vec<String> {
        let inner = self.lock();
        inner
            .hosts
            .iter()
            .filter(|(host, state)| slots_of(state, inner.rules.limits(host), now) == 0)
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// The soonest a busy host frees up by time alone (its delay or backoff
    /// ends), for the producer's sleep. Hosts at their concurrency free up
    /// when a fetch finishes, which wakes the producer anyway.
    pub fn next_free_in(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .hosts
            .values()
            .flat_map(|s| [s.next_start, s.backoff.until()])
            .flatten()
            .filter(|&t| t > now)
            .min()
            .map(|t| t - now)
    }

    /// When `host`'s next request may start, if that is after `now`: its
    /// delay after the last start, or its backoff's end.
    pub fn next_turn(&self, host: &str, now: Instant) -> Option<Instant> {
        self.lock().hosts.get(host).and_then(|s| s.next_start).filter(|&t| t > now)
    }

    /// Records that a job for `host` was handed to the workers.
    pub fn dispatched(&self, host: &str) {
        let mut inner = self.lock();
        let state = inner.hosts.entry(host.to_owned()).or_default();
        state.in_flight += 1;
        state.unstarted += 1;
    }

    /// Waits until `host` may take one more request in flight, then counts
    /// it as dispatched: for a redirect hop to a host other than its job's,
    /// which must count against that host's concurrency like any request.
    /// Release it with [`finished`](Self::finished). Cancel safe: nothing is
    /// counted unless it returns.
    pub async fn acquire(&self, host: &str) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                let limits = inner.rules.limits(host);
                let state = inner.hosts.entry(host.to_owned()).or_default();
                if state.in_flight < limits.concurrency {
                    state.in_flight += 1;
                    state.unstarted += 1;
                    return;
                }
            }
            // A request finishing frees a slot; a reload may raise the limit.
            let _ = tokio::time::timeout(Duration::from_millis(250), freed).await;
        }
    }

    /// Records the host's robots.txt `Crawl-delay` (already clamped), which
    /// raises its delay while it is larger than the configured one.
    pub fn set_crawl_delay(&self, host: &str, crawl_delay: Option<Duration>) {
        self.lock().hosts.entry(host.to_owned()).or_default().crawl_delay = crawl_delay;
    }

    /// Reserves the next request start to `host` at or after `now` and
    /// returns it; the reservation after it is the host's delay later.
    pub fn reserve(&self, host: &str, now: Instant) -> Instant {
        let mut inner = self.lock();
        let limits = inner.rules.limits(host);
        let state = inner.hosts.entry(host.to_owned()).or_default();
        state.unstarted = state.unstarted.saturating_sub(1);
        take_turn(state, limits, now)
    }

    /// Records that a dispatched job for `host` will make no request (robots.txt
    /// ruled it out), so the host does not wait for it to start.
    pub fn skip_start(&self, host: &str) {
        if let Some(state) = self.lock().hosts.get_mut(host) {
            state.unstarted = state.unstarted.saturating_sub(1);
        }
    }

    /// Waits until this job may start its request to `host`, and returns
    /// when its start was recorded (pass it to [`finished`](Self::finished),
    /// and to [`connected`](Self::connected) if the request needs a new
    /// connection). The request must start right after. Turns are a delay
    /// apart; if the previous request started late (its task woke late, a
    /// rate limit held it, its connection took long to set up), this one
    /// waits as much longer, so that the delay holds between actual starts,
    /// which is what `host_politeness` measures. Cancel safe (the
    /// reservation stays taken, which only spaces later requests more).
    pub async fn wait_turn(&self, host: &str) -> Instant {
        let mut at = self.reserve(host, Instant::now());
        // A turn that is due needs no watch for cuts (most requests, with
        // no delay to keep): no second look at the host's state.
        if at > Instant::now() {
            let cuts = self.cuts(host);
            loop {
                let cut = cuts.notified();
                tokio::pin!(cut);
                cut.as_mut().enable();
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => break,
                    // A backoff that held this turn back may have been cut.
                    _ = cut => at = self.reserve_earlier(host, at, Instant::now()),
                }
            }
        }
        loop {
            let now = Instant::now();
            match self.start(host, now) {
                None => return now,
                Some(later) => tokio::time::sleep_until(later).await,
            }
        }
    }

    /// What notifies a cut of `host`'s backoff.
    fn cuts(&self, host: &str) -> std::sync::Arc<tokio::sync::Notify> {
        let mut inner = self.lock();
        let state = inner.hosts.entry(host.to_owned()).or_default();
        state.cut.get_or_insert_with(Default::default).clone()
    }

    /// A turn for `host` earlier than `reserved`, if its next turn has
    /// moved back since (a cut backoff), taken in its place; else
    /// `reserved`.
    fn reserve_earlier(&self, host: &str, reserved: Instant, now: Instant) -> Instant {
        let mut inner = self.lock();
        let limits = inner.rules.limits(host);
        let Some(state) = inner.hosts.get_mut(host) else { return reserved };
        match state.next_start {
            Some(next) if next < reserved => take_turn(state, limits, now),
            _ => reserved,
        }
    }

    /// Waits until `host`'s next turn moves earlier than `turn` (a backoff
    /// cut short), and returns the new one: for a job parked until `turn`.
    /// Cancel safe.
    pub async fn turn_moved(&self, host: &str, turn: Instant) -> Instant {
        let cuts = self.cuts(host);
        loop {
            let cut = cuts.notified();
            tokio::pin!(cut);
            cut.as_mut().enable();
            let next = self.lock().hosts.get(host).and_then(|s| s.next_start);
            match next {
                Some(next) if next < turn => return next,
                None => return Instant::now(),
                _ => cut.await,
            }
        }
    }

    /// Records that a request to `host` starts at `now`, unless that is
    /// within the delay after the last start: then returns when it may.
    fn start(&self, host: &str, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        let limits = inner.rules.limits(host);
        let state = inner.hosts.entry(host.to_owned()).or_default();
        let delay = effective_delay(state, limits);
        match state.last_start {
            Some(last) if last + delay > now => Some(last + delay),
            _ => {
                state.last_start = Some(now);
                state.next_start = Some(state.next_start.map_or(now + delay, |t| t.max(now + delay)));
                None
            }
        }
    }

    /// The request to `host` whose start [`wait_turn`](Self::wait_turn)
    /// recorded at `recorded` needed a new connection (DNS, TCP, a proxy's
    /// handshake, TLS), which is ready only now: the site sees it start now.
    /// Waits while another request to the host went out within the delay
    /// before now, then records this one's start as now, so that the next
    /// start is a whole delay after what the site saw (issue: 300 ms
    /// configured, 94 ms seen behind a SOCKS proxy that took 200 ms to set
    /// up). Cancel safe.
    pub async fn connected(&self, host: &str, recorded: Instant) {
        loop {
            let now = Instant::now();
            let wait = {
                let mut inner = self.lock();
                let limits = inner.rules.limits(host);
                let state = inner.hosts.entry(host.to_owned()).or_default();
                let delay = effective_delay(state, limits);
                match state.last_start {
                    // Another request went out after this one's turn.
                    Some(last) if last > recorded && last + delay > now => Some(last + delay),
                    _ => {
                        state.last_start = Some(state.last_start.map_or(now, |t| t.max(now)));
                        state.next_start = Some(state.next_start.map_or(now + delay, |t| t.max(now + delay)));
                        None
                    }
                }
            };
            match wait {
                None => return,
                Some(until) => tokio::time::sleep_until(until).await,
            }
        }
    }

    /// Records that a job for `host`, whose request started at `started`
    /// (its reserved turn), finished with `signal` at `now`, and releases
    /// its slot. `jitter` is uniform in [0, 1). Returns how the host's
    /// backoff changed, if it did, for the log and the store.
    ///
    /// The rule is `politeness/backoff.rs`'s: a host backs off when it
    /// throttles or cannot be reached at all; escalation counts backoff
    /// periods that brought only throttles and failures (a burst of twenty
    /// concurrent 503s backs off once, as one 503 does); a success ends a
    /// backoff the server did not ask for; a refused port is that port's
    /// failure while the host answers on another. A backoff holds the
    /// host's next turn until it ends; a cut gives the turn back (the delay
    /// after the last start still holds).
    pub fn finished(
        &self,
        host: &str,
        signal: HostSignal,
        started: Instant,
        now: Instant,
        jitter: f64,
    ) -> Option<BackoffChange> {
        let mut inner = self.lock();
        let Inner { rules, hosts } = &mut *inner;
        let backoff_rules = BackoffRules::new(&rules.politeness, self.retry_after_max);
        let state = hosts.entry(host.to_owned()).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        self.freed.notify_waiters();
        let change = state.backoff.observe(signal, started, now, jitter, &backoff_rules)?;
        let until = state.backoff.until().unwrap_or(now);
        match change {
            BackoffChange::Began(_) => {
                state.next_start = Some(state.next_start.map_or(until, |t| t.max(until)))
            }
            BackoffChange::Cut { .. } => {
                let delay = effective_delay(state, rules.limits(host));
                let turn = state.last_start.map_or(until, |last| until.max(last + delay));
                state.next_start = state.next_start.map(|t| t.min(turn));
                // Requests and parked jobs waiting out the backoff go now.
                if let Some(cut) = &state.cut {
                    cut.notify_waiters();
                }
            }
        }
        Some(change)
    }

    /// How long `host`'s backoff lasts from `now` (zero when it is over or
    /// there is none): what the store keeps for a host whose backoff
    /// changed, read when it is committed.
    pub fn backoff_left(&self, host: &str, now: Instant) -> Duration {
        let until = self.lock().hosts.get(host).and_then(|s| s.backoff.until());
        until.map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Records that `host`'s last request, made by another daemon before
    /// this one took the host over, may have started as recently as `ago`
    /// before now: its next request here waits the delay from then (the
    /// delay holds across daemons and across a hand-over).
    pub fn handed_over(&self, host: &str, ago: Duration) {
        let now = Instant::now();
        let last_start = now.checked_sub(ago).unwrap_or(now);
        let mut inner = self.lock();
        let limits = inner.rules.limits(host);
        let state = inner.hosts.entry(host.to_owned()).or_default();
        let last = state.last_start.map_or(last_start, |t| t.max(last_start));
        state.last_start = Some(last);
        let next = last + effective_delay(state, limits);
        state.next_start = Some(state.next_start.map_or(next, |t| t.max(next)));
    }

    /// Each tracked host whose last request started within its delay
    /// before `now`, with how long ago: what the next owner of the host
    /// must wait out when this daemon gives it up. Hosts forgotten by
    /// [`prune`](Self::prune) are past their delay already.
    pub fn last_starts(&self, now: Instant) -> Vec<(String, Duration)> {
        let inner = self.lock();
        inner
            .hosts
            .iter()
            .filter_map(|(host, state)| {
                let last = state.last_start?;
                let ago = now.saturating_duration_since(last);
                (ago < effective_delay(state, inner.rules.limits(host))).then(|| (host.clone(), ago))
            })
            .collect()
    }

    /// Hosts whose lease this daemon keeps though none of their URLs is in
    /// flight (PostgreSQL): those with a job or a redirect hop in flight
    /// here, and those in host-level backoff at `now`, whose escalation
    /// (backoffs in a row) is known only here.
    pub fn hosts_to_keep(&self, now: Instant) -> Vec<String> {
        self.lock()
            .hosts
            .iter()
            .filter(|(_, s)| s.in_flight > 0 || s.backoff.blocks(now))
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// Forgets hosts with nothing in flight, no pending delay or backoff and
    /// no failure streak, keeping memory proportional to active hosts.
    pub fn prune(&self, now: Instant) {
        self.lock().hosts.retain(|_, state| !state.is_idle(now));
    }

    /// Hosts in host-level backoff at `now` (for metrics).
    pub fn hosts_in_backoff(&self, now: Instant) -> usize {
        self.lock().hosts.values().filter(|s| s.backoff.blocks(now)).count()
    }

    /// Hosts currently tracked.
    #[cfg(test)]
    fn tracked_hosts(&self) -> usize {
        self.lock().hosts.len()
    }
}

/// The configured delay, or the host's Crawl-delay when that is larger.
/// Takes `state`'s next turn at or after `now` and returns it; the turn
/// after it is the host's delay later.
fn take_turn(state: &mut HostState, limits: HostLimits, now: Instant) -> Instant {
    let at = state.next_start.map_or(now, |t| t.max(now));
    state.next_start = Some(at + effective_delay(state, limits));
    at
}

fn effective_delay(state: &HostState, limits: HostLimits) -> Duration {
    state.crawl_delay.map_or(limits.delay, |d| d.max(limits.delay))
}

fn slots_of(state: &HostState, limits: HostLimits, now: Instant) -> u32 {
    let limits = HostLimits { delay: effective_delay(state, limits), ..limits };
    let free = limits.concurrency.saturating_sub(state.in_flight);
    let blocked = state.backoff.blocks(now);
    let waiting =
        !limits.delay.is_zero() && (state.unstarted > 0 || state.next_start.is_some_and(|t| t > now));
    if free == 0 || blocked || waiting {
        0
    } else if limits.delay.is_zero() {
        free
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::backoff::ANSWER_KEPT;
    use super::*;

    fn politeness(concurrency: u32, delay_ms: u64) -> Politeness {
        let config = PolitenessConfig {
            per_host_concurrency: NonZeroU32::new(concurrency).unwrap(),
            per_host_delay: Duration::from_millis(delay_ms),
            backoff_base: Duration::from_secs(4),
            backoff_max: Duration::from_secs(60),
            connect_failures_before_backoff: NonZeroU32::new(2).unwrap(),
        };
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "slow.example".to_owned(),
            HostOverride {
                delay: Some(Duration::from_secs(2)),
                concurrency: NonZeroU32::new(1),
                ..Default::default()
            },
        );
        Politeness::new(rules(config, overrides), Duration::from_secs(30))
    }

    fn rules(politeness: PolitenessConfig, overrides: BTreeMap<String, HostOverride>) -> HostRules {
        HostRules { politeness, overrides, recrawl_after: None, adaptive: None }
    }

    #[test]
    fn overrides_replace_the_defaults_per_host() {
        let p = politeness(2, 250);
        let rules = &p.lock().rules;
        assert_eq!(
            rules.limits("a.example"),
            HostLimits { concurrency: 2, delay: Duration::from_millis(250) }
        );
        assert_eq!(
            rules.limits("slow.example"),
            HostLimits { concurrency: 1, delay: Duration::from_secs(2) }
        );
    }

    #[test]
    fn a_late_start_pushes_the_next_one_as_late() {
        let p = politeness(2, 250);
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // Two jobs take turns t0 and t0 + 250 ms; the first starts 5 ms late.
        assert_eq!((p.reserve("a", t0), p.reserve("a", t0)), (t0, t0 + ms(250)));
        assert_eq!(p.start("a", t0 + ms(5)), None);
        // At its turn the second must wait until 250 ms after that start.
        assert_eq!(p.start("a", t0 + ms(250)), Some(t0 + ms(255)));
        assert_eq!(p.start("a", t0 + ms(255)), None);
        assert_eq!(p.next_turn("a", t0 + ms(255)), Some(t0 + ms(505)));
        assert_eq!(p.next_turn("a", t0 + ms(505)), None);
    }

    #[test]
    fn starts_are_spaced_by_the_delay_and_one_job_waits_at_a_time() {
        let p = politeness(2, 250);
        let t0 = Instant::now();
        assert_eq!(p.slots("a", t0), 1);
        p.dispatched("a");
        assert_eq!(p.slots("a", t0), 0, "a job is waiting to start");
        assert_eq!(p.busy_hosts(t0), ["a"]);
        assert_eq!(p.reserve("a", t0), t0);
        assert_eq!(p.slots("a", t0), 0, "within the delay");
        assert_eq!(p.next_free_in(t0), Some(Duration::from_millis(250)));
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(p.slots("a", t1), 1);
        p.dispatched("a");
        // A start reserved early is still pushed to the delay's end.
        assert_eq!(p.reserve("a", t0 + Duration::from_millis(100)), t1);
        assert_eq!(p.slots("a", t1 + Duration::from_millis(250)), 0, "at its concurrency of 2");
        p.finished("a", HostSignal::Healthy { port: 80 }, t1, t1, 0.0);
        assert_eq!(p.slots("a", t1 + Duration::from_millis(250)), 1);
    }

    #[test]
    fn without_a_delay_the_free_concurrency_is_handed_out() {
        let p = politeness(8, 0);
        let t0 = Instant::now();
        assert_eq!(p.slots("a", t0), 8);
        for _ in 0..3 {
            p.dispatched("a");
        }
        assert_eq!(p.slots("a", t0), 5);
    }

    #[test]
    fn hosts_in_flight_or_in_backoff_are_kept_the_rest_given_up() {
        let p = politeness(2, 0);
        let t0 = Instant::now();
        for host in ["fetching", "throttled", "done"] {
            p.dispatched(host);
        }
        let throttled = HostSignal::Throttled { retry_after: Some(Duration::from_secs(7)) };
        p.finished("throttled", throttled, t0, t0, 0.0);
        p.finished("done", HostSignal::Healthy { port: 80 }, t0, t0, 0.0);
        let mut kept = p.hosts_to_keep(t0);
        kept.sort();
        assert_eq!(kept, ["fetching", "throttled"]);
        assert_eq!(p.hosts_to_keep(t0 + Duration::from_secs(7)), ["fetching"], "its backoff is over");
    }

    #[test]
    fn a_throttle_backs_the_host_off_honouring_retry_after() {
        let p = politeness(2, 0);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        p.dispatched("a");
        let asked = |after| HostSignal::Throttled { retry_after: Some(secs(after)) };
        assert_eq!(p.finished("a", asked(7), t0, t0, 0.0), Some(BackoffChange::Began(secs(7))));
        assert_eq!(p.slots("a", t0 + secs(6)), 0);
        assert_eq!(p.next_turn("a", t0), Some(t0 + secs(7)), "its next turn waits too");
        assert_eq!(p.slots("b", t0), 2, "other hosts are unaffected");
        assert_eq!(p.slots("a", t0 + secs(7)), 2);
        // A huge Retry-After is capped at retry.retry_after_max.
        let t1 = t0 + secs(7);
        assert_eq!(p.finished("a", asked(3600), t1, t1, 0.0), Some(BackoffChange::Began(secs(30))));
    }

    #[test]
    fn a_burst_of_throttles_backs_off_as_one_does() {
        let p = politeness(20, 0);
        let t0 = Instant::now();
        for _ in 0..20 {
            p.dispatched("a");
        }
        let (t1, throttled) = (t0 + Duration::from_millis(300), HostSignal::Throttled { retry_after: None });
        // The first of 20 concurrent 503s backs the host off for backoff_base
        // (full jitter)...
        assert_eq!(
            p.finished("a", throttled, t0, t1, 1.0),
            Some(BackoffChange::Began(Duration::from_secs(4)))
        );
        // ...and the other 19, sent before that, change nothing: no escalation,
        // and neither do failures from that burst.
        for _ in 0..17 {
            assert_eq!(p.finished("a", throttled, t0, t1 + Duration::from_millis(5), 1.0), None);
        }
        assert_eq!(p.finished("a", HostSignal::Unreachable, t0, t1, 1.0), None);
        assert_eq!(p.finished("a", HostSignal::Unreachable, t0, t1, 1.0), None);
        assert_eq!(p.slots("a", t1 + Duration::from_millis(3999)), 0);
        assert_eq!(p.slots("a", t1 + Duration::from_secs(4)), 20, "blocked for one backoff, not twenty");
        // A request sent after the backoff began and throttled again escalates.
        let t2 = t1 + Duration::from_secs(4);
        p.dispatched("a");
        assert_eq!(
            p.finished("a", throttled, t2, t2, 1.0),
            Some(BackoffChange::Began(Duration::from_secs(8)))
        );
    }

    #[test]
    fn a_success_cuts_the_backoff_and_gives_the_turn_back_within_the_delay() {
        let p = politeness(2, 250);
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        p.dispatched("a");
        assert_eq!(p.reserve("a", t0), t0);
        assert_eq!(p.start("a", t0), None);
        // Its answer is a 503 (one path's): the host backs off, its next turn
        // with it.
        let throttled = HostSignal::Throttled { retry_after: None };
        assert_eq!(p.finished("a", throttled, t0, t0 + ms(10), 1.0), Some(BackoffChange::Began(ms(4000))));
        assert_eq!(p.next_turn("a", t0 + ms(10)), Some(t0 + ms(4010)));
        // A request sent after it (a redirect hop of another job) succeeds:
        // the 503 was its URL's. The turn is back, the delay still holds.
        let cut = p.finished("a", HostSignal::Healthy { port: 80 }, t0 + ms(5), t0 + ms(20), 1.0);
        assert_eq!(cut, Some(BackoffChange::Cut { left: Duration::ZERO }));
        assert_eq!(p.next_turn("a", t0 + ms(20)), Some(t0 + ms(250)));
        assert_eq!(p.slots("a", t0 + ms(250)), 1);
        assert_eq!(p.hosts_in_backoff(t0 + ms(20)), 0);
    }

    #[test]
    fn failures_in_a_row_back_the_host_off_after_the_configured_count() {
        let p = politeness(2, 0);
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        // connect_failures_before_backoff = 2, each sent after the last failed.
        assert_eq!(p.finished("a", HostSignal::Unreachable, t0, t0 + second, 0.0), None);
        let second_failure = p.finished("a", HostSignal::Unreachable, t0 + second, t0 + second * 2, 0.0);
        assert_eq!(second_failure, Some(BackoffChange::Began(Duration::from_secs(2))));
    }

    #[test]
    fn a_crawl_delay_only_ever_raises_the_delay() {
        let p = politeness(2, 250);
        let t0 = Instant::now();
        p.set_crawl_delay("a", Some(Duration::from_secs(1)));
        p.reserve("a", t0);
        assert_eq!(p.next_free_in(t0), Some(Duration::from_secs(1)));
        p.set_crawl_delay("b", Some(Duration::from_millis(10)));
        p.reserve("b", t0);
        assert_eq!(p.reserve("b", t0), t0 + Duration::from_millis(250));
    }

    #[test]
    fn new_rules_apply_to_the_next_decision() {
        let p = politeness(2, 250);
        let t0 = Instant::now();
        p.reserve("a", t0);
        assert_eq!(p.slots("a", t0), 0, "within the 250 ms delay");
        let mut rules = p.lock().rules.clone();
        rules.politeness.per_host_delay = Duration::ZERO;
        rules.politeness.per_host_concurrency = NonZeroU32::new(5).unwrap();
        rules.overrides.get_mut("slow.example").unwrap().recrawl_after = Some(Duration::from_secs(60));
        p.set_rules(rules);
        assert_eq!(p.slots("a", t0), 5, "no delay any more");
        assert_eq!(p.recrawl("slow.example").0, Some(Duration::from_secs(60)));
        assert_eq!(p.recrawl("a"), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_taken_over_waits_the_delay_from_its_last_owners_start() {
        let p = politeness(2, 250);
        let t0 = Instant::now();
        // The last owner started a request 100 ms ago.
        p.handed_over("a", Duration::from_millis(100));
        assert_eq!(p.next_turn("a", t0), Some(t0 + Duration::from_millis(150)));
        assert_eq!(p.slots("a", t0), 0, "within the delay of the last owner's request");
        assert_eq!(p.wait_turn("a").await, t0 + Duration::from_millis(150));
        assert_eq!(Instant::now(), t0 + Duration::from_millis(150));
        // What this daemon hands on: its own start, 50 ms ago.
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(p.last_starts(Instant::now()), [("a".to_owned(), Duration::from_millis(50))]);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(p.last_starts(Instant::now()), [], "a whole delay ago: nothing to wait out");
        // An older report of the last owner moves nothing back.
        p.handed_over("a", Instant::now() - t0);
        assert_eq!(p.next_turn("a", t0), Some(t0 + Duration::from_millis(400)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_connection_moves_the_start_the_site_sees() {
        let p = politeness(2, 300);
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // robots.txt's turn at t0; its connection is ready 200 ms later.
        let robots = p.wait_turn("a").await;
        assert_eq!(robots, t0);
        tokio::time::advance(ms(200)).await;
        p.connected("a", robots).await;
        assert_eq!(Instant::now(), t0 + ms(200), "no other request went out: sent at once");
        // The page's turn is a delay after what the site saw.
        assert_eq!(p.wait_turn("a").await, t0 + ms(500));
        // A second request whose connection is ready after another request
        // went out waits a delay after that one.
        let slow = p.wait_turn("b").await;
        tokio::time::advance(ms(300)).await;
        let pooled = p.wait_turn("b").await;
        assert_eq!(pooled, slow + ms(300));
        tokio::time::advance(ms(100)).await;
        p.connected("b", slow).await;
        assert_eq!(Instant::now(), pooled + ms(300));
        assert_eq!(p.next_turn("b", Instant::now()), Some(Instant::now() + ms(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_held_back_by_a_backoff_comes_at_once_when_the_backoff_is_cut() {
        let p = std::sync::Arc::new(politeness(2, 0));
        let t0 = Instant::now();
        p.dispatched("a");
        p.dispatched("a");
        let began = p.finished("a", HostSignal::Throttled { retry_after: None }, t0, t0, 1.0);
        assert!(matches!(began, Some(BackoffChange::Began(_))), "{began:?}");
        let until = p.next_turn("a", t0).expect("held back by the backoff");
        // A request waiting for its turn, and a job parked until then.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.wait_turn("a").await }
        });
        let parked = tokio::spawn({
            let p = p.clone();
            async move { p.turn_moved("a", until).await }
        });
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished() && !parked.is_finished());
        // A success sent after the backoff began cuts it.
        let now = Instant::now();
        let cut = p.finished("a", HostSignal::Healthy { port: 80 }, now, now, 1.0);
        assert!(matches!(cut, Some(BackoffChange::Cut { .. })), "{cut:?}");
        assert_eq!(waiting.await.unwrap(), now, "the waiting request went at once");
        assert!(parked.await.unwrap() <= now, "the parked job was woken");
    }

    #[test]
    fn idle_hosts_are_forgotten() {
        let p = politeness(2, 100);
        let t0 = Instant::now();
        p.dispatched("a");
        p.reserve("a", t0);
        p.finished("a", HostSignal::Healthy { port: 80 }, t0, t0, 0.0);
        p.prune(t0);
        assert_eq!(p.tracked_hosts(), 1, "still within its delay");
        p.prune(t0 + Duration::from_millis(100));
        assert_eq!(p.tracked_hosts(), 1, "the port it answered on is remembered");
        p.prune(t0 + ANSWER_KEPT);
        assert_eq!(p.tracked_hosts(), 0);
    }

    /// The CI failure of `a_refused_port_is_that_ports_failure_not_the_hosts`:
    /// pruned between a refused URL's retries, the host forgot the port it
    /// answered on and the refusals backed it off.
    #[test]
    fn an_idle_host_remembers_the_port_it_answered_on() {
        let p = politeness(1, 0);
        let t0 = Instant::now();
        p.finished("a", HostSignal::Healthy { port: 80 }, t0, t0, 0.0);
        for n in 1..=4 {
            let at = t0 + Duration::from_secs(n);
            p.prune(at);
            let refused = p.finished("a", HostSignal::ConnectFailed { port: 8081 }, at, at, 0.0);
            assert_eq!(refused, None, "refusal {n}");
        }
    }
}
