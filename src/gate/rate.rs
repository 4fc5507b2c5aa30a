//! The global request-rate limit (`crawl.rate`), one of the gate's checks:
//! a `governor` limiter on request starts, replaceable by a reload.

use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;

/// The global request-rate limit, `None` for none. A reload replaces it with
/// [`RateLimit::set`]; a worker waiting on the old limiter stops waiting and
/// asks the new one, so lowering a very slow rate takes effect at once.
pub struct RateLimit(watch::Sender<Option<Arc<DefaultDirectRateLimiter>>>);

impl RateLimit {
    /// A limit of `rate` request starts per second, or none.
    pub fn new(rate: Option<f64>) -> Self {
        Self(watch::Sender::new(rate.map(|r| Arc::new(rate_limiter(r)))))
    }

    /// Replaces the limit (a fresh limiter: the new rate starts from a full
    /// burst).
    pub fn set(&self, rate: Option<f64>) {
        self.0.send_replace(rate.map(|r| Arc::new(rate_limiter(r))));
    }

    /// Waits until a request may start under the limit in force. Cancel safe.
    pub async fn until_ready(&self) {
        let mut changes = self.0.subscribe();
        loop {
            let Some(limiter) = changes.borrow_and_update().clone() else { return };
            tokio::select! {
                _ = limiter.until_ready() => return,
                _ = changes.changed() => {}
            }
        }
    }
}

/// A `governor` limiter allowing `rate` request starts per second. The burst
/// is 10 ms worth of requests (at least one), so a high rate is not throttled
/// by timer granularity while a low one stays evenly spaced.
fn rate_limiter(rate: f64) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let burst = ((rate / 100.0).ceil() as u32).max(1);
    let quota = Quota::with_period(period)
        .expect("period is above zero")
        .allow_burst(std::num::NonZeroU32::new(burst).expect("burst is at least one"));
    RateLimiter::direct(quota)
}
