//! systemd service notifications (`sd_notify(3)`), through the `sd-notify`
//! crate: `READY=1` once the database is open and recovered (and again after
//! a `SIGHUP` reload, which `RELOADING=1` begins), `STOPPING=1` when a stop
//! begins, and `WATCHDOG=1` when the unit sets `WatchdogSec=`, but only
//! while the pipeline is alive ([`watchdog`]), so that systemd restarts a
//! service that stopped making progress. Without `NOTIFY_SOCKET` (not under
//! systemd) every call does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::clock::monotonic_ms;

/// Sends the service's state to systemd.
pub struct Notifier {
    /// Half the watchdog interval systemd asked for (`WATCHDOG_USEC`), if any:
    /// sd_watchdog_enabled(3) recommends pinging at half the interval.
    watchdog_every: Option<Duration>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Self {
        let watchdog_every = watchdog_usec(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
        .map(|usec| Duration::from_micros(usec / 2));
        Self { watchdog_every }
    }

    /// `READY=1`: start-up is finished (database open, recovery done).
    pub fn ready(&self) {
        send(&[NotifyState::Ready, NotifyState::Status("crawling")]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (which systemd 253+ requires with
    /// it, sd_notify(3)): a `SIGHUP` reload has begun. [`ready`](Self::ready)
    /// ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => {
                send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")])
            }
            Err(e) => tracing::warn!("cannot read the monotonic clock for systemd: {e}"),
        }
    }

    /// `STOPPING=1`: a graceful stop has begun.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing fetches in flight")]);
    }

    /// How often to ping the watchdog (half the interval systemd asked for),
    /// or `None` when the unit sets no `WatchdogSec=`.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }
}

/// The watchdog interval in µs, as sd_watchdog_enabled(3) reads it: a
/// positive `WATCHDOG_USEC`, and `WATCHDOG_PID` naming this process *if it is
/// set* (the `sd-notify` crate's `watchdog_enabled` also refuses an unset
/// one, which systemd itself accepts).
fn watchdog_usec(usec: Option<&str>, pid: Option<&str>) -> Option<u64> {
    let usec = usec?.parse::<u64>().ok().filter(|&usec| usec > 0)?;
    match pid {
        None => Some(usec),
        Some(pid) => (pid.parse::<u32>().ok()? == std::process::id()).then_some(usec),
    }
}

/// A loop's proof of life for [`watchdog`]: the loop calls
/// [`beat`](Heartbeat::beat) each time round, including while it waits idle
/// by design, so a beat that grows old means the loop is stuck.
#[derive(Debug)]
pub struct Heartbeat {
    /// The loop's name, for the log line when it stalls.
    name: &'static str,
    /// When it last beat, in [`monotonic_ms`].
    last_ms: AtomicI64,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new(name: &'static str) -> Self {
        let beat = Self { name, last_ms: AtomicI64::new(0) };
        beat.beat();
        beat
    }

    /// Records that the loop is alive now.
    pub fn beat(&self) {
        self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long ago it last beat.
    pub fn age(&self) -> Duration {
        Duration::from_millis((monotonic_ms() - self.last_ms.load(Ordering::Relaxed)).max(0) as u64)
    }
}

/// The longest a heartbeat may be silent before the pipeline counts as
/// stalled, whatever the watchdog interval: the loops beat at least every
/// second when idle, and a commit of a large batch may take a few.
const MIN_STALE_AFTER: Duration = Duration::from_secs(5);

/// Pings systemd's watchdog every half interval while the pipeline is
/// alive, until `done`: every loop in `beats` beat recently, or `excused`
/// says the pause has a known, reported cause that a restart would not cure
/// (writes waiting out another process's lock, or the database away within
/// `store.outage_grace`, which the log and `/healthz` report; not a write of
/// trawler's own that does not return, which a restart may cure). A stuck
/// loop stops the pings, and systemd restarts the service (`WatchdogSec=`
/// in the unit). Does nothing without a watchdog.
pub async fn watchdog(
    notifier: Arc<Notifier>,
    beats: Vec<Arc<Heartbeat>>,
    excused: impl Fn() -> bool,
    done: CancellationToken,
) {
    let Some(every) = notifier.watchdog_every() else { return };
    let stale_after = every.max(MIN_STALE_AFTER);
    // The first WATCHDOG=1 a period after start: the service spawns this
    // task just before it reports READY=1, which should come first.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        match stalled_loop(&beats, stale_after, excused()) {
            None => {
                stalled = false;
                send(&[NotifyState::Watchdog]);
            }
            Some(beat) if !stalled => {
                stalled = true;
                tracing::error!(
                    "the {} loop has not run for {} s: no more WATCHDOG=1, so systemd restarts the service",
                    beat.name,
                    beat.age().as_secs()
                );
            }
            Some(_) => {}
        }
    }
}

/// The first of `beats` older than `stale_after`, unless `excused`.
fn stalled_loop(beats: &[Arc<Heartbeat>], stale_after: Duration, excused: bool) -> Option<&Heartbeat> {
    if excused {
        return None;
    }
    beats.iter().map(|b| &**b).find(|b| b.age() > stale_after)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_interval_is_read_as_sd_watchdog_enabled_reads_it() {
        let me = std::process::id().to_string();
        assert_eq!(watchdog_usec(Some("2000000"), None), Some(2_000_000));
        assert_eq!(watchdog_usec(Some("2000000"), Some(&me)), Some(2_000_000));
        assert_eq!(watchdog_usec(Some("2000000"), Some("1")), None, "another process's watchdog");
        assert_eq!(watchdog_usec(Some("0"), None), None);
        assert_eq!(watchdog_usec(Some("soon"), None), None);
        assert_eq!(watchdog_usec(None, Some(&me)), None);
    }

    #[test]
    fn a_silent_loop_stalls_the_pipeline_unless_excused() {
        let (producer, writer) = (Arc::new(Heartbeat::new("producer")), Arc::new(Heartbeat::new("writer")));
        let beats = [producer.clone(), writer.clone()];
        assert!(stalled_loop(&beats, Duration::from_secs(5), false).is_none(), "both just beat");
        writer.last_ms.store(monotonic_ms() - 60_000, Ordering::Relaxed);
        assert_eq!(writer.age().as_secs(), 60);
        assert_eq!(stalled_loop(&beats, Duration::from_secs(5), false).map(|b| b.name), Some("writer"));
        assert!(stalled_loop(&beats, Duration::from_secs(5), true).is_none(), "a known cause excuses it");
        writer.beat();
        assert!(stalled_loop(&beats, Duration::from_secs(5), false).is_none());
    }
}
