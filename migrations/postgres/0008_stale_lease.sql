-- trawler schema, version 8: a late completion is kept on SQLite too
-- (its attempts table gains the outcome 'stale_lease', which PostgreSQL
-- has had since version 5). Nothing changes here; the version keeps both
-- engines' schemas numbered alike.
SELECT 1;
