//! `SIGHUP`: read the configuration again and put into force what can change
//! while the service runs.
//!
//! Reloaded: `crawl.rate`, `crawl.recrawl_after`, adaptive revisit
//! (`crawl.adaptive_recrawl`, `recrawl_min`, `recrawl_max`), `[politeness]`,
//! `[hosts."..."]` and `log.level`. Everything else (the database path, the
//! worker count, fetch and retry settings, the addresses...) needs a restart:
//! a changed value is logged as such and the running value stays. A config
//! that does not load or validate is rejected as a whole with a log line, and
//! the running one stays in force. The config is loaded the way it was at
//! start (same file, environment and flags), so a flag still wins over the
//! file.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use signal_hook::consts::SIGHUP;
use signal_hook_tokio::Signals;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, HostOverride, RELOADABLE_HOST_KEYS};
use crate::politeness::HostRules;
use crate::store::{Backend, Store};
use crate::systemd::Notifier;
use crate::telemetry::LogLevel;
use crate::worker::WorkerContext;

/// Loads the configuration again, from the same sources as at start.
pub type LoadConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Key prefixes (flattened `section.key`) that a reload puts in force.
const RELOADABLE: [&str; 7] = [
    "crawl.rate",
    "crawl.recrawl_after",
    "crawl.adaptive_recrawl",
    "crawl.recrawl_min",
    "crawl.recrawl_max",
    "politeness.",
    "log.level",
];

/// Reloads on `SIGHUP`. Created before the service starts, so that a
/// `SIGHUP` arriving during start-up is not the default "terminate".
pub struct Reloader {
    load: LoadConfig,
    log: LogLevel,
    signals: Signals,
}

/// The parts of a running crawl that a reload changes.
pub(crate) struct Live {
    pub config: Config,
    pub ctx: Arc<WorkerContext>,
    pub store: Arc<Backend>,
    pub notifier: Arc<Notifier>,
    /// Wakes the producer: hosts may take more jobs under new limits.
    pub wake: Arc<Notify>,
    /// The stall guard's timeout ([`Config::stall_timeout`]), which the
    /// reloadable waits (rate, delays, backoff) lengthen.
    pub stall_timeout: watch::Sender<std::time::Duration>,
}

impl Reloader {
    /// Registers the `SIGHUP` handler; `log` changes the log filter. Errors:
    /// the handler could not be registered.
    pub fn new(load: LoadConfig, log: LogLevel) -> std::io::Result<Self> {
        Ok(Self { load, log, signals: Signals::new([SIGHUP])? })
    }

    /// Handles `SIGHUP`s until `done`.
    pub(crate) async fn run(mut self, mut live: Live, done: CancellationToken) {
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                signal = self.signals.next() => if signal.is_none() { break },
            }
            live.notifier.reloading();
            match (self.load)() {
                Ok(new) => self.apply(&mut live, new).await,
                Err(e) => {
                    tracing::error!("SIGHUP: configuration rejected, the running one stays in force: {e}")
                }
            }
            live.notifier.ready();
        }
        self.signals.handle().close();
    }

    async fn apply(&self, live: &mut Live, new: Config) {
        // Secrets were read at start and stay; one that cannot be read now
        // would stop the next start, which the operator should hear of now.
        for (key, why) in crate::gate::unreadable_secrets(&new.hosts) {
            tracing::warn!(
                key = %key,
                "SIGHUP: {key}: {why}: the running value stays in force, but the next start will fail"
            );
        }
        let (reloadable, restart_only) = changed_keys(&live.config, &new);
        for key in &restart_only {
            tracing::warn!(key = %key, "SIGHUP: `{key}` changed; it takes effect after a restart");
        }
        let next = with_reloadable(&live.config, &new);
        let old = std::mem::replace(&mut live.config, next);
        let config = &live.config;
        if config.crawl.rate != old.crawl.rate {
            live.ctx.gate.rate.set(config.crawl.rate);
        }
        let (rules, old_rules) = (HostRules::from_config(config), HostRules::from_config(&old));
        if rules != old_rules {
            let policy = rules.recrawl_policy();
            live.ctx.gate.politeness.set_rules(rules);
            if policy != old_rules.recrawl_policy() {
                match live.store.schedule_recrawls(&policy).await {
                    Ok(n) => tracing::info!(urls = n, "SIGHUP: recrawl times rescheduled"),
                    Err(e) => tracing::error!("SIGHUP: could not reschedule recrawls: {e}"),
                }
            }
            // Hosts may take more jobs now than when the producer last looked.
            live.wake.notify_one();
        }
        let stall_timeout = config.stall_timeout();
        if live.stall_timeout.send_replace(stall_timeout) != stall_timeout {
            tracing::info!(
                "SIGHUP: the stall timeout is now {} (the longest legitimate wait changed)",
                humantime::format_duration(stall_timeout)
            );
        }
        if config.log.level != old.log.level {
            match self.log.set(config.log.level.as_str()) {
                Ok(true) => {}
                Ok(false) => tracing::warn!("SIGHUP: log.level is not applied: RUST_LOG is set and wins"),
                Err(e) => tracing::error!("SIGHUP: cannot change the log level: {e}"),
            }
        }
        match reloadable.is_empty() {
            true => tracing::info!("SIGHUP: configuration reloaded; nothing that a reload applies changed"),
            false => tracing::info!(changed = %reloadable.join(", "), "SIGHUP: configuration reloaded"),
        }
    }
}

/// `running` with the reloadable settings of `new`.
fn with_reloadable(running: &Config, new: &Config) -> Config {
    let mut next = running.clone();
    next.crawl.rate = new.crawl.rate;
    next.crawl.recrawl_after = new.crawl.recrawl_after;
    next.crawl.adaptive_recrawl = new.crawl.adaptive_recrawl;
    next.crawl.recrawl_min = new.crawl.recrawl_min;
    next.crawl.recrawl_max = new.crawl.recrawl_max;
    next.politeness = new.politeness.clone();
    // A host's politeness and recrawl keys, not its request settings.
    next.hosts = new
        .hosts
        .iter()
        .map(|(name, new)| {
            let kept = running.hosts.get(name).cloned().unwrap_or_default();
            let limits = HostOverride {
                delay: new.delay,
                concurrency: new.concurrency,
                recrawl_after: new.recrawl_after,
                ..kept
            };
            (name.clone(), limits)
        })
        .collect();
    next.log.level = new.log.level.clone();
    next
}

/// The flattened keys (`section.key`, `hosts."name".key`) whose values differ
/// between `old` and `new`: those a reload applies, and those that need a
/// restart.
pub fn changed_keys(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let (old, new) = (flatten(old), flatten(new));
    // A host table added or removed changes only the keys it sets: one
    // side's missing key is the other's default.
    let mut blank = Config::default();
    blank.hosts.insert(String::new(), HostOverride::default());
    let defaults: BTreeMap<String, toml::Value> = flatten(&blank)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("hosts.\"\".")?.to_owned(), v)))
        .collect();
    let value = |map: &BTreeMap<String, toml::Value>, k: &str| {
        map.get(k).cloned().or_else(|| {
            let key = k.strip_prefix("hosts.")?.rsplit_once("\".")?.1;
            defaults.get(key).cloned()
        })
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| value(&old, k) != value(&new, k)).cloned().partition(|k| {
        match k.strip_prefix("hosts.") {
            // `"name".key`: the key right after the quoted host name.
            Some(rest) => rest.rsplit_once("\".").is_some_and(|(_, key)| RELOADABLE_HOST_KEYS.contains(&key)),
            None => RELOADABLE.iter().any(|prefix| k.starts_with(prefix)),
        }
    })
}

fn flatten(config: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, value: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let key = match prefix {
                        "" => key,
                        "hosts" => format!("hosts.{key:?}"),
                        _ => format!("{prefix}.{key}"),
                    };
                    walk(&key, value, out);
                }
            }
            value => {
                out.insert(prefix.to_owned(), value);
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(config).expect("every config value has a TOML form");
    walk("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::config::HostOverride;

    #[test]
    fn changes_are_split_into_reloadable_and_restart_only() {
        let old = Config::default();
        let mut new = old.clone();
        new.crawl.rate = Some(5.0);
        new.politeness.per_host_delay = Duration::from_secs(1);
        new.hosts.insert(
            "slow.example".into(),
            HostOverride { delay: Some(Duration::from_secs(3)), ..Default::default() },
        );
        new.log.level = "debug".parse().unwrap();
        new.crawl.concurrency = NonZeroU32::new(4).unwrap();
        new.store.path = "other.db".into();
        let (reloadable, restart_only) = changed_keys(&old, &new);
        assert_eq!(
            reloadable,
            ["crawl.rate", "hosts.\"slow.example\".delay", "log.level", "politeness.per_host_delay"]
        );
        assert_eq!(restart_only, ["crawl.concurrency", "store.path"]);
        assert_eq!(changed_keys(&old, &old), (vec![], vec![]));
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = Config::default();
        let mut new = running.clone();
        new.crawl.concurrency = NonZeroU32::new(4).unwrap();
        new.crawl.rate = Some(2.0);
        let next = with_reloadable(&running, &new);
        assert_eq!(next.crawl.concurrency, running.crawl.concurrency);
        assert_eq!(next.crawl.rate, Some(2.0));
        let (reloadable, restart_only) = changed_keys(&next, &new);
        assert!(reloadable.is_empty(), "every reloadable key is applied: {reloadable:?}");
        assert_eq!(restart_only, ["crawl.concurrency"]);
    }

    #[test]
    fn a_hosts_politeness_reloads_and_its_request_settings_wait_for_a_restart() {
        let mut running = Config::default();
        let host = HostOverride { bearer_token: Some("env:OLD".into()), ..Default::default() };
        running.hosts.insert("a.example".into(), host);
        let mut new = running.clone();
        let changed = new.hosts.get_mut("a.example").unwrap();
        changed.delay = Some(Duration::from_secs(2));
        changed.bearer_token = Some("env:NEW".into());
        changed.headers.insert("delay".into(), "a header named like a key".into());
        let (reloadable, restart_only) = changed_keys(&running, &new);
        assert_eq!(reloadable, ["hosts.\"a.example\".delay"]);
        assert_eq!(restart_only, ["hosts.\"a.example\".bearer_token", "hosts.\"a.example\".headers.delay"]);
        // The client keeps what it was built with, and the config says so.
        let next = with_reloadable(&running, &new);
        let kept = &next.hosts["a.example"];
        assert_eq!(
            (kept.delay, kept.bearer_token.as_deref()),
            (Some(Duration::from_secs(2)), Some("env:OLD"))
        );
        assert!(kept.headers.is_empty());
    }
}
