//! The command line. Flags override the config file and environment; they are
//! turned into a partial config ([`CrawlArgs::overrides`]) so that one code
//! path (figment + validation) checks every value whatever its source.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "trawler", version, about = "A polite, durable crawler that records every fetch in SQLite")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Crawl the URLs in a file (one per line, `-` for stdin) into a database.
    /// Run the same command again to resume: finished URLs are not fetched again.
    Crawl(CrawlArgs),
    /// Run as a service: crawl what is queued, then wait for URLs that
    /// `trawler enqueue` adds, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Add URLs to a database, also while `trawler run` or `trawler crawl` is
    /// using it; prints how many were new.
    Enqueue(EnqueueArgs),
    /// Summarize a database: frontier, outcomes, top hosts, throughput,
    /// latency. Safe while a crawler runs.
    Stats(StatsArgs),
    /// Write the `results` rows to stdout as JSON lines or CSV, streaming.
    /// Safe while a crawler runs.
    Export(ExportArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(CommonArgs),
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML config file (see config/trawler.toml for every key).
    #[arg(long, short = 'c', env = "TRAWLER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// SQLite database file, or a PostgreSQL database as postgres://user@host/db
    /// [config: store.path, default trawler.db; store.url].
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
    /// Log format [config: log.format]; the filter comes from RUST_LOG (default info).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
pub struct CrawlArgs {
    /// File of URLs, one per line (`#` starts a comment); `-` reads stdin.
    /// Without it, the URLs already queued in the database are crawled.
    #[arg(value_name = "URLS")]
    pub input: Option<String>,
    #[command(flatten)]
    pub flags: CrawlFlags,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: CrawlFlags,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// URLs to add; `-` reads them from stdin, one per line.
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// A file of URLs, one per line (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub file: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: crate::report::ExportFormat,
    /// Only rows in this state.
    #[arg(long, value_parser = ["queued", "done", "failed"])]
    pub state: Option<String>,
    /// Only rows fetched at or after this RFC 3339 time (or date), UTC.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The flags of `crawl` and `run`.
#[derive(Debug, Args)]
pub struct CrawlFlags {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Worker tasks, i.e. fetches in flight at once [config: crawl.concurrency, default 32].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Global cap in requests/s, fractions allowed [config: crawl.rate, default none].
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Total time per attempt, e.g. 30s or 1500ms [config: fetch.timeout].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Attempts per URL, the first included [config: retry.max_attempts, default 4].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// After SIGINT/SIGTERM, how long fetches in flight may finish [config: shutdown.grace, default 10s].
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
    /// Do not fetch or obey robots.txt [config: robots.obey = false]. Only for sites you run.
    #[arg(long)]
    pub ignore_robots: bool,
    /// Follow links in HTML pages, within the [discovery] scope [config: discovery.follow].
    #[arg(long)]
    pub follow: bool,
    /// Follow links from pages up to this depth; seeds are 0 [config: discovery.max_depth, default 3].
    #[arg(long, value_name = "N")]
    pub max_depth: Option<u32>,
    /// A sitemap or sitemap index whose URLs are seeds; repeatable [config: discovery.sitemaps].
    #[arg(long = "sitemap", value_name = "URL")]
    pub sitemaps: Vec<String>,
    /// An RSS or Atom feed whose entries' links are seeds; repeatable [config: discovery.feeds].
    #[arg(long = "feed", value_name = "URL")]
    pub feeds: Vec<String>,
}

impl CommonArgs {
    /// The flags as a partial config; absent flags are absent keys.
    pub fn overrides(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(db) = &self.db {
            match db.to_str().filter(|db| crate::config::is_postgres_url(db)) {
                Some(url) => set(&mut out, "store", "url", json!(url)),
                None => set(&mut out, "store", "path", json!(db)),
            }
        }
        if let Some(format) = self.log_format {
            set(&mut out, "log", "format", json!(format));
        }
        out
    }
}

impl CrawlArgs {
    /// The flags as a partial config; absent flags are absent keys.
    pub fn overrides(&self) -> Map<String, Value> {
        self.flags.overrides()
    }
}

impl CrawlFlags {
    /// The flags as a partial config; absent flags are absent keys.
    pub fn overrides(&self) -> Map<String, Value> {
        let mut out = self.common.overrides();
        if let Some(n) = self.concurrency {
            set(&mut out, "crawl", "concurrency", json!(n));
        }
        if let Some(rate) = self.rate {
            set(&mut out, "crawl", "rate", json!(rate));
        }
        if let Some(timeout) = &self.timeout {
            set(&mut out, "fetch", "timeout", json!(timeout));
        }
        if let Some(n) = self.max_attempts {
            set(&mut out, "retry", "max_attempts", json!(n));
        }
        if let Some(grace) = &self.grace {
            set(&mut out, "shutdown", "grace", json!(grace));
        }
        if self.ignore_robots {
            set(&mut out, "robots", "obey", json!(false));
        }
        if self.follow {
            set(&mut out, "discovery", "follow", json!(true));
        }
        if let Some(depth) = self.max_depth {
            set(&mut out, "discovery", "max_depth", json!(depth));
        }
        if !self.sitemaps.is_empty() {
            set(&mut out, "discovery", "sitemaps", json!(self.sitemaps));
        }
        if !self.feeds.is_empty() {
            set(&mut out, "discovery", "feeds", json!(self.feeds));
        }
        out
    }
}

fn set(out: &mut Map<String, Value>, section: &str, key: &str, value: Value) {
    let table = out.entry(section).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(table) = table {
        table.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn flags_override_the_config() {
        let cli = Cli::parse_from([
            "trawler",
            "crawl",
            "urls.txt",
            "--db",
            "x.db",
            "--timeout",
            "1500ms",
            "--rate",
            "2.5",
            "--max-attempts",
            "2",
            "--grace",
            "3s",
            "--concurrency",
            "5",
        ]);
        let Command::Crawl(args) = cli.command else { panic!("crawl expected") };
        let config = Config::load(None, args.overrides()).unwrap();
        assert_eq!(config.store.path, PathBuf::from("x.db"));
        assert_eq!(config.fetch.timeout, Duration::from_millis(1500));
        assert_eq!(config.crawl.rate, Some(2.5));
        assert_eq!(config.crawl.concurrency.get(), 5);
        assert_eq!(config.retry.max_attempts.get(), 2);
        assert_eq!(config.shutdown.grace, Duration::from_secs(3));
    }

    #[test]
    fn a_postgres_url_in_db_names_a_postgres_database_and_is_printed_without_its_password() {
        let cli =
            Cli::parse_from(["trawler", "stats", "--db", "PostgreSQL://crawler:hunter2@db.internal/crawl"]);
        let Command::Stats(args) = cli.command else { panic!("stats expected") };
        let config = Config::load(None, args.common.overrides()).unwrap();
        assert_eq!(config.store.url.as_deref(), Some("PostgreSQL://crawler:hunter2@db.internal/crawl"));
        assert_eq!(config.store.path, PathBuf::from("trawler.db"), "the SQLite default, unused");
        let printed = config.to_toml();
        assert!(printed.contains("db.internal/crawl") && !printed.contains("hunter2"), "{printed}");

        let cli = Cli::parse_from(["trawler", "stats", "--db", "postgres.db"]);
        let Command::Stats(args) = cli.command else { panic!("stats expected") };
        let config = Config::load(None, args.common.overrides()).unwrap();
        assert_eq!((config.store.url, config.store.path), (None, PathBuf::from("postgres.db")));
    }

    #[test]
    fn a_bad_flag_value_names_its_key() {
        let cli = Cli::parse_from(["trawler", "crawl", "--timeout", "later"]);
        let Command::Crawl(args) = cli.command else { panic!("crawl expected") };
        let err = Config::load(None, args.overrides()).unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
    }
}
