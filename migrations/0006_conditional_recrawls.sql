-- trawler schema, version 6: conditional recrawls (RFC 9110 §13).
--
-- A recrawl sends the validators of the URL's last response (ETag as
-- If-None-Match, Last-Modified as If-Modified-Since); a 304 Not Modified
-- is a successful visit whose attempt has outcome 'not_modified'. The URL
-- keeps its content, and `results` says when that content last changed.
--
-- SQLite cannot change a CHECK constraint in place, so `attempts` is
-- rebuilt with 'not_modified' among its outcomes (sqlite.org/lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"): trawler runs this with
-- foreign keys off and checks them afterwards. Column order, ids and
-- rows are unchanged; the views are dropped first and made again.

DROP VIEW results;
DROP VIEW host_politeness;

CREATE TABLE attempts_v6 (
    id             INTEGER PRIMARY KEY,
    url_id         INTEGER NOT NULL REFERENCES urls (id),
    -- 1 for the first attempt of a visit, 2 for its first retry, ...
    attempt        INTEGER NOT NULL,
    started_at     TEXT    NOT NULL,
    -- The same instant in Unix ms, for gap arithmetic.
    started_ms     INTEGER NOT NULL,
    fetched_at     TEXT    NOT NULL,
    elapsed_ms     INTEGER NOT NULL,
    -- What the crawler decided after this attempt: done, retry or failed;
    -- not_modified: a recrawl answered 304 Not Modified to its validators,
    -- and the URL is done with the content it had (content_type,
    -- body_bytes and body_sha256 are that content's); skipped: a 2xx of a
    -- type fetch.accept_content_types leaves out, whose body was not read
    -- (error_message says which type), and the URL is done.
    outcome        TEXT    NOT NULL CHECK (outcome IN ('done', 'retry', 'failed', 'not_modified', 'skipped')),
    http_status    INTEGER,
    -- NULL when the attempt got a final HTTP response; otherwise one of
    -- timeout, connect, dns, tls, read, protocol, redirect_limit, redirect_loop,
    -- body_too_large, invalid_url, http_status, robots_disallowed,
    -- robots_unreachable, blocked_address.
    error_kind     TEXT,
    error_message  TEXT,
    -- For outcome = 'retry': when the URL becomes due again (RFC 3339 UTC).
    retry_at       TEXT,
    final_url      TEXT,
    -- Redirects followed; redirect_chain is a JSON array of the URLs visited
    -- before final_url (NULL when there were none).
    redirects      INTEGER NOT NULL DEFAULT 0,
    redirect_chain TEXT,
    content_type   TEXT,
    -- Decoded body length and SHA-256 (lower-case hex) of what was read.
    body_bytes     INTEGER,
    body_sha256    TEXT,
    -- Stored only when [store] save_headers / save_body ask for it.
    -- headers is a JSON array of [name, value] pairs.
    headers        TEXT,
    body           BLOB,
    dns_ms         INTEGER,
    ttfb_ms        INTEGER
);

INSERT INTO attempts_v6 SELECT
    id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, outcome, http_status,
    error_kind, error_message, retry_at, final_url, redirects, redirect_chain, content_type,
    body_bytes, body_sha256, headers, body, dns_ms, ttfb_ms
FROM attempts;

DROP TABLE attempts;
ALTER TABLE attempts_v6 RENAME TO attempts;
CREATE INDEX attempts_by_url ON attempts (url_id, id);

-- The validators of the URL's last final response without redirects (RFC
-- 9110 §8.8.3 ETag, §8.8.2 Last-Modified, as sent): the next visit sends
-- them. NULL when it sent none, or the URL redirects (its validators are
-- another URL's).
ALTER TABLE urls ADD COLUMN etag TEXT;
ALTER TABLE urls ADD COLUMN last_modified TEXT;
-- SHA-256 (lower-case hex) of the URL's content: the body of its last
-- 'done' attempt, kept through 'not_modified' ones.
ALTER TABLE urls ADD COLUMN body_sha256 TEXT;
-- When a visit last found content other than the visit before it had (the
-- first visit included), Unix ms; a 304 or an identical body keeps it. For
-- URLs fetched before version 6: when their last 'done' attempt ended.
ALTER TABLE urls ADD COLUMN changed_ms INTEGER;
-- With crawl.adaptive_recrawl: the URL's own recrawl interval in ms, grown
-- when a visit finds it unchanged and shrunk when changed. NULL otherwise.
ALTER TABLE urls ADD COLUMN recrawl_interval_ms INTEGER;

UPDATE urls SET
    body_sha256 = (SELECT body_sha256 FROM attempts
                   WHERE url_id = urls.id AND outcome = 'done' ORDER BY id DESC LIMIT 1),
    changed_ms = (SELECT started_ms + elapsed_ms FROM attempts
                  WHERE url_id = urls.id AND outcome = 'done' ORDER BY id DESC LIMIT 1);

-- One row per input line that named a URL (and per discovered URL), plus one
-- per rejected input line: the URL's state and its last attempt, and when
-- its content last changed (RFC 3339 UTC; NULL before a final response).
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
    u.found_on      AS found_on,
    strftime('%Y-%m-%dT%H:%M:%fZ', u.changed_ms / 1000.0, 'unixepoch') AS changed_at
FROM urls AS u
LEFT JOIN attempts AS a
    ON a.id = (SELECT max(id) FROM attempts WHERE url_id = u.id)
UNION ALL
SELECT
    NULL, e.text, NULL, 'failed', NULL, 'invalid_url', 0, NULL, e.recorded_at,
    NULL, 0, NULL, NULL, NULL,
    e.source || ':' || e.line || ': ' || e.reason,
    0, NULL, NULL
FROM input_errors AS e;

-- As in version 3.
CREATE VIEW host_politeness AS
WITH requests AS (
    SELECT
        u.host,
        a.started_ms,
        CASE WHEN a.redirects = 0 THEN a.http_status END AS http_status
    FROM attempts AS a
    JOIN urls AS u ON u.id = a.url_id
    WHERE a.redirects > 0
       OR a.error_kind IS NULL
       OR a.error_kind NOT IN ('invalid_url', 'robots_disallowed', 'robots_unreachable')
    UNION ALL
    SELECT host, started_ms, http_status FROM redirect_hops
), starts AS (
    SELECT
        host,
        started_ms,
        http_status,
        started_ms - lag(started_ms) OVER (PARTITION BY host ORDER BY started_ms) AS gap_ms
    FROM requests
)
SELECT
    host,
    count(*)               AS requests,
    min(gap_ms)            AS min_gap_ms,
    sum(http_status = 429) AS responses_429,
    sum(http_status = 503) AS responses_503,
    strftime('%Y-%m-%dT%H:%M:%fZ', min(started_ms) / 1000.0, 'unixepoch') AS first_request_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', max(started_ms) / 1000.0, 'unixepoch') AS last_request_at
FROM starts
GROUP BY host;
