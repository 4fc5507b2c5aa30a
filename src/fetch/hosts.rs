//! What `[hosts."..."]` adds to a request: its headers and secrets, and the
//! proxy it goes through.

use std::collections::{BTreeMap, HashMap};

use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use super::ClientError;
use crate::config::FetchConfig;

/// The headers `[hosts."name"]` sends to its host: plain `headers`, then
/// `secret_headers`, basic or bearer `Authorization` and `Cookie`, read
/// from their secrets now and marked sensitive (hyper leaves them out of
/// its debug output).
///
/// Errors: a secret that cannot be read, or a name or value that is no
/// valid header; the message names the key, never the value.
pub(super) fn host_request_headers(
    name: &str,
    host: &crate::config::HostOverride,
) -> Result<HeaderMap, ClientError> {
    use crate::config::read_secret;
    use reqwest::header::{AUTHORIZATION, COOKIE, HeaderName};
    let fail =
        |key: &str, reason: String| ClientError::Secret { key: format!("hosts.\"{name}\".{key}"), reason };
    let header_name = |key: &str, header: &str| {
        HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| fail(key, format!("{header:?} is not a header name")))
    };
    // A secret read from `reference`, made a header value by `form`.
    let secret = |key: &str, reference: &str, form: &dyn Fn(String) -> String| {
        let text = read_secret(reference).map_err(|reason| fail(key, reason))?;
        let mut value = HeaderValue::from_str(&form(text))
            .map_err(|_| fail(key, "not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        Ok::<_, ClientError>(value)
    };
    let plain = |text: String| text;
    let mut headers = HeaderMap::new();
    for (header, value) in &host.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| fail("headers", format!("{header}: not a valid header value")))?;
        headers.insert(header_name("headers", header)?, value);
    }
    for (header, reference) in &host.secret_headers {
        headers.insert(header_name("secret_headers", header)?, secret("secret_headers", reference, &plain)?);
    }
    if let (Some(user), Some(reference)) = (&host.basic_auth_user, &host.basic_auth_password) {
        // RFC 7617 §2: base64 of user-id ":" password, UTF-8.
        let basic = |password: String| {
            format!("Basic {}", data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes()))
        };
        headers.insert(AUTHORIZATION, secret("basic_auth_password", reference, &basic)?);
    }
    if let Some(reference) = &host.bearer_token {
        headers.insert(AUTHORIZATION, secret("bearer_token", reference, &|token| format!("Bearer {token}"))?);
    }
    if let Some(reference) = &host.cookies {
        headers.insert(COOKIE, secret("cookies", reference, &plain)?);
    }
    Ok(headers)
}

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

    /// The proxies' host names (not IP literals), which the resolver
    /// answers without applying `deny_ips`.
    pub(super) fn names(&self) -> std::collections::HashSet<String> {
        self.default
            .iter()
            .chain(self.per_host.values())
            .filter(|u| matches!(u.host(), Some(url::Host::Domain(_))))
            .filter_map(|u| u.host_str().map(str::to_owned))
            .collect()
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
