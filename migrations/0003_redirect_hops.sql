-- trawler schema, version 3: every request of a redirect chain is recorded,
-- and attempts.error_kind may also be 'blocked_address' (fetch.deny_ips).
--
-- Each redirect hop is a request to its own host, made in that host's turn
-- (its delay, its concurrency, its robots.txt), so `host_politeness` can
-- tell the truth about every host, redirect targets included.

-- The requests an attempt made after its first, one per redirect followed.
-- The first request is the attempt itself (attempts.started_ms, on the
-- URL's host).
CREATE TABLE redirect_hops (
    attempt_id  INTEGER NOT NULL REFERENCES attempts (id),
    -- 1 for the first redirect's target, 2 for the next, ...
    hop         INTEGER NOT NULL,
    url         TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    -- When the request was sent (Unix ms).
    started_ms  INTEGER NOT NULL,
    -- Its response's status; NULL when it got no response.
    http_status INTEGER,
    PRIMARY KEY (attempt_id, hop)
) WITHOUT ROWID;

CREATE INDEX redirect_hops_by_host ON redirect_hops (host, started_ms);

-- Per host: requests made (redirect hops included; attempts that made no
-- request, such as robots.txt refusals, left out), the smallest gap between
-- two request starts, and how often the host said to slow down.
DROP VIEW host_politeness;
CREATE VIEW host_politeness AS
WITH requests AS (
    -- The first request of each attempt, on the URL's host. When it was
    -- redirected, its status was a 3xx: the final status belongs to the
    -- last hop, below.
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
