-- trawler schema, version 1.
--
-- The public interface is the `results` and `host_politeness` views plus the
-- tables below; README.md ("The database") documents every column. Times
-- that people read are RFC 3339 UTC text; times the crawler schedules by are
-- integer Unix milliseconds (`*_ms`). Later versions only add.

-- The frontier: one row per distinct URL ever enqueued (the durable
-- de-duplication is UNIQUE(url) with INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE urls (
    id            INTEGER PRIMARY KEY,
    url           TEXT    NOT NULL UNIQUE,
    host          TEXT    NOT NULL,
    -- queued: waiting to be claimed once now >= not_before_ms;
    -- in_flight: claimed under `lease` by a running crawler;
    -- done: a final HTTP response was received; failed: a final error.
    state         TEXT    NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'in_flight', 'done', 'failed')),
    -- Attempts made so far (the number of rows in `attempts` for this URL).
    attempts      INTEGER NOT NULL DEFAULT 0,
    -- Earliest time of the next attempt (backoff), Unix ms.
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    -- Lease token of the claim that put the row in flight; NULL otherwise.
    -- A completion carrying another token is stale and changes nothing.
    lease         INTEGER,
    leased_at_ms  INTEGER,
    added_at      TEXT    NOT NULL,
    -- Links followed from a seed to reach it (seeds are 0), and the page it
    -- was first found on (NULL for seeds).
    depth         INTEGER NOT NULL DEFAULT 0,
    found_on      INTEGER REFERENCES urls (id)
);

-- Claims are per host: the next due URLs of one host, oldest first.
CREATE INDEX urls_host_due ON urls (host, not_before_ms, id) WHERE state = 'queued';
CREATE INDEX urls_in_flight ON urls (lease) WHERE state = 'in_flight';

-- One row per host, for scheduling: the producer picks hosts that may be
-- fetched now without scanning past the URLs of hosts that may not.
CREATE TABLE hosts (
    host             TEXT    PRIMARY KEY,
    -- Earliest not_before_ms among the host's queued URLs (Unix ms);
    -- 9223372036854775807 when none is queued. May be early (then a claim
    -- finds nothing and recomputes it), never late.
    work_at_ms       INTEGER NOT NULL DEFAULT 0,
    -- Host-level backoff after 429/503 or repeated connection failures (Unix ms).
    backoff_until_ms INTEGER NOT NULL DEFAULT 0,
    ready_at_ms      INTEGER GENERATED ALWAYS AS (max(work_at_ms, backoff_until_ms)) VIRTUAL,
    -- URLs stored for the host, for discovery.max_pages_per_host.
    urls             INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX hosts_ready ON hosts (ready_at_ms);

-- One row per fetch attempt, including retried ones.
CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY,
    url_id         INTEGER NOT NULL REFERENCES urls (id),
    -- 1 for the first attempt of a URL, 2 for its first retry, ...
    attempt        INTEGER NOT NULL,
    started_at     TEXT    NOT NULL,
    -- The same instant in Unix ms, for gap arithmetic.
    started_ms     INTEGER NOT NULL,
    fetched_at     TEXT    NOT NULL,
    elapsed_ms     INTEGER NOT NULL,
    -- What the crawler decided after this attempt: done, retry or failed.
    outcome        TEXT    NOT NULL CHECK (outcome IN ('done', 'retry', 'failed')),
    http_status    INTEGER,
    -- NULL when the attempt got a final HTTP response; otherwise one of
    -- timeout, connect, dns, tls, read, protocol, redirect_limit, redirect_loop,
    -- body_too_large, invalid_url, http_status, robots_disallowed,
    -- robots_unreachable.
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
    body           BLOB
);

CREATE INDEX attempts_by_url ON attempts (url_id, id);

-- The link graph between stored URLs.
CREATE TABLE links (
    from_id INTEGER NOT NULL REFERENCES urls (id),
    to_id   INTEGER NOT NULL REFERENCES urls (id),
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;

CREATE INDEX links_to ON links (to_id, from_id);

-- Links found on a page and not enqueued, counted by reason.
CREATE TABLE dropped_links (
    url_id INTEGER NOT NULL REFERENCES urls (id),
    -- out_of_scope, depth, nofollow, denied, not_allowed, not_http,
    -- invalid_url, too_long, too_many_segments, repeated_segment,
    -- too_many_links, max_pages, max_pages_per_host
    reason TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (url_id, reason)
) WITHOUT ROWID;

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

-- One row per input line that named a URL (and per discovered URL), plus one
-- per rejected input line: the URL's state and its last attempt.
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

-- Per host: requests made, the smallest gap between two request starts, and
-- how often the host said to slow down.
CREATE VIEW host_politeness AS
WITH starts AS (
    SELECT
        u.host,
        a.started_ms,
        a.http_status,
        a.started_ms - lag(a.started_ms) OVER (PARTITION BY u.host ORDER BY a.started_ms) AS gap_ms
    FROM attempts AS a
    JOIN urls AS u ON u.id = a.url_id
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
