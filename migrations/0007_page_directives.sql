-- trawler schema, version 7: what a page says of itself to crawlers and
-- indexes (robots meta tags, X-Robots-Tag, rel=canonical).
--
-- Two nullable columns on attempts; no row changes. Rows written before
-- version 7 have NULL in both.

-- For a 2xx final response: 1 when it says `noindex` (or `none`) to every
-- crawler or to trawler's own robots.user_agent_token, in its X-Robots-Tag
-- header or, for an HTML page parsed for links (--follow, below
-- max_depth), a <meta name="robots"> / <meta name="TOKEN"> tag; 0 when it
-- does not; NULL when that is not known: no 2xx response, or an HTML page
-- that was not parsed and whose header did not say noindex.
ALTER TABLE attempts ADD COLUMN noindex INTEGER CHECK (noindex IN (0, 1));
-- The page's first <link rel=canonical href>, resolved against its base
-- and normalized as links are (so that it compares with urls.url), for an
-- HTML page parsed for links whose attempt is 'done'. NULL otherwise.
ALTER TABLE attempts ADD COLUMN canonical_url TEXT;

-- dropped_links.reason has a new value, page_nofollow: the page's robots
-- meta tag or X-Robots-Tag says nofollow, so none of its links was
-- followed (unless robots rules are ignored). The full list: out_of_scope,
-- depth, nofollow, denied, not_allowed, not_http, invalid_url, too_long,
-- too_many_segments, repeated_segment, too_many_links, max_pages,
-- max_pages_per_host, page_nofollow.
