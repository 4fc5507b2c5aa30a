//! trawler's integration tests: one test crate, every test against local
//! servers on 127.0.0.1 that the tests start themselves.
//!
//! - `crawl`: outcomes of fetches as the `results` view shows them
//! - `discovery`: following links: scope, depth, normalization, the link graph
//! - `politeness`: per-host gaps, concurrency and backoff, one host per loopback address
//! - `robots`: robots.txt rules, Crawl-delay and the RFC 9309 error cases
//! - `resume`: stopping and resuming, duplicates, input errors
//! - `store`: lease semantics, locking, schema versions
//! - `process`: the real binary under signals, `kill -9` and a second instance
//! - `service`: `trawler run` as systemd runs it, fed by `trawler enqueue`
//! - `addresses`: `fetch.deny_ips`, however an address is written
//! - `api`: the service's HTTP API
//! - `archive`: `trawler export --format warc`, read back with the `warc` crate
//! - `faults`: a locked database, a failing task, a full disk
//! - `outage`: the database away for a while (sessions ended, connections
//!   refused), past `store.outage_grace`, at start; a write of its own that hangs
//! - `secrets`: no credentials or secret query values in logs or the database
//! - `redirects`: every hop in its host's turn, under its host's robots.txt
//! - `peers`: HTTP broken mid-way: cut and reset bodies, stale keep-alive
//!   connections (on `raw`, a TCP peer that misbehaves on purpose)
//! - `recrawls`: conditional recrawls (304 Not Modified) and adaptive revisit
//! - `reload`: `trawler run` reloading its config on SIGHUP, and recrawling
//! - `requests`: per-host headers, credentials, cookies, proxies and certificates
//! - `tls`: HTTPS with a private CA (`fetch.ca_file`)
//! - `dns`: a DNS server on loopback (`fetch.nameservers`), for names that do not exist
//! - `socks`: a SOCKS5 proxy on loopback whose connections take a while to set up
//! - `logs`: reading what trawler logged (shared with the benches)
//! - `postgres`: the PostgreSQL engine's schema and versions, each test in a
//!   database of its own (skipped, and saying so, without a server)
//! - `scale_out`: three daemons sharing one crawl on PostgreSQL, one of them
//!   stopped, killed or frozen midway

mod addresses;
mod api;
mod archive;
mod crawl;
mod discovery;
mod dns;
mod faults;
mod logs;
mod outage;
mod peers;
mod politeness;
mod postgres;
mod process;
mod raw;
mod recrawls;
mod redirects;
mod reload;
mod requests;
mod resume;
mod robots;
mod scale_out;
mod secrets;
mod server;
mod service;
mod socks;
mod store;
mod tls;
mod util;
