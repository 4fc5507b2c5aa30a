//! The URLs a crawler holds in flight, kept in its memory instead of in
//! the database (issue 24's decision: "claims live in memory, under the
//! host's lease"). One process owns an SQLite file (its lock file), so a
//! claim needs no durable write: a claimed URL's row stays `queued` until
//! its completion is committed, and a crash (kill -9, power cut) leaves it
//! queued, to be fetched again by the next run. A URL is fetched at least
//! once and recorded exactly once: a completion takes effect only while
//! its claim, with the same lease token, is held here (StormCrawler's
//! in-memory `beingProcessed` works the same way).
//!
//! What outside readers of the database used to see as `in_flight` is the
//! running crawler's to report: [`Claims::len`] is in its counts
//! (`trawler_frontier_urls{state="in_flight"}`); `claims_held` in the
//! database has the same number, for the next start after a crash.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::job::Job;

/// One claimed URL.
#[derive(Debug, Clone)]
struct Held {
    /// The claim's lease token ([`Job::lease`]).
    lease: i64,
    host: String,
    /// When it was claimed, Unix ms.
    claimed_ms: i64,
}

/// The claims of one crawler, by URL id, and the hosts a claim found dry.
/// Every method takes one short lock and no `await` happens under it.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    held: HashMap<i64, Held>,
    /// Hosts a claim took every due URL of: their next work time is to be
    /// moved to their next URL not held, by the next write.
    dry: BTreeSet<String>,
}

impl Claims {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic under this lock leaves it whole: every change is one
        // insert or remove.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ids claimed on `hosts`: the URLs a claim leaves out.
    pub(crate) fn ids_on(&self, hosts: &[&str]) -> Vec<i64> {
        let hosts: HashSet<&str> = hosts.iter().copied().collect();
        let inner = self.inner();
        inner.held.iter().filter(|(_, h)| hosts.contains(h.host.as_str())).map(|(id, _)| *id).collect()
    }

    /// Holds `jobs`, claimed at `now_ms` (Unix ms).
    pub(crate) fn hold(&self, jobs: &[Job], now_ms: i64) {
        let held = &mut self.inner().held;
        for job in jobs {
            held.insert(job.url_id, Held { lease: job.lease, host: job.host.clone(), claimed_ms: now_ms });
        }
    }

    /// Whether URL `url_id` is held under `lease`: a completion that
    /// carries it takes effect.
    pub(crate) fn is_live(&self, url_id: i64, lease: i64) -> bool {
        self.inner().held.get(&url_id).is_some_and(|h| h.lease == lease)
    }

    /// Whether any claim holds URL `url_id`.
    pub(crate) fn holds(&self, url_id: i64) -> bool {
        self.inner().held.contains_key(&url_id)
    }

    /// Lets go of the claims `(url id, lease)` in `settled` (their
    /// completions were committed) and of every claim on the URLs in
    /// `revoked` (taken back by the batch, e.g. a page to fetch again at a
    /// lower depth: a completion still to come for it is stale).
    pub(crate) fn settle(&self, settled: &BTreeSet<(i64, i64)>, revoked: &[i64]) {
        let held = &mut self.inner().held;
        for (url_id, lease) in settled {
            if held.get(url_id).is_some_and(|h| h.lease == *lease) {
                held.remove(url_id);
            }
        }
        for url_id in revoked {
            held.remove(url_id);
        }
    }

    /// The hosts of the claims held, each once.
    pub(crate) fn hosts(&self) -> BTreeSet<String> {
        self.inner().held.values().map(|h| h.host.clone()).collect()
    }

    /// Lets go of every claim, and forgets the dry hosts (their next work
    /// time has not moved yet, or the caller moves it back); returns how
    /// many claims there were.
    pub(crate) fn clear(&self) -> u64 {
        let mut inner = self.inner();
        let n = inner.held.len() as u64;
        *inner = Inner::default();
        n
    }

    /// Notes that a claim took every due URL `hosts` had.
    pub(crate) fn mark_dry(&self, hosts: &[&str]) {
        self.inner().dry.extend(hosts.iter().map(|host| (*host).to_owned()));
    }

    /// The hosts [`mark_dry`](Self::mark_dry) noted, which stay noted until
    /// [`written`](Self::written).
    pub(crate) fn dry(&self) -> Vec<String> {
        self.inner().dry.iter().cloned().collect()
    }

    /// Forgets `hosts` as dry: their next work time was written.
    pub(crate) fn written(&self, hosts: &[String]) {
        let dry = &mut self.inner().dry;
        for host in hosts {
            dry.remove(host);
        }
    }

    /// Claims held.
    pub(crate) fn len(&self) -> u64 {
        self.inner().held.len() as u64
    }

    /// When the oldest claim held was made, Unix ms.
    pub(crate) fn oldest_ms(&self) -> Option<i64> {
        self.inner().held.values().map(|h| h.claimed_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Revisit;

    fn job(url_id: i64, host: &str, lease: i64) -> Job {
        Job {
            url_id,
            url: format!("http://{host}/{url_id}"),
            attempt: 1,
            depth: 0,
            host: host.to_owned(),
            lease,
            revisit: Revisit::default(),
        }
    }

    #[test]
    fn a_completion_is_live_only_under_the_lease_it_was_claimed_with() {
        let claims = Claims::default();
        claims.hold(&[job(1, "a", 7), job(2, "b", 7)], 100);
        assert!(claims.is_live(1, 7));
        assert!(!claims.is_live(1, 8), "another lease");
        assert!(!claims.is_live(3, 7), "never claimed");
        assert_eq!(claims.ids_on(&["a"]), [1]);
        assert_eq!(claims.oldest_ms(), Some(100));

        // A stale settlement (another lease) keeps the claim.
        claims.settle(&BTreeSet::from([(1, 8)]), &[]);
        assert!(claims.is_live(1, 7));
        claims.settle(&BTreeSet::from([(1, 7)]), &[2]);
        assert_eq!(claims.len(), 0);
    }

    #[test]
    fn the_hosts_of_the_claims_are_named_once_each() {
        let claims = Claims::default();
        claims.hold(&[job(1, "a", 1), job(2, "a", 1), job(3, "b", 1)], 0);
        assert_eq!(claims.hosts(), BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert_eq!(claims.clear(), 3);
        assert_eq!(claims.oldest_ms(), None);
    }
}
