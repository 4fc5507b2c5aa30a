-- trawler schema, version 2: recrawl (`crawl.recrawl_after`).
--
-- A finished URL can be fetched again: it goes back to `queued` as a new
-- visit, and its earlier attempts stay in `attempts`.

-- When the URL last became done or failed (Unix ms); kept while it is
-- queued again for a recrawl.
ALTER TABLE urls ADD COLUMN finished_ms INTEGER;
-- When the finished URL is due to be fetched again (Unix ms): finished_ms
-- plus its host's recrawl_after. NULL when it is not finished or no
-- recrawl_after applies.
ALTER TABLE urls ADD COLUMN recrawl_at_ms INTEGER;
-- Times recrawl_after put the URL back in the frontier.
ALTER TABLE urls ADD COLUMN recrawls INTEGER NOT NULL DEFAULT 0;
-- Attempts made before the current visit; the retry limit counts
-- attempts - attempts_before, and attempts.attempt starts at 1 each visit.
ALTER TABLE urls ADD COLUMN attempts_before INTEGER NOT NULL DEFAULT 0;

UPDATE urls
SET finished_ms = (SELECT max(started_ms + elapsed_ms) FROM attempts WHERE attempts.url_id = urls.id)
WHERE state IN ('done', 'failed');

CREATE INDEX urls_recrawl_due ON urls (recrawl_at_ms) WHERE recrawl_at_ms IS NOT NULL;
