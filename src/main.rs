//! The `trawler` binary: parse the command line, load the config, start
//! logging and signal handling, run, and map the result to an exit status:
//! 0 for a finished or gracefully stopped crawl (failed fetches are data),
//! 1 for an operational error (bad config, unusable database or input),
//! 2 for a usage error (clap), 130 when a second signal aborted the crawl.

use std::process::ExitCode;

use clap::Parser;
use trawler::cli::{Cli, Command};
use trawler::config::Config;
use trawler::seeds::SeedSource;
use trawler::{Shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, overrides) = match &cli.command {
        Command::Crawl(args) => (&args.common, args.overrides()),
        Command::Config(common) => (common, common.overrides()),
    };
    let config = match Config::load(common.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trawler: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Config(_) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Crawl(args) => {
            telemetry::init(config.log.format);
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let status = runtime.block_on(run_crawl(config, args.input.as_deref().map(SeedSource::from_arg)));
            // Everything is committed and the store closed by now. Do not wait
            // for the blocking pool: tokio reads stdin on it, and a read from a
            // pipe that stays open would never return.
            runtime.shutdown_background();
            status
        }
    }
}

async fn run_crawl(config: Config, seeds: Option<SeedSource>) -> ExitCode {
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        eprintln!("trawler: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match trawler::crawl(&config, seeds, &shutdown).await {
        Ok(summary) => {
            print!("{summary}");
            if summary.forced { ExitCode::from(130) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("trawler: {e}");
            ExitCode::from(1)
        }
    }
}
