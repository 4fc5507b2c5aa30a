//! Keeping secrets and terminal control out of logs and the database: URL
//! credentials (`user:password@`), the values of query parameters that look
//! secret (`?token=…`, `log.redact_params`), and control characters in
//! untrusted text (input lines, sitemap entries), which could rewrite an
//! operator's terminal.
//!
//! URLs with credentials never reach the database: a seed that has them is
//! rejected (its recorded text has them replaced by `***`), and they are
//! stripped from discovered links and redirect targets, so they are neither
//! stored nor sent. What is logged goes through [`ForLog`].

use std::fmt;
use std::sync::{LazyLock, OnceLock};

use regex::Regex;
use url::Url;

/// Query parameters whose values are redacted in logs when their name
/// contains one of these (case-insensitive): the default of
/// `log.redact_params`.
pub const DEFAULT_SECRET_PARAMS: [&str; 7] = ["token", "key", "password", "passwd", "secret", "sig", "auth"];

static SECRET_PARAMS: OnceLock<Vec<String>> = OnceLock::new();

/// Sets the parameter names whose values are redacted (`log.redact_params`),
/// once, at start-up; later calls change nothing.
pub fn set_secret_params(names: &[String]) {
    let _ = SECRET_PARAMS.set(names.iter().map(|n| n.to_ascii_lowercase()).collect());
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match SECRET_PARAMS.get() {
        Some(names) => names.iter().any(|s| name.contains(s.as_str())),
        None => DEFAULT_SECRET_PARAMS.iter().any(|s| name.contains(s)),
    }
}

/// Whether `url` carries credentials (`user@` or `user:password@`).
pub fn has_credentials(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Removes `url`'s credentials, if any.
pub fn strip_credentials(url: &mut Url) {
    // Both only fail for URLs that cannot have credentials (no host).
    let _ = url.set_username("");
    let _ = url.set_password(None);
}

/// The `user:password@` of a URL-like text (parsable or not).
static USERINFO: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s]*@").expect("a valid pattern"));

/// `text` with the credentials of any URL in it replaced by `***`, for
/// recording a rejected input line or an error message.
pub fn credentials_in_text(text: &str) -> std::borrow::Cow<'_, str> {
    USERINFO.replace_all(text, "${1}***@")
}

/// A URL, or untrusted text, as it may be logged: credentials replaced by
/// `***`, values of secret-looking query parameters replaced by `***`, and
/// control characters escaped (`\u{1b}`).
pub struct ForLog<'a>(pub &'a str);

impl fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match Url::parse(self.0) {
            Ok(url) => redact_url(url),
            Err(_) => credentials_in_text(self.0).into_owned(),
        };
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

fn redact_url(mut url: Url) -> String {
    if has_credentials(&url) {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    let secret = url.query_pairs().any(|(name, _)| is_secret(&name));
    if secret {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret(&name) { "***".to_owned() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_secret_parameters_are_not_logged() {
        let log = |s: &str| ForLog(s).to_string();
        assert_eq!(log("https://bob:hunter2@example.org/a?x=1"), "https://***@example.org/a?x=1");
        assert_eq!(
            log("https://example.org/cb?access_token=abc&page=2&API_KEY=k&sig=s"),
            "https://example.org/cb?access_token=***&page=2&API_KEY=***&sig=***"
        );
        assert_eq!(log("https://example.org/plain?q=rust"), "https://example.org/plain?q=rust");
        // Not a URL: credentials still go, and control characters are escaped.
        assert_eq!(log("not a url \u{1b}[2Jboom"), "not a url \\u{1b}[2Jboom");
        assert_eq!(log("see ftp://u:pw@host/x\n"), "see ftp://***@host/x\\n");
    }

    #[test]
    fn credentials_are_found_in_text_and_stripped_from_urls() {
        assert_eq!(credentials_in_text("http://a:b@h/ and HTTPS://c@h2"), "http://***@h/ and HTTPS://***@h2");
        assert_eq!(credentials_in_text("http://h/@not-userinfo"), "http://h/@not-userinfo");
        let mut url = Url::parse("http://a:b@h/p").unwrap();
        assert!(has_credentials(&url));
        strip_credentials(&mut url);
        assert_eq!(url.as_str(), "http://h/p");
        assert!(!has_credentials(&url));
    }
}
