//! A host's backoff: when the whole host must wait, and how long, from what
//! its answers say ([`HostSignal`]). The rule (README, "Host backoff"):
//!
//! - A 429 or 503 backs the host off: for its `Retry-After` (capped at
//!   `retry.retry_after_max`), else for `politeness.backoff_base ×
//!   2^(n−1)` (equal jitter, capped at `politeness.backoff_max`). It is its
//!   URL's, not the host's, and backs nothing off, when it answers a URL's
//!   retry ([`HostSignal::of_retry`]: one URL's repeated 503 is not the host
//!   throttling), or, without `Retry-After`, when the host has already
//!   served a request sent after it.
//! - So do `politeness.connect_failures_before_backoff` requests in a row
//!   that get no answer (timeout, DNS), each sent after the previous failure
//!   came back, with no answer between. A connection refused (or reset
//!   before a response) is its port's failure, not the host's, while the
//!   host last answered on another port (within [`ANSWER_KEPT`]).
//! - n counts backoff periods that brought only throttles and failures: any
//!   success (an answer but 429 and 503) starts it over. Throttles and
//!   failures of requests sent before the current backoff began were part
//!   of the burst that began it and change nothing (twenty concurrent 503s
//!   back a host off once).
//! - A success that comes back while the host is backed off ends the
//!   backoff at once: the host served a request after it throttled one. A
//!   `Retry-After` is the server's own figure, never cut short.
//!
//! Per-URL failures (a URL that times out, a 503 for one path) are thus the
//! URL's retry business ([`crate::retry`]), at most one short backoff of
//! the host. No I/O and no clock of its own: every instant and the jitter
//! are passed in, so the rule is tested below with explicit instants.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::PolitenessConfig;
use crate::retry::exponential;

/// What an attempt's outcome says about its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSignal {
    /// A response that is not a throttle (any status but 429 and 503), from
    /// the host's `port`: the host serves there.
    Healthy { port: u16 },
    /// 429 or 503 (RFC 6585 §4, RFC 9110 §15.6.4), with the server's
    /// `Retry-After` if it sent one.
    Throttled { retry_after: Option<Duration> },
    /// No answer at all: a timeout before any response, or the host's name
    /// did not resolve.
    Unreachable,
    /// The connection to the host's `port` was refused, or reset or closed
    /// before a response: the host's network stack answered, the server on
    /// that port did not.
    ConnectFailed { port: u16 },
    /// Nothing about the host: a response that began and then broke,
    /// stalled or ran over the size cap, a request never made, this
    /// process out of file descriptors.
    Neutral,
}

impl HostSignal {
    /// What the signal says of the host when it is the answer to a URL's
    /// retry: a 429 or 503 then is the URL's (its retry honours the
    /// `Retry-After`), not the host throttling; the rest is unchanged.
    pub fn of_retry(self) -> Self {
        match self {
            HostSignal::Throttled { .. } => HostSignal::Neutral,
            signal => signal,
        }
    }
}

/// How an outcome changed its host's backoff: what the log says and the
/// store keeps (`hosts.backoff_until_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffChange {
    /// A backoff began: the host waits this long from now.
    Began(Duration),
    /// A success cut the host's backoff short: it ends this long from now
    /// (zero: at once).
    Cut { left: Duration },
}

impl BackoffChange {
    /// How long from now the host's backoff lasts.
    pub fn left(self) -> Duration {
        match self {
            BackoffChange::Began(left) | BackoffChange::Cut { left } => left,
        }
    }

    /// Logs the change for `host` (`host backs off` or `host backoff cut
    /// short`, with `backoff_ms` what is left of it).
    pub fn log(self, host: &str) {
        let backoff_ms = self.left().as_millis() as u64;
        match self {
            BackoffChange::Began(_) => tracing::info!(%host, backoff_ms, "host backs off"),
            BackoffChange::Cut { .. } => tracing::info!(%host, backoff_ms, "host backoff cut short"),
        }
    }
}

/// How long after its latest success a host's state is kept, idle, for the
/// port it answered on: twice the default `retry.backoff_max` (1 min), so
/// a refused URL's retries still find it.
pub(super) const ANSWER_KEPT: Duration = Duration::from_secs(120);

/// The settings the rule reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct BackoffRules {
    /// `politeness.backoff_base`: the first step (equal jitter: half to all of it).
    pub base: Duration,
    /// `politeness.backoff_max`: the cap before jitter.
    pub max: Duration,
    /// `politeness.connect_failures_before_backoff`.
    pub failures_before_backoff: u32,
    /// `retry.retry_after_max`: the cap on an honoured `Retry-After`.
    pub retry_after_max: Duration,
}

impl BackoffRules {
    /// The rule's settings from `[politeness]` and `retry.retry_after_max`.
    pub fn new(config: &PolitenessConfig, retry_after_max: Duration) -> Self {
        Self {
            base: config.backoff_base,
            max: config.backoff_max,
            failures_before_backoff: config.connect_failures_before_backoff.get(),
            retry_after_max,
        }
    }

    fn step(&self, level: u32, jitter: f64) -> Duration {
        exponential(self.base, self.max, level, jitter)
    }
}

/// One host's backoff and what decides the next one.
#[derive(Debug, Default)]
pub(super) struct HostBackoff {
    /// When the host's backoff ends (it may be past).
    until: Option<Instant>,
    /// When the latest `Retry-After` the host sent ends, which no success
    /// shortens.
    server_until: Option<Instant>,
    /// When the latest backoff began: throttles and failures of requests
    /// sent before were part of the burst that began it.
    began: Option<Instant>,
    /// Backoffs in a row with no success since (the exponent of the next
    /// is one more).
    level: u32,
    /// Requests in a row that got no answer, counted once per round trip:
    /// a failure of a request sent before the last counted one came back
    /// is the same news.
    failures: u32,
    /// When the last counted failure came back.
    last_failure_at: Option<Instant>,
    /// The port of the host's latest success, cleared when that port fails.
    answered_on: Option<u16>,
    /// When that success came back: the port is remembered
    /// ([`HostBackoff::is_settled`]) for [`ANSWER_KEPT`] after.
    answered_at: Option<Instant>,
    /// When the latest-sent request that the host served successfully was
    /// sent: a throttle of a request sent before is its URL's.
    served_sent_at: Option<Instant>,
}

impl HostBackoff {
    /// When the host's backoff ends, if it has had one.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether the host is in backoff at `now`.
    pub fn blocks(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Whether there is nothing to remember at `now`: no backoff in force,
    /// no failure streak, no escalation to continue, no port that answered
    /// within [`ANSWER_KEPT`] (forgetting it would make the retries of URLs
    /// on a refused port the host's failures).
    pub fn is_settled(&self, now: Instant) -> bool {
        let answered_lately =
            self.answered_at.is_some_and(|at| now.saturating_duration_since(at) < ANSWER_KEPT);
        !self.blocks(now) && self.failures == 0 && self.level == 0 && !answered_lately
    }

    /// Takes in the answer to a request to the host sent at `started` that
    /// came back at `now`; `jitter` is uniform in [0, 1). Returns how the
    /// host's backoff changed, if it did.
    pub fn observe(
        &mut self,
        signal: HostSignal,
        started: Instant,
        now: Instant,
        jitter: f64,
        rules: &BackoffRules,
    ) -> Option<BackoffChange> {
        match signal {
            HostSignal::Neutral => None,
            HostSignal::Healthy { port } => {
                (self.answered_on, self.answered_at) = (Some(port), Some(now));
                self.served_sent_at = Some(self.served_sent_at.map_or(started, |t| t.max(started)));
                self.clear_failures();
                self.level = 0;
                self.cut(now)
            }
            HostSignal::Throttled { retry_after } => {
                self.clear_failures();
                let served_later = self.served_sent_at.is_some_and(|t| t > started);
                if self.same_burst(started) || (served_later && retry_after.is_none()) {
                    return None;
                }
                let level = self.level.saturating_add(1);
                let (backoff, asked) = match retry_after {
                    Some(after) => (after.min(rules.retry_after_max), true),
                    None => (rules.step(level, jitter), false),
                };
                Some(self.begin(level, backoff, asked, now))
            }
            HostSignal::ConnectFailed { port } => match self.answered_on {
                Some(other) if other != port => None,
                _ => {
                    (self.answered_on, self.answered_at) = (None, None);
                    self.failed(started, now, jitter, rules)
                }
            },
            HostSignal::Unreachable => self.failed(started, now, jitter, rules),
        }
    }

    /// Whether a request sent at `started` was part of the burst that began
    /// the latest backoff.
    fn same_burst(&self, started: Instant) -> bool {
        self.began.is_some_and(|began| started < began)
    }

    fn clear_failures(&mut self) {
        self.failures = 0;
        self.last_failure_at = None;
    }

    /// A request that got no answer from the host.
    fn failed(
        &mut self,
        started: Instant,
        now: Instant,
        jitter: f64,
        rules: &BackoffRules,
    ) -> Option<BackoffChange> {
        if self.same_burst(started) || self.last_failure_at.is_some_and(|at| started < at) {
            return None;
        }
        self.failures += 1;
        self.last_failure_at = Some(now);
        if self.failures < rules.failures_before_backoff {
            return None;
        }
        self.clear_failures();
        let level = self.level.saturating_add(1);
        Some(self.begin(level, rules.step(level, jitter), false, now))
    }

    fn begin(&mut self, level: u32, backoff: Duration, asked: bool, now: Instant) -> BackoffChange {
        let end = now + backoff;
        if asked {
            self.server_until = Some(self.server_until.map_or(end, |t| t.max(end)));
        }
        // A backoff still in force (a request sent during it, which its
        // turn let through) is never shortened by a new one.
        let until = self.until.map_or(end, |t| t.max(end));
        (self.until, self.began, self.level) = (Some(until), Some(now), level);
        BackoffChange::Began(until - now)
    }

    /// Ends the backoff in force at `now`, or as soon as a `Retry-After`
    /// lets it.
    fn cut(&mut self, now: Instant) -> Option<BackoffChange> {
        let until = self.until.filter(|&t| t > now)?;
        let end = self.server_until.map_or(now, |t| t.max(now));
        (end < until).then(|| {
            self.until = Some(end);
            BackoffChange::Cut { left: end - now }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(4);

    fn rules() -> BackoffRules {
        BackoffRules {
            base: BASE,
            max: Duration::from_secs(60),
            failures_before_backoff: 3,
            retry_after_max: Duration::from_secs(30),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const OK: HostSignal = HostSignal::Healthy { port: 80 };
    const THROTTLED: HostSignal = HostSignal::Throttled { retry_after: None };

    /// A host's backoff and a clock at `t0`.
    struct Host {
        state: HostBackoff,
        t0: Instant,
    }

    impl Host {
        fn new() -> Self {
            Self { state: HostBackoff::default(), t0: Instant::now() }
        }

        /// An answer to a request sent at `t0 + sent` ms, back at `t0 + back`
        /// ms (full jitter: each step is its whole length).
        fn answer(&mut self, signal: HostSignal, sent: u64, back: u64) -> Option<BackoffChange> {
            self.state.observe(signal, self.t0 + ms(sent), self.t0 + ms(back), 1.0, &rules())
        }

        fn blocked_at(&self, at: u64) -> bool {
            self.state.blocks(self.t0 + ms(at))
        }
    }

    #[test]
    fn periods_of_only_throttles_escalate() {
        let mut host = Host::new();
        assert_eq!(host.answer(THROTTLED, 0, 10), Some(BackoffChange::Began(BASE)));
        // After it, only throttles: each period doubles the next backoff.
        assert_eq!(host.answer(THROTTLED, 4010, 4020), Some(BackoffChange::Began(BASE * 2)));
        assert_eq!(host.answer(THROTTLED, 12020, 12030), Some(BackoffChange::Began(BASE * 4)));
        assert!(host.blocked_at(28029) && !host.blocked_at(28030));
    }

    #[test]
    fn a_success_in_a_period_keeps_the_next_backoff_at_the_first_step() {
        let mut host = Host::new();
        host.answer(THROTTLED, 0, 10);
        host.answer(THROTTLED, 4010, 4020);
        // The next period brings a success, then a throttle: a first backoff again.
        assert_eq!(host.answer(OK, 12020, 12025), None);
        assert_eq!(host.answer(THROTTLED, 12022, 12030), Some(BackoffChange::Began(BASE)));
    }

    #[test]
    fn a_success_while_backed_off_ends_the_backoff() {
        let mut host = Host::new();
        // A 503 for one path; requests in flight beside it succeed after it,
        // whenever they were sent.
        assert_eq!(host.answer(THROTTLED, 5, 10), Some(BackoffChange::Began(BASE)));
        assert!(host.blocked_at(11));
        assert_eq!(host.answer(OK, 0, 12), Some(BackoffChange::Cut { left: Duration::ZERO }));
        assert!(!host.blocked_at(12));
        assert_eq!(host.answer(OK, 6, 13), None, "nothing left to cut");
        // The other throttles of that burst change nothing; a later one is a
        // first backoff.
        assert_eq!(host.answer(THROTTLED, 4, 14), None);
        assert_eq!(host.answer(THROTTLED, 20, 30), Some(BackoffChange::Began(BASE)));
    }

    #[test]
    fn a_throttle_sent_before_a_served_request_is_its_urls() {
        let mut host = Host::new();
        // Sent at 0, the 503 comes back after the host served a request sent at 5.
        assert_eq!(host.answer(OK, 5, 8), None);
        assert_eq!(host.answer(THROTTLED, 0, 10), None);
        assert!(!host.blocked_at(10));
        // Sent after that request, a throttle backs the host off.
        assert_eq!(host.answer(THROTTLED, 6, 12), Some(BackoffChange::Began(BASE)));
        // A server's Retry-After is honoured whatever was served.
        let mut host = Host::new();
        host.answer(OK, 5, 8);
        let asked = HostSignal::Throttled { retry_after: Some(Duration::from_secs(2)) };
        assert_eq!(host.answer(asked, 0, 10), Some(BackoffChange::Began(Duration::from_secs(2))));
    }

    #[test]
    fn a_burst_of_throttles_backs_off_once() {
        let mut host = Host::new();
        assert_eq!(host.answer(THROTTLED, 0, 300), Some(BackoffChange::Began(BASE)));
        for back in 301..320 {
            assert_eq!(host.answer(THROTTLED, 0, back), None);
        }
        assert_eq!(host.answer(HostSignal::Unreachable, 0, 320), None);
        assert!(host.blocked_at(4299) && !host.blocked_at(4300));
    }

    #[test]
    fn retry_after_is_honoured_capped_and_never_cut() {
        let mut host = Host::new();
        let asked = |secs| HostSignal::Throttled { retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(host.answer(asked(7), 0, 0), Some(BackoffChange::Began(Duration::from_secs(7))));
        // A success after it does not shorten what the server asked for.
        assert_eq!(host.answer(OK, 0, 5), None);
        assert!(host.blocked_at(6999) && !host.blocked_at(7000));
        assert_eq!(host.answer(asked(3600), 7000, 7000), Some(BackoffChange::Began(Duration::from_secs(30))));
    }

    #[test]
    fn a_throttle_to_a_retry_is_the_urls() {
        assert_eq!(THROTTLED.of_retry(), HostSignal::Neutral);
        for signal in [OK, HostSignal::Unreachable, HostSignal::ConnectFailed { port: 80 }] {
            assert_eq!(signal.of_retry(), signal);
        }
    }

    #[test]
    fn a_host_that_does_not_answer_backs_off_after_failures_in_a_row() {
        let mut host = Host::new();
        let down = HostSignal::Unreachable;
        assert_eq!(host.answer(down, 0, 1000), None);
        // Sent before that failure came back: the same news, not counted.
        assert_eq!(host.answer(down, 10, 1010), None);
        assert_eq!(host.answer(down, 1000, 2000), None);
        assert_eq!(host.answer(down, 2000, 3000), Some(BackoffChange::Began(BASE)));
        // An answer between failures resets the streak.
        for (sent, back) in [(7000, 8000), (8000, 9000)] {
            assert_eq!(host.answer(down, sent, back), None);
        }
        host.answer(OK, 9000, 9001);
        assert_eq!(host.answer(down, 9001, 10001), None);
        assert_eq!(host.answer(down, 10001, 11001), None);
    }

    #[test]
    fn a_refused_port_is_that_ports_failure_while_another_port_answers() {
        let refused = HostSignal::ConnectFailed { port: 8081 };
        let mut host = Host::new();
        host.answer(OK, 0, 1);
        for n in 1..10 {
            assert_eq!(host.answer(refused, n * 10, n * 10 + 1), None, "refusal {n}");
        }
        assert!(!host.blocked_at(100));
        // The port the host answered on goes down: that is the host's failure.
        let mut host = Host::new();
        host.answer(OK, 0, 1);
        let down = HostSignal::ConnectFailed { port: 80 };
        assert_eq!(host.answer(down, 10, 11), None);
        assert_eq!(host.answer(refused, 20, 21), None);
        assert_eq!(host.answer(down, 30, 31), Some(BackoffChange::Began(BASE)));
        // As is a refusing host that never answered.
        let mut host = Host::new();
        host.answer(refused, 0, 1);
        host.answer(refused, 10, 11);
        assert_eq!(host.answer(refused, 20, 21), Some(BackoffChange::Began(BASE)));
    }

    #[test]
    fn nothing_is_left_to_remember_a_while_after_a_success() {
        let mut host = Host::new();
        assert!(host.state.is_settled(host.t0));
        host.answer(THROTTLED, 0, 10);
        assert!(!host.state.is_settled(host.t0 + ms(4010)), "its escalation is still to continue");
        host.answer(OK, 4010, 4020);
        assert!(!host.state.is_settled(host.t0 + ms(4020)), "the port it answered on");
        let kept = ms(4020) + ANSWER_KEPT;
        assert!(host.state.is_settled(host.t0 + kept));
        host.answer(HostSignal::Unreachable, 4020, 5020);
        assert!(!host.state.is_settled(host.t0 + kept), "a failure streak");
    }
}
