-- trawler schema for PostgreSQL, version 6: conditional recrawls (RFC 9110
-- §13), as SQLite's 0006_conditional_recrawls.sql one directory up, whose
-- comments document each column.

ALTER TABLE attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('done', 'retry', 'failed', 'stale_lease', 'not_modified', 'skipped'));

ALTER TABLE urls ADD COLUMN etag text;
ALTER TABLE urls ADD COLUMN last_modified text;
ALTER TABLE urls ADD COLUMN body_sha256 text;
ALTER TABLE urls ADD COLUMN changed_ms bigint;
ALTER TABLE urls ADD COLUMN recrawl_interval_ms bigint;

UPDATE urls SET
    body_sha256 = (SELECT body_sha256 FROM attempts
                   WHERE url_id = urls.id AND outcome = 'done' ORDER BY id DESC LIMIT 1),
    changed_ms = (SELECT started_ms + elapsed_ms FROM attempts
                  WHERE url_id = urls.id AND outcome = 'done' ORDER BY id DESC LIMIT 1);

-- A view's columns may only be added at its end (CREATE OR REPLACE VIEW).
CREATE OR REPLACE VIEW results AS
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
    u.found_on      AS found_on,
    to_timestamp(u.changed_ms / 1000.0) AS changed_at
FROM urls AS u
LEFT JOIN attempts AS a
    ON a.id = (SELECT max(id) FROM attempts WHERE url_id = u.id AND outcome <> 'stale_lease')
UNION ALL
SELECT
    NULL, e.text, NULL, 'failed', NULL, 'invalid_url', 0, NULL, e.recorded_at,
    NULL, 0, NULL, NULL, NULL,
    e.source || ':' || e.line || ': ' || e.reason,
    0, NULL, NULL
FROM input_errors AS e;
