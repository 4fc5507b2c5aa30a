//! Link discovery: extracting links from HTML as it streams in, normalizing
//! them, and deciding which to enqueue (scope, depth, allow/deny, trap guards,
//! the page's own robots directives).
//!
//! Extraction uses `lol_html`, a streaming parser: the body is fed chunk by
//! chunk as it arrives, so a 10 MB page is never held whole and never parsed
//! in one long step on the event loop. It collects `<a href>`, `<area href>`
//! and `<link rel=canonical href>`, and `<base href>`; at most
//! `max_links_per_page`; links inside `<noscript>` count too. Attribute values are decoded as HTML (`&amp;` is
//! `&`) before they are resolved, in the body's character encoding as a
//! browser determines it ([`decode`]: UTF-16 included). It also reads the
//! page's robots meta tags ([`Directives`]). Every other decision here is a pure function of the
//! page's URL and depth and the [`DiscoveryConfig`].
//!
//! A dropped link is counted under a reason (`dropped_links`), never stored
//! as a URL.

mod decode;
mod directives;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lol_html::{element, send, text};
use url::Url;

use crate::config::{DiscoveryConfig, Scope};
use crate::job::{DropReason, NewUrl};
use crate::redact::ForLog;

pub use directives::Directives;

/// Links found in one page, before any decision.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Found {
    /// `<base href>`, the first one (HTML: only the first counts).
    pub base: Option<String>,
    /// `(href, rel=nofollow)` in document order.
    pub links: Vec<(String, bool)>,
    /// Links past `max_links_per_page`, not kept.
    pub overflow: u64,
    /// The first `<link rel=canonical href>`'s `href`, as written (its
    /// character references decoded); it is among `links` too.
    pub canonical: Option<String>,
    /// What the page's robots meta tags, and the response's
    /// `X-Robots-Tag`, ask of this crawler.
    pub directives: Directives,
}

/// The text of an `href` as the URL parser reads it: without leading and
/// trailing C0 controls and spaces (U+0000 to U+0020), as the WHATWG URL
/// Standard's basic URL parser strips them, and nothing else. `str::trim`
/// would also strip U+00A0 and U+2000 to U+200A, which a browser keeps
/// (percent-encoded): `&nbsp;x.html` leads to `/%C2%A0x.html`.
fn href_text(href: &str) -> &str {
    href.trim_matches(|c: char| c <= '\u{20}')
}

type Rewriter = send::HtmlRewriter<'static, fn(&[u8])>;

/// How the body is read so far ([`decode`]).
enum Input {
    /// The body's first bytes, held until a byte-order mark can be told.
    Sniffing(Vec<u8>),
    /// Fed to `lol_html` as it comes, in an encoding it reads.
    Direct(Rewriter),
    /// Decoded to UTF-8 first (UTF-16, ISO-2022-JP).
    Transcoded(Rewriter, encoding_rs::Decoder),
    /// No more is read: a parser error (e.g. its memory limit) or an
    /// encoding browsers refuse to decode.
    Stopped,
}

/// Feeds an HTML body through `lol_html` chunk by chunk.
pub struct LinkExtractor {
    input: Input,
    found: Arc<Mutex<Found>>,
    max_links: usize,
    /// `robots.user_agent_token`, lower-case: `<meta name>` for this crawler.
    token: Arc<str>,
    content_type: Option<String>,
}

fn discard(_: &[u8]) {}

/// An attribute's value with its character references decoded, as a browser
/// reads it: `lol_html` gives the raw source text (`a=1&amp;b=2`). Decoding
/// follows the WHATWG rules for attribute values (`htmlize`'s
/// `unescape_attribute`): named and numeric references, and the legacy named
/// ones without `;` except before an alphanumeric or `=`, so
/// `?a=1&copy=2` stays as written.
fn attribute(el: &lol_html::send::Element<'_, '_>, name: &str) -> Option<String> {
    el.get_attribute(name).map(|raw| htmlize::unescape_attribute(raw).into_owned())
}

/// The most text kept from one `<noscript>` element (1 MiB); the rest of
/// it is not searched for links.
const MAX_NOSCRIPT_BYTES: usize = 1 << 20;

/// The element handlers that collect links, the canonical link and the
/// robots meta tags (`<meta name="robots">`, `<meta name="TOKEN">` for
/// `token`) into `found`. With `noscript`,
/// the raw text of each `<noscript>` element (which `lol_html`, like a
/// browser running scripts, does not parse as markup) is parsed again as
/// HTML with the same handlers, so its links count in document order: a
/// crawler runs no script, so they are the links it should see.
fn handlers(
    found: Arc<Mutex<Found>>,
    max_links: usize,
    token: Arc<str>,
    noscript: bool,
) -> send::Settings<'static, 'static> {
    let (on_link, on_base, on_meta, on_noscript) = (found.clone(), found.clone(), found.clone(), found);
    let meta_token = token.clone();
    let mut settings = send::Settings::new_send()
        .append_element_content_handler(element!("a[href], area[href], link[rel][href]", move |el| {
            let rel = attribute(el, "rel").unwrap_or_default().to_ascii_lowercase();
            let is_link_tag = el.tag_name() == "link";
            if is_link_tag && !rel.split_ascii_whitespace().any(|r| r == "canonical") {
                return Ok(());
            }
            let href = attribute(el, "href").unwrap_or_default();
            let mut found = on_link.lock().unwrap_or_else(|p| p.into_inner());
            if is_link_tag && found.canonical.is_none() {
                found.canonical = Some(href.clone());
            }
            // A same-document reference (`#top`, RFC 3986 §4.4) names this
            // page: not a link to follow, and not one that counts.
            if href_text(&href).starts_with('#') {
                return Ok(());
            }
            let nofollow = rel.split_ascii_whitespace().any(|r| r == "nofollow");
            if found.links.len() < max_links {
                found.links.push((href, nofollow));
            } else {
                found.overflow += 1;
            }
            Ok(())
        }))
        .append_element_content_handler(element!("base[href]", move |el| {
            let mut found = on_base.lock().unwrap_or_else(|p| p.into_inner());
            if found.base.is_none() {
                found.base = attribute(el, "href");
            }
            Ok(())
        }))
        .append_element_content_handler(element!("meta[name][content]", move |el| {
            let name = attribute(el, "name").unwrap_or_default();
            if Directives::meta_name_applies(&name, &meta_token) {
                let content = attribute(el, "content").unwrap_or_default();
                on_meta.lock().unwrap_or_else(|p| p.into_inner()).directives.add_meta_content(&content);
            }
            Ok(())
        }));
    if noscript {
        let mut text = String::new();
        settings = settings.append_element_content_handler(text!("noscript", move |chunk| {
            if text.len() + chunk.as_str().len() <= MAX_NOSCRIPT_BYTES {
                text.push_str(chunk.as_str());
            }
            if chunk.last_in_text_node() {
                let inner = handlers(on_noscript.clone(), max_links, token.clone(), false);
                let mut rewriter = send::HtmlRewriter::new(inner, discard as fn(&[u8]));
                // Errors only past lol_html's memory limit: keep what was found.
                let _ = rewriter.write(std::mem::take(&mut text).as_bytes()).and_then(|()| rewriter.end());
            }
            Ok(())
        }));
    }
    settings
}

impl LinkExtractor {
    /// An extractor keeping at most `max_links` links, reading the meta
    /// tags for `token` (`robots.user_agent_token`), for a body served as
    /// `content_type` (whose `charset` it is decoded in, unless a
    /// byte-order mark says otherwise).
    pub fn new(max_links: usize, token: &str, content_type: Option<&str>) -> Self {
        Self {
            input: Input::Sniffing(Vec::with_capacity(decode::BOM_BYTES)),
            found: Arc::new(Mutex::new(Found::default())),
            max_links,
            token: token.to_ascii_lowercase().into(),
            content_type: content_type.map(str::to_owned),
        }
    }

    /// Feeds the next chunk of the body. After a parser error (e.g. its
    /// memory limit), later chunks are ignored and what was found is kept.
    pub fn write(&mut self, chunk: &[u8]) {
        if let Input::Sniffing(head) = &mut self.input {
            let wanted = decode::BOM_BYTES.saturating_sub(head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..wanted]);
            if head.len() < decode::BOM_BYTES {
                return;
            }
            let head = std::mem::take(head);
            let bom = self.start(&head);
            self.feed(&head[bom..], false);
            self.feed(&chunk[wanted..], false);
            return;
        }
        self.feed(chunk, false);
    }

    /// Ends the document and returns what was found.
    pub fn finish(mut self) -> Found {
        if let Input::Sniffing(head) = &mut self.input {
            // A body shorter than a byte-order mark.
            let head = std::mem::take(head);
            let bom = self.start(&head);
            self.feed(&head[bom..], false);
        }
        self.feed(&[], true);
        std::mem::take(&mut *self.found.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Decides how the body is read, from its first bytes; returns the
    /// length of the byte-order mark they start with, not to be fed.
    fn start(&mut self, head: &[u8]) -> usize {
        let (reading, bom) = decode::reading(head, self.content_type.as_deref());
        let settings = || handlers(self.found.clone(), self.max_links, self.token.clone(), true);
        let rewriter = |settings: send::Settings<'static, 'static>| {
            send::HtmlRewriter::new(settings, discard as fn(&[u8]))
        };
        self.input = match reading {
            decode::Reading::Direct { encoding, adjust } => Input::Direct(rewriter(
                settings().with_encoding(encoding).with_adjust_charset_on_meta_tag(adjust),
            )),
            decode::Reading::Transcoded(decoder) => Input::Transcoded(rewriter(settings()), decoder),
            decode::Reading::Refused { label } => {
                tracing::warn!(
                    charset = %ForLog(&label),
                    "a page declares a charset that browsers do not decode (the Encoding Standard's \
                     'replacement'): no links are taken from it"
                );
                Input::Stopped
            }
        };
        bom
    }

    /// Feeds `bytes` on in the encoding decided; with `last`, ends the
    /// document.
    fn feed(&mut self, bytes: &[u8], last: bool) {
        let fed = match &mut self.input {
            Input::Direct(rewriter) => match last {
                false => rewriter.write(bytes),
                true => return self.end(),
            },
            Input::Transcoded(rewriter, decoder) => {
                let text = decode::transcode(decoder, bytes, last);
                match (rewriter.write(text.as_bytes()), last) {
                    (Ok(()), true) => return self.end(),
                    (fed, _) => fed,
                }
            }
            Input::Sniffing(_) | Input::Stopped => return,
        };
        if fed.is_err() {
            self.input = Input::Stopped;
        }
    }

    /// Ends the document in `lol_html`; what was found stays found.
    fn end(&mut self) {
        match std::mem::replace(&mut self.input, Input::Stopped) {
            Input::Direct(rewriter) | Input::Transcoded(rewriter, _) => {
                let _ = rewriter.end();
            }
            Input::Sniffing(_) | Input::Stopped => {}
        }
    }
}

/// Whether a `Content-Type` is HTML worth extracting links from.
pub fn is_html(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        mime == "text/html" || mime == "application/xhtml+xml"
    })
}

/// A link to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub url: String,
    pub host: String,
}

/// The links of one page after every rule: those to enqueue and the rest
/// counted by reason, and the page's canonical URL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Judged {
    pub links: Vec<Discovered>,
    pub dropped: BTreeMap<DropReason, u64>,
    /// The page's `<link rel=canonical>`, resolved and normalized as a link
    /// is (whatever its scope), when it is an http(s) URL.
    pub canonical: Option<String>,
}

/// The rules of [`DiscoveryConfig`] (its patterns were compiled at load).
pub struct Discovery {
    config: DiscoveryConfig,
    /// Whether a page's own `nofollow` (robots meta tag, `X-Robots-Tag`)
    /// keeps its links from being followed: unless robots rules are ignored
    /// (`robots.obey = false`), as Heritrix's robots policy "ignore" drops
    /// meta-robots `nofollow` with robots.txt.
    obey_page_nofollow: bool,
    /// Whether a page over `max_links_per_page` was reported (once per run).
    cap_reported: AtomicBool,
}

impl Discovery {
    /// The rules of `config`, obeying pages' own `nofollow`.
    pub fn new(config: DiscoveryConfig) -> Self {
        Self { config, obey_page_nofollow: true, cap_reported: AtomicBool::new(false) }
    }

    /// The same rules, obeying pages' own `nofollow` only if `obey`
    /// (`robots.obey`: `--ignore-robots` ignores them too).
    pub fn obeying_robots(self, obey: bool) -> Self {
        Self { obey_page_nofollow: obey, ..self }
    }

    pub fn max_links_per_page(&self) -> usize {
        self.config.max_links_per_page
    }

    /// Whether links on a page at `depth` may be followed (its links would
    /// be at `depth + 1`, which must not exceed `max_depth`).
    pub fn follows_from(&self, depth: u32) -> bool {
        depth < self.config.max_depth
    }

    /// Decides about the links `found` on `page` (the final URL, after
    /// redirects), which is at `depth` (seeds are 0). A page that says
    /// `nofollow` (its robots meta tag or `X-Robots-Tag`) has every link
    /// dropped as `page_nofollow`.
    pub fn judge(&self, page: &Url, depth: u32, found: &Found) -> Judged {
        let base =
            found.base.as_deref().and_then(|b| page.join(href_text(b)).ok()).unwrap_or_else(|| page.clone());
        let mut judged = Judged { canonical: self.canonical(&base, found), ..Judged::default() };
        let mut drop = |reason: DropReason, n: u64| *judged.dropped.entry(reason).or_default() += n;
        if found.directives.nofollow && self.obey_page_nofollow {
            let all = found.links.len() as u64 + found.overflow;
            if all > 0 {
                drop(DropReason::PageNofollow, all);
            }
            return judged;
        }
        if found.overflow > 0 {
            drop(DropReason::TooManyLinks, found.overflow);
            if !self.cap_reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    page = %ForLog(page.as_str()),
                    max_links_per_page = self.config.max_links_per_page,
                    dropped = found.overflow,
                    "a page has more links than discovery.max_links_per_page: the rest are dropped as \
                     too_many_links (see dropped_links; said once per run)"
                );
            }
        }
        if depth >= self.config.max_depth {
            drop(DropReason::Depth, found.links.len() as u64);
            return judged;
        }
        let mut seen = std::collections::HashSet::new();
        for (href, nofollow) in &found.links {
            if *nofollow && self.config.respect_nofollow {
                drop(DropReason::Nofollow, 1);
                continue;
            }
            let mut url = match base.join(href_text(href)) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => url,
                Ok(_) => {
                    drop(DropReason::NotHttp, 1);
                    continue;
                }
                Err(_) => {
                    drop(DropReason::InvalidUrl, 1);
                    continue;
                }
            };
            normalize(&mut url, &self.config.strip_query_params);
            match self.reject(page, &url) {
                Some(reason) => drop(reason, 1),
                None => {
                    if seen.insert(url.as_str().to_owned()) {
                        let host = url.host_str().unwrap_or_default().to_owned();
                        judged.links.push(Discovered { url: url.into(), host });
                    }
                }
            }
        }
        judged
    }

    /// The page's canonical URL: its `<link rel=canonical>` resolved
    /// against `base` and normalized, if that is an http(s) URL.
    fn canonical(&self, base: &Url, found: &Found) -> Option<String> {
        let mut url = base.join(href_text(found.canonical.as_deref()?)).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return None;
        }
        normalize(&mut url, &self.config.strip_query_params);
        Some(url.into())
    }

    /// A URL listed in a sitemap judged from `anchor` (the robots.txt that
    /// named the sitemap, or the user's sitemap itself), normalized into a
    /// seed (depth 0), or why it is not crawled: it passes the rules a link
    /// passes (scope from `anchor`, allow/deny, trap guards).
    pub fn listed(&self, anchor: &Url, mut url: Url) -> Result<NewUrl, DropReason> {
        normalize(&mut url, &self.config.strip_query_params);
        if let Some(reason) = self.reject(anchor, &url) {
            return Err(reason);
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        Ok(NewUrl { url: url.into(), host, depth: 0, found_on: None })
    }

    /// Why `url`, linked from `page`, is not enqueued, if it is not.
    fn reject(&self, page: &Url, url: &Url) -> Option<DropReason> {
        let text = url.as_str();
        if text.len() > self.config.max_url_length {
            return Some(DropReason::TooLong);
        }
        let segments: Vec<&str> =
            url.path_segments().map(|s| s.filter(|s| !s.is_empty()).collect()).unwrap_or_default();
        if segments.len() > self.config.max_path_segments {
            return Some(DropReason::TooManySegments);
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for segment in &segments {
            let n = counts.entry(segment).or_default();
            *n += 1;
            if *n > self.config.max_repeated_segment {
                return Some(DropReason::RepeatedSegment);
            }
        }
        if !in_scope(self.config.scope, page, url) {
            return Some(DropReason::OutOfScope);
        }
        if self.config.deny.is_match(text) {
            return Some(DropReason::Denied);
        }
        if !self.config.allow.is_empty() && !self.config.allow.is_match(text) {
            return Some(DropReason::NotAllowed);
        }
        None
    }
}

/// Whether `url` is within `scope` of the page that links to it: the same
/// host, the same registrable domain (Public Suffix List, via `psl`; an IP
/// address or a name without a known suffix is its own domain), or anything.
pub fn in_scope(scope: Scope, page: &Url, url: &Url) -> bool {
    let (Some(from), Some(to)) = (page.host_str(), url.host_str()) else { return false };
    match scope {
        Scope::Any => true,
        Scope::Host => from == to,
        Scope::Domain => registrable_domain(from) == registrable_domain(to),
    }
}

fn registrable_domain(host: &str) -> &str {
    psl::domain_str(host).unwrap_or(host)
}

/// Normalizes `url` beyond what the `url` crate's parser already does (lower
/// -case scheme and host, default port dropped, `.`/`..` resolved, RFC 3986
/// §6.2.2.1 and §6.2.2.3): drops the fragment, decodes percent-encoded
/// unreserved characters and upper-cases the hex digits of the rest
/// (§6.2.2.2), removes query parameters whose name matches a pattern in
/// `strip` (`utm_*` matches by prefix; comparison ignores case), and drops
/// credentials (`user:password@`), which are never stored or sent.
pub fn normalize(url: &mut Url, strip: &[String]) {
    url.set_fragment(None);
    // A page's link with credentials: they are not ours to store or send.
    crate::redact::strip_credentials(url);
    let path = normalize_percent(url.path());
    if path != url.path() {
        url.set_path(&path);
    }
    if let Some(query) = url.query() {
        let kept: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default().to_ascii_lowercase();
                !strip.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => name.starts_with(&prefix.to_ascii_lowercase()),
                    None => name == p.to_ascii_lowercase(),
                })
            })
            .map(normalize_percent)
            .collect();
        url.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    }
}

/// A robots.txt rule's path pattern (`Disallow: /%7Ejoe/`), or a URL's
/// path and query, normalized as [`normalize`] normalizes a URL, so that
/// the two compare after the same percent-decoding (RFC 9309 §2.2.2):
/// characters a URL parser would percent-encode (spaces, non-ASCII) are
/// encoded, `.` and `..` segments resolved, encoded unreserved characters
/// decoded (`%7E` is `~`) and the hex digits of the rest upper-cased
/// (`%3c` is `%3C`). What matching relies on is kept: the wildcards `*` and
/// `$`, a pattern that does not start with `/` (`*.php`), and a `?` with
/// nothing after it (`/*?` matches any URL with a query). No query
/// parameter is stripped.
pub fn normalize_path_pattern(pattern: &str) -> String {
    let (path, query) = match pattern.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (pattern, None),
    };
    let mut url = Url::parse("http://robots.invalid/").expect("a valid URL");
    url.set_path(path);
    url.set_query(query);
    normalize(&mut url, &[]);
    let mut out = url[url::Position::BeforePath..].to_owned();
    if query.is_some() && url.query().is_none() {
        out.push('?');
    }
    match path.starts_with('/') {
        true => out,
        // The parser gave the path its leading `/`.
        false => out.split_off(1),
    }
}

fn normalize_percent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // A serialized URL is ASCII, so byte offsets are char offsets.
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(byte as char);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(f: impl FnOnce(&mut DiscoveryConfig)) -> Discovery {
        let mut config = DiscoveryConfig { follow: true, ..DiscoveryConfig::default() };
        f(&mut config);
        Discovery::new(config)
    }

    fn extract(html: &str, chunk: usize) -> Found {
        extract_bytes(html.as_bytes(), Some("text/html"), chunk)
    }

    fn extract_bytes(body: &[u8], content_type: Option<&str>, chunk: usize) -> Found {
        let mut extractor = LinkExtractor::new(100, "Trawler", content_type);
        for piece in body.chunks(chunk) {
            extractor.write(piece);
        }
        extractor.finish()
    }

    fn hrefs(found: &Found) -> Vec<&str> {
        found.links.iter().map(|(h, _)| h.as_str()).collect()
    }

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        let units = text.encode_utf16();
        let bom: &[u8] = if big_endian { b"\xFE\xFF" } else { b"\xFF\xFE" };
        let mut bytes = bom.to_vec();
        if big_endian {
            bytes.extend(units.flat_map(u16::to_be_bytes));
        } else {
            bytes.extend(units.flat_map(u16::to_le_bytes));
        }
        bytes
    }

    #[test]
    fn a_utf_16_page_is_decoded_by_its_byte_order_mark() {
        let html = r#"<meta name="robots" content="nofollow"><a href="/ü.html">ü</a><a href="b.html">b</a>"#;
        for big_endian in [false, true] {
            // Every chunk size, so that a chunk ends inside the BOM and mid-character.
            for chunk in [1, 2, 3, 5, 64] {
                let found = extract_bytes(&utf16(html, big_endian), Some("text/html; charset=utf-16"), chunk);
                assert_eq!(hrefs(&found), ["/ü.html", "b.html"], "big endian {big_endian}, chunk {chunk}");
                assert!(found.directives.nofollow);
            }
        }
        // Declared without a BOM, as UTF-16LE.
        let mut bare = utf16(html, false);
        bare.drain(..2);
        let found = extract_bytes(&bare, Some("text/html; charset=utf-16le"), 7);
        assert_eq!(hrefs(&found), ["/ü.html", "b.html"]);
    }

    #[test]
    fn a_page_is_read_in_its_declared_charset_and_an_undecodable_one_yields_nothing() {
        // é is 0xE9 in windows-1252: the href is read as a browser reads it.
        let latin1 = b"<a href=\"caf\xE9.html\">x</a>";
        let found = extract_bytes(latin1, Some("text/html; charset=windows-1252"), 4);
        assert_eq!(hrefs(&found), ["café.html"]);
        // Without a charset from the server, `<meta charset>` decides.
        let meta = b"<meta charset=\"windows-1252\"><a href=\"caf\xE9.html\">x</a>";
        assert_eq!(hrefs(&extract_bytes(meta, Some("text/html"), 64)), ["café.html"]);
        // A UTF-8 BOM wins over a declared charset.
        let bom = "\u{feff}<a href=\"é.html\">x</a>";
        assert_eq!(hrefs(&extract_bytes(bom.as_bytes(), Some("text/html; charset=utf-16"), 2)), ["é.html"]);
        // The Encoding Standard's replacement: a browser shows nothing.
        let refused = extract_bytes(b"<a href=\"a.html\">a</a>", Some("text/html; charset=iso-2022-kr"), 64);
        assert!(refused.links.is_empty());
        // Shorter than a BOM.
        assert_eq!(extract_bytes(b"<a", None, 1), Found::default());
    }

    #[test]
    fn robots_meta_tags_for_all_and_for_our_token_are_read() {
        let found = extract(r#"<meta name="ROBOTS" content="noindex"><a href="a">a</a>"#, 3);
        assert_eq!(found.directives, Directives { noindex: true, nofollow: false });
        let found = extract(r#"<meta name="trawler" content="none">"#, 3);
        assert_eq!(found.directives, Directives { noindex: true, nofollow: true });
        let found = extract(
            r#"<meta name="otherbot" content="none"><meta name="description" content="nofollow">"#,
            5,
        );
        assert_eq!(found.directives, Directives::default());
        let found = extract(r#"<noscript><meta name="robots" content="nofollow"></noscript>"#, 5);
        assert!(found.directives.nofollow, "a crawler runs no script: noscript markup counts");
    }

    #[test]
    fn a_page_that_says_nofollow_has_its_links_dropped_and_keeps_its_canonical() {
        let page = Url::parse("http://example.org/docs/page.html").unwrap();
        let found = extract(
            r#"<head><meta name="robots" content="nofollow"><link rel="canonical" href="/docs/page.html?utm_source=x#top"></head>
            <a href="a.html">a</a><a href="b.html" rel="nofollow">b</a>"#,
            9,
        );
        assert_eq!(found.canonical.as_deref(), Some("/docs/page.html?utm_source=x#top"));
        let judged = discovery(|_| {}).judge(&page, 0, &found);
        assert!(judged.links.is_empty());
        assert_eq!(judged.dropped.into_iter().collect::<Vec<_>>(), [(DropReason::PageNofollow, 3)]);
        assert_eq!(judged.canonical.as_deref(), Some("http://example.org/docs/page.html"));
        // Robots rules ignored: the page's nofollow too.
        let ignoring = discovery(|_| {}).obeying_robots(false).judge(&page, 0, &found);
        assert_eq!(ignoring.links.len(), 2, "the canonical and a.html");
        // A canonical that is no http(s) URL is not one.
        let mailto = Found { canonical: Some("mailto:x@example.org".into()), ..Found::default() };
        assert_eq!(discovery(|_| {}).judge(&page, 0, &mailto).canonical, None);
    }

    #[test]
    fn hrefs_lose_c0_controls_and_spaces_only_as_a_browser_trims_them() {
        let page = Url::parse("http://example.org/dir/page.html").unwrap();
        let found = extract(
            "<a href=\"&nbsp;x.html\">1</a><a href=\"&nbsp;\">2</a><a href=\" \t/ok/trimmed\n\">3</a>\
             <a href=\"&#x2003;y.html\">4</a><a href=\"&#x3000;\">5</a><a href=\"&nbsp;#top\">6</a>",
            6,
        );
        let judged = discovery(|_| {}).judge(&page, 0, &found);
        let urls: Vec<&str> = judged.links.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://example.org/dir/%C2%A0x.html",
                "http://example.org/dir/%C2%A0",
                "http://example.org/ok/trimmed",
                "http://example.org/dir/%E2%80%83y.html",
                "http://example.org/dir/%E3%80%80",
            ]
        );
        // `&nbsp;#top` is no same-page reference: it is the second link again.
        assert_eq!(found.links.len(), 6);
        assert!(!urls.contains(&page.as_str()), "no link leads back to the page itself");
    }

    #[test]
    fn robots_rule_paths_are_normalized_as_urls_are() {
        for (pattern, normalized) in [
            ("/%7Ejoe/", "/~joe/"),
            ("/%7ejoe/", "/~joe/"),
            ("/%61dmin/", "/admin/"),
            ("/a%3cd.html", "/a%3Cd.html"),
            ("/a<d.html", "/a%3Cd.html"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/%2Fsecret", "/%2Fsecret"),
            ("/%2a", "/%2A"),
            ("/*.php$", "/*.php$"),
            ("*.php", "*.php"),
            ("/*?", "/*?"),
            ("/search?q=%7e&&x", "/search?q=~&x"),
            ("/a/./b/../c", "/a/c"),
            ("/", "/"),
        ] {
            assert_eq!(normalize_path_pattern(pattern), normalized, "{pattern}");
        }
    }

    #[test]
    fn extracts_links_base_and_canonical_across_chunks() {
        let html = r#"<html><head><base href="/docs/"><link rel="canonical" href="/docs/index.html">
            <link rel="stylesheet" href="/style.css"></head>
            <body><a href="a.html">A</a> <a rel="nofollow noopener" href="/private">P</a><area href="map.html"></body>"#;
        let found = extract(html, 7);
        assert_eq!(found.base.as_deref(), Some("/docs/"));
        let links: Vec<(&str, bool)> = found.links.iter().map(|(h, n)| (h.as_str(), *n)).collect();
        assert_eq!(
            links,
            [("/docs/index.html", false), ("a.html", false), ("/private", true), ("map.html", false)]
        );
    }

    #[test]
    fn character_references_in_attributes_are_decoded_as_a_browser_does() {
        let html = r#"<base href="/d&#105;r/"><link rel="canonical" href="/c?x=1&amp;y=2">
            <a href="q.html?a=1&amp;b=2">1</a><a href="f.html?utm_source=x&amp;id=3">2</a>
            <a href="&#104;.html">3</a><a href="p?a=1&copy=2&amp;lang=en&ampx">4</a>
            <a href="&#X2F;root&quot;s">5</a>"#;
        let found = extract(html, 5);
        assert_eq!(found.base.as_deref(), Some("/dir/"));
        let hrefs: Vec<&str> = found.links.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            hrefs,
            [
                "/c?x=1&y=2",
                "q.html?a=1&b=2",
                "f.html?utm_source=x&id=3",
                "h.html",
                // A legacy reference without `;` before `=` or a letter is
                // left as written in an attribute (WHATWG 13.2.5.73).
                "p?a=1&copy=2&lang=en&ampx",
                "/root\"s",
            ]
        );
        let page = Url::parse("http://example.org/").unwrap();
        let judged = discovery(|_| {}).judge(&page, 0, &found);
        let urls: Vec<&str> = judged.links.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://example.org/c?x=1&y=2",
                "http://example.org/dir/q.html?a=1&b=2",
                "http://example.org/dir/f.html?id=3",
                "http://example.org/dir/h.html",
                "http://example.org/dir/p?a=1&copy=2&lang=en&ampx",
                "http://example.org/root%22s",
            ]
        );
    }

    #[test]
    fn links_inside_noscript_are_extracted() {
        let html = r#"<head><noscript><a href="/head-ns">h</a></noscript></head><body>
            <noscript><img src="x.gif"><a href="/no-js.html?a=1&amp;b=2">no JS</a></noscript>
            <a href="/after">after</a></body>"#;
        let found = extract(html, 4);
        let hrefs: Vec<&str> = found.links.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hrefs, ["/head-ns", "/no-js.html?a=1&b=2", "/after"]);
    }

    #[test]
    fn judges_scope_depth_nofollow_and_duplicates() {
        let d = discovery(|_| {});
        let page = Url::parse("http://example.org/docs/page.html").unwrap();
        let found = Found {
            base: None,
            links: vec![
                ("other.html#part".into(), false),
                ("./other.html".into(), false),
                ("http://elsewhere.example/".into(), false),
                ("mailto:x@example.org".into(), false),
                ("/secret".into(), true),
                ("http://[::1".into(), false),
            ],
            overflow: 2,
            ..Found::default()
        };
        let judged = d.judge(&page, 0, &found);
        assert_eq!(
            judged.links,
            [Discovered { url: "http://example.org/docs/other.html".into(), host: "example.org".into() }]
        );
        let mut dropped: Vec<(&str, u64)> =
            judged.dropped.into_iter().map(|(r, n)| (r.as_str(), n)).collect();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                ("invalid_url", 1),
                ("nofollow", 1),
                ("not_http", 1),
                ("out_of_scope", 1),
                ("too_many_links", 2)
            ]
        );
        let at_limit = d.judge(&page, 3, &found);
        assert!(at_limit.links.is_empty());
        assert_eq!(at_limit.dropped.get(&DropReason::Depth), Some(&6));
    }

    #[test]
    fn scope_by_host_registrable_domain_or_any() {
        let page = Url::parse("https://www.example.co.uk/").unwrap();
        let sibling = Url::parse("https://shop.example.co.uk/").unwrap();
        let stranger = Url::parse("https://other.co.uk/").unwrap();
        assert!(!in_scope(Scope::Host, &page, &sibling));
        assert!(in_scope(Scope::Domain, &page, &sibling));
        assert!(!in_scope(Scope::Domain, &page, &stranger), "co.uk is a public suffix, not a domain");
        assert!(in_scope(Scope::Any, &page, &stranger));
        let ip = Url::parse("http://127.0.0.1/").unwrap();
        assert!(
            in_scope(Scope::Domain, &ip, &ip)
                && !in_scope(Scope::Domain, &ip, &Url::parse("http://127.0.0.2/").unwrap())
        );
    }

    #[test]
    fn trap_guards_and_patterns_drop_links() {
        let d = discovery(|c| {
            c.max_url_length = 60;
            c.max_path_segments = 5;
            c.max_repeated_segment = 2;
            c.deny = vec![r"\.pdf$".to_owned()].try_into().unwrap();
            c.allow = vec![r"^http://example\.org/(docs|a)/".to_owned()].try_into().unwrap();
        });
        let page = Url::parse("http://example.org/docs/").unwrap();
        let links = ["a/a/a/x", "a/b/c/d/e", "x.pdf", "/other/", "y", &"z".repeat(80)];
        let found =
            Found { links: links.iter().map(|l| (l.to_string(), false)).collect(), ..Found::default() };
        let judged = d.judge(&page, 0, &found);
        assert_eq!(judged.links.len(), 1);
        assert_eq!(judged.links[0].url, "http://example.org/docs/y");
        let mut dropped: Vec<(&str, u64)> =
            judged.dropped.into_iter().map(|(r, n)| (r.as_str(), n)).collect();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                ("denied", 1),
                ("not_allowed", 1),
                ("repeated_segment", 1),
                ("too_long", 1),
                ("too_many_segments", 1)
            ]
        );
    }

    #[test]
    fn normalization_makes_equivalent_urls_equal() {
        let strip = vec!["utm_*".to_owned(), "sessionid".to_owned()];
        let norm = |s: &str| {
            let mut url = Url::parse(s).unwrap();
            normalize(&mut url, &strip);
            url.to_string()
        };
        let canonical = "http://example.org/a~b/c%2F?q=1";
        for variant in [
            "HTTP://EXAMPLE.org:80/a%7Eb/./x/../c%2f?q=1#frag",
            "http://example.org/a~b/c%2F?utm_source=x&q=1&UTM_Medium=y",
            "http://example.org/a%7eb/c%2F?q=1&SessionId=42",
        ] {
            assert_eq!(norm(variant), canonical, "{variant}");
        }
        assert_eq!(norm("http://example.org/?utm_source=x"), "http://example.org/");
    }
}
