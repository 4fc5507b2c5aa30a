//! Deciding to stop, and telling the tasks: two cancellation tokens.
//!
//! `stop` (first SIGINT/SIGTERM): the producer stops claiming, workers take no
//! new job, fetches in flight may finish within the grace period. `abort`
//! (second signal, or the grace period running out): fetches in flight are
//! dropped. Either way the writer commits everything that finished and the
//! URLs not finished go back to the frontier; waiting for the tasks is the
//! crawl's job (`crawl.rs`), not this module's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// The process-wide stop and abort signals. Clones share state.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled on the first request to stop.
    stop: CancellationToken,
    /// Cancelled to drop fetches in flight at once.
    abort: CancellationToken,
    /// Set when a second signal forced the abort (exit status 130).
    forced: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a graceful stop (what the first signal does).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Drops fetches in flight now. `forced` marks it as the operator's doing
    /// (a second signal) rather than the grace period running out.
    pub fn abort(&self, forced: bool) {
        if forced {
            self.forced.store(true, Ordering::SeqCst);
        }
        self.stop.cancel();
        self.abort.cancel();
    }

    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn abort_token(&self) -> &CancellationToken {
        &self.abort
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn is_forced(&self) -> bool {
        self.forced.load(Ordering::SeqCst)
    }

    /// Spawns the task that turns SIGINT/SIGTERM into [`stop`](Self::stop)
    /// then [`abort`](Self::abort). Errors: the signal handlers could not be
    /// registered.
    pub fn listen_for_signals(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let shutdown = self.clone();
        Ok(tokio::spawn(async move {
            let mut received = 0;
            while let Some(signal) = signals.next().await {
                received += 1;
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                if received == 1 {
                    tracing::info!(
                        "{name}: stopping; fetches in flight may finish within the grace period (again to abort)"
                    );
                    shutdown.stop();
                } else {
                    tracing::warn!("{name} again: cancelling fetches in flight");
                    shutdown.abort(true);
                    break;
                }
            }
        }))
    }
}
