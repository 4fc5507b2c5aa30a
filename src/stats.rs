//! Counters shared by the crawl's tasks, and the end-of-run [`Summary`].
//!
//! The writer task updates the counters after each commit, so they count
//! only what is durable; the progress reporter and the producer read them.
//! Latency percentiles come from an HDR histogram the writer owns.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::HumanBytes;

use crate::job::DropReason;
use crate::store::StateCounts;

/// Live counters. All are monotonic except `outstanding`.
#[derive(Debug, Default)]
pub struct CrawlStats {
    /// URLs in the store (any state): the progress bar's length.
    pub known: AtomicU64,
    /// URLs in the store that are `done` or `failed`: the bar's position.
    /// Counted from the store's own reports (a completion that took effect
    /// adds one, a finished URL queued again takes one away), so that it
    /// follows the store and never passes `known`.
    pub finished: AtomicU64,
    /// URLs this run finished as `done`.
    pub done: AtomicU64,
    /// URLs this run finished as `failed`.
    pub failed: AtomicU64,
    /// Attempts this run recorded.
    pub attempts: AtomicU64,
    /// Attempts this run recorded that scheduled a retry.
    pub retries: AtomicU64,
    /// Requests this run could not make for lack of file descriptors: their
    /// URLs went back to the queue, no attempt counted.
    pub deferred: AtomicU64,
    /// Body bytes this run read (decoded).
    pub bytes: AtomicU64,
    /// URLs this run finished as `done`, by HTTP status.
    pub done_statuses: Mutex<BTreeMap<u16, u64>>,
    /// Links this run dropped, by reason (as `dropped_links` counts them).
    pub dropped_links: Mutex<BTreeMap<DropReason, u64>>,
    /// URLs claimed but not yet completed (claimed by the producer, decremented
    /// by the writer after commit). Zero with nothing queued means idle.
    pub outstanding: AtomicU64,
    /// Jobs the workers are on now (fetching, or waiting for their host's
    /// turn): at most `crawl.concurrency`. The rest of `outstanding` waits
    /// in the job channel or for the writer's commit.
    pub working: Arc<AtomicU64>,
}

impl CrawlStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Takes `n` finished URLs that went back in the queue (a recrawl, a
    /// page fetched again for its links) off `finished`. Saturating: on
    /// PostgreSQL they may include URLs another daemon finished, which this
    /// run's count never held.
    pub fn reopened(&self, n: u64) {
        if n > 0 {
            let _ = self
                .finished
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| Some(f.saturating_sub(n)));
        }
    }

    /// Adds `n` to `key`'s count in `map`.
    pub fn add<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
        *map.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += n;
    }

    /// A copy of `map`.
    pub fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
        map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Fetch latency in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What a run did, printed at its end.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The store's URLs by state at the end.
    pub counts: StateCounts,
    /// URLs this run finished, as `done` and as `failed`.
    pub done: u64,
    pub failed: u64,
    /// The `done` ones by HTTP status.
    pub done_statuses: BTreeMap<u16, u64>,
    /// Links this run dropped, by reason.
    pub dropped_links: BTreeMap<DropReason, u64>,
    pub attempts: u64,
    pub retries: u64,
    /// Requests not made for lack of file descriptors (requeued).
    pub deferred: u64,
    pub bytes: u64,
    /// Input lines read and rejected by this run.
    pub input_lines: u64,
    pub input_invalid: u64,
    /// Attempt latency percentiles, in µs (0 when nothing was fetched).
    pub latency_p50_us: u64,
    pub latency_p95_us: u64,
    pub latency_max_us: u64,
    /// The run was stopped by a signal before the frontier was empty.
    pub stopped: bool,
    /// A second signal cancelled fetches in flight (exit status 130).
    pub forced: bool,
    /// The budget that stopped the run (`crawl.max_duration`,
    /// `crawl.max_bytes`), as the summary says it: `"crawl.max_bytes (1000
    /// bytes) reached"`.
    pub budget: Option<String>,
}

impl Summary {
    /// URLs finished per second of wall time.
    pub fn pages_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { (self.done + self.failed) as f64 / secs } else { 0.0 }
    }
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let verb = if self.stopped { "stopped" } else { "finished" };
        match &self.budget {
            Some(why) => writeln!(f, "crawl {verb} after {:.1} s: {why}", self.elapsed.as_secs_f64())?,
            None => writeln!(f, "crawl {verb} after {:.1} s", self.elapsed.as_secs_f64())?,
        }
        // "done" means a final response, whatever its status: say which.
        let mut statuses = Vec::new();
        let success: u64 = self.done_statuses.range(200..300).map(|(_, n)| n).sum();
        if success > 0 {
            statuses.push(format!("{success} × 2xx"));
        }
        for (status, n) in self.done_statuses.iter().filter(|(s, _)| !(200..300).contains(*s)) {
            statuses.push(format!("{n} × {status}"));
        }
        let statuses =
            if statuses.is_empty() { String::new() } else { format!(" ({})", statuses.join(", ")) };
        writeln!(
            f,
            "  this run   {} URLs: {} done{statuses}, {} failed; {} attempts, {} retries",
            self.done + self.failed,
            self.done,
            self.failed,
            self.attempts,
            self.retries
        )?;
        // Binary prefixes, two decimals: "512 B", "1.50 KiB", "17.60 MiB".
        writeln!(f, "  speed      {:.1} pages/s, {} read", self.pages_per_second(), HumanBytes(self.bytes))?;
        writeln!(
            f,
            "  latency    p50 {}, p95 {}, max {}",
            ms(self.latency_p50_us),
            ms(self.latency_p95_us),
            ms(self.latency_max_us)
        )?;
        if self.deferred > 0 {
            writeln!(
                f,
                "  deferred   {} requests not made: out of file descriptors (raise LimitNOFILE or lower crawl.concurrency)",
                self.deferred
            )?;
        }
        if !self.dropped_links.is_empty() {
            let total: u64 = self.dropped_links.values().sum();
            let reasons: Vec<String> =
                self.dropped_links.iter().map(|(reason, n)| format!("{n} {}", reason.as_str())).collect();
            writeln!(f, "  links      {total} dropped: {} (see dropped_links)", reasons.join(", "))?;
        }
        if self.input_lines > 0 {
            writeln!(
                f,
                "  input      {} lines, {} rejected (see input_errors)",
                self.input_lines, self.input_invalid
            )?;
        }
        writeln!(
            f,
            "  database   {} URLs: {} done, {} failed, {} queued",
            c.total(),
            c.done,
            c.failed,
            c.queued + c.in_flight
        )?;
        if c.queued + c.in_flight > 0 {
            writeln!(
                f,
                "  resume     run the same command again to crawl the {} queued URLs",
                c.queued + c.in_flight
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_and_rates() {
        let summary = Summary {
            elapsed: Duration::from_secs(2),
            counts: StateCounts { done: 9, failed: 1, queued: 2, ..Default::default() },
            done: 9,
            failed: 1,
            done_statuses: [(200, 7), (204, 1), (404, 1)].into(),
            dropped_links: [(DropReason::TooManyLinks, 5), (DropReason::OutOfScope, 2)].into(),
            attempts: 12,
            retries: 2,
            deferred: 0,
            bytes: 2048,
            input_lines: 13,
            input_invalid: 1,
            latency_p50_us: 1500,
            latency_p95_us: 9000,
            latency_max_us: 12000,
            stopped: true,
            forced: false,
            budget: Some("crawl.max_bytes (2048 bytes) reached".into()),
        };
        assert_eq!(summary.pages_per_second(), 5.0);
        let text = summary.to_string();
        assert!(
            text.contains("10 URLs: 9 done (8 × 2xx, 1 × 404), 1 failed; 12 attempts, 2 retries"),
            "{text}"
        );
        assert!(
            text.contains("links      7 dropped: 2 out_of_scope, 5 too_many_links (see dropped_links)"),
            "{text}"
        );
        assert!(text.contains("p50 1.5 ms, p95 9.0 ms, max 12.0 ms"), "{text}");
        assert!(text.contains("run the same command again"), "{text}");
        assert!(
            text.starts_with("crawl stopped after 2.0 s: crawl.max_bytes (2048 bytes) reached\n"),
            "{text}"
        );
        // Sizes as indicatif's `HumanBytes` writes them: bytes whole, then
        // binary prefixes with two decimals.
        assert!(text.contains("speed      5.0 pages/s, 2.00 KiB read"), "{text}");
        for (bytes, read) in [(512, "512 B read"), (1536, "1.50 KiB read"), (3 << 20, "3.00 MiB read")] {
            let text = Summary { bytes, ..summary.clone() }.to_string();
            assert!(text.contains(read), "{text}");
        }
    }
}
