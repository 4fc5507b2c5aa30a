//! [`HostLeases`]: which hosts this daemon holds a lease on, and until when
//! it may start requests to them.
//!
//! A lease lasts `length` by the database's clock from the moment the
//! database ran the statement that took or renewed it. The daemon cannot
//! read that clock, but it knows when it *sent* the statement: the database
//! ran it later, so the lease lasts at least until `sent + length` on the
//! daemon's own monotonic clock. A request started at `t` may run until
//! `t + fetch.timeout`, so requests to a host start no later than
//! `sent + length - fetch.timeout`: every request of an owner has ended
//! before its lease can lapse and another daemon take the host. A daemon
//! cut off from the database stops starting requests by itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The leases this daemon holds, by host: their fencing token and the
/// monotonic time the statement that last confirmed them was sent.
#[derive(Debug)]
pub struct HostLeases {
    /// How long a lease lasts without renewal (`store.lease`).
    length: Duration,
    /// The longest a request may take (`fetch.timeout`).
    request_timeout: Duration,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    token: i64,
    confirmed: Instant,
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
        Self { length, request_timeout, held: Mutex::new(HashMap::new()) }
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

    /// Records leases taken or kept by a statement sent at `sent`.
    pub fn granted<'a>(&self, sent: Instant, leases: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut held = self.lock();
        for (host, token) in leases {
            held.insert(host.to_owned(), Held { token, confirmed: sent });
        }
    }

    /// Records a renewal sent at `sent` that found `renewed` (host, token)
    /// still held. Hosts held before `sent` that it did not find were lost
    /// (another daemon took them over after they lapsed): they are forgotten
    /// and returned. A host granted after `sent` is kept: the renewal could
    /// not see it.
    pub fn renewed(&self, sent: Instant, renewed: &[(String, i64)]) -> Vec<String> {
        let found: HashMap<&str, i64> = renewed.iter().map(|(h, t)| (h.as_str(), *t)).collect();
        let mut held = self.lock();
        let mut lost = Vec::new();
        held.retain(|host, lease| match found.get(host.as_str()) {
            Some(&token) if token == lease.token => {
                lease.confirmed = lease.confirmed.max(sent);
                true
            }
            _ if lease.confirmed > sent => true,
            _ => {
                lost.push(host.clone());
                false
            }
        });
        lost
    }

    /// Forgets the leases of `hosts` (released).
    pub fn released<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let mut held = self.lock();
        for host in hosts {
            held.remove(host);
        }
    }

    /// Forgets every lease (all given up).
    pub fn released_all(&self) {
        self.lock().clear();
    }

    /// Whether a request to `host` under the lease `token` may start now:
    /// the lease is held with that token and `now` is before its deadline
    /// (confirmed + length - request timeout; see the module docs).
    pub fn may_start(&self, host: &str, token: i64) -> bool {
        self.lock()
            .get(host)
            .is_some_and(|lease| lease.token == token && Instant::now() < self.deadline(lease))
    }

    /// Whether a request to `host` may start now under whichever lease this
    /// daemon holds on it (a redirect hop to a host other than its job's).
    pub fn may_start_any(&self, host: &str) -> bool {
        self.lock().get(host).is_some_and(|lease| Instant::now() < self.deadline(lease))
    }

    fn deadline(&self, lease: &Held) -> Instant {
        lease.confirmed + self.length.saturating_sub(self.request_timeout)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> HostLeases {
        HostLeases::new(Duration::from_secs(60), Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_start_until_the_lease_could_lapse_less_a_request_timeout() {
        let leases = leases();
        leases.granted(Instant::now(), [("a.test", 7)]);
        assert!(leases.may_start("a.test", 7));
        assert!(!leases.may_start("a.test", 6), "another token is another lease");
        assert!(!leases.may_start("b.test", 7), "not held");
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(leases.may_start("a.test", 7));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!leases.may_start("a.test", 7), "a request started now could outlive the lease");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_deadline_to_when_it_was_sent() {
        let leases = leases();
        leases.granted(Instant::now(), [("a.test", 7)]);
        tokio::time::advance(Duration::from_secs(20)).await;
        let sent = Instant::now();
        // The answer comes back late: the deadline counts from the sending.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(leases.renewed(sent, &[("a.test".to_owned(), 7)]).is_empty());
        tokio::time::advance(Duration::from_millis(24_999)).await;
        assert!(leases.may_start("a.test", 7));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!leases.may_start("a.test", 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_misses_a_host_loses_it_unless_granted_since() {
        let leases = leases();
        leases.granted(Instant::now(), [("a.test", 1), ("b.test", 2)]);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        // Claimed while the renewal was on its way: the renewal did not see it.
        leases.granted(Instant::now(), [("c.test", 3)]);
        let lost = leases.renewed(sent, &[("a.test".to_owned(), 1)]);
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
}
