//! Progress while a crawl runs: an `indicatif` bar on a terminal, otherwise a
//! log line every [`LOG_EVERY`] and one at the end. Also the `tracing` writer
//! that keeps log lines from tearing the bar.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::stats::CrawlStats;

/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// The bar being drawn, if any, so that log lines can be printed above it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Reports progress until `done` is cancelled (a progress line then, when
/// there is no bar). Reads only the atomic counters.
pub async fn report(stats: Arc<CrawlStats>, done: CancellationToken) {
    let get = CrawlStats::get;
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(get(&stats.known));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} URLs, {rate}, ETA {eta} {msg}",
            )
            .expect("valid template")
            .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} pages/s", state.per_sec());
            }),
        );
        *ACTIVE_BAR.lock().expect("bar lock") = Some(bar.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {}
            }
            bar.set_length(get(&stats.known));
            bar.set_position(get(&stats.finished));
            bar.set_message(format!("({} in flight, {} failed)", get(&stats.working), get(&stats.failed)));
        }
        *ACTIVE_BAR.lock().expect("bar lock") = None;
        bar.finish_and_clear();
    } else {
        let start = Instant::now();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + LOG_EVERY, LOG_EVERY);
        let (mut last, mut last_at) = (get(&stats.done) + get(&stats.failed), Instant::now());
        loop {
            let end = tokio::select! {
                _ = done.cancelled() => true,
                _ = tick.tick() => false,
            };
            // One line more at the end: where the run left the frontier,
            // as a log reader (or a dashboard fed by the log) last sees it.
            let this_run = get(&stats.done) + get(&stats.failed);
            let secs = last_at.elapsed().as_secs_f64();
            tracing::info!(
                finished = get(&stats.finished),
                total = get(&stats.known),
                failed_this_run = get(&stats.failed),
                in_flight = get(&stats.working),
                claimed = get(&stats.outstanding),
                pages_per_s = if secs > 0.0 { (this_run - last) as f64 / secs } else { 0.0 },
                elapsed_s = start.elapsed().as_secs(),
                "progress"
            );
            if end {
                break;
            }
            (last, last_at) = (this_run, Instant::now());
        }
    }
}

/// A `tracing_subscriber` writer for stderr that suspends the progress bar
/// while a log line is written, so lines and bar do not interleave.
#[derive(Clone, Copy, Default)]
pub struct BarAwareStderr;

/// One log event's bytes, written out when dropped.
pub struct BarAwareLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BarAwareStderr {
    type Writer = BarAwareLine;

    fn make_writer(&'a self) -> Self::Writer {
        BarAwareLine(Vec::with_capacity(256))
    }
}

impl Write for BarAwareLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarAwareLine {
    fn drop(&mut self) {
        let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
