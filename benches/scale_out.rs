//! Scale-out benchmark (issue 11): one and three `trawler crawl` daemons
//! sharing one crawl on PostgreSQL, each daemon a child process with the
//! same input and concurrency, against a local server on 127.0.0.1 whose
//! hosts are names under `bench.test` (`fetch.resolve`). Also the claim's
//! latency as the frontier grows. Needs PostgreSQL (`TRAWLER_TEST_POSTGRES`,
//! default postgres://postgres@127.0.0.1:5432/postgres); without it, it says
//! so and measures nothing.
//!
//! ```text
//! cargo bench --bench scale_out                 # the standard table
//! cargo bench --bench scale_out -- --no-claims  # without the claim-latency cases
//! cargo bench --bench scale_out -- --case latency --no-claims
//! ```
//!
//! Cases:
//! - latency-bound: 300 hosts x 40 URLs answering after 100 ms, 32 in flight
//!   per daemon, 2 per host and no delay between them (with the default
//!   250 ms, each host's 20 URLs take 5 s and one daemon keeps only ~80 hosts
//!   going: the crawl is then bound by the hosts' chains, not the daemons):
//!   the work is waiting, so three daemons should reach at least 2.7x one
//!   daemon's pages/s, even on two cores;
//! - CPU-bound: 64 hosts x 300 URLs answering at once, 64 in flight per
//!   daemon, per-host limits lifted: pages/s and CPU-s per 1,000 pages of
//!   the daemons and of the PostgreSQL server (every `postgres` process,
//!   from /proc), beside one daemon on SQLite in the same run (target: at
//!   least 10,000 pages/s in all, every attempt committed);
//! - claims: the time of one round of the producer's claim (ready hosts,
//!   then 64 URLs over 64 hosts) with 10,000 and 1,000,000 URLs queued over
//!   1,000 hosts.

#[path = "../tests/integration/server.rs"]
mod server;
#[path = "common/usage.rs"]
mod usage;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::{Options, TestServer};
use sqlx::{Connection, PgConnection};
use trawler::store::{NewUrl, PgStore, Store};
use usage::wait_with_usage;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Case {
    name: &'static str,
    hosts: usize,
    per_host: usize,
    latency_ms: u64,
    workers: usize,
    /// Lift the per-host limits (the CPU-bound case).
    unlimited: bool,
    /// No delay between requests to a host (2 in flight per host still).
    no_delay: bool,
}

impl Case {
    fn urls(&self) -> usize {
        self.hosts * self.per_host
    }
}

/// What one run of `daemons` daemons cost.
struct Run {
    wall: Duration,
    /// The daemons' CPU, summed.
    cpu: Duration,
    /// The PostgreSQL server's CPU over the run.
    server_cpu: Duration,
}

/// CPU time (user + system, own and reaped children's) of every process
/// named `postgres`, from /proc/PID/stat: the server's whole cost, whichever
/// backends came and went (an ended backend's time moves to the postmaster's
/// children's fields).
fn postgres_cpu() -> Duration {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.ends_with("(postgres") {
            continue;
        }
        // Fields after the command: state is field 3, utime 14 .. cstime 17.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields.get(11..15).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum::<u64>();
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

/// Drops the database `name` on the server at `admin_url`.
async fn drop_database(admin_url: &str, name: &str) {
    let mut admin = PgConnection::connect(admin_url).await.expect("connect to PostgreSQL");
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}

/// A fresh database `name` on the server at `admin_url`; returns its URL.
async fn fresh_database(admin_url: &str, name: &str) -> String {
    let mut admin = PgConnection::connect(admin_url).await.expect("connect to PostgreSQL");
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').expect("a database URL ends in /name");
    format!("{base}/{name}")
}

fn write_input(case: &Case, server: &TestServer, input: &Path) {
    let mut out = BufWriter::new(std::fs::File::create(input).unwrap());
    let port = server.addr.port();
    for i in 0..case.urls() {
        writeln!(out, "http://h{}.bench.test:{port}/page/{i}", i / case.per_host).unwrap();
    }
}

/// Enqueues `input` into `db` (not timed: the daemons then share a queued
/// frontier, rather than each reading the same file into it), then runs
/// `daemons` `trawler crawl` processes on `db` (a PostgreSQL URL, or a
/// SQLite path for one daemon) with no input of their own, to the end of
/// the crawl.
fn run(case: &Case, daemons: usize, db: &str, input: &Path, config: &Path) -> Run {
    let enqueued = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["enqueue", "--db", db, "--file", input.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(enqueued.success(), "enqueue failed");
    let empty = input.with_file_name("none.txt");
    std::fs::write(&empty, "").unwrap();
    let server_before = postgres_cpu();
    let start = Instant::now();
    let children: Vec<_> = (0..daemons)
        .map(|_| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_trawler"));
            command
                .args(["crawl", empty.to_str().unwrap(), "--db", db, "--config", config.to_str().unwrap()])
                .args(["--concurrency", &case.workers.to_string()])
                .env("RUST_LOG", "warn");
            if case.unlimited {
                command.env("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "100000");
            }
            if case.unlimited || case.no_delay {
                command.env("TRAWLER_POLITENESS__PER_HOST_DELAY", "0s");
            }
            // Reaped by wait4 in wait_with_usage.
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        })
        .collect();
    let mut cpu = Duration::ZERO;
    for child in children {
        let usage = wait_with_usage(child.id());
        assert_eq!(usage.exit, 0, "a daemon failed");
        cpu += usage.cpu;
    }
    Run { wall: start.elapsed(), cpu, server_cpu: postgres_cpu().saturating_sub(server_before) }
}

/// How many of the URLs in the database at `url` are done.
async fn done_on_postgres(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM results WHERE state = 'done'").fetch_one(&mut db).await.unwrap()
}

/// Of the updates of `urls` in the database at `url` since it was made,
/// how many were HOT (heap-only tuple: no index changed, the row stayed on
/// its page), from `pg_stat_user_tables` (issue 24 reports this ratio).
async fn hot_updates(url: &str) -> (i64, i64) {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'urls'")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// `hot`: the HOT updates of `urls` and all its updates (PostgreSQL).
fn print_row(
    case: &Case,
    engine: &str,
    daemons: usize,
    run: &Run,
    base: Option<f64>,
    hot: Option<(i64, i64)>,
) {
    let n = case.urls() as f64;
    let pages = n / run.wall.as_secs_f64();
    let scaling = base.map_or("".to_owned(), |b| format!("{:.2}x", pages / b));
    let hot = hot.map_or("".to_owned(), |(hot, all)| {
        format!("{hot} of {all} ({:.0} %)", hot as f64 * 100.0 / all.max(1) as f64)
    });
    println!(
        "| {} | {engine} | {daemons} | {:.2} s | {:.0} | {scaling} | {:.3} | {:.3} | {hot} |",
        case.name,
        run.wall.as_secs_f64(),
        pages,
        run.cpu.as_secs_f64() * 1000.0 / n,
        run.server_cpu.as_secs_f64() * 1000.0 / n,
    );
}

/// The median and 99th percentile of one producer round (ready hosts, then
/// a claim of one URL on each of 64 hosts) with `queued` URLs over 1,000
/// hosts, over 200 rounds; each round's URLs go back to the queue after it.
async fn claim_latency(admin_url: &str, queued: usize) -> (Duration, Duration) {
    let name = format!("trawler_bench_claims_{queued}");
    let url = fresh_database(admin_url, &name).await;
    let store = PgStore::open_crawler(
        &url,
        4,
        Duration::from_secs(60),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    for chunk in (0..queued).collect::<Vec<_>>().chunks(10_000) {
        let urls: Vec<NewUrl> = chunk
            .iter()
            .map(|i| NewUrl {
                url: format!("http://h{}.bench.test/page/{i}", i % 1000),
                host: format!("h{}.bench.test", i % 1000),
                depth: 0,
                found_on: None,
            })
            .collect();
        store.enqueue(&urls).await.unwrap();
    }
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut db).await.unwrap();
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = Instant::now();
        let hosts = store.ready_hosts(i64::MAX, &[], 64, 64).await.unwrap();
        let picks: Vec<(String, u32)> = hosts.into_iter().map(|h| (h, 1)).collect();
        let claim = store.claim(i64::MAX, &picks).await.unwrap();
        times.push(start.elapsed());
        assert!(!claim.jobs.is_empty());
        store.release(&[]).await.unwrap();
    }
    store.close().await;
    drop(db);
    drop_database(admin_url, &name).await;
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let admin_url = std::env::var("TRAWLER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Err(e) = runtime.block_on(PgConnection::connect(&admin_url)) {
        println!("scale_out: skipped: no PostgreSQL at {admin_url}: {e}");
        return;
    }
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, "[fetch.resolve]\n\"*.bench.test\" = [\"127.0.0.1\"]\n").unwrap();
    let cases = [
        Case {
            name: "latency-bound",
            hosts: 300,
            per_host: 40,
            latency_ms: 100,
            workers: 32,
            unlimited: false,
            no_delay: true,
        },
        Case {
            name: "CPU-bound",
            hosts: 64,
            per_host: 300,
            latency_ms: 0,
            workers: 64,
            unlimited: true,
            no_delay: true,
        },
    ];
    let only = args.iter().position(|a| a == "--case").and_then(|i| args.get(i + 1));
    println!(
        "| case | engine | daemons | wall | pages/s | vs 1 daemon | daemons' CPU-s/1000 | server CPU-s/1000 | urls updates HOT |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for case in cases.iter().filter(|c| only.is_none_or(|o| c.name.starts_with(o.as_str()))) {
        let server = TestServer::with_options(Options {
            latency: Duration::from_millis(case.latency_ms),
            record: false,
            ..Options::default()
        });
        let input = dir.path().join("urls.txt");
        write_input(case, &server, &input);
        if case.unlimited {
            let db = dir.path().join("bench.db");
            let run = run(case, 1, db.to_str().unwrap(), &input, &config);
            print_row(case, "SQLite", 1, &run, None, None);
        }
        let mut one = None;
        for daemons in [1, 3] {
            let name = format!("trawler_bench_{}_{daemons}", case.name.replace('-', "_").to_lowercase());
            let url = runtime.block_on(fresh_database(&admin_url, &name));
            let run = run(case, daemons, &url, &input, &config);
            assert_eq!(runtime.block_on(done_on_postgres(&url)), case.urls() as i64, "every URL done");
            let hot = runtime.block_on(hot_updates(&url));
            runtime.block_on(drop_database(&admin_url, &name));
            let pages = case.urls() as f64 / run.wall.as_secs_f64();
            print_row(case, "PostgreSQL", daemons, &run, one, Some(hot));
            one.get_or_insert(pages);
        }
    }
    if !args.iter().any(|a| a == "--no-claims") {
        println!();
        println!("| URLs queued (1,000 hosts) | claim round p50 | p99 |");
        println!("|---:|---:|---:|");
        for queued in [10_000, 1_000_000] {
            let (p50, p99) = runtime.block_on(claim_latency(&admin_url, queued));
            println!("| {queued} | {:.2} ms | {:.2} ms |", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
        }
    }
}
