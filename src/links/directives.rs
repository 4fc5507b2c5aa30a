//! Page-level robots directives: the `<meta name="robots">` tag (and
//! `<meta name="TOKEN">` for trawler's own `robots.user_agent_token`) and
//! the `X-Robots-Tag` response header, as Google documents them ("Robots
//! meta tag, data-nosnippet, and X-Robots-Tag specifications") and Bing
//! reads them. Only what changes a crawler's or an index's behaviour is
//! kept: `noindex`, `nofollow`, and `none` (both); `all`, `index`,
//! `follow` are the defaults, and the snippet and preview rules are an
//! index's business, not a crawler's.
//!
//! Rules for every crawler and rules for this one's token add up: a page
//! saying `robots: nofollow` and `trawler: noindex` is both, as Google
//! combines them ("the more restrictive rule applies").

/// What a page's robots meta tags and `X-Robots-Tag` headers ask of this
/// crawler.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    /// `noindex` or `none`: the page is not to be indexed (recorded on the
    /// attempt, for whoever reads the database).
    pub noindex: bool,
    /// `nofollow` or `none`: the page's links are not to be followed.
    pub nofollow: bool,
}

/// The `X-Robots-Tag` rules whose value contains a `:` of its own, so
/// that `unavailable_after: 2026-01-01` is not read as a rule for a
/// crawler named `unavailable_after`.
const RULES_WITH_VALUES: [&str; 4] =
    ["unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"];

impl Directives {
    /// Both sets of rules: what either asks.
    pub fn union(self, other: Directives) -> Directives {
        Directives { noindex: self.noindex || other.noindex, nofollow: self.nofollow || other.nofollow }
    }

    /// Adds one rule (`noindex`, `NoFollow `, ...), ignoring case and
    /// surrounding space; rules that do not concern a crawler are ignored.
    fn add(&mut self, rule: &str) {
        let rule = rule.trim();
        if rule.eq_ignore_ascii_case("none") {
            (self.noindex, self.nofollow) = (true, true);
        } else if rule.eq_ignore_ascii_case("noindex") {
            self.noindex = true;
        } else if rule.eq_ignore_ascii_case("nofollow") {
            self.nofollow = true;
        }
    }

    /// Adds the rules of a meta tag's `content` (`"noindex, nofollow"`).
    pub fn add_meta_content(&mut self, content: &str) {
        content.split(',').for_each(|rule| self.add(rule));
    }

    /// Whether a meta tag's `name` addresses this crawler: `robots` (every
    /// crawler) or `token` (lower-case), ignoring case.
    pub fn meta_name_applies(name: &str, token: &str) -> bool {
        let name = name.trim();
        name.eq_ignore_ascii_case("robots") || name.eq_ignore_ascii_case(token)
    }

    /// The rules of `X-Robots-Tag` header `values` (one per header line)
    /// for `token` (lower-case). A value is a comma-separated list of rules;
    /// a rule may start with a crawler's name and a colon (`otherbot:
    /// noindex, nofollow`), which makes it and the rules after it, up to the
    /// next name, that crawler's; rules before any name are every
    /// crawler's. A value that is not UTF-8 is read as far as it is ASCII.
    pub fn from_x_robots_tag<'a>(values: impl IntoIterator<Item = &'a [u8]>, token: &str) -> Directives {
        let mut directives = Directives::default();
        for value in values {
            let value = String::from_utf8_lossy(value);
            // Each header line starts with rules for every crawler.
            let mut ours = true;
            for rule in value.split(',') {
                let mut rule = rule.trim();
                if let Some((name, rest)) = rule.split_once(':') {
                    let name = name.trim();
                    if !RULES_WITH_VALUES.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                        ours = name.eq_ignore_ascii_case(token);
                        rule = rest;
                    }
                }
                if ours {
                    directives.add(rule);
                }
            }
        }
        directives
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(values: &[&str]) -> Directives {
        Directives::from_x_robots_tag(values.iter().map(|v| v.as_bytes()), "trawler")
    }

    const NOINDEX: Directives = Directives { noindex: true, nofollow: false };
    const NOFOLLOW: Directives = Directives { noindex: false, nofollow: true };
    const BOTH: Directives = Directives { noindex: true, nofollow: true };

    #[test]
    fn x_robots_tag_rules_for_everyone_and_for_our_token_apply() {
        assert_eq!(header(&["nofollow"]), NOFOLLOW);
        assert_eq!(header(&["NoIndex , NOFOLLOW"]), BOTH);
        assert_eq!(header(&["none"]), BOTH);
        assert_eq!(header(&["trawler: nofollow"]), NOFOLLOW);
        assert_eq!(header(&["Trawler: noindex, nofollow"]), BOTH, "the name's rules run to the next name");
        assert_eq!(header(&["noindex", "trawler: nofollow"]), BOTH, "header lines add up");
        assert_eq!(header(&["all", "index, follow"]), Directives::default());
    }

    #[test]
    fn x_robots_tag_rules_for_other_crawlers_do_not_apply() {
        assert_eq!(header(&["otherbot: noindex, nofollow"]), Directives::default());
        assert_eq!(header(&["otherbot: noindex", "nofollow"]), NOFOLLOW, "a new line is everyone's again");
        assert_eq!(header(&["otherbot: noindex, trawler: nofollow"]), NOFOLLOW);
        assert_eq!(header(&["trawlerbot: none"]), Directives::default(), "a token is matched whole");
        // A rule with a value is not a crawler's name.
        assert_eq!(header(&["unavailable_after: 25 Jun 2010 15:00:00 PST, noindex"]), NOINDEX);
        assert_eq!(header(&["max-snippet: 20, nofollow"]), NOFOLLOW);
    }

    #[test]
    fn meta_tags_name_robots_or_our_token() {
        assert!(Directives::meta_name_applies(" ROBOTS ", "trawler"));
        assert!(Directives::meta_name_applies("Trawler", "trawler"));
        assert!(!Directives::meta_name_applies("googlebot", "trawler"));
        let mut directives = Directives::default();
        directives.add_meta_content("noindex,follow");
        assert_eq!(directives, NOINDEX);
        directives.add_meta_content(" nofollow ");
        assert_eq!(directives, BOTH);
        assert_eq!(NOINDEX.union(NOFOLLOW), BOTH);
    }
}
