-- trawler schema, version 9: claims live in the crawler's memory.
--
-- A crawler no longer writes its claims to `urls` (a URL being fetched
-- stays 'queued', see store/claims.rs); only how many it holds is kept,
-- in this one-row table, written by each batch of completions. A
-- run that ends without letting go of its claims (a crash) leaves the
-- count above 0, and the next run knows it has URLs to put back and how
-- many. PostgreSQL has the table too, at 0: its claims are rows in flight.

CREATE TABLE claims_held (
    -- URLs the running (or a crashed) crawler held in flight.
    urls INTEGER NOT NULL CHECK (urls >= 0)
);
INSERT INTO claims_held (urls) VALUES (0);
