//! Building the reqwest clients a [`Fetcher`] shares: user agent, timeouts,
//! no automatic redirects, the idle-connection pool ([`Pool`]), extra CA
//! certificates, proxies, and the resolver that applies the address policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Fetcher;
use super::addresses::{AddressPolicy, CheckedResolver, Overrides, Resolver};
use super::content::AcceptTypes;
use super::proxies::Proxies;
use super::sending::PacedConnectLayer;
use crate::config::FetchConfig;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("fetch.ca_file {}: {reason}", path.display())]
    CaFile { path: std::path::PathBuf, reason: String },
    /// A `[hosts."..."]` secret could not be read, or is no header value.
    #[error("{key}: {reason}")]
    Secret { key: String, reason: String },
    #[error(transparent)]
    Client(#[from] reqwest::Error),
}

/// The certificates in the PEM file at `path` (`fetch.ca_file`).
pub(super) fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let fail = |reason: String| ClientError::CaFile { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// How the client keeps idle connections. reqwest's defaults (no limit per
/// host, 90 s) make descriptors and memory grow with the number of hosts a
/// crawl touches rather than with its concurrency; hyper-util's pool has
/// no total cap (hyper issue 2236), so the crawl bounds each host instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Idle connections kept per host: no more than requests the host may
    /// have in flight at once (politeness).
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept: long enough for the host's next
    /// turn after its delay, short enough that hosts waiting their turn by
    /// the thousand do not each hold one.
    pub idle_timeout: Duration,
}

impl Pool {
    /// The shortest and longest idle timeouts [`Pool::for_politeness`] gives.
    pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
        (Duration::from_millis(500), Duration::from_secs(90));

    /// Limits that fit politeness: idle connections per host up to the
    /// largest per-host concurrency (at most `concurrency`), kept for twice
    /// the longest per-host delay, within [`Pool::IDLE_TIMEOUT_RANGE`]
    /// (500 ms for the default 250 ms delay).
    pub fn for_politeness(
        concurrency: u32,
        per_host_concurrency: impl IntoIterator<Item = u32>,
        per_host_delays: impl IntoIterator<Item = Duration>,
    ) -> Self {
        let per_host = per_host_concurrency.into_iter().max().unwrap_or(1).clamp(1, concurrency);
        let delay = per_host_delays.into_iter().max().unwrap_or_default();
        let (least, most) = Self::IDLE_TIMEOUT_RANGE;
        Self { max_idle_per_host: per_host as usize, idle_timeout: (delay * 2).clamp(least, most) }
    }
}

impl Fetcher {
    /// Builds the shared client: user agent, connect timeout, no automatic
    /// redirects, no proxy from the environment, idle connections as `pool`
    /// says, `fetch.ca_file`'s certificates trusted besides the system's.
    ///
    /// Errors: `fetch.ca_file` unreadable or without a certificate;
    /// reqwest's, when the TLS backend cannot initialise.
    pub fn new(
        config: &FetchConfig,
        save_headers: bool,
        save_body: bool,
        pool: Pool,
    ) -> Result<Self, ClientError> {
        Self::with_hosts(config, &BTreeMap::new(), save_headers, save_body, pool)
    }

    /// [`Fetcher::new`] with the client settings of `hosts`
    /// (`[hosts."..."]`): each host's proxy, and whether any certificate is
    /// accepted from it. (What a request carries for its host or origin is
    /// the gate's: `gate::Credentials`.)
    ///
    /// Errors: as [`Fetcher::new`].
    pub fn with_hosts(
        config: &FetchConfig,
        hosts: &BTreeMap<String, crate::config::HostOverride>,
        save_headers: bool,
        save_body: bool,
        pool: Pool,
    ) -> Result<Self, ClientError> {
        let addresses = Arc::new(AddressPolicy::new(config));
        let proxies = Proxies::new(config, hosts);
        let resolver = Arc::new(Resolver {
            policy: addresses.clone(),
            overrides: Overrides::new(&config.resolve),
            nameservers: config.nameservers.clone(),
            lookup: std::sync::OnceLock::new(),
        });
        let build = |insecure: bool| -> Result<reqwest::Client, ClientError> {
            let mut client = reqwest::Client::builder()
                .user_agent(&config.user_agent)
                .connect_timeout(config.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(pool.max_idle_per_host)
                .pool_idle_timeout(pool.idle_timeout)
                .dns_resolver(Arc::new(CheckedResolver(resolver.clone())))
                .connector_layer(PacedConnectLayer);
            if !config.proxy_from_env {
                client = client.no_proxy();
            }
            if let Some(proxy) = proxies.reqwest() {
                client = client.proxy(proxy);
            }
            if let Some(path) = &config.ca_file {
                client = client.tls_certs_merge(read_ca_file(path)?);
            }
            if insecure {
                client = client.tls_danger_accept_invalid_certs(true);
            }
            Ok(client.build()?)
        };
        let client = build(false)?;
        let lax: std::collections::HashSet<String> =
            hosts.iter().filter(|(_, h)| h.accept_invalid_certs).map(|(name, _)| name.clone()).collect();
        for host in &lax {
            tracing::warn!(
                host = %host,
                "hosts.\"{host}\".accept_invalid_certs: ANY certificate is accepted from this host, \
                 so anyone on the network path can read and change what it serves"
            );
        }
        let insecure = if lax.is_empty() { None } else { Some((build(true)?, Arc::new(lax))) };
        Ok(Self {
            client,
            insecure,
            proxies: Arc::new(proxies),
            config: config.clone(),
            save_headers,
            save_body,
            extract_links: None,
            robots_token: crate::config::RobotsConfig::default().user_agent_token.into(),
            keep_prefix: false,
            accept: AcceptTypes::from_config(&config.accept_content_types).map(Arc::new),
            addresses,
            resolver,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_fit_politeness() {
        let ms = Duration::from_millis;
        let default = Pool::for_politeness(256, [2], [ms(250)]);
        assert_eq!(default, Pool { max_idle_per_host: 2, idle_timeout: ms(500) });
        // An override with more concurrency or a longer delay raises them,
        // within the crawl's concurrency and reqwest's 90 s default.
        let overridden = Pool::for_politeness(4, [2, 8], [ms(250), Duration::from_secs(20)]);
        assert_eq!(overridden, Pool { max_idle_per_host: 4, idle_timeout: Duration::from_secs(40) });
        assert_eq!(
            Pool::for_politeness(4, [1], [Duration::from_secs(600)]).idle_timeout,
            Duration::from_secs(90)
        );
    }
}
