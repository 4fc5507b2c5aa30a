//! [`HostLeases`]: which hosts this daemon holds a lease on, and until when
//! it may start requests to them.
//!
//! A lease lasts `length` by the database's clock from the moment the
//! database ran the statement that took or renewed it. The daemon cannot
//! read that clock, but it knows when it *sent* the statement: the database
//! ran it later, so the lease lasts at least until `sent + length` on the
//! daemon's own clock. A request started at `t` may run until
//! `t + fetch.timeout`, so requests to a host start no later than
//! `sent + length - fetch.timeout`: every request of an owner has ended
//! before its lease can lapse and another daemon take the host. A daemon
//! cut off from the database stops starting requests by itself.
//!
//! The daemon's clock here is [`BootInstant`], `CLOCK_BOOTTIME`: a clock
//! that stops while the machine is suspended (`CLOCK_MONOTONIC`, which
//! `Instant` reads) would let a daemon that slept through its leases' lapse
//! wake up thinking it still held them, while the database's clock ran on
//! and other daemons took the hosts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Time since the machine booted, suspended time included
/// (`clock_gettime(CLOCK_BOOTTIME)`, Linux; elsewhere `CLOCK_MONOTONIC`).
/// Never goes back, and is not moved by setting the wall clock.
pub fn boot_time() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; the clock exists on
    // every kernel this runs on, so the call cannot fail (checked anyway).
    let rc = unsafe { libc::clock_gettime(CLOCK, &mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A moment on the clock leases are timed by ([`boot_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now, by [`boot_time`].
    pub fn now() -> Self {
        Self(boot_time())
    }
}

/// How long a host handed over ([`HostLeases::hand_over`]) and given up is
/// left for the daemon that holds none to take, before its old owner may
/// take it back: a few of that daemon's polls for work (it is notified
/// too). Longer, and two daemons that each hand the other hosts would
/// leave them idle between them.
const OFFERED_FOR: Duration = Duration::from_secs(5);

/// A renewal on its way ([`HostLeases::renewal`]): when it was sent, and how
/// many grants had been recorded by then.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    sent: BootInstant,
    grants: u64,
}

/// The leases this daemon holds, by host: their fencing token and the
/// time ([`BootInstant`]) the statement that last confirmed them was sent.
#[derive(Debug)]
pub struct HostLeases {
    /// How long a lease lasts without renewal (`store.lease`).
    length: Duration,
    /// The longest a request may take (`fetch.timeout`).
    request_timeout: Duration,
    /// The clock: [`BootInstant::now`] but in tests.
    clock: fn() -> BootInstant,
    held: Mutex<Held>,
}

/// The leases held, how many grants were ever recorded, and the hosts
/// being handed over to other daemons.
#[derive(Debug, Default)]
struct Held {
    by_host: HashMap<String, Lease>,
    grants: u64,
    /// Hosts this daemon is handing over ([`HostLeases::hand_over`]), and
    /// when it gave each up, once it has. All of one hand-over: a daemon
    /// begins one a lease at most, and a host not given up within a lease
    /// is kept.
    handing_over: HashMap<String, Option<BootInstant>>,
    /// When this daemon last began a hand-over.
    handed_over_at: Option<BootInstant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    token: i64,
    confirmed: BootInstant,
    /// Which grant recorded it ([`Held::grants`] then).
    grant: u64,
}

impl HostLeases {
    /// Leases of `length` (by the database's clock) for requests that take
    /// at most `request_timeout`. `length` must be longer than
    /// `request_timeout` for any request to start ([`Config::validate`]
    /// requires more: renewals a third of the length apart must keep the
    /// deadline ahead).
    ///
    /// [`Config::validate`]: crate::config::Config::validate
    pub fn new(length: Duration, request_timeout: Duration) -> Self {
        Self::with_clock(length, request_timeout, BootInstant::now)
    }

    fn with_clock(length: Duration, request_timeout: Duration, clock: fn() -> BootInstant) -> Self {
        Self { length, request_timeout, clock, held: Mutex::new(Held::default()) }
    }

    /// How long a lease lasts without renewal.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How often leases are renewed: a third of their length, so that two
    /// renewals can fail before any lease lapses.
    pub fn renew_every(&self) -> Duration {
        self.length / 3
    }

    /// Now, on the clock leases are timed by: read it just before sending a
    /// statement that takes leases, for [`granted`](Self::granted).
    pub fn now(&self) -> BootInstant {
        (self.clock)()
    }

    /// Records leases taken or kept by a statement sent at `sent`, once its
    /// transaction has committed. A lease kept with its token keeps the
    /// later of its confirmations.
    pub fn granted<'a>(&self, sent: BootInstant, leases: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut held = self.lock();
        held.grants += 1;
        let grant = held.grants;
        for (host, token) in leases {
            let confirmed = match held.by_host.get(host) {
                Some(lease) if lease.token == token => lease.confirmed.max(sent),
                _ => sent,
            };
            held.by_host.insert(host.to_owned(), Lease { token, confirmed, grant });
        }
    }

    /// A renewal about to be sent: now, and which grants it will see.
    /// Renewals run beside claims: a grant recorded before this (its
    /// transaction committed) is in the renewal's snapshot; one recorded
    /// later may not be.
    pub fn renewal(&self) -> Renewal {
        let grants = self.lock().grants;
        Renewal { sent: self.now(), grants }
    }

    /// Records a `renewal` that found `renewed` (host, token) still held.
    /// Hosts held before it was sent that it did not find were lost
    /// (another daemon took them over after they lapsed): they are forgotten
    /// and returned. A host granted after it was sent is kept: the renewal
    /// could not see it.
    pub fn renewed(&self, renewal: Renewal, renewed: &[(String, i64)]) -> Vec<String> {
        let found: HashMap<&str, i64> = renewed.iter().map(|(h, t)| (h.as_str(), *t)).collect();
        let mut held = self.lock();
        let mut lost = Vec::new();
        held.by_host.retain(|host, lease| match found.get(host.as_str()) {
            Some(&token) if token == lease.token => {
                lease.confirmed = lease.confirmed.max(renewal.sent);
                true
            }
            _ if lease.grant > renewal.grants => true,
            _ => {
                lost.push(host.clone());
                false
            }
        });
        lost
    }

    /// Forgets the leases of `hosts` (released).
    pub fn released<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let now = self.now();
        let mut held = self.lock();
        for host in hosts {
            held.by_host.remove(host);
            if let Some(given_up) = held.handing_over.get_mut(host) {
                *given_up = Some(now);
            }
        }
    }

    /// Forgets every lease (all given up).
    pub fn released_all(&self) {
        self.lock().by_host.clear();
    }

    /// The hosts held that are not being handed over: those a rebalance
    /// may hand over.
    pub fn kept(&self) -> Vec<String> {
        let held = self.lock_pruned();
        held.by_host.keys().filter(|host| !held.handing_over.contains_key(*host)).cloned().collect()
    }

    /// Begins to hand `hosts` over to other daemons (a rebalance): this
    /// daemon claims none of their URLs ([`held_back`](Self::held_back)),
    /// so that their queued URLs wait for another daemon while the ones in
    /// flight here finish; the idle host is then given up, and left to the
    /// others for [`OFFERED_FOR`]. A host not given up within a lease's
    /// length is kept after all.
    pub fn hand_over<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let now = self.now();
        let mut held = self.lock_pruned();
        held.handed_over_at = Some(now);
        for host in hosts {
            held.handing_over.insert(host.to_owned(), None);
        }
    }

    /// Whether this daemon may begin a hand-over: its last began a lease's
    /// length ago or more, if ever. One batch hands over all it should;
    /// a daemon that still holds no host after it cannot take any (one
    /// frozen, its sessions still connected), and handing it more would
    /// only move hosts between the daemons that can, idle for a moment at
    /// each move, for as long as it stays.
    pub fn may_hand_over(&self) -> bool {
        let now = self.now();
        self.lock().handed_over_at.is_none_or(|at| now.0.saturating_sub(at.0) >= self.length)
    }

    /// The hosts being handed over ([`hand_over`](Self::hand_over)): not to
    /// be claimed by this daemon.
    pub fn held_back(&self) -> Vec<String> {
        self.lock_pruned().handing_over.keys().cloned().collect()
    }

    /// The hosts this daemon still holds of those it is handing over: to
    /// be given up once idle.
    pub fn handing_over(&self) -> Vec<String> {
        let held = self.lock_pruned();
        held.handing_over.keys().filter(|host| held.by_host.contains_key(*host)).cloned().collect()
    }

    /// Whether a request to `host` under the lease `token` may start now:
    /// the lease is held with that token and now is before its deadline
    /// (confirmed + length - request timeout; see the module docs).
    pub fn may_start(&self, host: &str, token: i64) -> bool {
        let now = self.now();
        self.lock().by_host.get(host).is_some_and(|lease| lease.token == token && now < self.deadline(lease))
    }

    /// Whether a request to `host` may start now under whichever lease this
    /// daemon holds on it (a redirect hop to a host other than its job's).
    pub fn may_start_any(&self, host: &str) -> bool {
        let now = self.now();
        self.lock().by_host.get(host).is_some_and(|lease| now < self.deadline(lease))
    }

    fn deadline(&self, lease: &Lease) -> BootInstant {
        BootInstant(lease.confirmed.0 + self.length.saturating_sub(self.request_timeout))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`lock`](Self::lock), having forgotten the hand-overs that are
    /// over: given up [`OFFERED_FOR`] ago, or begun a lease's length ago.
    fn lock_pruned(&self) -> std::sync::MutexGuard<'_, Held> {
        let now = self.now();
        let since = |t: BootInstant| now.0.saturating_sub(t.0);
        let mut held = self.lock();
        let begun = held.handed_over_at.map_or(Duration::MAX, since);
        held.handing_over.retain(|_, given_up| match given_up {
            Some(given_up) => since(*given_up) < OFFERED_FOR,
            None => begun < self.length,
        });
        held
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// The fake clock's time: each test runs on a thread of its own.
        static NOW: Cell<Duration> = const { Cell::new(Duration::from_secs(1_000)) };
    }

    fn fake_now() -> BootInstant {
        BootInstant(NOW.get())
    }

    fn advance(by: Duration) {
        NOW.set(NOW.get() + by);
    }

    fn leases() -> HostLeases {
        HostLeases::with_clock(Duration::from_secs(60), Duration::from_secs(30), fake_now)
    }

    #[test]
    fn a_host_handed_over_is_held_back_until_offered_for_a_while_or_kept_after_a_lease() {
        let leases = leases();
        leases.granted(leases.now(), [("a.test", 1), ("b.test", 2), ("c.test", 3)]);
        leases.hand_over(["b.test", "c.test"]);
        assert_eq!(leases.kept(), ["a.test"]);
        let mut held_back = leases.held_back();
        held_back.sort();
        assert_eq!(held_back, ["b.test", "c.test"]);
        // b.test is given up once idle, and offered to the others a while.
        advance(Duration::from_secs(10));
        leases.released(["b.test"]);
        assert_eq!(leases.handing_over(), ["c.test"]);
        advance(OFFERED_FOR - Duration::from_millis(1));
        assert!(leases.held_back().contains(&"b.test".to_owned()));
        advance(Duration::from_millis(1));
        assert_eq!(leases.held_back(), ["c.test"], "no other daemon took b.test: it may be taken back");
        // c.test never went idle: kept after a lease.
        advance(Duration::from_secs(60) - Duration::from_secs(10) - OFFERED_FOR);
        assert!(leases.held_back().is_empty());
        assert!(leases.handing_over().is_empty());
    }

    #[test]
    fn a_daemon_begins_one_hand_over_a_lease() {
        let leases = leases();
        leases.granted(leases.now(), [("a.test", 1), ("b.test", 2)]);
        assert!(leases.may_hand_over());
        leases.hand_over(["a.test"]);
        advance(Duration::from_secs(59));
        assert!(!leases.may_hand_over());
        advance(Duration::from_secs(1));
        assert!(leases.may_hand_over());
    }

    #[test]
    fn requests_start_until_the_lease_could_lapse_less_a_request_timeout() {
        let leases = leases();
        leases.granted(leases.now(), [("a.test", 7)]);
        assert!(leases.may_start("a.test", 7));
        assert!(!leases.may_start("a.test", 6), "another token is another lease");
        assert!(!leases.may_start("b.test", 7), "not held");
        advance(Duration::from_millis(29_999));
        assert!(leases.may_start("a.test", 7));
        advance(Duration::from_millis(1));
        assert!(!leases.may_start("a.test", 7), "a request started now could outlive the lease");
    }

    #[test]
    fn a_renewal_moves_the_deadline_to_when_it_was_sent() {
        let leases = leases();
        leases.granted(leases.now(), [("a.test", 7)]);
        advance(Duration::from_secs(20));
        let renewal = leases.renewal();
        // The answer comes back late: the deadline counts from the sending.
        advance(Duration::from_secs(5));
        assert!(leases.renewed(renewal, &[("a.test".to_owned(), 7)]).is_empty());
        advance(Duration::from_millis(24_999));
        assert!(leases.may_start("a.test", 7));
        advance(Duration::from_millis(1));
        assert!(!leases.may_start("a.test", 7));
    }

    #[test]
    fn a_renewal_that_misses_a_host_loses_it_unless_granted_since() {
        let leases = leases();
        leases.granted(leases.now(), [("a.test", 1), ("b.test", 2)]);
        let renewal = leases.renewal();
        advance(Duration::from_millis(1));
        // Claimed while the renewal was on its way: the renewal did not see it.
        leases.granted(leases.now(), [("c.test", 3)]);
        let lost = leases.renewed(renewal, &[("a.test".to_owned(), 1)]);
        assert_eq!(lost, ["b.test"]);
        assert!(leases.may_start("a.test", 1));
        assert!(!leases.may_start_any("b.test"));
        assert!(leases.may_start("c.test", 3));
        leases.released(["a.test"]);
        assert!(!leases.may_start_any("a.test"));
        assert!(leases.may_start("c.test", 3), "the others are kept");
        leases.released_all();
        assert!(!leases.may_start_any("c.test"));
    }

    #[test]
    fn a_claim_sent_before_a_renewal_but_committed_after_it_keeps_its_hosts() {
        // Renewals run beside claims: this claim was sent first, the
        // renewal's snapshot did not see its commit.
        let leases = leases();
        let claim_sent = leases.now();
        advance(Duration::from_millis(5));
        let renewal = leases.renewal();
        leases.granted(claim_sent, [("c.test", 3)]);
        assert!(leases.renewed(renewal, &[]).is_empty());
        assert!(leases.may_start("c.test", 3));
        // The next renewal sees it, or it was lost.
        let renewal = leases.renewal();
        assert_eq!(leases.renewed(renewal, &[]), ["c.test"]);
    }

    #[test]
    fn a_late_claim_keeps_a_renewal_s_later_confirmation() {
        let leases = leases();
        let claim_sent = leases.now();
        leases.granted(claim_sent, [("a.test", 7)]);
        advance(Duration::from_secs(20));
        let renewal = leases.renewal();
        assert!(leases.renewed(renewal, &[("a.test".to_owned(), 7)]).is_empty());
        // A claim that kept the lease, sent before that renewal, answers last.
        leases.granted(claim_sent, [("a.test", 7)]);
        advance(Duration::from_millis(29_999));
        assert!(leases.may_start("a.test", 7), "the deadline counts from the renewal");
    }

    /// CLOCK_MONOTONIC now.
    fn monotonic() -> Duration {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as in `boot_time`.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) }, 0);
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    #[test]
    fn the_boot_clock_counts_what_the_monotonic_one_does_and_never_goes_back() {
        // CLOCK_BOOTTIME is CLOCK_MONOTONIC plus the time suspended: never
        // behind it, and as fast while the machine runs.
        let (mono, boot) = (monotonic(), boot_time());
        assert!(boot >= mono, "{boot:?} < {mono:?}");
        std::thread::sleep(Duration::from_millis(100));
        let (mono_later, boot_later) = (monotonic(), boot_time());
        assert!(boot_later >= boot + Duration::from_millis(100));
        // Two readings apart each time, on a loaded machine: a margin.
        let (ran, counted) = (mono_later - mono, boot_later - boot);
        assert!(counted.abs_diff(ran) < Duration::from_millis(50), "{counted:?} against {ran:?}");
        assert!(BootInstant::now() >= BootInstant(boot_later));
    }
}
