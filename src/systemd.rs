//! systemd service notifications (`sd_notify(3)`), through the `sd-notify`
//! crate: `READY=1` once the database is open and recovered (and again after
//! a `SIGHUP` reload, which `RELOADING=1` begins), `STOPPING=1` when a stop
//! begins, and `WATCHDOG=1` from the scheduling loop when the
//! unit sets `WatchdogSec=`. Without `NOTIFY_SOCKET` (not under systemd)
//! every call does nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends the service's state to systemd.
pub struct Notifier {
    /// Half the watchdog interval systemd asked for (`WATCHDOG_USEC`), if any:
    /// sd_watchdog_enabled(3) recommends pinging at half the interval.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Instant>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Self {
        let mut usec = 0;
        let watchdog_every =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        Self { watchdog_every, last_ping: Mutex::new(Instant::now()) }
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

    /// `WATCHDOG=1`, at most every half watchdog interval. Called from the
    /// scheduling loop, so a stuck loop stops the pings and systemd restarts
    /// the service.
    pub fn watchdog(&self) {
        let Some(every) = self.watchdog_every else { return };
        let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= every {
            *last = Instant::now();
            send(&[NotifyState::Watchdog]);
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
