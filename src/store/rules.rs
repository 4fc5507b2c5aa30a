//! What a batch of completions means for the rows it touches, whatever the
//! engine: the values each engine's statements write, decided once here so
//! that SQLite and PostgreSQL cannot drift apart. The engines only turn
//! these into SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::job::{Completion, DropReason, NewUrl, Next, UrlState, Validators};

/// "No queued URL" in `hosts.work_at_ms`.
pub(crate) const NEVER: i64 = i64::MAX;

/// A URL row's values after its completion.
pub(crate) struct UrlChange {
    pub state: UrlState,
    /// `urls.attempts - urls.attempts_before`: the attempts of this visit.
    pub attempts: u32,
    /// When it is due again (Unix ms); 0 once it is finished.
    pub not_before_ms: i64,
    /// When it finished (Unix ms), if it did; a retry keeps the last time.
    pub finished_ms: Option<i64>,
    /// Added to `finished_ms` to give `recrawl_at_ms`.
    pub recrawl_after_ms: Option<i64>,
    /// The visit's content, for change detection: set only when done.
    pub content: Option<ContentChange>,
}

/// What a finished visit sets in its URL's row (schema version 6).
#[derive(Default)]
pub(crate) struct ContentChange {
    /// `urls.etag` and `urls.last_modified` from now on.
    pub validators: Validators,
    /// `urls.body_sha256` from now on (the one it had, after a 304).
    pub body_sha256: Option<String>,
    /// `urls.changed_ms` from now on, when the content changed.
    pub changed_ms: Option<i64>,
    /// `urls.recrawl_interval_ms` from now on, with adaptive revisit.
    pub recrawl_interval_ms: Option<i64>,
}

impl Completion {
    /// The URL row's values once this completion is applied at `now_ms`.
    pub(crate) fn url_change(&self, now_ms: i64) -> UrlChange {
        let (not_before_ms, finished_ms) = match self.next.due_at() {
            None => (0, Some(now_ms)),
            Some(ms) => (ms, None),
        };
        // A requeue leaves the count where it was before this claim.
        let attempts = match self.next {
            Next::Requeue(_) => self.attempt - 1,
            _ => self.attempt,
        };
        let mut recrawl_after_ms = self.recrawl_after.map(duration_ms);
        let content = self.next.is_done().then(|| {
            let change = self.content_change(now_ms);
            if change.recrawl_interval_ms.is_some() {
                recrawl_after_ms = change.recrawl_interval_ms;
            }
            change
        });
        UrlChange {
            state: self.next.state(),
            attempts,
            not_before_ms,
            finished_ms,
            recrawl_after_ms,
            content,
        }
    }

    /// Whether this visit found content other than the URL had: a new body
    /// whose SHA-256 differs (a first visit's always does); not a 304.
    pub(crate) fn changed(&self) -> bool {
        self.next == Next::Done
            && self.record.body_sha256.is_some()
            && self.record.body_sha256 != self.revisit.body_sha256
    }

    fn content_change(&self, now_ms: i64) -> ContentChange {
        let r = &self.record;
        let old = &self.revisit;
        let validators = match self.next {
            // RFC 9111 §4.3.4: a 304's validators replace the stored ones
            // it sends; the others stay.
            Next::NotModified => Validators {
                etag: r.validators.etag.clone().or_else(|| old.validators.etag.clone()),
                last_modified: r
                    .validators
                    .last_modified
                    .clone()
                    .or_else(|| old.validators.last_modified.clone()),
            },
            // After redirects they are another URL's, and not sent next time.
            _ if !r.redirect_chain.is_empty() => Validators::default(),
            _ => r.validators.clone(),
        };
        let changed = self.changed();
        // Adaptive revisit adjusts an interval once there is a visit to
        // compare with; the first one starts at the host's recrawl_after.
        let recrawl_interval_ms = match (self.adaptive, self.recrawl_after) {
            (Some(adaptive), Some(base)) => {
                let interval =
                    old.recrawl_interval_ms.map_or(base, |ms| Duration::from_millis(ms.max(0) as u64));
                let first = old.body_sha256.is_none() && self.next == Next::Done;
                let next = match first {
                    // Within the bounds from the first visit on, as later ones are.
                    true => base.clamp(adaptive.min, adaptive.max),
                    false => adaptive.next(interval, changed),
                };
                Some(duration_ms(next))
            }
            _ => None,
        };
        ContentChange {
            validators,
            body_sha256: if self.next == Next::Done {
                r.body_sha256.clone()
            } else {
                old.body_sha256.clone()
            },
            changed_ms: changed.then_some(now_ms),
            recrawl_interval_ms,
        }
    }

    /// Whether the page brought links to record.
    pub(crate) fn has_links(&self) -> bool {
        !self.links.is_empty() || !self.dropped_links.is_empty()
    }
}

/// Per host touched by `completions` that needs it: `(host, work_at_ms,
/// backoff_until_ms)`, the earliest retry, to be merged with the row's
/// (`min`), and the host's backoff end as the last completion that changed
/// it left it, to replace the row's (0: unchanged). Folded per host, as an
/// `UPDATE … FROM` applies one joined row per target row; sorted by host,
/// so concurrent writers lock hosts in one order.
pub(crate) fn host_changes(completions: &[Completion]) -> Vec<(&str, i64, i64)> {
    let mut per_host: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for c in completions {
        let retry_at = c.next.due_at().unwrap_or(NEVER);
        let backoff_until = c.host_backoff_until_ms.unwrap_or(0);
        if retry_at == NEVER && backoff_until == 0 {
            continue;
        }
        let entry = per_host.entry(&c.host).or_insert((NEVER, 0));
        entry.0 = entry.0.min(retry_at);
        if backoff_until != 0 {
            entry.1 = backoff_until;
        }
    }
    per_host.into_iter().map(|(host, (work_at, backoff_until))| (host, work_at, backoff_until)).collect()
}

/// The links of `pages` to enqueue, each at its shortest known depth: a
/// page's links are one deeper than the page is now (`page_depths`, by URL
/// id), which may be less than when it was claimed.
pub(crate) fn discovered(pages: &[&Completion], page_depths: &BTreeMap<i64, u32>) -> Vec<NewUrl> {
    pages
        .iter()
        .flat_map(|c| {
            let depth = page_depths.get(&c.url_id).map(|d| d + 1);
            c.links
                .iter()
                .map(move |l| NewUrl { depth: depth.map_or(l.depth, |d| d.min(l.depth)), ..l.clone() })
        })
        .collect()
}

/// A dropped-link row: `(url_id of the page, reason, links)`.
pub(crate) type DroppedRow = (i64, DropReason, i64);

/// Splits discovered `links` into those that may be inserted and the
/// page-limit drops, as `(found_on, reason, n)` rows. A link to a URL
/// already stored (`known`) is always admitted (it adds an edge, not a URL),
/// so a cap never thins the link graph; new URLs are admitted in order while
/// the total (`total_room` more URLs) and their host (`host_room`, for the
/// hosts that have a cap) have room.
pub(crate) fn admit(
    links: &[&NewUrl],
    known: &BTreeSet<String>,
    mut total_room: Option<u64>,
    mut host_room: BTreeMap<String, u64>,
) -> (Vec<NewUrl>, Vec<DroppedRow>) {
    let mut admitted = Vec::with_capacity(links.len());
    let mut dropped: BTreeMap<(i64, DropReason), i64> = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for link in links {
        if known.contains(&link.url) || taken.contains(link.url.as_str()) {
            admitted.push((*link).clone());
            continue;
        }
        let found_on = link.found_on.unwrap_or_default();
        if total_room == Some(0) {
            *dropped.entry((found_on, DropReason::MaxPages)).or_default() += 1;
            continue;
        }
        if let Some(room) = host_room.get_mut(&link.host) {
            if *room == 0 {
                *dropped.entry((found_on, DropReason::MaxPagesPerHost)).or_default() += 1;
                continue;
            }
            *room -= 1;
        }
        if let Some(room) = total_room.as_mut() {
            *room -= 1;
        }
        taken.insert(link.url.as_str());
        admitted.push((*link).clone());
    }
    (admitted, dropped.into_iter().map(|((url_id, reason), n)| (url_id, reason, n)).collect())
}

/// The dropped-link rows of `pages` with the page-limit drops `capped`
/// added, one row per (page, reason) as `(url_id, reason, n)` (an upsert
/// may touch a row once per statement), and their totals by reason.
pub(crate) fn dropped_links(
    pages: &[&Completion],
    capped: Vec<DroppedRow>,
) -> (Vec<DroppedRow>, BTreeMap<DropReason, u64>) {
    let found =
        pages.iter().flat_map(|c| c.dropped_links.iter().map(|(reason, n)| (c.url_id, *reason, to_i64(*n))));
    let mut folded: BTreeMap<(i64, DropReason), i64> = BTreeMap::new();
    let mut by_reason = BTreeMap::new();
    for (url_id, reason, n) in found.chain(capped) {
        *folded.entry((url_id, reason)).or_default() += n;
        *by_reason.entry(reason).or_default() += n as u64;
    }
    (folded.into_iter().map(|((url_id, reason), n)| (url_id, reason, n)).collect(), by_reason)
}

/// Per URL among `links`, the shortest: `(url, depth, found_on)`, the
/// candidates for lowering a stored URL's depth.
pub(crate) fn shortest_paths(links: &[NewUrl]) -> Vec<(&str, u32, Option<i64>)> {
    let mut shortest: BTreeMap<&str, (u32, Option<i64>)> = BTreeMap::new();
    for link in links {
        let entry = shortest.entry(link.url.as_str()).or_insert((link.depth, link.found_on));
        if link.depth < entry.0 {
            *entry = (link.depth, link.found_on);
        }
    }
    shortest.into_iter().map(|(u, (d, f))| (u, d, f)).collect()
}

/// Whether a URL whose depth was lowered from `before` to `depth` must be
/// fetched again: it was at `max_depth` or deeper, so its page was not
/// parsed, is now above it, and was fetched or is being fetched (`state`).
pub(crate) fn refetch_when_lowered(before: u32, depth: u32, max_depth: u32, state: UrlState) -> bool {
    before >= max_depth && depth < max_depth && matches!(state, UrlState::Done | UrlState::InFlight)
}

/// The state a stored `urls.state` value names ([`UrlState::from_name`]);
/// the schema's CHECK allows no other, so an unknown one reads as `failed`.
pub(crate) fn stored_state(name: &str) -> UrlState {
    UrlState::from_name(name).unwrap_or(UrlState::Failed)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T03:57:54.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A duration in ms; an absurd one (over 146 million years) saturates far
/// from overflowing when added to a time.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2).min(i64::MAX / 2)
}

/// Unix ms as RFC 3339 UTC text.
pub(crate) fn rfc3339_from_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{AdaptiveRecrawl, AttemptRecord, Revisit};

    fn visit(
        next: Next,
        sha: Option<&str>,
        revisit: Revisit,
        adaptive: Option<AdaptiveRecrawl>,
    ) -> Completion {
        Completion {
            url_id: 1,
            lease: 1,
            host: "a.test".into(),
            host_backoff_changed: false,
            host_backoff_until_ms: None,
            attempt: 1,
            record: AttemptRecord {
                body_sha256: sha.map(str::to_owned),
                validators: Validators { etag: Some("\"new\"".into()), last_modified: None },
                ..Default::default()
            },
            next,
            links: Vec::new(),
            dropped_links: Vec::new(),
            recrawl_after: Some(Duration::from_secs(100)),
            revisit,
            adaptive,
        }
    }

    fn seen(sha: &str, interval_ms: Option<i64>) -> Revisit {
        Revisit {
            validators: Validators { etag: Some("\"old\"".into()), last_modified: Some("Mon".into()) },
            body_sha256: Some(sha.into()),
            recrawl_interval_ms: interval_ms,
        }
    }

    const ADAPTIVE: AdaptiveRecrawl =
        AdaptiveRecrawl { min: Duration::from_secs(10), max: Duration::from_secs(1000) };

    #[test]
    fn a_304_keeps_the_content_and_merges_the_validators() {
        let change = visit(Next::NotModified, None, seen("aa", None), None).url_change(5);
        assert_eq!(change.state, UrlState::Done);
        let content = change.content.expect("a done visit sets content");
        assert_eq!(content.body_sha256.as_deref(), Some("aa"));
        assert_eq!(content.changed_ms, None);
        assert_eq!(content.validators.etag.as_deref(), Some("\"new\""), "the 304's ETag replaces the old");
        assert_eq!(content.validators.last_modified.as_deref(), Some("Mon"), "the others stay");
    }

    #[test]
    fn a_new_body_is_a_change_and_the_same_body_is_not() {
        let changed = visit(Next::Done, Some("bb"), seen("aa", None), None).url_change(5).content.unwrap();
        assert_eq!((changed.changed_ms, changed.body_sha256.as_deref()), (Some(5), Some("bb")));
        let same = visit(Next::Done, Some("aa"), seen("aa", None), None).url_change(5).content.unwrap();
        assert_eq!(same.changed_ms, None);
        let first = visit(Next::Done, Some("aa"), Revisit::default(), None).url_change(5).content.unwrap();
        assert_eq!(first.changed_ms, Some(5));
        assert!(visit(Next::Failed, None, seen("aa", None), None).url_change(5).content.is_none());
    }

    #[test]
    fn validators_after_redirects_are_not_kept() {
        let mut redirected = visit(Next::Done, Some("bb"), seen("aa", None), None);
        redirected.record.redirect_chain.push("http://a.test/old".into());
        assert!(redirected.url_change(5).content.unwrap().validators.is_empty());
    }

    #[test]
    fn adaptive_revisit_grows_unchanged_and_shrinks_changed_intervals_within_bounds() {
        let interval = |next, sha, revisit| {
            let change = visit(next, sha, revisit, Some(ADAPTIVE)).url_change(5);
            (change.content.unwrap().recrawl_interval_ms, change.recrawl_after_ms)
        };
        assert_eq!(interval(Next::Done, Some("aa"), Revisit::default()), (Some(100_000), Some(100_000)));
        assert_eq!(interval(Next::NotModified, None, seen("aa", None)), (Some(140_000), Some(140_000)));
        assert_eq!(
            interval(Next::Done, Some("aa"), seen("aa", Some(200_000))),
            (Some(280_000), Some(280_000))
        );
        assert_eq!(
            interval(Next::Done, Some("bb"), seen("aa", Some(200_000))),
            (Some(160_000), Some(160_000))
        );
        assert_eq!(interval(Next::Done, Some("aa"), seen("aa", Some(900_000))).0, Some(1_000_000), "max");
        assert_eq!(interval(Next::Done, Some("bb"), seen("aa", Some(11_000))).0, Some(10_000), "min");
        // The first visit's interval, the host's recrawl_after, is held to
        // the bounds too.
        let mut first = visit(Next::Done, Some("aa"), Revisit::default(), Some(ADAPTIVE));
        first.recrawl_after = Some(Duration::from_secs(5));
        assert_eq!(first.url_change(5).recrawl_after_ms, Some(10_000), "min, from the first visit");
        first.recrawl_after = Some(Duration::from_secs(5000));
        assert_eq!(first.url_change(5).recrawl_after_ms, Some(1_000_000), "max, from the first visit");
        // Off: the host's recrawl_after, and no interval of the URL's own.
        let off = visit(Next::NotModified, None, seen("aa", Some(200_000)), None).url_change(5);
        assert_eq!((off.content.unwrap().recrawl_interval_ms, off.recrawl_after_ms), (None, Some(100_000)));
    }

    #[test]
    fn the_last_backoff_change_of_a_batch_is_the_hosts() {
        let with = |next, backoff_until_ms: Option<i64>| Completion {
            host_backoff_changed: backoff_until_ms.is_some(),
            host_backoff_until_ms: backoff_until_ms,
            ..visit(next, None, Revisit::default(), None)
        };
        // A backoff began, then a success cut it short, then an answer that
        // changed nothing: the cut stands, and the earliest retry.
        let batch = [
            with(Next::RetryAt(500), Some(9_000)),
            with(Next::Done, Some(1_200)),
            with(Next::RetryAt(700), None),
        ];
        assert_eq!(host_changes(&batch), [("a.test", 500, 1_200)]);
        // Nothing to change: no row.
        assert_eq!(host_changes(&[with(Next::Done, None)]), []);
    }

    #[test]
    fn dropped_links_are_one_row_per_page_and_reason() {
        let mut page = visit(Next::Done, None, Revisit::default(), None);
        page.dropped_links = vec![(DropReason::Depth, 2), (DropReason::Nofollow, 1)];
        let capped = vec![(1, DropReason::Depth, 3), (1, DropReason::MaxPages, 4)];
        let (rows, by_reason) = dropped_links(&[&page], capped);
        let rows: BTreeSet<DroppedRow> = rows.into_iter().collect();
        let expected =
            [(1, DropReason::Nofollow, 1), (1, DropReason::Depth, 5), (1, DropReason::MaxPages, 4)];
        assert_eq!(rows, expected.into());
        assert_eq!(
            by_reason,
            [(DropReason::Nofollow, 1), (DropReason::Depth, 5), (DropReason::MaxPages, 4)].into()
        );
    }
}
