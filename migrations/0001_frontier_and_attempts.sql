-- trawler schema, version 1.
--
-- The public interface is the `results` view (one row per input line) plus the
-- tables below; see README.md "The database" for every column. Times that users
-- read are RFC 3339 UTC text; scheduling times the crawler compares are integer
-- Unix milliseconds.

-- The frontier: one row per distinct URL ever enqueued (the durable de-duplication
-- is UNIQUE(url) with INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE urls (
    id          INTEGER PRIMARY KEY,
    url         TEXT    NOT NULL UNIQUE,
    host        TEXT    NOT NULL,
    -- queued: waiting to be claimed once now >= not_before_ms;
    -- in_flight: claimed under `lease` by a running crawler;
    -- done: a final HTTP response was received; failed: a final error.
    state       TEXT    NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'in_flight', 'done', 'failed')),
    -- Attempts made so far (the number of rows in `attempts` for this URL).
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- Earliest time of the next attempt (backoff), Unix ms.
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    -- Lease token of the claim that put the row in flight; NULL otherwise.
    -- A completion carrying another token is stale and changes nothing.
    lease       INTEGER,
    leased_at_ms INTEGER,
    added_at    TEXT    NOT NULL
);

-- What the producer scans: due queued URLs, oldest first.
CREATE INDEX urls_due ON urls (not_before_ms, id) WHERE state = 'queued';
CREATE INDEX urls_in_flight ON urls (lease) WHERE state = 'in_flight';

-- One row per fetch attempt, including retried ones.
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    url_id        INTEGER NOT NULL REFERENCES urls (id),
    -- 1 for the first attempt of a URL, 2 for its first retry, ...
    attempt       INTEGER NOT NULL,
    started_at    TEXT    NOT NULL,
    fetched_at    TEXT    NOT NULL,
    elapsed_ms    INTEGER NOT NULL,
    -- What the crawler decided after this attempt: done, retry or failed.
    outcome       TEXT    NOT NULL CHECK (outcome IN ('done', 'retry', 'failed')),
    http_status   INTEGER,
    -- NULL when the attempt got a final HTTP response; otherwise one of
    -- timeout, connect, dns, tls, read, protocol, redirect_limit, redirect_loop,
    -- body_too_large, invalid_url, http_status.
    error_kind    TEXT,
    error_message TEXT,
    -- For outcome = 'retry': when the URL becomes due again (RFC 3339 UTC).
    retry_at      TEXT,
    final_url     TEXT,
    -- Redirects followed; redirect_chain is a JSON array of the URLs visited
    -- before final_url (NULL when there were none).
    redirects     INTEGER NOT NULL DEFAULT 0,
    redirect_chain TEXT,
    content_type  TEXT,
    -- Decoded body length and SHA-256 (lower-case hex) of what was read.
    body_bytes    INTEGER,
    body_sha256   TEXT,
    -- Stored only when [store] save_headers / save_body ask for it.
    -- headers is a JSON array of [name, value] pairs.
    headers       TEXT,
    body          BLOB
);

CREATE INDEX attempts_by_url ON attempts (url_id, id);

-- Input lines that are not absolute http(s) URLs; the crawl skipped them.
CREATE TABLE input_errors (
    id          INTEGER PRIMARY KEY,
    -- The input file's path as given on the command line, or '-' for stdin.
    source      TEXT    NOT NULL,
    line        INTEGER NOT NULL,
    text        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    UNIQUE (source, line, text)
);

-- One row per input line that named a URL, plus one per rejected input line:
-- the URL's state and its last attempt.
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
    a.error_message AS error_message
FROM urls AS u
LEFT JOIN attempts AS a
    ON a.id = (SELECT max(id) FROM attempts WHERE url_id = u.id)
UNION ALL
SELECT
    NULL, e.text, NULL, 'failed', NULL, 'invalid_url', 0, NULL, e.recorded_at,
    NULL, 0, NULL, NULL, NULL,
    e.source || ':' || e.line || ': ' || e.reason
FROM input_errors AS e;
