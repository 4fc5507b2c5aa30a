//! The file-descriptor budget, checked at start: a crawl that runs out of
//! descriptors mid-way cannot open sockets, resolve names or write its
//! database, so it is better refused at once with the numbers than slowed
//! down for hours.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (what
//! `ulimit -n` and systemd's `LimitNOFILE=` set; the `rlimit` crate's
//! `increase_nofile_limit`), then compared with what the configuration
//! needs. Should the budget still run out at run time (another process's
//! descriptors, `ENFILE`), the workers defer requests instead of blaming the
//! hosts (`worker.rs`).

use crate::config::Config;

/// Descriptors besides the HTTP connections: standard streams, the tokio
/// driver (epoll, eventfd, timers), the database (write and read
/// connections, each with the file, its WAL and shared memory, and the lock
/// file), DNS lookups in progress, the log and config files.
pub const FIXED: u64 = 64;

/// What a crawl with `config` may keep open at once, in descriptors:
/// for each of `crawl.concurrency` workers, the connection it fetches on
/// and one idle pooled connection (a host's connection is kept for its next
/// turn); [`FIXED`]; and for the service (`service`), its two listeners
/// with up to `api.max_connections` connections.
pub fn needed(config: &Config, service: bool) -> u64 {
    let connections = 2 * u64::from(config.crawl.concurrency.get());
    let listeners = if service { 2 + config.api.max_connections.get() as u64 } else { 0 };
    connections + FIXED + listeners
}

/// Why the crawl cannot start.
#[derive(Debug, thiserror::Error)]
#[error(
    "this configuration needs about {needed} open files (crawl.concurrency = {concurrency}: two \
     connections each, plus the database{listeners}), but this process may open only {limit} \
     (RLIMIT_NOFILE, hard limit {hard}): raise the limit (LimitNOFILE= in the unit, `ulimit -n`) \
     or lower crawl.concurrency"
)]
pub struct TooFewDescriptors {
    pub needed: u64,
    pub concurrency: u32,
    pub limit: u64,
    pub hard: u64,
    listeners: &'static str,
}

/// Raises the soft descriptor limit as far as the hard limit allows and
/// checks it covers [`needed`]. Returns the limit in force.
///
/// Errors: [`TooFewDescriptors`] when even the hard limit is too low. A
/// system where the limit cannot be read or raised is not refused.
pub fn ensure(config: &Config, service: bool) -> Result<u64, TooFewDescriptors> {
    let needed = needed(config, service);
    let (limit, hard) = match raise() {
        Some(limits) => limits,
        None => return Ok(u64::MAX),
    };
    if limit >= needed {
        return Ok(limit);
    }
    Err(TooFewDescriptors {
        needed,
        concurrency: config.crawl.concurrency.get(),
        limit,
        hard,
        listeners: if service { ", the admin and API listeners and their connections" } else { "" },
    })
}

/// The soft and hard `RLIMIT_NOFILE` after raising the soft one to the hard
/// one, or `None` where they cannot be read.
fn raise() -> Option<(u64, u64)> {
    let (_, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if let Err(e) = rlimit::increase_nofile_limit(hard) {
        tracing::debug!("RLIMIT_NOFILE not raised: {e}");
    }
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    Some((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_with_concurrency_and_the_service() {
        let mut config = Config::default();
        config.crawl.concurrency = std::num::NonZeroU32::new(256).unwrap();
        assert_eq!(needed(&config, false), 512 + FIXED);
        let api = config.api.max_connections.get() as u64;
        assert_eq!(needed(&config, true), 512 + FIXED + 2 + api);
    }
}
