//! The retry decision: a pure function of one attempt's outcome, its number
//! and the [`RetryConfig`]. No I/O, no clock, no randomness of its own (the
//! caller passes the jitter), so every rule is tested below.

use std::time::Duration;

use crate::config::RetryConfig;
use crate::fetch::Fetched;
use crate::job::ErrorKind;

/// What happens to a URL after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A final HTTP response (any status not listed in [`is_retryable_status`]).
    Done,
    /// Try again after this delay.
    Retry(Duration),
    /// A non-transient error, or a transient one with no attempts left.
    Failed,
}

/// HTTP statuses worth another attempt: 408 Request Timeout, 429 Too Many
/// Requests, and the 5xx statuses that signal a temporary condition (RFC 9110
/// §15.6: 500, 502 Bad Gateway, 503 Service Unavailable, 504 Gateway Timeout).
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Decides after attempt number `attempt` (1 = first) that got `status`
/// and/or failed with `error`. `retry_after` is the server's `Retry-After`,
/// honoured (capped at `retry_after_max`) on 429 and 503, the statuses
/// RFC 9110 §10.2.3 and RFC 6585 §4 give it to. `jitter` is uniform in [0, 1).
pub fn decide(
    config: &RetryConfig,
    attempt: u32,
    status: Option<u16>,
    error: Option<ErrorKind>,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Decision {
    let transient = match (error, status) {
        (Some(kind), _) => kind.is_transient(),
        (None, Some(status)) => is_retryable_status(status),
        (None, None) => false,
    };
    if !transient {
        return if error.is_some() { Decision::Failed } else { Decision::Done };
    }
    if attempt >= config.max_attempts.get() {
        return Decision::Failed;
    }
    let server_asked = match (error, status, retry_after) {
        (None, Some(429 | 503), Some(after)) => Some(after.min(config.retry_after_max)),
        // Not before the host's robots.txt is due to be fetched again.
        (Some(ErrorKind::RobotsUnreachable), _, Some(after)) => {
            Some(after.max(backoff(config, attempt, jitter)))
        }
        _ => None,
    };
    Decision::Retry(server_asked.unwrap_or_else(|| backoff(config, attempt, jitter)))
}

/// Attempts in all at a host name that does not exist (an NXDOMAIN answer):
/// the first and one retry, in case a resolver erred or the name was just
/// created. A server failure (SERVFAIL) or no answer keeps the usual
/// retries, as it says nothing of the name.
pub const NXDOMAIN_ATTEMPTS: u32 = 2;

/// [`decide`] for what attempt number `attempt` fetched, with
/// [`NXDOMAIN_ATTEMPTS`] for a name that does not exist.
pub fn decide_fetched(config: &RetryConfig, attempt: u32, fetched: &Fetched, jitter: f64) -> Decision {
    if fetched.name_not_found && attempt >= NXDOMAIN_ATTEMPTS {
        return Decision::Failed;
    }
    let record = &fetched.record;
    decide(config, attempt, record.http_status, fetched.error, fetched.retry_after, jitter)
}

/// Exponential backoff with "equal jitter" (AWS Architecture Blog, "Exponential
/// Backoff And Jitter", 2015): the delay before retry `n` is
/// `d = min(backoff_max, backoff_base * 2^(n-1))`, then uniformly in `[d/2, d)`.
/// Half of `d` is guaranteed, so a struggling server always gets a pause, and
/// the other half spreads retries that failed together.
pub fn backoff(config: &RetryConfig, attempt: u32, jitter: f64) -> Duration {
    exponential(config.backoff_base, config.backoff_max, attempt, jitter)
}

/// `min(max, base * 2^(n-1))`, then equal jitter: uniform in `[d/2, d)` for
/// `jitter` uniform in [0, 1). Shared by URL retries and host backoff.
pub fn exponential(base: Duration, max: Duration, n: u32, jitter: f64) -> Duration {
    let doublings = n.saturating_sub(1).min(30);
    let exp = base.saturating_mul(1 << doublings).min(max);
    let half = exp / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: NonZeroU32::new(4).unwrap(),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn final_responses_are_done_at_once() {
        for status in [200, 204, 301, 404, 410, 451, 501] {
            assert_eq!(decide(&config(), 1, Some(status), None, None, 0.5), Decision::Done, "{status}");
        }
    }

    #[test]
    fn permanent_errors_fail_at_once() {
        for kind in [ErrorKind::Tls, ErrorKind::RedirectLoop, ErrorKind::BodyTooLarge, ErrorKind::InvalidUrl]
        {
            assert_eq!(decide(&config(), 1, Some(200), Some(kind), None, 0.5), Decision::Failed);
        }
    }

    #[test]
    fn transient_failures_retry_until_attempts_run_out() {
        for (status, error) in
            [(Some(503), None), (None, Some(ErrorKind::Timeout)), (None, Some(ErrorKind::Connect))]
        {
            assert!(matches!(decide(&config(), 1, status, error, None, 0.0), Decision::Retry(_)));
            assert!(matches!(decide(&config(), 3, status, error, None, 0.0), Decision::Retry(_)));
            assert_eq!(decide(&config(), 4, status, error, None, 0.0), Decision::Failed);
        }
    }

    #[test]
    fn robots_rules_decide_without_a_request() {
        let c = config();
        assert_eq!(decide(&c, 1, None, Some(ErrorKind::RobotsDisallowed), None, 0.5), Decision::Failed);
        let wait = Some(Duration::from_secs(30));
        let decided = decide(&c, 1, None, Some(ErrorKind::RobotsUnreachable), wait, 0.0);
        assert_eq!(decided, Decision::Retry(Duration::from_secs(30)));
        assert_eq!(decide(&c, 4, None, Some(ErrorKind::RobotsUnreachable), wait, 0.0), Decision::Failed);
    }

    #[test]
    fn a_name_that_does_not_exist_is_final_after_one_retry() {
        let mut fetched = Fetched::without_request(ErrorKind::Dns, "dns error".into(), None);
        assert!(matches!(decide_fetched(&config(), 1, &fetched, 0.0), Decision::Retry(_)));
        assert!(matches!(decide_fetched(&config(), 2, &fetched, 0.0), Decision::Retry(_)), "SERVFAIL");
        fetched.name_not_found = true;
        assert!(matches!(decide_fetched(&config(), 1, &fetched, 0.0), Decision::Retry(_)));
        assert_eq!(decide_fetched(&config(), 2, &fetched, 0.0), Decision::Failed, "NXDOMAIN");
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_a_cap() {
        let c = config();
        assert_eq!(backoff(&c, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&c, 1, 0.999_999), Duration::from_millis(1000) - Duration::from_nanos(500));
        assert_eq!(backoff(&c, 2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&c, 10, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(&c, u32::MAX, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_and_capped() {
        let c = config();
        let after = Some(Duration::from_secs(7));
        assert_eq!(decide(&c, 1, Some(429), None, after, 0.0), Decision::Retry(Duration::from_secs(7)));
        assert_eq!(decide(&c, 1, Some(503), None, after, 0.0), Decision::Retry(Duration::from_secs(7)));
        assert_eq!(decide(&c, 1, Some(500), None, after, 0.0), Decision::Retry(Duration::from_millis(500)));
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(decide(&c, 1, Some(429), None, huge, 0.0), Decision::Retry(Duration::from_secs(60)));
    }
}
