-- trawler schema, version 3: link discovery.
--
-- Every URL keeps its depth (seeds are 0) and the page it was first found on;
-- `links` is the link graph between stored URLs; `dropped_links` counts, per
-- page, the links that were not enqueued and why.

ALTER TABLE urls ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE urls ADD COLUMN found_on INTEGER REFERENCES urls (id);

-- URLs stored per host, for discovery.max_pages_per_host.
ALTER TABLE hosts ADD COLUMN urls INTEGER NOT NULL DEFAULT 0;
UPDATE hosts SET urls = (SELECT count(*) FROM urls WHERE urls.host = hosts.host);

CREATE TABLE links (
    from_id INTEGER NOT NULL REFERENCES urls (id),
    to_id   INTEGER NOT NULL REFERENCES urls (id),
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;

CREATE INDEX links_to ON links (to_id, from_id);

CREATE TABLE dropped_links (
    url_id INTEGER NOT NULL REFERENCES urls (id),
    -- out_of_scope, depth, nofollow, denied, not_allowed, not_http,
    -- invalid_url, too_long, too_many_segments, repeated_segment,
    -- too_many_links, max_pages, max_pages_per_host
    reason TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (url_id, reason)
) WITHOUT ROWID;

-- The results view gains depth and found_on (columns are only ever added).
DROP VIEW results;
CREATE VIEW results AS
SELECT
    u.id            AS url_id,
    u.url           AS url,
    u.host          AS host,
    CASE u.state WHEN 'in_flight' THEN 'queued' ELSE u.state END AS state,
    a.http_status   AS http_status,
    a.error_kind    AS error_kind,
    u.attempts      AS attempts,
    a.elapsed_ms    AS elapsed_ms,
    a.fetched_at    AS fetched_at,
    a.final_url     AS final_url,
    a.redirects     AS redirects,
    a.content_type  AS content_type,
    a.body_bytes    AS body_bytes,
    a.body_sha256   AS body_sha256,
    a.error_message AS error_message,
    u.depth         AS depth,
    u.found_on      AS found_on
FROM urls AS u
LEFT JOIN attempts AS a
    ON a.id = (SELECT max(id) FROM attempts WHERE url_id = u.id)
UNION ALL
SELECT
    NULL, e.text, NULL, 'failed', NULL, 'invalid_url', 0, NULL, e.recorded_at,
    NULL, 0, NULL, NULL, NULL,
    e.source || ':' || e.line || ': ' || e.reason,
    0, NULL
FROM input_errors AS e;
