//! trawler: a polite, durable, queue-based crawler that records every fetch
//! in SQLite.
//!
//! ```text
//! seeds (file/stdin) ─▶ frontier (SQLite: urls) ─▶ producer ─▶ bounded async_channel<Job> ─▶ N workers
//! worker: gate (scope, lease, robots.txt, turn, rate limit, credentials) ─▶ fetch (reqwest) ─▶ retry decision ─▶ writer task ─▶ SQLite (attempts, urls)
//! signals ─▶ cancellation tokens ─▶ producer stops, workers drain, writer flushes, leftovers requeued
//! ```
//!
//! | module | responsibility |
//! |---|---|
//! | [`admin`] | the service's /metrics, /healthz, /readyz |
//! | [`api`] | the service's optional HTTP API: POST /urls, GET /urls/{id} |
//! | [`listen`] | serving those within limits: connections, header and request timeouts |
//! | [`cli`] | the command line (clap) |
//! | [`config`] | layered settings: defaults, TOML, `TRAWLER_*` env, flags |
//! | [`clock`] | the wall clock in Unix ms (stored times) and a monotonic ms count (ages) |
//! | [`telemetry`] | `tracing` set-up (text or JSON, `log.level` / `RUST_LOG` filter, reloadable) |
//! | [`shutdown`] | SIGINT/SIGTERM → stop, then abort |
//! | [`reload`] | SIGHUP → load the config again, apply what can change while running |
//! | [`crawl`] | one crawl: recover the frontier, build the pieces, spawn them, tear them down in order, summarise; its side tasks in `crawl/` |
//! | [`error`] | [`CrawlError`]: what ends a crawl (failed fetches are rows, not errors) |
//! | [`tasks`] | every task on one tracker; the first failure or panic stops the crawl |
//! | [`descriptors`] | the file-descriptor budget: raised and checked at start |
//! | [`service`] | what only `trawler run` adds: endpoints, gauges, recrawl sweep, reloads, watchdog |
//! | [`seeds`] | streaming the input list into the frontier |
//! | [`frontier`] | the producer: claims due URLs of hosts that may be fetched now |
//! | [`politeness`] | per-host concurrency, delay and backoff |
//! | [`links`] | link extraction (lol_html), normalization, scope and trap guards |
//! | [`sitemaps`] | sitemap and sitemap-index seeds (quick-xml) |
//! | [`robots`] | robots.txt (RFC 9309): fetch, cache, verdicts, Crawl-delay |
//! | [`gate`] | the one gate every request passes: scope, lease, robots.txt, politeness, rate limit, credentials by origin |
//! | [`worker`] | a job through the gate, the retry decision, hand to the writer |
//! | [`fetch`] | one HTTP attempt; the only module that knows reqwest (address policy, proxies, redirects, bodies) |
//! | [`retry`] | the pure retry/backoff decision |
//! | [`writer`] | batching completions into transactions |
//! | [`job`] | the crawl's vocabulary: a job, its attempt record, the outcome, the completion |
//! | [`store`] | the frontier interface with lease semantics; what a batch of completions writes is decided once (`store/batch.rs`) above the engines; [`store::Backend`] is what callers hold, one variant per database engine ([`store::sqlite`], [`store::postgres`]) |
//! | [`report`] | `trawler stats` and `trawler export`, read-only |
//! | [`warc`] | `trawler export --format warc`: WARC 1.1 records of the stored responses |
//! | [`redact`] | no credentials, secret query values or control characters in logs |
//! | [`stats`], [`progress`] | counters, summary, progress bar / progress lines |
//! | [`systemd`] | `sd_notify` readiness, stopping, and a watchdog fed by heartbeats |

pub mod admin;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crawl;
pub mod descriptors;
pub mod error;
pub mod fetch;
pub mod frontier;
pub mod gate;
pub mod job;
pub mod links;
pub mod listen;
pub mod politeness;
pub mod progress;
pub mod redact;
pub mod reload;
pub mod report;
pub mod retry;
pub mod robots;
pub mod seeds;
pub mod service;
pub mod shutdown;
pub mod sitemaps;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod tasks;
pub mod telemetry;
pub mod warc;
pub mod worker;
pub mod writer;

pub use crawl::{crawl, enqueue, serve};
pub use error::CrawlError;
pub use shutdown::Shutdown;
pub use stats::Summary;
