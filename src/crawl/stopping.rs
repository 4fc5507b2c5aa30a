//! What a stop starts while the pipeline drains, as side tasks: systemd
//! hears `STOPPING=1`, and the grace period runs out (then fetches in flight
//! are dropped and the store stops waiting for locks).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::shutdown::Shutdown;
use crate::store::Backend;
use crate::systemd::Notifier;

/// Tells systemd `STOPPING=1` once `stop` is cancelled, unless `done` comes
/// first.
pub(super) async fn notify_stopping(
    notifier: Arc<Notifier>,
    stop: CancellationToken,
    done: CancellationToken,
) {
    tokio::select! {
        _ = done.cancelled() => {}
        _ = stop.cancelled() => notifier.stopping(),
    }
}

/// After the first stop, fetches in flight get `grace`, then are dropped
/// (unless a second signal dropped them first); from then on the store stops
/// waiting for a lock another process holds, so that no lock can keep the
/// process from exiting. Ends early with `done`.
pub(super) async fn grace_timer(
    shutdown: Shutdown,
    grace: std::time::Duration,
    store: Arc<Backend>,
    done: CancellationToken,
) {
    tokio::select! {
        _ = done.cancelled() => return,
        _ = shutdown.stop_token().cancelled() => {}
    }
    tokio::select! {
        _ = done.cancelled() => return,
        _ = shutdown.abort_token().cancelled() => {}
        _ = tokio::time::sleep(grace) => shutdown.abort(false),
    }
    store.give_up_waiting();
}
