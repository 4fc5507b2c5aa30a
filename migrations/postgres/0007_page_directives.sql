-- trawler schema for PostgreSQL, version 7: what a page says of itself to
-- crawlers and indexes, as SQLite's 0007_page_directives.sql one directory
-- up, whose comments document each column. noindex is a boolean here
-- (0/1 in SQLite): `WHERE noindex` reads the same on both.

ALTER TABLE attempts ADD COLUMN noindex boolean;
ALTER TABLE attempts ADD COLUMN canonical_url text;
