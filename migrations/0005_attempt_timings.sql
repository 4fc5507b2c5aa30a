-- trawler schema, version 5: DNS time and time to first byte per attempt.
--
-- attempts.dns_ms: milliseconds spent resolving host names over the
-- attempt's requests (redirect hops included). An answer from the resolver's
-- cache takes about 0 ms; NULL when no name was resolved: an IP-literal URL,
-- an attempt that made no request, or a row from before version 5.
ALTER TABLE attempts ADD COLUMN dns_ms INTEGER;
-- attempts.ttfb_ms: milliseconds from the start of the attempt's last
-- request (connecting, TLS and sending included when it needed a new
-- connection) to its response's headers; NULL when it got no response, or
-- for a row from before version 5.
ALTER TABLE attempts ADD COLUMN ttfb_ms INTEGER;
