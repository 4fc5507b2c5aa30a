//! The clocks the crawl reads as numbers, in one place.
//!
//! Two kinds, not to be mixed: the wall clock in Unix ms ([`now_ms`],
//! [`unix_ms`]), for times stored in the database, which outlive the process
//! (not-before times, leases, recrawl times); and a monotonic count of ms
//! since the process first read it ([`monotonic_ms`]), for ages inside one
//! process, which a wall clock stepped back or forward must not distort.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The wall-clock time now, in Unix ms.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `t` in Unix ms; 0 for a time before 1970.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// When [`monotonic_ms`] counts from: its first call.
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Ms on the monotonic clock since the process first called this: for
/// atomics that hold an age (an `Instant` does not fit in one).
pub fn monotonic_ms() -> i64 {
    STARTED.elapsed().as_millis() as i64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unix_ms_counts_from_1970_and_stops_at_it() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn the_monotonic_count_does_not_go_back() {
        let first = monotonic_ms();
        assert!(first >= 0 && monotonic_ms() >= first);
    }
}
