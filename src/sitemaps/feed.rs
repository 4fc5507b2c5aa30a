//! Feeds as seeds (`--feed`): the page link of each entry of an RSS (0.9x,
//! 1.0, 2.0), Atom 1.0 or JSON Feed (1.0, 1.1) document, read as a stream
//! that keeps at most the cap's worth of links and builds no tree.
//!
//! A feed may hold a million entries in its 50 MB
//! ([`super::MAX_SITEMAP_BYTES`]); a parser that materializes them all
//! costs 50 times the body (feed-rs did: 1.74 GB for a 33 MB JSON Feed,
//! 1.44 GB for a 34 MB RSS feed). Here XML is read event by event with
//! `quick-xml`, and JSON Feed through `serde` visitors that skip
//! (`IgnoredAny`) everything but each item's `url`, so memory is the body
//! plus the links kept (`benches/feeds.rs`).
//!
//! What an entry's page is: an RSS `<item>`'s `<link>` text; an Atom
//! `<entry>`'s first `<link>` whose `rel` is `alternate` or absent (RFC
//! 4287 §4.2.7.2; enclosures, `edit`, `related` and the rest are not the
//! entry's page), resolved against `xml:base` (RFC 4287 §2) and the feed's
//! URL; a JSON Feed item's `url` (its permalink, not its `external_url`).
//! Only links that are children of the entry count: an Atom entry's
//! `<source>` names another feed.

use std::fmt;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use url::Url;

use super::append_text;

/// The page URLs the entries of a feed at `feed_url` link to, in document
/// order, relative ones resolved (a link that does not resolve is kept as
/// written, for the caller to count as invalid), at most `max`: the rest of
/// the document is not read.
///
/// Errors: malformed XML or JSON before the cap, a root element other than
/// `<rss>`, `<rdf:RDF>` or `<feed>`, or a JSON document that is not a JSON
/// Feed (no `version` naming jsonfeed.org).
pub fn parse_feed(body: &[u8], feed_url: &Url, max: usize) -> Result<Vec<String>, String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => json_feed(body, feed_url, max),
        _ => xml_feed(body, feed_url, max),
    }
}

/// The document kinds an XML feed's root names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<rss>` (0.9x, 2.0) or `<rdf:RDF>` (0.90, 1.0): entries are `<item>`.
    Rss,
    /// `<feed>`: entries are `<entry>`.
    Atom,
}

/// The entry being read.
struct Entry {
    /// Its element's depth (the root's is 1).
    depth: usize,
    /// Its page, once found.
    page: Option<String>,
    /// The text of the RSS `<link>` being read.
    text: Option<String>,
}

/// Where an XML feed's reading stands.
struct XmlFeed<'a> {
    feed_url: &'a Url,
    kind: Option<Kind>,
    /// The depth of the element being read (the root's is 1).
    depth: usize,
    /// The `xml:base` in effect, by the depth of the element that set it.
    bases: Vec<(usize, Url)>,
    entry: Option<Entry>,
    pages: Vec<String>,
}

fn xml_feed(body: &[u8], feed_url: &Url, max: usize) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_reader(body);
    let at =
        |reader: &Reader<&[u8]>, e: &dyn fmt::Display| format!("{e} (at byte {})", reader.error_position());
    let mut feed =
        XmlFeed { feed_url, kind: None, depth: 0, bases: Vec::new(), entry: None, pages: Vec::new() };
    while feed.pages.len() < max {
        let closes = match reader.read_event().map_err(|e| at(&reader, &e))? {
            Event::Start(e) => feed.open(&e, false).map(|()| false),
            Event::Empty(e) => feed.open(&e, true).map(|()| true),
            Event::End(_) => Ok(true),
            text @ (Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)) => {
                match feed.entry.as_mut().and_then(|e| e.text.as_mut()) {
                    Some(so_far) => append_text(&text, so_far).map(|()| false),
                    None => Ok(false),
                }
            }
            Event::Eof => break,
            _ => Ok(false),
        }
        .map_err(|e| at(&reader, &e))?;
        if closes {
            feed.close();
        }
    }
    match feed.kind {
        Some(_) => Ok(feed.pages),
        None => Err("not a feed: no root element".to_owned()),
    }
}

impl XmlFeed<'_> {
    /// The base URL in effect.
    fn base(&self) -> &Url {
        self.bases.last().map_or(self.feed_url, |(_, base)| base)
    }

    /// Reads an element's start (`empty`: it has no content or end).
    fn open(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), String> {
        self.depth += 1;
        let name = e.local_name();
        let kind = match self.kind {
            Some(kind) => kind,
            None => *self.kind.insert(match name.as_ref() {
                b"rss" | b"RDF" => Kind::Rss,
                b"feed" => Kind::Atom,
                other => {
                    let other = String::from_utf8_lossy(other);
                    return Err(format!("not a feed: the root is <{other}>, not <rss>, <rdf:RDF> or <feed>"));
                }
            }),
        };
        if let Some(base) = attribute(e, b"xml:base")?
            && let Ok(base) = self.base().join(base.trim())
        {
            self.bases.push((self.depth, base));
        }
        let Some(entry) = &self.entry else {
            if matches!((kind, name.as_ref()), (Kind::Rss, b"item") | (Kind::Atom, b"entry")) {
                self.entry = Some(Entry { depth: self.depth, page: None, text: None });
            }
            return Ok(());
        };
        if entry.page.is_some() || self.depth != entry.depth + 1 || name.as_ref() != b"link" {
            return Ok(());
        }
        // Atom's `<link href rel>`, in an Atom feed or (as `atom:link`) in
        // RSS; RSS's own `<link>` has the URL as its text.
        let (page, text) = match attribute(e, b"href")? {
            Some(href) => {
                let rel = attribute(e, b"rel")?;
                let alternate = rel.as_deref().is_none_or(|rel| rel.trim() == "alternate");
                (alternate.then(|| resolved(self.base(), &href)), None)
            }
            None => (None, (!empty).then(String::new)),
        };
        let entry = self.entry.as_mut().expect("an entry is being read");
        entry.page = page;
        entry.text = text;
        Ok(())
    }

    /// Reads the end of the element being read.
    fn close(&mut self) {
        if let Some(entry) = &mut self.entry {
            if self.depth == entry.depth + 1
                && let Some(text) = entry.text.take()
            {
                // The end of the RSS `<link>` (an element inside it adds
                // nothing: its text is read as the link's). An empty one is
                // no link, not the feed's own URL.
                if !text.trim().is_empty() {
                    entry.page = Some(resolved(self.bases.last().map_or(self.feed_url, |(_, b)| b), &text));
                }
            } else if self.depth == entry.depth
                && let Some(page) = self.entry.take().and_then(|e| e.page)
            {
                self.pages.push(page);
            }
        }
        self.bases.retain(|(depth, _)| *depth < self.depth);
        self.depth -= 1;
    }
}

/// The value of `e`'s attribute `name` (qualified, as written), unescaped.
fn attribute(e: &BytesStart<'_>, name: &[u8]) -> Result<Option<String>, String> {
    match e.try_get_attribute(name).map_err(|e| e.to_string())? {
        Some(attribute) => {
            let value = attribute.decode_and_unescape_value(e.decoder()).map_err(|e| e.to_string())?;
            Ok(Some(value.into_owned()))
        }
        None => Ok(None),
    }
}

/// `href` resolved against `base`, or as written when it does not resolve.
fn resolved(base: &Url, href: &str) -> String {
    let href = href.trim();
    base.join(href).map_or_else(|_| href.to_owned(), String::from)
}

/// JSON Feed (jsonfeed.org, versions 1 and 1.1): the `url` of the first
/// `max` items that have one; every other value is skipped unread.
fn json_feed(body: &[u8], feed_url: &Url, max: usize) -> Result<Vec<String>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let feed =
        JsonFeed { max }.deserialize(&mut deserializer).map_err(|e| format!("not a JSON Feed: {e}"))?;
    deserializer.end().map_err(|e| format!("not a JSON Feed: {e}"))?;
    match feed.version {
        Some(version) if version.contains("jsonfeed.org/version/") => {
            Ok(feed.urls.iter().map(|url| resolved(feed_url, url)).collect())
        }
        _ => Err("not a JSON Feed: no \"version\" naming jsonfeed.org".to_owned()),
    }
}

/// Reads a JSON Feed's top-level object, keeping its version and at most
/// `max` item URLs.
struct JsonFeed {
    max: usize,
}

/// What [`JsonFeed`] keeps.
struct JsonFeedLinks {
    version: Option<String>,
    urls: Vec<String>,
}

/// The keys of a JSON Feed object that are read; the rest are skipped.
enum Key {
    Version,
    Items,
    Url,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "version" => Key::Version,
                    "items" => Key::Items,
                    "url" => Key::Url,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for JsonFeed {
    type Value = JsonFeedLinks;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for JsonFeed {
    type Value = JsonFeedLinks;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON Feed object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut feed = JsonFeedLinks { version: None, urls: Vec::new() };
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Version => feed.version = map.next_value()?,
                Key::Items => feed.urls = map.next_value_seed(Items { max: self.max })?,
                Key::Url | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(feed)
    }
}

/// Reads a JSON Feed's `items` array, keeping the first `max` URLs.
struct Items {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<String>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut urls = Vec::new();
        while urls.len() < self.max {
            match seq.next_element_seed(Item)? {
                Some(Some(url)) => urls.push(url),
                Some(None) => {}
                None => return Ok(urls),
            }
        }
        // Past the cap: the rest is checked for syntax, not kept.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(urls)
    }
}

/// Reads one item object: its `url`, if it has one.
struct Item;

impl<'de> DeserializeSeed<'de> for Item {
    type Value = Option<String>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Item {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an item object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut url = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Url => url = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_url() -> Url {
        Url::parse("http://news.test/feeds/all").unwrap()
    }

    #[test]
    fn rss_items_give_their_link() {
        let rss = br#"<?xml version="1.0"?>
            <rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>
              <title>t</title><link>http://news.test/</link>
              <atom:link rel="self" href="http://news.test/feeds/all"/>
              <item><title>one</title><link> http://news.test/a?x=1&amp;y=2 </link></item>
              <item><title>relative</title><link><![CDATA[/b]]></link></item>
              <item><title>podcast</title><enclosure url="http://news.test/audio.mp3" length="1" type="audio/mpeg"/></item>
              <item><title>atom link</title><atom:link href="/c"/></item>
              <item><title>empty</title><link> </link><link>/d</link></item>
            </channel></rss>"#;
        assert_eq!(
            parse_feed(rss, &feed_url(), 10).unwrap(),
            ["http://news.test/a?x=1&y=2", "http://news.test/b", "http://news.test/c", "http://news.test/d"],
            "the channel's links and the enclosure are not entries' pages"
        );
        // RSS 1.0: items beside the channel, under rdf:RDF.
        let rdf = br#"<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">
              <channel rdf:about="http://news.test/"><link>http://news.test/</link></channel>
              <item rdf:about="http://news.test/1"><link>http://news.test/1</link></item>
            </rdf:RDF>"#;
        assert_eq!(parse_feed(rdf, &feed_url(), 10).unwrap(), ["http://news.test/1"]);
    }

    #[test]
    fn atom_entries_give_their_alternate_link() {
        let atom = br#"<?xml version="1.0" encoding="utf-8"?>
            <feed xmlns="http://www.w3.org/2005/Atom" xml:base="http://other.test/base/">
              <link rel="self" href="/feed"/>
              <entry><link rel="edit" href="http://news.test/edit/1"/><link rel="alternate" href="http://news.test/1"/>
                <link href="http://news.test/second-alternate"/></entry>
              <entry xml:base="sub/"><link href="2"/></entry>
              <entry><link rel="enclosure" href="http://news.test/3.mp3"/>
                <source><link href="http://elsewhere.test/"/></source></entry>
              <entry><link type="text/html" href="4"/></entry>
            </feed>"#;
        assert_eq!(
            parse_feed(atom, &feed_url(), 10).unwrap(),
            ["http://news.test/1", "http://other.test/base/sub/2", "http://other.test/base/4"],
            "xml:base applies (RFC 4287 §2); an entry's source is another feed's"
        );
    }

    #[test]
    fn a_json_feeds_items_give_their_url() {
        let json = br#"{"version": "https://jsonfeed.org/version/1.1", "title": "t",
            "items": [{"id": "1", "url": "http://news.test/a", "tags": [{"x": [1, 2]}]},
                      {"id": "2", "url": "/b", "external_url": "http://elsewhere.test/"},
                      {"id": "3", "content_text": "no url"}]}"#;
        assert_eq!(parse_feed(json, &feed_url(), 10).unwrap(), ["http://news.test/a", "http://news.test/b"]);
        assert_eq!(parse_feed(json, &feed_url(), 1).unwrap(), ["http://news.test/a"], "capped");
        let bom = [b"\xEF\xBB\xBF".as_slice(), json].concat();
        assert_eq!(parse_feed(&bom, &feed_url(), 10).unwrap().len(), 2);
        assert!(parse_feed(br#"{"items": []}"#, &feed_url(), 10).unwrap_err().contains("jsonfeed.org"));
        assert!(
            parse_feed(br#"{"version": "https://jsonfeed.org/version/1", "items": [}"#, &feed_url(), 10)
                .is_err()
        );
    }

    #[test]
    fn entries_past_the_cap_are_not_read() {
        let mut rss = b"<rss><channel>".to_vec();
        for i in 0..100 {
            rss.extend_from_slice(format!("<item><link>http://news.test/{i}</link></item>").as_bytes());
        }
        rss.extend_from_slice(b"<item><link>broken</item>");
        let pages = parse_feed(&rss, &feed_url(), 100).unwrap();
        assert_eq!((pages.len(), pages[99].as_str()), (100, "http://news.test/99"));
        assert!(parse_feed(&rss, &feed_url(), 101).is_err(), "the syntax error is before the cap");
    }

    #[test]
    fn what_is_not_a_feed_is_an_error() {
        let error = |body: &[u8]| parse_feed(body, &feed_url(), 10).unwrap_err();
        assert!(
            error(b"<html>not a feed</html>").contains("the root is <html>"),
            "{}",
            error(b"<html></html>")
        );
        assert!(error(b"").contains("no root element"));
        assert!(error(b"<rss><channel><item><link>x</item>").contains("at byte"));
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><rss><channel><item><link>http://news.test/caf\xe9</link></item></channel></rss>";
        assert_eq!(parse_feed(latin1, &feed_url(), 10).unwrap(), ["http://news.test/caf%C3%A9"]);
    }
}
