//! Where requests may go: the address policy (`fetch.deny_ips`,
//! `fetch.allow_ips`), `fetch.resolve` overrides, and the resolver every
//! connection asks, which answers only with the addresses the policy permits
//! (no DNS rebinding between a check and the connect).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::FetchConfig;

/// Which addresses requests may go to: those not in `fetch.deny_ips`, and
/// those in `fetch.allow_ips`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// is judged as the IPv4 address it carries too, so writing an address
/// another way cannot get around a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(config: &FetchConfig) -> Self {
        Self { deny: config.deny_ips.clone(), allow: config.allow_ips.clone() }
    }

    /// Whether a connection to `ip` may be made.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let forms = [ip, ip.to_canonical()];
        let listed = |nets: &[IpNet]| forms.iter().any(|ip| nets.iter().any(|net| net.contains(ip)));
        !listed(&self.deny) || listed(&self.allow)
    }
}

/// The error a refused address fails with, found in reqwest's error chain by
/// [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("address {ip} of {host} is refused by fetch.deny_ips")]
pub(super) struct BlockedAddress {
    pub(super) host: String,
    pub(super) ip: IpAddr,
}

/// `fetch.resolve`: host names answered without DNS, exact names first,
/// then `*.` domains, longest first.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    pub(super) names: HashMap<String, Vec<IpAddr>>,
    /// (`".example.test"`, addresses), longest suffix first.
    pub(super) domains: Vec<(String, Vec<IpAddr>)>,
}

impl Overrides {
    pub(super) fn new(config: &BTreeMap<String, Vec<IpAddr>>) -> Self {
        let mut overrides = Self::default();
        for (name, addresses) in config {
            match name.strip_prefix('*') {
                Some(suffix) => overrides.domains.push((suffix.to_owned(), addresses.clone())),
                None => {
                    overrides.names.insert(name.clone(), addresses.clone());
                }
            }
        }
        overrides.domains.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        overrides
    }

    /// The addresses `host` (lower case, as `url` gives it) is answered
    /// with, if it is overridden.
    pub(super) fn lookup(&self, host: &str) -> Option<&[IpAddr]> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.names.get(host).map(Vec::as_slice).or_else(|| {
            self.domains
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, addresses)| addresses.as_slice())
        })
    }
}

/// Where names not in `fetch.resolve` are looked up.
pub(super) enum Lookup {
    /// hickory-dns's async resolver, configured from `/etc/resolv.conf` and
    /// answering from `/etc/hosts` first, or asking `fetch.nameservers`
    /// only; it caches answers for their TTL (at most 8,192 of them;
    /// hickory-resolver's `ResolverOpts` defaults).
    Hickory(Box<hickory_resolver::TokioResolver>),
    /// getaddrinfo(3) on tokio's blocking pool, uncached (reqwest's default),
    /// where the system's resolver configuration cannot be read.
    System,
}

impl Lookup {
    /// The system's resolver configuration, or `nameservers` (UDP, then TCP)
    /// when there are any.
    pub(super) fn new(nameservers: &[SocketAddr]) -> Self {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let built = if nameservers.is_empty() {
            hickory_resolver::TokioResolver::builder_tokio().and_then(|builder| builder.build())
        } else {
            let servers = nameservers
                .iter()
                .map(|server| {
                    let on = |mut connection: ConnectionConfig| {
                        connection.port = server.port();
                        connection
                    };
                    NameServerConfig::new(
                        server.ip(),
                        true,
                        vec![on(ConnectionConfig::udp()), on(ConnectionConfig::tcp())],
                    )
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
            hickory_resolver::TokioResolver::builder_with_config(config, provider).build()
        };
        match built {
            Ok(resolver) => Self::Hickory(Box::new(resolver)),
            Err(e) => {
                tracing::warn!(
                    "DNS: the system's resolver configuration is unusable ({e}); using getaddrinfo"
                );
                Self::System
            }
        }
    }

    pub(super) async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, BoxError> {
        match self {
            Self::Hickory(resolver) => Ok(resolver.lookup_ip(host).await?.iter().collect()),
            Self::System => Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect()),
        }
    }
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a name is resolved, which decides how the address policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// To connect to it: only its permitted addresses are answered, and
    /// only those are connected to.
    Connect,
    /// A request a proxy carries: the proxy resolves the name again and may
    /// pick any of its addresses, so every one must be permitted.
    Proxied,
    /// To connect to the request's proxy, which the config names: not a
    /// crawl target, answered as it is.
    Proxy,
}

/// Name resolution for every request: `fetch.resolve`, else DNS
/// ([`Lookup`]), then the address policy as [`Purpose`] says, so that the
/// check is on the very addresses connected to (no DNS rebinding between a
/// check and the connect). A name with a refused address it may not use
/// fails with [`BlockedAddress`]. The attempt resolves a request's name
/// itself first, to check and time it (`attempts.dns_ms`); the connect, if
/// one is needed, then asks again and is answered from the cache.
pub(super) struct Resolver {
    pub(super) policy: Arc<AddressPolicy>,
    pub(super) overrides: Overrides,
    /// `fetch.nameservers`: asked instead of the system's, when set.
    pub(super) nameservers: Vec<SocketAddr>,
    /// Built on first use, inside the runtime hickory's sockets need.
    pub(super) lookup: std::sync::OnceLock<Lookup>,
}

impl Resolver {
    pub(super) async fn resolve(&self, host: &str, purpose: Purpose) -> Result<Vec<IpAddr>, BoxError> {
        let resolved = match self.overrides.lookup(host) {
            Some(addresses) => addresses.to_vec(),
            None => self.lookup.get_or_init(|| Lookup::new(&self.nameservers)).ips(host).await?,
        };
        let refused = |ip: &IpAddr| Box::new(BlockedAddress { host: host.to_owned(), ip: *ip });
        match purpose {
            Purpose::Proxy => Ok(resolved),
            Purpose::Proxied => match resolved.iter().find(|ip| !self.policy.permits(**ip)) {
                Some(ip) => Err(refused(ip)),
                None => Ok(resolved),
            },
            Purpose::Connect => {
                let permitted: Vec<IpAddr> =
                    resolved.iter().copied().filter(|ip| self.policy.permits(*ip)).collect();
                match (permitted.is_empty(), resolved.first()) {
                    (true, Some(ip)) => Err(refused(ip)),
                    _ => Ok(permitted),
                }
            }
        }
    }
}

/// Whether `error` says the name does not exist: an authoritative NXDOMAIN
/// (RFC 1035 §4.1.1 RCODE 3; RFC 8020: nothing exists under it either), as
/// hickory-dns reports it. Not a server failure or a timeout.
pub(super) fn name_does_not_exist(error: &(dyn std::error::Error + 'static)) -> bool {
    use hickory_resolver::net::{DnsError, NetError};
    use hickory_resolver::proto::op::ResponseCode;
    let mut source = Some(error);
    while let Some(e) = source {
        let dns = e.downcast_ref::<NetError>().and_then(|e| match e {
            NetError::Dns(dns) => Some(dns),
            _ => None,
        });
        match dns {
            Some(DnsError::NoRecordsFound(no)) if no.response_code == ResponseCode::NXDomain => return true,
            Some(DnsError::ResponseCode(ResponseCode::NXDomain)) => return true,
            _ => {}
        }
        source = e.source();
    }
    false
}

/// [`Resolver`] as reqwest's resolver, for every connection it opens: the
/// connection to the proxy of the request being sent is
/// [`Purpose::Proxy`], every other one [`Purpose::Connect`].
pub(super) struct CheckedResolver(pub(super) Arc<Resolver>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        let purpose = match super::sending::is_current_proxy(name.as_str()) {
            true => Purpose::Proxy,
            false => Purpose::Connect,
        };
        Box::pin(async move {
            let ips = resolver.resolve(name.as_str(), purpose).await?;
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_match_names_then_the_longest_domain() {
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        let config = BTreeMap::from([
            ("*.example.test".to_owned(), ip("127.0.0.2")),
            ("*.deep.example.test".to_owned(), ip("127.0.0.3")),
            ("www.deep.example.test".to_owned(), ip("::1")),
        ]);
        let overrides = Overrides::new(&config);
        let found = |host| overrides.lookup(host).map(|a| a[0].to_string());
        assert_eq!(found("a.example.test").as_deref(), Some("127.0.0.2"));
        assert_eq!(found("a.deep.example.test").as_deref(), Some("127.0.0.3"));
        assert_eq!(found("www.deep.example.test.").as_deref(), Some("::1"));
        // The domain itself is not under `*.`, nor is a name that only ends alike.
        assert_eq!(found("example.test"), None);
        assert_eq!(found("badexample.test"), None);
    }
}
