-- trawler schema, version 8: a late completion is kept on SQLite too.
--
-- An attempt reported after its URL's lease ended (the URL was handed out
-- again meanwhile) is recorded with outcome 'stale_lease' and changes
-- nothing else, as PostgreSQL has done since version 5; before, SQLite
-- dropped it. `results` leaves such attempts out.
--
-- As in version 6, `attempts` is rebuilt to widen its CHECK
-- (sqlite.org/lang_altertable.html, "Making Other Kinds Of Table Schema
-- Changes"), with foreign keys off and checked afterwards; column order,
-- ids and rows are unchanged. The views are dropped first and made again.

DROP VIEW results;
DROP VIEW host_politeness;

CREATE TABLE attempts_v8 (
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
    -- stale_lease: the attempt was reported after its URL's lease ended
    -- (the URL was handed out again): kept, it changed nothing else;
    -- not_modified: a recrawl answered 304 Not Modified to its validators,
    -- and the URL is done with the content it had (content_type,
    -- body_bytes and body_sha256 are that content's); skipped: a 2xx of a
    -- type fetch.accept_content_types leaves out, whose body was not read
    -- (error_message says which type), and the URL is done.
    outcome        TEXT    NOT NULL CHECK (outcome IN ('done', 'retry', 'failed', 'not_modified', 'skipped', 'stale_lease')),
    http_status    INTEGER,
    -- NULL when the attempt got a final HTTP response; otherwise one of
    -- timeout, connect, dns, tls, read, protocol, redirect_limit, redirect_loop,
    -- body_too_large, invalid_url, http_status, robots_disallowed,
    -- robots_unreachable, blocked_address, out_of_scope.
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
    ttfb_ms        INTEGER,
    -- Version 7: what the page says of itself (see 0007_page_directives.sql).
    noindex        INTEGER CHECK (noindex IN (0, 1)),
    canonical_url  TEXT
);

INSERT INTO attempts_v8 SELECT
    id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, outcome, http_status,
    error_kind, error_message, retry_at, final_url, redirects, redirect_chain, content_type,
    body_bytes, body_sha256, headers, body, dns_ms, ttfb_ms, noindex, canonical_url
FROM attempts;

DROP TABLE attempts;
ALTER TABLE attempts_v8 RENAME TO attempts;
CREATE INDEX attempts_by_url ON attempts (url_id, id);

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
    ON a.id = (SELECT max(id) FROM attempts WHERE url_id = u.id AND outcome <> 'stale_lease')
UNION ALL
SELECT
    NULL, e.text, NULL, 'failed', NULL, 'invalid_url', 0, NULL, e.recorded_at,
    NULL, 0, NULL, NULL, NULL,
    e.source || ':' || e.line || ': ' || e.reason,
    0, NULL, NULL
FROM input_errors AS e;

-- As in version 3: every request made, stale_lease attempts included.
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
