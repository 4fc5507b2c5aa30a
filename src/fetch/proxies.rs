//! Where requests go through a proxy: `fetch.proxy`, `fetch.no_proxy` and
//! each `[hosts."..."] proxy`.

use std::collections::{BTreeMap, HashMap};

use url::Url;

use crate::config::FetchConfig;

/// Where requests go through a proxy: `fetch.proxy` for every host not in
/// `fetch.no_proxy`, and each `[hosts."..."] proxy` for its host.
#[derive(Clone)]
pub(super) struct Proxies {
    default: Option<Url>,
    no_proxy: Vec<String>,
    per_host: HashMap<String, Url>,
}

impl Proxies {
    pub(super) fn new(config: &FetchConfig, hosts: &BTreeMap<String, crate::config::HostOverride>) -> Self {
        // The config was validated: every proxy parses.
        let parse = |text: &String| Url::parse(text).ok();
        Self {
            default: config.proxy.as_ref().and_then(parse),
            no_proxy: config.no_proxy.iter().map(|h| h.to_ascii_lowercase()).collect(),
            per_host: hosts
                .iter()
                .filter_map(|(name, h)| Some((name.clone(), parse(h.proxy.as_ref()?)?)))
                .collect(),
        }
    }

    /// The proxy for a request to `host`, if any.
    pub(super) fn for_host(&self, host: &str) -> Option<&Url> {
        if let Some(own) = self.per_host.get(host) {
            return Some(own);
        }
        let bypass = self.no_proxy.iter().any(|entry| match entry.strip_prefix('.') {
            Some(domain) => {
                host == domain || host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
            }
            None => host == entry,
        });
        if bypass { None } else { self.default.as_ref() }
    }

    /// The proxy of a request to `host` as the resolver needs it: `None`
    /// for a direct request; `Some(name)` for one a proxy carries, with the
    /// proxy's host name when it is named (not an IP literal), the one name
    /// the resolver answers without the address policy while that request
    /// is sent ([`super::sending`]).
    pub(super) fn route(&self, host: &str) -> Option<Option<String>> {
        let proxy = self.for_host(host)?;
        // socks5:// is no special scheme to the `url` crate, which then
        // calls any host a domain: an address is told apart by parsing it.
        let host = proxy.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']'));
        Some(host.filter(|h| h.parse::<std::net::IpAddr>().is_err()).map(str::to_owned))
    }

    /// One reqwest proxy that asks [`Proxies::for_host`], or `None` when
    /// no proxy is configured.
    pub(super) fn reqwest(&self) -> Option<reqwest::Proxy> {
        if self.default.is_none() && self.per_host.is_empty() {
            return None;
        }
        let proxies = self.clone();
        Some(reqwest::Proxy::custom(move |url| proxies.for_host(url.host_str()?).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostOverride;

    #[test]
    fn a_request_is_routed_by_its_host() {
        let config = FetchConfig {
            proxy: Some("http://proxy.test:3128".into()),
            no_proxy: vec![".corp.example".into(), "direct.test".into()],
            ..FetchConfig::default()
        };
        let own = HostOverride { proxy: Some("socks5://10.0.0.9:1080".into()), ..Default::default() };
        let proxies = Proxies::new(&config, &BTreeMap::from([("own.test".to_owned(), own)]));
        assert_eq!(proxies.route("a.test"), Some(Some("proxy.test".to_owned())));
        // A proxy named by its address: proxied, with no name to exempt.
        assert_eq!(proxies.route("own.test"), Some(None));
        for direct in ["corp.example", "a.corp.example", "direct.test"] {
            assert_eq!(proxies.route(direct), None, "{direct}");
        }
        assert!(proxies.route("acorp.example").is_some(), "not under the domain");
    }
}
