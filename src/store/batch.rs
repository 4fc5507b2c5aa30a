//! What a batch of completions writes, decided once and written in one
//! order whatever the engine. [`write_batch`] sequences the writes:
//!
//! 1. the URL rows, each only if its URL still carries the completion's
//!    lease and is in flight: which completions took effect (are *live*)
//!    decides the rest;
//! 2. an `attempts` row per attempt, live or not ([`AttemptRow`]): a late
//!    one is kept with outcome [`Outcome::StaleLease`] and changes nothing
//!    else, so `attempts` shows every request made;
//! 3. the hosts' next work time and backoff ([`rules::host_changes`]);
//! 4. the links of the live pages, with their page limits and depth
//!    lowering.
//!
//! An engine implements [`BatchWrites`]: the SQL of each step and the
//! mapping of its types, nothing of what the values mean.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::rules::{self, UrlChange, unix_ms};
use super::{Committed, PageLimits};
use crate::job::{AttemptRecord, Completion, DropReason, Outcome};

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
    /// A live 304 confirms the content of the URL's last `done` attempt:
    /// the engine takes `content_type` and `body_bytes` from that row, and
    /// `body_sha256` below is the URL's (the job's `revisit`).
    pub inherits_content: bool,
    pub body_sha256: Option<&'a str>,
    /// The rest, as the fetch recorded it.
    pub record: &'a AttemptRecord,
}

impl<'a> AttemptRow<'a> {
    /// The row of `completion`'s attempt, `None` for a requeue; `live`
    /// says whether the completion took effect; `now` stands in for a
    /// missing start or read time.
    pub(crate) fn of(completion: &'a Completion, live: bool, now: SystemTime) -> Option<Self> {
        let decided = Outcome::of(completion.next)?;
        let outcome = if live { decided } else { Outcome::StaleLease };
        let r = &completion.record;
        let inherits_content = outcome == Outcome::NotModified;
        Some(Self {
            url_id: completion.url_id,
            attempt: completion.attempt,
            outcome,
            started_ms: unix_ms(r.started_at.unwrap_or(now)),
            fetched_ms: unix_ms(r.fetched_at.unwrap_or(now)),
            retry_ms: completion.next.due_at(),
            redirect_chain: (!r.redirect_chain.is_empty())
                .then(|| serde_json::to_string(&r.redirect_chain).unwrap_or_default()),
            inherits_content,
            body_sha256: match inherits_content {
                true => completion.revisit.body_sha256.as_deref(),
                false => r.body_sha256.as_deref(),
            },
            record: r,
        })
    }
}

/// The links of the live pages: what [`BatchWrites::record_links`] returns
/// (new URLs, dropped links by reason, finished URLs queued again).
pub(crate) type LinksWritten = (u64, BTreeMap<DropReason, u64>, u64);

/// An engine's statements for one batch, called by [`write_batch`] in its
/// order within one transaction. `Error` is the engine's own, so that its
/// retry and outage rules see the driver's error.
pub(crate) trait BatchWrites {
    type Error;

    /// Applies `changes[i]` to `completions[i]`'s URL where the URL still
    /// carries that completion's lease and is in flight. Returns the
    /// (URL id, lease) of those it applied: a batch may hold a stale and
    /// the live completion of one URL.
    async fn update_urls(
        &mut self,
        completions: &[Completion],
        changes: &[UrlChange],
    ) -> Result<BTreeSet<(i64, i64)>, Self::Error>;

    /// Inserts the rows, with each attempt's redirect hops.
    async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), Self::Error>;

    /// Applies [`rules::host_changes`]: `(host, work_at_ms, backoff_until_ms)`.
    async fn update_hosts(&mut self, changes: &[(&str, i64, i64)]) -> Result<(), Self::Error>;

    /// Records the links of the live `pages` under `limits`.
    async fn record_links(
        &mut self,
        pages: &[&Completion],
        limits: PageLimits,
    ) -> Result<LinksWritten, Self::Error>;
}

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
    let rows = attempt_rows(completions, &live, now);
    if !rows.is_empty() {
        engine.insert_attempts(&rows).await?;
    }
    let hosts = rules::host_changes(completions);
    if !hosts.is_empty() {
        engine.update_hosts(&hosts).await?;
    }
    let pages: Vec<&Completion> =
        completions.iter().filter(|c| c.has_links() && live.contains(&(c.url_id, c.lease))).collect();
    let (new_urls, dropped_links, reopened) = engine.record_links(&pages, limits).await?;
    Ok(Committed { applied: live.len() as u64, live, reopened, new_urls, dropped_links })
}

/// The `attempts` rows of `completions`, in their order: requeues make
/// none; those not `live` are [`Outcome::StaleLease`].
pub(crate) fn attempt_rows<'a>(
    completions: &'a [Completion],
    live: &BTreeSet<(i64, i64)>,
    now: SystemTime,
) -> Vec<AttemptRow<'a>> {
    completions.iter().filter_map(|c| AttemptRow::of(c, live.contains(&(c.url_id, c.lease)), now)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Next, Revisit};
    use crate::store::NewUrl;

    fn completion(url_id: i64, lease: i64, next: Next) -> Completion {
        Completion {
            url_id,
            lease,
            host: "a.test".into(),
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

    /// An engine that says which leases are live and notes what it is given.
    #[derive(Default)]
    struct Notes {
        live: BTreeSet<(i64, i64)>,
        calls: Vec<&'static str>,
        attempts: Vec<(i64, Outcome, Option<String>, bool)>,
        pages: Vec<i64>,
    }

    impl BatchWrites for Notes {
        type Error = ();

        async fn update_urls(
            &mut self,
            completions: &[Completion],
            changes: &[UrlChange],
        ) -> Result<BTreeSet<(i64, i64)>, ()> {
            assert_eq!(completions.len(), changes.len());
            self.calls.push("urls");
            Ok(self.live.clone())
        }

        async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), ()> {
            self.calls.push("attempts");
            self.attempts.extend(
                rows.iter()
                    .map(|r| (r.url_id, r.outcome, r.body_sha256.map(str::to_owned), r.inherits_content)),
            );
            Ok(())
        }

        async fn update_hosts(&mut self, _: &[(&str, i64, i64)]) -> Result<(), ()> {
            self.calls.push("hosts");
            Ok(())
        }

        async fn record_links(&mut self, pages: &[&Completion], _: PageLimits) -> Result<LinksWritten, ()> {
            self.calls.push("links");
            self.pages.extend(pages.iter().map(|c| c.url_id));
            Ok((0, BTreeMap::new(), 0))
        }
    }

    fn with_link(mut c: Completion) -> Completion {
        c.links.push(NewUrl {
            url: "http://a.test/x".into(),
            host: "a.test".into(),
            depth: 1,
            found_on: None,
        });
        c
    }

    #[tokio::test]
    async fn a_batch_is_written_urls_first_and_a_late_attempt_is_kept_as_stale() {
        // URL 1: a stale and the live completion in one batch; URL 2 retries;
        // URL 3 is requeued (no attempt).
        let batch = [
            with_link(completion(1, 10, Next::Done)),
            with_link(completion(1, 11, Next::Done)),
            completion(2, 20, Next::RetryAt(5)),
            completion(3, 30, Next::Requeue(5)),
        ];
        let mut engine = Notes { live: [(1, 11), (2, 20), (3, 30)].into(), ..Default::default() };
        let committed =
            write_batch(&mut engine, &batch, PageLimits::default(), SystemTime::now()).await.unwrap();

        assert_eq!(engine.calls, ["urls", "attempts", "hosts", "links"]);
        let outcomes: Vec<(i64, Outcome)> = engine.attempts.iter().map(|a| (a.0, a.1)).collect();
        assert_eq!(outcomes, [(1, Outcome::StaleLease), (1, Outcome::Done), (2, Outcome::Retry)]);
        assert_eq!(engine.pages, [1], "only the live page's links");
        assert_eq!(committed.applied, 3);
        assert!(committed.took_effect(&batch[1]) && !committed.took_effect(&batch[0]));
    }

    #[tokio::test]
    async fn a_live_304_inherits_the_urls_content_and_a_stale_one_nothing() {
        let batch = [completion(1, 10, Next::NotModified), completion(2, 20, Next::NotModified)];
        let mut engine = Notes { live: [(1, 10)].into(), ..Default::default() };
        write_batch(&mut engine, &batch, PageLimits::default(), SystemTime::now()).await.unwrap();

        assert_eq!(
            engine.attempts,
            [
                (1, Outcome::NotModified, Some("old".into()), true),
                (2, Outcome::StaleLease, Some("new".into()), false),
            ]
        );
        assert_eq!(engine.calls, ["urls", "attempts", "links"], "no host has news");
    }
}
