//! Reading a response's headers: media types worth a body
//! (`fetch.accept_content_types`), `Retry-After`, and headers as stored.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Media types worth reading a body of (`fetch.accept_content_types`):
/// whole types (`text/*`) and exact ones (`text/html`), compared without
/// parameters and case (RFC 9110 §8.3.1), as the `mime` crate parses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptTypes {
    /// Exact `type/subtype`s, lower-case.
    exact: Vec<String>,
    /// Types every subtype of which is accepted (`*` for all).
    whole: Vec<String>,
}

impl AcceptTypes {
    /// The types listed in `fetch.accept_content_types`; `None` when the
    /// list is empty (every type) or an entry is no media type (the config
    /// is checked for that at start).
    pub fn from_config(list: &[String]) -> Option<Self> {
        if list.is_empty() {
            return None;
        }
        let mut accept = Self { exact: Vec::new(), whole: Vec::new() };
        for entry in list {
            match Self::parse(entry)? {
                (kind, None) => accept.whole.push(kind),
                (kind, Some(subtype)) => accept.exact.push(format!("{kind}/{subtype}")),
            }
        }
        Some(accept)
    }

    /// `(type, Some(subtype))` of a media type, `(type, None)` for `type/*`
    /// (and `*/*`), lower-case; `None` when `text` is neither.
    pub fn parse(text: &str) -> Option<(String, Option<String>)> {
        let parsed: mime::Mime = text.trim().parse().ok()?;
        let kind = parsed.type_().as_str().to_ascii_lowercase();
        match parsed.subtype() {
            mime::STAR => Some((kind, None)),
            subtype => (kind != "*").then(|| (kind, Some(subtype.as_str().to_ascii_lowercase()))),
        }
    }

    /// Whether a response of `content_type` (a header value, parameters
    /// and all) is accepted. One that does not parse is not.
    pub fn accepts(&self, content_type: &str) -> bool {
        let Ok(parsed) = content_type.trim().parse::<mime::Mime>() else { return false };
        let kind = parsed.type_().as_str().to_ascii_lowercase();
        let essence = format!("{kind}/{}", parsed.subtype().as_str().to_ascii_lowercase());
        self.exact.contains(&essence) || self.whole.iter().any(|w| w == "*" || *w == kind)
    }
}

/// The reason phrase RFC 9110 §15 gives `status` ("Not Modified"), or ""
/// for a status it does not name.
pub fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

/// `Retry-After` is delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date
/// in the past means "now".
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

pub(super) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

pub(super) fn headers_json(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_types_match_without_parameters_or_case() {
        let list = ["text/HTML", "image/*"].map(str::to_owned);
        let accept = AcceptTypes::from_config(&list).unwrap();
        assert!(accept.accepts("text/html; charset=utf-8"));
        assert!(accept.accepts("Image/PNG"));
        assert!(!accept.accepts("text/plain"));
        assert!(!accept.accepts("application/xhtml+xml"));
        assert!(!accept.accepts("not a type"));
        let all = AcceptTypes::from_config(&["*/*".to_owned()]).unwrap();
        assert!(all.accepts("application/pdf"));
        assert_eq!(AcceptTypes::from_config(&[]), None, "empty: every type, nothing checked");
        assert_eq!(AcceptTypes::parse("html"), None);
        assert_eq!(AcceptTypes::parse("*/html"), None);
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        let parsed = parse_retry_after(later.as_bytes()).unwrap();
        assert!(parsed > Duration::from_secs(85) && parsed <= Duration::from_secs(90), "{parsed:?}");
        assert_eq!(parse_retry_after(b"soon"), None);
        assert_eq!(parse_retry_after(b"-5"), None);
    }
}
