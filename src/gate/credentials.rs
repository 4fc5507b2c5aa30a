//! What a request carries for where it goes: `[hosts."..."]` plain
//! `headers` by host, and secrets (`secret_headers`, basic or bearer
//! `Authorization`, `Cookie`) by origin.
//!
//! Secrets go to the scheme, host and port they were configured for, and
//! nowhere else: curl's rule since CVE-2022-27776, which reqwest's own
//! redirect policy also keeps (`remove_sensitive_headers`). A key that names
//! an origin (`[hosts."https://example.org:8443"]`) holds that origin's; a
//! bare host name's go to `https://` on its default port (443) only, so a
//! redirect to another port, or from https to plain http, carries none. An
//! http origin gets secrets only when its key names it
//! (`[hosts."http://intranet.example"]`): the operator's choice to send them
//! in clear. Plain `headers` of a bare host name go to every scheme and port
//! of the host; an origin key's to that origin only.
//!
//! Secrets are read once, at start ([`Credentials::from_config`]); a reload
//! only checks that they can still be read ([`unreadable_secrets`]).

use std::collections::{BTreeMap, HashMap};

use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::config::{HostKey, HostOverride, read_secret};
use crate::fetch::ClientError;

/// The headers of `[hosts."..."]`, ready to attach by where a request goes.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Plain `headers` of bare host names, by host (as URLs carry it).
    by_host: HashMap<String, HeaderMap>,
    /// Secrets, and an origin key's plain headers, by origin
    /// (`scheme://host[:port]`, the default port left out, RFC 6454).
    by_origin: HashMap<String, HeaderMap>,
}

impl Credentials {
    /// Reads every secret of `hosts` (whose keys the config has normalized)
    /// and makes the headers, secrets marked sensitive (hyper leaves them out
    /// of its debug output). Says in the log where each host's secrets go.
    ///
    /// Errors: a secret that cannot be read, a basic-auth password with a
    /// control character (RFC 7617 §2: it would be a silently wrong
    /// credential), or a name or value that is no valid header; the message
    /// names the key, never the value.
    pub fn from_config(hosts: &BTreeMap<String, HostOverride>) -> Result<Self, ClientError> {
        let mut credentials = Self::default();
        for (key, host) in hosts {
            let fail = |field: &str, reason: String| ClientError::Secret {
                key: format!("hosts.\"{key}\".{field}"),
                reason,
            };
            let parsed = HostKey::parse(key).map_err(|reason| fail("", reason))?;
            let plain = plain_headers(host).map_err(|(field, reason)| fail(field, reason))?;
            let secrets = secret_headers(host).map_err(|(field, reason)| fail(field, reason))?;
            let origin = match &parsed {
                HostKey::Host(name) => {
                    if !plain.is_empty() {
                        credentials.by_host.insert(name.clone(), plain.clone());
                    }
                    format!("https://{name}")
                }
                HostKey::Origin(origin) => origin.clone(),
            };
            let mut for_origin = if matches!(parsed, HostKey::Origin(_)) { plain } else { HeaderMap::new() };
            if !secrets.is_empty() {
                tracing::info!("hosts.\"{key}\": its secrets are sent to {origin} only");
                for_origin.extend(secrets);
            }
            if !for_origin.is_empty() {
                credentials.by_origin.insert(origin, for_origin);
            }
        }
        Ok(credentials)
    }

    /// The headers a request for `url` carries: its host's plain headers,
    /// then its origin's (secrets included), which win over them.
    pub fn for_request(&self, url: &Url) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(own) = url.host_str().and_then(|host| self.by_host.get(host)) {
            headers.extend(own.clone());
        }
        // Most crawls set no secrets: no origin to serialize per request.
        if !self.by_origin.is_empty()
            && let Some(own) = self.by_origin.get(&url.origin().ascii_serialization())
        {
            headers.extend(own.clone());
        }
        headers
    }
}

/// The secrets of `hosts` that cannot be read now, as (`hosts."key".field`,
/// why): what a reload warns about, as the next start would fail on them.
pub fn unreadable_secrets(hosts: &BTreeMap<String, HostOverride>) -> Vec<(String, String)> {
    let mut unreadable = Vec::new();
    for (key, host) in hosts {
        if let Err((field, reason)) = secret_headers(host) {
            unreadable.push((format!("hosts.\"{key}\".{field}"), reason));
        }
    }
    unreadable
}

/// A failure naming the field of `[hosts."..."]` it is about.
type FieldError = (&'static str, String);

fn header_name(field: &'static str, header: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(header.as_bytes()).map_err(|_| (field, format!("{header:?} is not a header name")))
}

/// A host's plain `headers`.
fn plain_headers(host: &HostOverride) -> Result<HeaderMap, FieldError> {
    let mut headers = HeaderMap::new();
    for (header, value) in &host.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| ("headers", format!("{header}: not a valid header value")))?;
        headers.insert(header_name("headers", header)?, value);
    }
    Ok(headers)
}

/// A host's secrets as headers, read now: `secret_headers`, basic or
/// bearer `Authorization`, `Cookie`.
fn secret_headers(host: &HostOverride) -> Result<HeaderMap, FieldError> {
    // A secret read from `reference`, made a header value by `form`.
    let secret = |field: &'static str, reference: &str, form: &dyn Fn(String) -> String| {
        let text = read_secret(reference).map_err(|reason| (field, reason))?;
        let mut value =
            HeaderValue::from_str(&form(text)).map_err(|_| (field, "not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        Ok::<_, FieldError>(value)
    };
    let mut headers = HeaderMap::new();
    for (header, reference) in &host.secret_headers {
        headers.insert(header_name("secret_headers", header)?, secret("secret_headers", reference, &|t| t)?);
    }
    if let (Some(user), Some(reference)) = (&host.basic_auth_user, &host.basic_auth_password) {
        let password = read_secret(reference).map_err(|reason| ("basic_auth_password", reason))?;
        if password.chars().any(char::is_control) {
            // Base64 would carry a line break into a credential that can
            // never match (RFC 7617 §2: no control characters).
            return Err((
                "basic_auth_password",
                format!("{reference} holds a control character (a line break?), which a password cannot"),
            ));
        }
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
        headers.insert(COOKIE, secret("cookies", reference, &|t| t)?);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[(&str, HostOverride)]) -> BTreeMap<String, HostOverride> {
        entries.iter().map(|(k, h)| (k.to_string(), h.clone())).collect()
    }

    fn shown(headers: &HeaderMap) -> Vec<String> {
        let mut shown: Vec<String> =
            headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect();
        shown.sort();
        shown
    }

    #[test]
    fn secrets_go_to_their_origin_only_plain_headers_to_the_host() {
        // SAFETY: the variables are this test's own.
        unsafe {
            std::env::set_var("CRED_TEST_TOKEN", "tok");
            std::env::set_var("CRED_TEST_PLAIN_HTTP", "intranet-pass");
        }
        let bare = HostOverride {
            headers: BTreeMap::from([("x-team".to_owned(), "crawl".to_owned())]),
            bearer_token: Some("env:CRED_TEST_TOKEN".to_owned()),
            ..Default::default()
        };
        let http_origin = HostOverride {
            basic_auth_user: Some("me".to_owned()),
            basic_auth_password: Some("env:CRED_TEST_PLAIN_HTTP".to_owned()),
            ..Default::default()
        };
        let credentials = Credentials::from_config(&hosts(&[
            ("sec.test", bare),
            ("http://intranet.test:8080", http_origin),
        ]))
        .unwrap();
        let to = |url: &str| shown(&credentials.for_request(&Url::parse(url).unwrap()));
        assert_eq!(to("https://sec.test/a"), ["authorization: Bearer tok", "x-team: crawl"]);
        assert_eq!(to("https://sec.test:443/a"), ["authorization: Bearer tok", "x-team: crawl"]);
        // Another port, or plain http: the host's plain header only.
        assert_eq!(to("https://sec.test:8443/a"), ["x-team: crawl"]);
        assert_eq!(to("http://sec.test/a"), ["x-team: crawl"]);
        assert_eq!(to("https://other.test/a"), Vec::<String>::new());
        assert_eq!(to("http://intranet.test:8080/"), ["authorization: Basic bWU6aW50cmFuZXQtcGFzcw=="]);
        assert_eq!(to("http://intranet.test/"), Vec::<String>::new());
    }

    #[test]
    fn a_password_with_a_line_break_is_refused_naming_the_key() {
        // SAFETY: the variable is this test's own.
        unsafe { std::env::set_var("CRED_TEST_BROKEN", "first\nsecond") };
        let broken = HostOverride {
            basic_auth_user: Some("me".to_owned()),
            basic_auth_password: Some("env:CRED_TEST_BROKEN".to_owned()),
            ..Default::default()
        };
        let error = Credentials::from_config(&hosts(&[("a.test", broken.clone())])).unwrap_err().to_string();
        assert!(error.starts_with("hosts.\"a.test\".basic_auth_password:"), "{error}");
        assert!(!error.contains("first") && !error.contains("second"), "the value is never shown: {error}");
        assert_eq!(unreadable_secrets(&hosts(&[("a.test", broken)])).len(), 1);
    }
}
