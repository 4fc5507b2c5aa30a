-- trawler schema, version 4: bodies stored once, compressed.
--
-- With store.save_body, each distinct body is stored once, zstd-compressed,
-- keyed by the SHA-256 of its decoded bytes (attempts.body_sha256), so a page
-- fetched again unchanged, or served at many URLs, costs nothing more.
-- attempts.body is no longer written (rows from before keep theirs).
CREATE TABLE bodies (
    id       INTEGER PRIMARY KEY,
    -- Lower-case hex SHA-256 of the decoded body: attempts.body_sha256.
    sha256   TEXT    NOT NULL UNIQUE,
    -- The decoded body's length in bytes.
    bytes    INTEGER NOT NULL,
    -- How `data` is encoded: 'zstd' (a zstd frame; `zstd -d` reads it).
    encoding TEXT    NOT NULL CHECK (encoding IN ('zstd')),
    data     BLOB    NOT NULL,
    stored_at TEXT   NOT NULL
);
