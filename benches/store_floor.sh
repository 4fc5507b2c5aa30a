#!/bin/sh
# The floor of trawler's storage cost per page, without trawler: the sqlite3
# shell runs the three writes every page needs in the shipped schema
# (migrations/), in batches as the crawler makes them, with no binding, no
# statement preparation per batch and no data crossing a thread:
#   ingest:   INSERT the URL row (its UNIQUE(url) and urls_host_due entries)
#   claim:    UPDATE the batch to in_flight under a lease
#   complete: INSERT the attempt row, UPDATE the URL to done (lease checked)
# Prints the CPU time (user + sys, from `.timer on`) of each phase in µs per
# page. Issue 10's CPU target leaves trawler 0.6 × the bare pool's CPU per
# page for everything it adds (about 12 µs on the benchmark machine); this
# shows how much of that the database alone takes.
#
# Usage: benches/store_floor.sh [URLS] [BATCH]   (defaults 20000 and 256)
set -eu
urls=${1:-20000}
batch=${2:-256}
here=$(dirname "$0")
db=$(mktemp -d)/floor.db
trap 'rm -rf "$(dirname "$db")"' EXIT

{
    echo "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    cat "$here"/../migrations/*.sql
    echo ".timer on"
    echo ".print phase ingest"
    s=0
    while [ "$s" -lt "$urls" ]; do
        echo "BEGIN; INSERT INTO urls (url, host, added_at)
              SELECT 'http://127.0.0.1:8080/page/' || value, '127.0.0.1', '2026-12-06T00:00:00Z'
              FROM generate_series($s, $((s + batch - 1))); COMMIT;"
        s=$((s + batch))
    done
    echo ".print phase claim"
    s=0
    while [ "$s" -lt "$urls" ]; do
        echo "BEGIN; UPDATE urls SET state = 'in_flight', lease = $((s + 1)), leased_at_ms = 1
              WHERE id IN (SELECT id FROM urls WHERE host = '127.0.0.1' AND state = 'queued'
                           AND not_before_ms <= 5 ORDER BY not_before_ms, id LIMIT $batch); COMMIT;"
        s=$((s + batch))
    done
    echo ".print phase complete"
    s=0
    while [ "$s" -lt "$urls" ]; do
        echo "BEGIN;
              INSERT INTO attempts (url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms,
                                    outcome, http_status, content_type, body_bytes, body_sha256)
              SELECT value, 1, '2026-12-06T00:00:00.123Z', 1, '2026-12-06T00:00:00.125Z', 2, 'done', 200,
                     'text/html', 1024, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
              FROM generate_series($((s + 1)), $((s + batch)));
              UPDATE urls SET state = 'done', attempts = 1, lease = NULL, leased_at_ms = NULL, finished_ms = 2
              WHERE id BETWEEN $((s + 1)) AND $((s + batch)) AND lease = $((s + 1));
              COMMIT;"
        s=$((s + batch))
    done
    echo ".print phase end"
} | sqlite3 "$db" | awk -v n="$urls" '
    /^phase / { if (phase != "") printf "%-9s %5.1f µs/page\n", phase, cpu[phase] / n * 1e6; phase = $2; next }
    /^Run Time/ { cpu[phase] += $6 + $8; total += $6 + $8 }
    END { printf "%-9s %5.1f µs/page (sqlite3 %s)\n", "total", total / n * 1e6, v }
' v="$(sqlite3 --version | cut -d' ' -f1)"
