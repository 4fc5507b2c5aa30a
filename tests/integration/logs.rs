//! Reading what trawler logged, shared by the tests and the benches (which
//! include this file by path).

/// The host backoffs a crawl logged, in order: `(began, backoff_ms)`, with
/// `began` false for one a success cut short (`backoff_ms` is what was left).
pub fn backoff_changes(log: &str) -> Vec<(bool, u64)> {
    log.lines()
        .filter_map(|line| {
            let began = if line.contains("host backs off") {
                true
            } else if line.contains("host backoff cut short") {
                false
            } else {
                return None;
            };
            let ms = line.split("backoff_ms=").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((began, ms))
        })
        .collect()
}
