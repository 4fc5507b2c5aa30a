-- trawler schema, version 2: per-host scheduling.
--
-- `hosts` lets the producer pick hosts that may be fetched now without
-- scanning past the URLs of hosts that may not (a host with a million queued
-- URLs must not delay the others), and keeps host-level backoff across runs.
-- `host_politeness` lets anyone verify the per-host rate from the database.

CREATE TABLE hosts (
    host             TEXT    PRIMARY KEY,
    -- Earliest not_before_ms among the host's queued URLs (Unix ms);
    -- 9223372036854775807 when none is queued. May be early (then a claim
    -- finds nothing and recomputes it), never late.
    work_at_ms       INTEGER NOT NULL DEFAULT 0,
    -- Host-level backoff after 429/503 or repeated connection failures (Unix ms).
    backoff_until_ms INTEGER NOT NULL DEFAULT 0,
    ready_at_ms      INTEGER GENERATED ALWAYS AS (max(work_at_ms, backoff_until_ms)) VIRTUAL
);

CREATE INDEX hosts_ready ON hosts (ready_at_ms);

INSERT INTO hosts (host, work_at_ms)
SELECT host, min(CASE WHEN state IN ('queued', 'in_flight') THEN not_before_ms ELSE 9223372036854775807 END)
FROM urls GROUP BY host;

-- Claims are per host now: the next due URLs of one host, oldest first.
DROP INDEX urls_due;
CREATE INDEX urls_host_due ON urls (host, not_before_ms, id) WHERE state = 'queued';

-- When each request started, in Unix ms, for gap arithmetic.
ALTER TABLE attempts ADD COLUMN started_ms INTEGER;
UPDATE attempts SET started_ms = CAST(round((julianday(started_at) - 2440587.5) * 86400000.0) AS INTEGER);

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
    count(*)                                      AS requests,
    min(gap_ms)                                   AS min_gap_ms,
    sum(http_status = 429)                        AS responses_429,
    sum(http_status = 503)                        AS responses_503,
    strftime('%Y-%m-%dT%H:%M:%fZ', min(started_ms) / 1000.0, 'unixepoch') AS first_request_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', max(started_ms) / 1000.0, 'unixepoch') AS last_request_at
FROM starts
GROUP BY host;
