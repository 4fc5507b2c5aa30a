//! The `trawler` binary: parse the command line, load the config, start
//! logging and signal handling, run, and map the result to an exit status:
//! 0 for a finished or gracefully stopped crawl (failed fetches are data),
//! 1 for an operational error (bad config, unusable database or input),
//! 2 for a usage error (clap), 130 when a second signal aborted the crawl.

use std::process::ExitCode;

use clap::Parser;
use trawler::cli::{Cli, Command, EnqueueArgs};
use trawler::config::Config;
use trawler::reload::{LoadConfig, Reloader};
use trawler::report;
use trawler::seeds::SeedSource;
use trawler::store::ExportFilter;
use trawler::{CrawlError, Shutdown, Summary, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, overrides) = match &cli.command {
        Command::Crawl(args) => (&args.flags.common, args.overrides()),
        Command::Run(args) => (&args.flags.common, args.flags.overrides()),
        Command::Enqueue(args) => (&args.common, args.common.overrides()),
        Command::Stats(args) => (&args.common, args.common.overrides()),
        Command::Export(args) => (&args.common, args.common.overrides()),
        Command::Config(common) => (common, common.overrides()),
    };
    let config = match Config::load(common.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trawler: {e}");
            return ExitCode::from(1);
        }
    };
    if let Command::Config(_) = cli.command {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let log_level = telemetry::init(config.log.format, config.log.level.as_str());
    trawler::redact::set_secret_params(&config.log.redact_params);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let status = runtime.block_on(async move {
        match cli.command {
            Command::Crawl(args) => {
                let seeds = args.input.as_deref().map(SeedSource::from_arg);
                run(|shutdown| async move { trawler::crawl(&config, seeds, &shutdown).await }).await
            }
            Command::Run(args) => {
                // SIGHUP loads the config as it was loaded now: same file,
                // environment and flags.
                let (file, overrides) = (args.flags.common.config.clone(), args.flags.overrides());
                let load: LoadConfig = Box::new(move || Config::load(file.as_deref(), &overrides));
                let reloader = match Reloader::new(load, log_level) {
                    Ok(reloader) => reloader,
                    Err(e) => return fail(CrawlError::Io(e)),
                };
                run(|shutdown| async move { trawler::serve(&config, &shutdown, Some(reloader)).await }).await
            }
            Command::Enqueue(args) => enqueue(&config, args).await,
            Command::Stats(args) => match report::stats(&config.store, args.json, std::io::stdout()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            },
            Command::Export(args) => export(&config, args).await,
            Command::Config(_) => unreachable!("handled above"),
        }
    });
    // Everything is committed and the store closed by now. Do not wait for
    // the blocking pool: tokio reads stdin on it, and a read from a pipe that
    // stays open would never return.
    runtime.shutdown_background();
    status
}

/// Runs a crawl (or the service) with signal handling and prints its summary.
async fn run<F, Fut>(crawl: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<Summary, CrawlError>>,
{
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        eprintln!("trawler: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match crawl(shutdown).await {
        Ok(summary) => {
            print!("{summary}");
            if summary.forced { ExitCode::from(130) } else { ExitCode::SUCCESS }
        }
        Err(e) => fail(e),
    }
}

/// `trawler enqueue`: URLs from the arguments, then from `--file` (or `-`).
async fn enqueue(config: &Config, args: EnqueueArgs) -> ExitCode {
    let (listed, stdin): (Vec<&String>, Vec<&String>) = args.urls.iter().partition(|u| u.as_str() != "-");
    let mut sources = Vec::new();
    if !listed.is_empty() {
        let text = listed.iter().map(|u| format!("{u}\n")).collect::<String>();
        sources.push((SeedSource::Arguments, Some(text)));
    }
    if !stdin.is_empty() {
        sources.push((SeedSource::Stdin, None));
    }
    if let Some(file) = &args.file {
        sources.push((SeedSource::from_arg(file), None));
    }
    if sources.is_empty() {
        eprintln!("trawler: enqueue needs URLs, `-` or --file FILE");
        return ExitCode::from(2);
    }
    for (source, text) in sources {
        let result = match text {
            Some(text) => trawler::enqueue(config, &source, text.as_bytes()).await,
            None => match source.open().await {
                Ok(input) => trawler::enqueue(config, &source, input).await,
                Err(e) => Err(e.into()),
            },
        };
        match result {
            Ok(report) => println!(
                "{}: {} new URLs ({} lines, {} already known, {} rejected)",
                source.name(),
                report.new_urls,
                report.lines,
                report.urls - report.new_urls,
                report.invalid
            ),
            Err(e) => return fail(e),
        }
    }
    ExitCode::SUCCESS
}

/// `trawler export`: the `results` rows to stdout.
async fn export(config: &Config, args: trawler::cli::ExportArgs) -> ExitCode {
    let since = match args.since.as_deref().map(report::since).transpose() {
        Ok(since) => since,
        Err(e) => return fail(e),
    };
    let filter = ExportFilter { state: args.state, since };
    match report::export(&config.store, args.format, &filter, std::io::stdout().lock()).await {
        Ok(rows) => {
            tracing::info!(rows, "exported");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Logs an operational error (to stderr, in the configured log format) and
/// returns exit status 1.
fn fail(e: CrawlError) -> ExitCode {
    tracing::error!("{e}");
    ExitCode::from(1)
}
