-- trawler schema, version 9: claims live in the crawler's memory on
-- SQLite, which counts them here (see migrations/0009_claims_held.sql).
-- PostgreSQL's claims are still rows in flight under a host lease, so
-- the count stays 0; the table keeps both engines' schemas alike.

CREATE TABLE claims_held (
    urls BIGINT NOT NULL CHECK (urls >= 0)
);
INSERT INTO claims_held (urls) VALUES (0);
