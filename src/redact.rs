//! Keeping secrets and terminal control out of logs and the database: URL
//! credentials (`user:password@`), the values of query parameters that look
//! secret (`?token=…`, `log.redact_params`), in the URL itself or in a URL
//! nested in one of its query values (`?next=https%3A…%3Ftoken%3D…`) or in
//! its fragment (`#access_token=…`), and control characters in
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
/// `***`, values of secret-looking query parameters replaced by `***` (also
/// in URLs nested in query values, three levels deep, and in a fragment
/// of `name=value` pairs), and control characters escaped (`\u{1b}`).
pub struct ForLog<'a>(pub &'a str);

impl fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match Url::parse(self.0) {
            Ok(url) => redact_url(url, 0),
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

/// How deep [`ForLog`] looks into query values that are URLs themselves
/// (`?next=https%3A%2F%2Fidp%2Fcb%3Ftoken%3D…`, as login redirects and OAuth
/// `redirect_uri` carry them). A value nested deeper that still has a query
/// is replaced whole, as it could hide a secret.
const NESTED_DEPTH: usize = 3;

fn redact_url(mut url: Url, depth: usize) -> String {
    if has_credentials(&url) {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    if let Some(query) = url.query().and_then(|q| redact_pairs(q, depth)) {
        url.set_query(Some(&query));
    }
    // OAuth's implicit grant returns its access token in the fragment
    // (RFC 6749 §4.2.2): a fragment of `name=value` pairs is read as a query.
    if let Some(fragment) = url.fragment().filter(|f| f.contains('=')).and_then(|f| redact_pairs(f, depth)) {
        url.set_fragment(Some(&fragment));
    }
    url.into()
}

/// `pairs` (`application/x-www-form-urlencoded`) with the values of secret
/// parameters replaced by `***`, and values that are URLs (absolute, or a
/// path with a query) redacted as URLs are; `None` when nothing changes, so
/// that an untouched query keeps its own encoding.
fn redact_pairs(pairs: &str, depth: usize) -> Option<String> {
    let mut changed = false;
    let redacted: Vec<(String, String)> = url::form_urlencoded::parse(pairs.as_bytes())
        .map(|(name, value)| {
            let new = if is_secret(&name) { Some("***".to_owned()) } else { redact_nested(&value, depth) };
            changed |= new.as_ref().is_some_and(|new| *new != value);
            (name.into_owned(), new.unwrap_or_else(|| value.into_owned()))
        })
        .collect();
    changed.then(|| url::form_urlencoded::Serializer::new(String::new()).extend_pairs(redacted).finish())
}

/// A query value that is itself a URL, redacted, or `None` if it is not
/// one or has nothing to redact.
fn redact_nested(value: &str, depth: usize) -> Option<String> {
    if let Some(path) = value.strip_prefix('/').filter(|p| !p.starts_with('/')) {
        // A path on the same site (`next=/account?token=…`).
        let (path, query) = path.split_once('?')?;
        if depth >= NESTED_DEPTH {
            return Some("***".to_owned());
        }
        return redact_pairs(query, depth + 1).map(|query| format!("/{path}?{query}"));
    }
    let url = Url::parse(value).ok().filter(Url::has_host)?;
    if depth >= NESTED_DEPTH {
        let hides = url.query().is_some() || url.fragment().is_some() || has_credentials(&url);
        return hides.then(|| "***".to_owned());
    }
    let plain = url.as_str().to_owned();
    Some(redact_url(url, depth + 1)).filter(|redacted| *redacted != plain)
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
        assert_eq!(
            log("https://example.org/cb#access_token=abc&state=1"),
            "https://example.org/cb#access_token=***&state=1"
        );
    }

    #[test]
    fn secrets_in_urls_nested_in_query_values_are_not_logged() {
        let log = |s: &str| ForLog(s).to_string();
        // The issue's case: a login redirect whose target carries a token.
        assert_eq!(
            log("http://h/login?u=http%3A%2F%2Fidp%2Fcb%3Ftoken%3DSECRET123&x=1"),
            "http://h/login?u=http%3A%2F%2Fidp%2Fcb%3Ftoken%3D***&x=1"
        );
        // OAuth's redirect_uri with credentials, a same-site path, and a
        // URL nested in a nested URL.
        assert_eq!(
            log("https://h/auth?redirect_uri=https%3A%2F%2Fu%3Apw%40app%2Fcb&next=%2Fme%3Fapi_key%3Dk"),
            "https://h/auth?redirect_uri=https%3A%2F%2F***%40app%2Fcb&next=%2Fme%3Fapi_key%3D***"
        );
        let twice = "http://h/a?next=http%3A%2F%2Fi%2Fb%3Fnext%3Dhttp%253A%252F%252Fj%252Fc%253Fsig%253DS2";
        assert!(!log(twice).contains("S2"), "{}", log(twice));
        assert!(log(twice).contains("sig%253D***"), "{}", log(twice));
        // Deeper than NESTED_DEPTH: a nested URL with a query goes whole.
        let mut deep = "http://z/?token=DEEP".to_owned();
        for _ in 0..=NESTED_DEPTH {
            deep = format!(
                "http://y/?next={}",
                url::form_urlencoded::byte_serialize(deep.as_bytes()).collect::<String>()
            );
        }
        assert!(!log(&deep).contains("DEEP"), "{}", log(&deep));
        // Nested URLs without secrets keep their encoding.
        let plain = "http://h/login?u=http%3A%2F%2Fidp%2Fcb%3Fpage%3D2";
        assert_eq!(log(plain), plain);
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
