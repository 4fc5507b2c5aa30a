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
    pub(super) fn for_host(&self, host: &str) -> Option<Url> {
        if let Some(own) = self.per_host.get(host) {
            return Some(own.clone());
        }
        let bypass = self.no_proxy.iter().any(|entry| match entry.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")) || host == domain,
            None => host == entry,
        });
        if bypass { None } else { self.default.clone() }
    }

    /// The host name of the proxy a request to `host` goes through, if
    /// one does and it is named (not an IP literal): the one name the
    /// resolver answers without the address policy while that request is
    /// sent ([`super::sending`]).
    pub(super) fn proxy_name(&self, host: &str) -> Option<String> {
        let proxy = self.for_host(host)?;
        matches!(proxy.host(), Some(url::Host::Domain(_))).then(|| proxy.host_str().map(str::to_owned))?
    }

    /// Whether a request to `host` goes through a proxy, which resolves the
    /// name itself.
    pub(super) fn is_proxied(&self, host: &str) -> bool {
        self.for_host(host).is_some()
    }

    /// One reqwest proxy that asks [`Proxies::for_host`], or `None` when
    /// no proxy is configured.
    pub(super) fn reqwest(&self) -> Option<reqwest::Proxy> {
        if self.default.is_none() && self.per_host.is_empty() {
            return None;
        }
        let proxies = self.clone();
        Some(reqwest::Proxy::custom(move |url| proxies.for_host(url.host_str()?)))
    }
}
