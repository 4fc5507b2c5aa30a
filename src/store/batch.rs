//! What a batch of completions writes, decided once and written in one
//! order whatever the engine. [`write_batch`] sequences the writes:
//!
//! 1. the URL rows, each only if the completion's claim is still held
//!    under its lease (SQLite: in the crawler's memory; PostgreSQL: the
//!    row's lease, in flight): which completions took effect (are *live*)
//!    decides the rest;
//! 2. an `attempts` row per attempt, live or not ([`AttemptRow`]): a late
//!    one is kept with outcome [`Outcome::StaleLease`] and changes nothing
//!    else, so `attempts` shows every request made; a 304 that took effect
//!    stands for the content of its URL's last `done` attempt;
//! 3. the hosts' next work time and backoff ([`rules::host_changes`]);
//! 4. the links of the live pages ([`write_links`]): enqueued under the
//!    page limits, depths lowered where a link is a shorter path, the link
//!    graph and the dropped-link counts.
//!
//! An engine implements [`BatchWrites`]: the SQL of each step and the
//! mapping of its types, nothing of what the values mean.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::rules::{self, DroppedRow, UrlChange};
use super::{Committed, PageLimits};
use crate::clock::unix_ms;
use crate::job::{AttemptRecord, Completion, DropReason, NewUrl, Next, Outcome, UrlState};

/// One `attempts` row with its meaning resolved; the engine maps the types.
pub(crate) struct AttemptRow<'a> {
    pub url_id: i64,
    /// 1 for a visit's first attempt.
    pub attempt: u32,
    pub outcome: Outcome,
    /// When the request started and when its answer was read, Unix ms (the
    /// write's time when the record has none).
    pub started_ms: i64,
    pub fetched_ms: i64,
    /// For [`Outcome::Retry`]: when the URL is due again, Unix ms.
    pub retry_ms: Option<i64>,
    /// The JSON array of the URLs before `final_url`; `None` without
    /// redirects.
    pub redirect_chain: Option<String>,
    /// The content the attempt stands for: what it read, or, for a 304
    /// that took effect, what its URL's last `done` attempt read (the
    /// content it confirms; RFC 9110 §15.4.5).
    pub content_type: Option<&'a str>,
    pub body_bytes: Option<u64>,
    pub body_sha256: Option<&'a str>,
    /// The rest, as the fetch recorded it.
    pub record: &'a AttemptRecord,
}

impl<'a> AttemptRow<'a> {
    /// The row of `completion`'s attempt, `None` for a requeue; `live`
    /// says whether the completion took effect; `confirmed` is the content
    /// of its URL's last `done` attempt, for a 304; `now` stands in for a
    /// missing start or read time.
    pub(crate) fn of(
        completion: &'a Completion,
        live: bool,
        confirmed: Option<&'a StoredContent>,
        now: SystemTime,
    ) -> Option<Self> {
        let decided = Outcome::of(completion.next)?;
        let outcome = if live { decided } else { Outcome::StaleLease };
        let r = &completion.record;
        let (content_type, body_bytes, body_sha256) = match (outcome, confirmed) {
            (Outcome::NotModified, Some(stored)) => {
                (stored.content_type.as_deref(), stored.body_bytes, stored.body_sha256.as_deref())
            }
            (Outcome::NotModified, None) => (None, None, None),
            _ => (r.content_type.as_deref(), r.body_bytes, r.body_sha256.as_deref()),
        };
        Some(Self {
            url_id: completion.url_id,
            attempt: completion.attempt,
            outcome,
            started_ms: unix_ms(r.started_at.unwrap_or(now)),
            fetched_ms: unix_ms(r.fetched_at.unwrap_or(now)),
            retry_ms: completion.next.due_at().filter(|_| outcome == Outcome::Retry),
            redirect_chain: (!r.redirect_chain.is_empty())
                .then(|| serde_json::to_string(&r.redirect_chain).unwrap_or_default()),
            content_type,
            body_bytes,
            body_sha256,
            record: r,
        })
    }
}

/// The content a `done` attempt stored, which a later 304 confirms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoredContent {
    pub content_type: Option<String>,
    /// Decoded length, bytes.
    pub body_bytes: Option<u64>,
    /// Lower-case hex.
    pub body_sha256: Option<String>,
}

/// An `attempts` row's `(url_id, content_type, body_bytes, body_sha256)`.
pub(crate) type ContentColumns = (i64, Option<String>, Option<i64>, Option<String>);

/// The URL id and [`StoredContent`] of a row's columns (a negative length
/// reads as none).
pub(crate) fn stored(
    (url_id, content_type, body_bytes, body_sha256): ContentColumns,
) -> (i64, StoredContent) {
    let body_bytes = body_bytes.and_then(|n| u64::try_from(n).ok());
    (url_id, StoredContent { content_type, body_bytes, body_sha256 })
}

/// What the live pages' links made: new URLs, dropped links by reason,
/// finished URLs queued again.
pub(crate) type LinksWritten = (u64, BTreeMap<DropReason, u64>, u64);

/// An engine's statements for one batch, called by [`write_batch`] in its
/// order within one transaction. `Error` is the engine's own, so that its
/// retry and outage rules see the driver's error.
pub(crate) trait BatchWrites {
    type Error;

    /// Applies `changes[i]` to `completions[i]`'s URL where that
    /// completion's claim is still held under its lease. Returns the
    /// (URL id, lease) of those it applied: a batch may hold a stale and
    /// the live completion of one URL.
    async fn update_urls(
        &mut self,
        completions: &[Completion],
        changes: &[UrlChange],
    ) -> Result<BTreeSet<(i64, i64)>, Self::Error>;

    /// The content of the last `done` attempt of each URL of `ids` that
    /// has one, by URL id.
    async fn stored_content(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, StoredContent>, Self::Error>;

    /// Inserts the rows, with each attempt's redirect hops.
    async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), Self::Error>;

    /// Applies [`rules::host_changes`]: `(host, work_at_ms, backoff_until_ms)`.
    async fn update_hosts(&mut self, changes: &[(&str, i64, i64)]) -> Result<(), Self::Error>;

    /// The current depth of each URL of `ids`, by id.
    async fn page_depths(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, u32>, Self::Error>;

    /// Which of `urls` are stored already.
    async fn stored_urls(&mut self, urls: &[&str]) -> Result<BTreeSet<String>, Self::Error>;

    /// How many URLs are stored in all (when `total`, else 0) and for
    /// each of `hosts` (`hosts.urls`; a host not stored is left out).
    async fn url_counts(
        &mut self,
        total: bool,
        hosts: &[&str],
    ) -> Result<(i64, BTreeMap<String, i64>), Self::Error>;

    /// Inserts the URLs not stored yet and marks their hosts as having
    /// work. Returns how many were new.
    async fn insert_urls(&mut self, urls: &[NewUrl]) -> Result<u64, Self::Error>;

    /// The stored URLs that `candidates` (`(url, depth, page id)`, from
    /// [`rules::shortest_paths`]) reach in fewer steps than their depth,
    /// and their descendants through `links`, each once at its lowest
    /// depth: [`Shorter`] rows.
    async fn shorter_paths(
        &mut self,
        candidates: &[(&str, u32, Option<i64>)],
    ) -> Result<Vec<Shorter>, Self::Error>;

    /// Applies [`Lowered`] rows: the new depth and `found_on`; a URL to
    /// fetch again goes back to the queue at once without its lease or
    /// validators (a page fetched again for its links must not get a 304),
    /// and its host is woken.
    async fn lower_depths(&mut self, rows: &[Lowered]) -> Result<(), Self::Error>;

    /// Inserts the link graph's edges `(page id, URL)` whose URL is stored,
    /// once each.
    async fn insert_links(&mut self, edges: &[(i64, &str)]) -> Result<(), Self::Error>;

    /// Adds the dropped-link counts, one row per (page, reason).
    async fn add_dropped_links(&mut self, rows: &[DroppedRow]) -> Result<(), Self::Error>;
}

/// A stored URL a shorter path reaches: `(id, new depth, the page giving
/// it, depth before, state)`.
pub(crate) type Shorter = (i64, u32, Option<i64>, u32, UrlState);

/// What lowering does to a URL: `(id, depth, found_on, fetch again)`.
pub(crate) type Lowered = (i64, u32, Option<i64>, bool);

/// Writes `completions` through `engine` in the one order above, at `now`.
///
/// Errors: whatever the engine's statements return; the caller's
/// transaction then writes nothing.
pub(crate) async fn write_batch<W: BatchWrites>(
    engine: &mut W,
    completions: &[Completion],
    limits: PageLimits,
    now: SystemTime,
) -> Result<Committed, W::Error> {
    let now_ms = unix_ms(now);
    let changes: Vec<UrlChange> = completions.iter().map(|c| c.url_change(now_ms)).collect();
    let live = engine.update_urls(completions, &changes).await?;
    let confirming: Vec<i64> = completions
        .iter()
        .filter(|c| c.next == Next::NotModified && live.contains(&(c.url_id, c.lease)))
        .map(|c| c.url_id)
        .collect();
    let confirmed = match confirming.is_empty() {
        true => BTreeMap::new(),
        false => engine.stored_content(&confirming).await?,
    };
    let rows = attempt_rows(completions, &live, &confirmed, now);
    if !rows.is_empty() {
        engine.insert_attempts(&rows).await?;
    }
    let hosts = rules::host_changes(completions);
    if !hosts.is_empty() {
        engine.update_hosts(&hosts).await?;
    }
    let pages: Vec<&Completion> =
        completions.iter().filter(|c| c.has_links() && live.contains(&(c.url_id, c.lease))).collect();
    let (new_urls, dropped_links, reopened) = write_links(engine, &pages, limits).await?;
    Ok(Committed { live, reopened, new_urls, dropped_links })
}

/// Records what the live `pages` found: their links enqueued at their
/// shortest depth under the page limits, depths lowered where a link is a
/// shorter path, the link graph, and the dropped-link counts. Returns the
/// new URLs, the links dropped by reason, and the `done` URLs queued again.
async fn write_links<W: BatchWrites>(
    engine: &mut W,
    pages: &[&Completion],
    limits: PageLimits,
) -> Result<LinksWritten, W::Error> {
    if pages.is_empty() {
        return Ok((0, BTreeMap::new(), 0));
    }
    // Depth is the shortest distance from a seed: a page's links are one
    // deeper than the page is now, which may be less than when it was
    // claimed, and a link to a stored URL may be a shorter path to it.
    let ids: Vec<i64> = pages.iter().map(|c| c.url_id).collect();
    let page_depths = engine.page_depths(&ids).await?;
    let discovered = rules::discovered(pages, &page_depths);
    let discovered: Vec<&NewUrl> = discovered.iter().collect();
    let (admitted, capped) = admit(engine, &discovered, limits).await?;
    let new = if admitted.is_empty() { 0 } else { engine.insert_urls(&admitted).await? };
    let reopened = lower_depths(engine, &admitted, limits.max_depth).await?;
    let edges: Vec<(i64, &str)> =
        pages.iter().flat_map(|c| c.links.iter().map(|l| (c.url_id, l.url.as_str()))).collect();
    if !edges.is_empty() {
        engine.insert_links(&edges).await?;
    }
    let (dropped, by_reason) = rules::dropped_links(pages, capped);
    if !dropped.is_empty() {
        engine.add_dropped_links(&dropped).await?;
    }
    Ok((new, by_reason, reopened))
}

/// Splits discovered `links` into those that may be inserted under
/// `limits` and the page-limit drops ([`rules::admit`], given what is
/// stored).
async fn admit<W: BatchWrites>(
    engine: &mut W,
    links: &[&NewUrl],
    limits: PageLimits,
) -> Result<(Vec<NewUrl>, Vec<DroppedRow>), W::Error> {
    if (limits.total.is_none() && limits.per_host.is_none()) || links.is_empty() {
        return Ok((links.iter().map(|l| (*l).clone()).collect(), Vec::new()));
    }
    let urls: Vec<&str> = links.iter().map(|l| l.url.as_str()).collect();
    let known = engine.stored_urls(&urls).await?;
    let hosts: BTreeSet<&str> = links.iter().map(|l| l.host.as_str()).collect();
    let hosts: Vec<&str> = if limits.per_host.is_some() { hosts.into_iter().collect() } else { Vec::new() };
    let (total, per_host) = engine.url_counts(limits.total.is_some(), &hosts).await?;
    let total_room = limits.total.map(|cap| cap.saturating_sub(total.max(0) as u64));
    let host_room: BTreeMap<String, u64> = match limits.per_host {
        Some(cap) => hosts
            .iter()
            .map(|h| {
                (h.to_string(), cap.saturating_sub(per_host.get(*h).copied().unwrap_or(0).max(0) as u64))
            })
            .collect(),
        None => BTreeMap::new(),
    };
    Ok(rules::admit(links, &known, total_room, host_room))
}

/// Makes each URL's `depth` its shortest distance from a seed, given the
/// just-recorded `links` (whose depths are their pages' plus one): a stored
/// URL that a link reaches in fewer steps gets the lower depth and that page
/// as `found_on`, and so do its descendants through the link graph. A page
/// that was at `max_depth` (so not parsed) and is now above it is queued to
/// be fetched again, its links now allowed; one in flight is taken back (its
/// completion becomes stale) for the same reason. Returns how many `done`
/// URLs it put back in the queue.
async fn lower_depths<W: BatchWrites>(
    engine: &mut W,
    links: &[NewUrl],
    max_depth: u32,
) -> Result<u64, W::Error> {
    if links.is_empty() {
        return Ok(0);
    }
    let shorter = engine.shorter_paths(&rules::shortest_paths(links)).await?;
    if shorter.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Lowered> = shorter
        .iter()
        .map(|&(id, depth, via, before, state)| {
            (id, depth, via, rules::refetch_when_lowered(before, depth, max_depth, state))
        })
        .collect();
    engine.lower_depths(&rows).await?;
    let reopened = shorter.iter().zip(&rows).filter(|(s, r)| r.3 && s.4 == UrlState::Done).count();
    Ok(reopened as u64)
}

/// The `attempts` rows of `completions`, in their order: requeues make
/// none; those not `live` are [`Outcome::StaleLease`].
pub(crate) fn attempt_rows<'a>(
    completions: &'a [Completion],
    live: &BTreeSet<(i64, i64)>,
    confirmed: &'a BTreeMap<i64, StoredContent>,
    now: SystemTime,
) -> Vec<AttemptRow<'a>> {
    completions
        .iter()
        .filter_map(|c| AttemptRow::of(c, live.contains(&(c.url_id, c.lease)), confirmed.get(&c.url_id), now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Next, Revisit};

    fn completion(url_id: i64, lease: i64, next: Next) -> Completion {
        Completion {
            url_id,
            lease,
            host: "a.test".into(),
            host_backoff_changed: false,
            host_backoff_until_ms: None,
            attempt: 2,
            record: AttemptRecord { body_sha256: Some("new".into()), ..Default::default() },
            next,
            links: Vec::new(),
            dropped_links: Vec::new(),
            recrawl_after: None,
            revisit: Revisit { body_sha256: Some("old".into()), ..Default::default() },
            adaptive: None,
        }
    }

    /// A stored URL of the fake engine: `(id, depth, state)`.
    type Row = (i64, u32, UrlState);

    /// An engine in memory: it keeps the leases URLs carry, keeps URLs by
    /// name, and notes what it is asked in what order.
    #[derive(Default)]
    struct Fake {
        /// The lease each in-flight URL carries: `(url_id, lease)`.
        leases: BTreeSet<(i64, i64)>,
        urls: BTreeMap<String, Row>,
        calls: Vec<&'static str>,
        attempts: Vec<(i64, Outcome, Option<String>, Option<u64>)>,
        stored: BTreeMap<i64, StoredContent>,
        edges: Vec<(i64, String)>,
        dropped: Vec<DroppedRow>,
    }

    impl Fake {
        fn with_urls(urls: &[(&str, Row)]) -> Self {
            let urls = urls.iter().map(|(u, row)| (format!("http://a.test/{u}"), *row)).collect();
            Fake { urls, ..Default::default() }
        }

        fn row(&self, path: &str) -> Row {
            self.urls[&format!("http://a.test/{path}")]
        }
    }

    impl BatchWrites for Fake {
        type Error = ();

        async fn update_urls(
            &mut self,
            c: &[Completion],
            changes: &[UrlChange],
        ) -> Result<BTreeSet<(i64, i64)>, ()> {
            assert_eq!(c.len(), changes.len());
            self.calls.push("urls");
            // A completion applies where its URL carries its lease, which
            // the update then ends.
            let applied: BTreeSet<(i64, i64)> =
                c.iter().map(|c| (c.url_id, c.lease)).filter(|l| self.leases.contains(l)).collect();
            self.leases.retain(|l| !applied.contains(l));
            Ok(applied)
        }

        async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), ()> {
            self.calls.push("attempts");
            let noted =
                rows.iter().map(|r| (r.url_id, r.outcome, r.body_sha256.map(str::to_owned), r.body_bytes));
            self.attempts.extend(noted);
            Ok(())
        }

        async fn stored_content(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, StoredContent>, ()> {
            self.calls.push("stored content");
            Ok(self
                .stored
                .iter()
                .filter(|(id, _)| ids.contains(id))
                .map(|(id, c)| (*id, c.clone()))
                .collect())
        }

        async fn update_hosts(&mut self, _: &[(&str, i64, i64)]) -> Result<(), ()> {
            self.calls.push("hosts");
            Ok(())
        }

        async fn page_depths(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, u32>, ()> {
            self.calls.push("page depths");
            Ok(self.urls.values().filter(|r| ids.contains(&r.0)).map(|r| (r.0, r.1)).collect())
        }

        async fn stored_urls(&mut self, urls: &[&str]) -> Result<BTreeSet<String>, ()> {
            Ok(urls.iter().filter(|u| self.urls.contains_key(**u)).map(|u| u.to_string()).collect())
        }

        async fn url_counts(&mut self, _: bool, hosts: &[&str]) -> Result<(i64, BTreeMap<String, i64>), ()> {
            let n = self.urls.len() as i64;
            Ok((n, hosts.iter().map(|h| (h.to_string(), n)).collect()))
        }

        async fn insert_urls(&mut self, urls: &[NewUrl]) -> Result<u64, ()> {
            self.calls.push("insert urls");
            let before = self.urls.len();
            for u in urls {
                let id = 100 + self.urls.len() as i64;
                self.urls.entry(u.url.clone()).or_insert((id, u.depth, UrlState::Queued));
            }
            Ok((self.urls.len() - before) as u64)
        }

        async fn shorter_paths(
            &mut self,
            candidates: &[(&str, u32, Option<i64>)],
        ) -> Result<Vec<Shorter>, ()> {
            Ok(candidates
                .iter()
                .filter_map(|&(url, depth, via)| {
                    let &(id, before, state) = self.urls.get(url)?;
                    (depth < before).then_some((id, depth, via, before, state))
                })
                .collect())
        }

        async fn lower_depths(&mut self, rows: &[Lowered]) -> Result<(), ()> {
            self.calls.push("lower depths");
            for &(id, depth, _, refetch) in rows {
                let row = self.urls.values_mut().find(|r| r.0 == id).unwrap();
                row.1 = depth;
                if refetch {
                    row.2 = UrlState::Queued;
                }
            }
            Ok(())
        }

        async fn insert_links(&mut self, edges: &[(i64, &str)]) -> Result<(), ()> {
            self.calls.push("links");
            self.edges.extend(edges.iter().map(|(from, to)| (*from, to.to_string())));
            Ok(())
        }

        async fn add_dropped_links(&mut self, rows: &[DroppedRow]) -> Result<(), ()> {
            self.calls.push("dropped links");
            self.dropped.extend_from_slice(rows);
            Ok(())
        }
    }

    fn with_link(mut c: Completion, path: &str, depth: u32) -> Completion {
        let url = format!("http://a.test/{path}");
        c.links.push(NewUrl { url, host: "a.test".into(), depth, found_on: Some(c.url_id) });
        c
    }

    async fn write(engine: &mut Fake, batch: &[Completion], limits: PageLimits) -> Committed {
        write_batch(engine, batch, limits, SystemTime::now()).await.unwrap()
    }

    #[tokio::test]
    async fn a_batch_is_written_urls_first_and_a_late_attempt_is_kept_as_stale() {
        // URL 1: a stale and the live completion in one batch; URL 2 retries;
        // URL 3 is requeued (no attempt).
        let batch = [
            with_link(completion(1, 10, Next::Done), "from-stale", 1),
            with_link(completion(1, 11, Next::Done), "from-live", 1),
            completion(2, 20, Next::RetryAt(5)),
            completion(3, 30, Next::Requeue(5)),
        ];
        let mut engine = Fake::with_urls(&[("page", (1, 0, UrlState::InFlight))]);
        engine.leases = [(1, 11), (2, 20), (3, 30)].into();
        let committed = write(&mut engine, &batch, PageLimits::default()).await;

        let calls = ["urls", "attempts", "hosts", "page depths", "insert urls", "links"];
        assert_eq!(engine.calls, calls);
        let outcomes: Vec<(i64, Outcome)> = engine.attempts.iter().map(|a| (a.0, a.1)).collect();
        assert_eq!(outcomes, [(1, Outcome::StaleLease), (1, Outcome::Done), (2, Outcome::Retry)]);
        assert_eq!(engine.edges, [(1, "http://a.test/from-live".to_owned())], "only the live page's links");
        assert_eq!(committed.live, [(1, 11), (2, 20), (3, 30)].into());
        assert_eq!(committed.new_urls, 1);
        assert!(committed.took_effect(&batch[1]) && !committed.took_effect(&batch[0]));
        assert!(engine.leases.is_empty(), "every lease of the batch ended");
    }

    #[tokio::test]
    async fn a_live_304_inherits_the_urls_content_and_a_stale_one_nothing() {
        let mut batch = [completion(1, 10, Next::NotModified), completion(2, 20, Next::NotModified)];
        batch[0].record.body_bytes = Some(0);
        let mut engine = Fake { leases: [(1, 10)].into(), ..Default::default() };
        let done = |sha: &str| StoredContent {
            body_bytes: Some(5),
            body_sha256: Some(sha.into()),
            ..Default::default()
        };
        engine.stored = [(1, done("done-1")), (2, done("done-2"))].into();
        write(&mut engine, &batch, PageLimits::default()).await;

        // The live one stands for its URL's last done attempt; the stale
        // one confirms nothing and is recorded as it came.
        let inherited = (1, Outcome::NotModified, Some("done-1".into()), Some(5));
        assert_eq!(engine.attempts, [inherited, (2, Outcome::StaleLease, Some("new".into()), None)]);
        assert_eq!(engine.calls, ["urls", "stored content", "attempts"], "no host has news, no page links");
    }

    #[tokio::test]
    async fn a_page_limit_drops_new_urls_but_never_a_link_to_a_stored_one() {
        let page = (1, 0, UrlState::InFlight);
        let mut engine = Fake::with_urls(&[("page", page), ("stored", (2, 1, UrlState::Done))]);
        engine.leases = [(1, 10)].into();
        let mut c = completion(1, 10, Next::Done);
        for path in ["stored", "new-a", "new-b"] {
            c = with_link(c, path, 1);
        }
        // Two stored already: room for one more.
        let limits = PageLimits { per_host: Some(3), ..PageLimits::default() };
        let committed = write(&mut engine, &[c], limits).await;

        assert_eq!(committed.new_urls, 1);
        assert_eq!(committed.dropped_links, [(DropReason::MaxPagesPerHost, 1)].into());
        assert_eq!(engine.dropped, [(1, DropReason::MaxPagesPerHost, 1)]);
        let targets: Vec<&str> = engine.edges.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(targets, ["http://a.test/stored", "http://a.test/new-a", "http://a.test/new-b"]);
    }

    #[tokio::test]
    async fn a_shorter_path_to_an_unparsed_page_fetches_it_again() {
        // "deep" was fetched at max_depth 2, so not parsed; the seed's link
        // makes it depth 1, where its links count.
        let rows = [("seed", (1, 0, UrlState::InFlight)), ("deep", (2, 2, UrlState::Done))];
        let mut engine = Fake::with_urls(&rows);
        engine.leases = [(1, 10)].into();
        let limits = PageLimits { max_depth: 2, ..PageLimits::default() };
        let committed =
            write(&mut engine, &[with_link(completion(1, 10, Next::Done), "deep", 1)], limits).await;

        assert_eq!(committed.reopened, 1);
        assert_eq!(engine.row("deep"), (2, 1, UrlState::Queued));
        assert!(engine.calls.contains(&"lower depths"));
    }
}
