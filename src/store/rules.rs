//! What a batch of completions means for the rows it touches, whatever the
//! engine: the values each engine's statements write, decided once here so
//! that SQLite and PostgreSQL cannot drift apart. The engines only turn
//! these into SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Completion, DropReason, NewUrl, Next, UrlState};

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
        UrlChange {
            state: self.next.state(),
            attempts,
            not_before_ms,
            finished_ms,
            recrawl_after_ms: self.recrawl_after.map(duration_ms),
        }
    }

    /// Whether the completion recorded an attempt (a requeue did not).
    pub(crate) fn is_attempt(&self) -> bool {
        !matches!(self.next, Next::Requeue(_))
    }

    /// Whether the page brought links to record.
    pub(crate) fn has_links(&self) -> bool {
        !self.links.is_empty() || !self.dropped_links.is_empty()
    }
}

/// Per host touched by `completions` that needs it: `(host, work_at_ms,
/// backoff_until_ms)`, the earliest retry and the latest host backoff, to
/// be merged with the row's (`min` and `max`). Folded per host, as an
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
        entry.1 = entry.1.max(backoff_until);
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

/// The dropped-link rows of `pages` (`(url_id, reason, n)`) with the
/// page-limit drops `capped` added, and their totals by reason.
pub(crate) fn dropped_links(
    pages: &[&Completion],
    mut capped: Vec<DroppedRow>,
) -> (Vec<DroppedRow>, BTreeMap<DropReason, u64>) {
    let mut dropped: Vec<DroppedRow> = pages
        .iter()
        .flat_map(|c| c.dropped_links.iter().map(|(reason, n)| (c.url_id, *reason, to_i64(*n))))
        .collect();
    dropped.append(&mut capped);
    let mut by_reason = BTreeMap::new();
    for (_, reason, n) in &dropped {
        *by_reason.entry(*reason).or_default() += *n as u64;
    }
    (dropped, by_reason)
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
pub(crate) fn refetch_when_lowered(before: i64, depth: i64, max_depth: u32, state: &str) -> bool {
    let max_depth = i64::from(max_depth);
    before >= max_depth && depth < max_depth && (state == "done" || state == "in_flight")
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T03:57:54.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `t` in Unix ms (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
