//! End-to-end crawl benchmark, trawler beside a bare client: for each case the
//! real `trawler` binary crawls N URLs from a local server on 127.0.0.1 into
//! a fresh SQLite database (every attempt and result committed, `synchronous
//! = normal`), and a bare tokio + reqwest worker pool that stores nothing
//! fetches the same URLs from the same server at the same concurrency. Both
//! run as child processes of this one (the bare pool is this binary run again
//! with `--bare-pool`), so pages/s, CPU seconds per 1,000 pages and peak RSS
//! come from the same `wait4` rusage; the server runs in this process.
//!
//! Absolute numbers drift by up to 2× on shared machines from hour to hour;
//! the ratio to the bare pool, measured in the same run, is the figure of
//! record (issue 10). Rounds alternate which of the two goes first, and the
//! table shows the median of each column over the rounds.
//!
//! ```text
//! cargo bench --bench crawl                      # the standard table
//! cargo bench --bench crawl -- [--rounds N] [--urls N] [--workers N] [--latency-ms MS]
//!                              [--page-bytes N] [--save-body] [--random-pages] [--tls]
//!                              [--hosts N [--per-host N]]
//! ```
//! With no case flag, the table has the standard cases: 20,000 URLs of 1 KiB
//! at 0 ms with 64 in flight, and 5,000 URLs at 100 ms with 100 in flight
//! (latency-bound; its ideal is 5.00 s), the first again over HTTPS (`--tls`)
//! and the many-hosts cases (`--hosts N`). Any case flag runs one custom case
//! instead, from those defaults. `--save-body` stores every body
//! (`store.save_body`), and `--random-pages` makes them incompressible; the
//! run then also prints the memory bound of issue 8 (64 MiB + 2 × workers ×
//! `fetch.max_body_bytes`, 10 MiB) and whether peak RSS stayed under it, e.g.
//! `-- --urls 200 --workers 64 --page-bytes 10000000 --save-body --random-pages`.
//!
//! To profile, set `BENCH_WRAPPER` to a command that runs the one after it,
//! e.g. `BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=cg.%p"`
//! (instruction counts: repeatable on a noisy machine) or `"perf record -o
//! perf.%p --"`: both trawler and the bare pool run under it, and the
//! table's numbers then include the wrapper's cost.
//!
//! Targets (issue 10, 2-core machine): on 20,000 / 0 ms / 64, trawler at
//! least 0.7× the bare pool's pages/s and at most 1.6× its CPU per page; on
//! the latency-bound case, at most 1.03× the bare pool's wall time.

#[path = "../tests/integration/server.rs"]
mod server;
#[path = "common/usage.rs"]
mod usage;

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::{Options, TestServer};
use usage::{Measure, wait_with_usage};

/// `fetch.max_body_bytes` for the run: the default, 10 MiB.
const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// One benchmark case: what is served and how many fetches are in flight.
#[derive(Clone)]
struct Case {
    urls: usize,
    workers: usize,
    latency_ms: u64,
    page_bytes: usize,
    save_body: bool,
    random_pages: bool,
    /// 0: every URL on one host, politeness lifted (compared with the bare
    /// pool). Otherwise this many hosts, `urls / hosts` URLs each, under the
    /// default politeness (compared with the politeness ideal).
    hosts: usize,
    /// Over HTTPS (HTTP/1.1, connections reused), with a certificate from a
    /// CA made for the run, which trawler trusts through `fetch.ca_file`
    /// and the bare pool through the same file.
    tls: bool,
}

impl Case {
    /// The many-hosts case of issue 10: `hosts` names under `bench.test`
    /// resolved to loopback by `fetch.resolve`, 10 URLs each, 256 in flight,
    /// answers after 50 ms, default politeness.
    fn many_hosts(hosts: usize) -> Self {
        Self { urls: hosts * 10, workers: 256, latency_ms: 50, hosts, ..Self::default() }
    }

    fn per_host(&self) -> usize {
        self.urls.div_ceil(self.hosts.max(1))
    }

    /// Requests the crawl must make: every URL, and one robots.txt per host.
    fn requests(&self) -> usize {
        self.urls + self.hosts
    }

    /// The shortest possible wall time of a many-hosts case, in seconds: the
    /// larger of what `workers` requests in flight allow (each takes the
    /// latency) and what politeness allows the host that starts last (its
    /// robots.txt, then its URLs, request starts `DEFAULT_DELAY` apart; 2 in
    /// flight never binds while the latency is under the delay). With more
    /// hosts than workers, the first requests of all hosts take
    /// `hosts / workers` waves, so some host's chain starts no earlier than
    /// the last of those waves: at 1,000 hosts and 256 in flight, 150 ms.
    fn ideal_s(&self) -> f64 {
        let latency = self.latency_ms as f64 / 1000.0;
        let by_concurrency = (self.requests() as f64 / self.workers as f64).ceil() * latency;
        let last_start = (self.hosts.saturating_sub(1) / self.workers.max(1)) as f64 * latency;
        let by_politeness = last_start + self.per_host() as f64 * DEFAULT_DELAY.max(latency) + latency;
        by_concurrency.max(by_politeness)
    }

    fn name(&self) -> String {
        if self.hosts > 0 {
            return format!(
                "{} hosts × {} URLs / {} ms / {} in flight",
                self.hosts,
                self.per_host(),
                self.latency_ms,
                self.workers
            );
        }
        let mut name = format!("{} URLs / {} ms / {} in flight", self.urls, self.latency_ms, self.workers);
        if self.page_bytes != 1024 {
            name += &format!(" / {} B", self.page_bytes);
        }
        if self.save_body {
            name += " / bodies";
        }
        if self.tls {
            name += " / HTTPS";
        }
        name
    }
}

impl Default for Case {
    fn default() -> Self {
        Self {
            urls: 20_000,
            workers: 64,
            latency_ms: 0,
            page_bytes: 1024,
            save_body: false,
            random_pages: false,
            hosts: 0,
            tls: false,
        }
    }
}

/// `politeness.per_host_delay`'s default, in seconds (config/trawler.toml).
const DEFAULT_DELAY: f64 = 0.25;

struct Args {
    rounds: usize,
    cases: Vec<Case>,
}

fn parse_args(args: Vec<String>) -> Args {
    let mut rounds = 3;
    let mut custom: Option<Case> = None;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the flag");
        if flag == "--rounds" {
            rounds = value().max(1) as usize;
            continue;
        }
        if !flag.starts_with("--") || flag == "--bench" {
            continue; // cargo passes --bench
        }
        let case = custom.get_or_insert_with(Case::default);
        match flag.as_str() {
            "--urls" => case.urls = value() as usize,
            "--workers" => case.workers = value() as usize,
            "--latency-ms" => case.latency_ms = value(),
            "--page-bytes" => case.page_bytes = value() as usize,
            "--save-body" => case.save_body = true,
            "--random-pages" => case.random_pages = true,
            "--tls" => case.tls = true,
            // First, as it sets the rest of the case to the many-hosts defaults.
            "--hosts" => *case = Case::many_hosts(value() as usize),
            "--per-host" => case.urls = case.hosts.max(1) * value() as usize,
            _ => panic!("unknown flag {flag}"),
        }
    }
    let cases = match custom {
        Some(case) => vec![case],
        None => vec![
            Case::default(),
            Case { tls: true, ..Case::default() },
            Case { urls: 5_000, workers: 100, latency_ms: 100, ..Case::default() },
            Case::many_hosts(1_000),
            Case::many_hosts(10_000),
            Case::many_hosts(100_000),
        ],
    };
    Args { rounds, cases }
}

/// Runs `command` to its end, with its stdout captured; returns the measure
/// and what it printed. Panics when it exits non-zero.
fn measure(mut command: Command) -> (Measure, String) {
    let start = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 in wait_with_usage, which also reads its rusage"
    )]
    let child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start");
    // The output is a few lines: it fits the pipe, so reading after wait4 cannot block the child.
    let usage = wait_with_usage(child.id());
    let wall = start.elapsed();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut out).unwrap();
    assert_eq!(usage.exit, 0, "{command:?} failed:\n{out}");
    (Measure { wall, cpu: usage.cpu, max_rss_kib: usage.max_rss_kib }, out)
}

/// `program`, run under `BENCH_WRAPPER` when that is set.
fn wrapped(program: &str) -> Command {
    match std::env::var("BENCH_WRAPPER") {
        Ok(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().expect("a wrapper command"));
            command.args(words).arg(program);
            command
        }
        Err(_) => Command::new(program),
    }
}

fn run_trawler(case: &Case, input: &Path, dir: &Path, ca_file: &Path) -> (Measure, String) {
    let db = dir.join("bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut command = wrapped(env!("CARGO_BIN_EXE_trawler"));
    command
        .args(["crawl", input.to_str().unwrap(), "--db", db.to_str().unwrap()])
        .args(["--concurrency", &case.workers.to_string()])
        // The default log level, as in production: every fetch then has its
        // span (enabled but not printed).
        .env("RUST_LOG", "info")
        .env("TRAWLER_STORE__SAVE_BODY", case.save_body.to_string())
        .env("TRAWLER_FETCH__MAX_BODY_BYTES", MAX_BODY_BYTES.to_string());
    if case.hosts == 0 {
        // One local host stands in for many: lift the per-host limits so the
        // crawl is bound by the workers, as the targets assume.
        command
            .env("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "100000")
            .env("TRAWLER_POLITENESS__PER_HOST_DELAY", "0s");
        if case.tls {
            let config = dir.join("bench.toml");
            std::fs::write(&config, format!("[fetch]\nca_file = {:?}\n", ca_file.to_str().unwrap())).unwrap();
            command.args(["--config", config.to_str().unwrap()]);
        }
    } else {
        // Many names, one server: `fetch.resolve` sends them all to it.
        let config = dir.join("bench.toml");
        std::fs::write(&config, "[fetch.resolve]\n\"*.bench.test\" = [\"127.0.0.1\"]\n").unwrap();
        command.args(["--config", config.to_str().unwrap()]);
    }
    let (measure, summary) = measure(command);
    assert!(
        summary.contains(&format!("{n} done ({n} × 2xx), 0 failed", n = case.urls)),
        "not every URL succeeded:\n{summary}"
    );
    if case.save_body {
        let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        println!("  database {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
    (measure, summary)
}

/// The smallest gap between two request starts to one host, in ms, over
/// the whole crawl (the `host_politeness` view: fetches and redirect hops;
/// robots.txt requests are not stored).
fn smallest_gap_ms(dir: &Path) -> Option<i64> {
    let db = dir.join("bench.db");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.expect("open the benchmark's database");
        let gap = sqlx::query_scalar("SELECT min(min_gap_ms) FROM host_politeness")
            .fetch_one(&pool)
            .await
            .expect("host_politeness");
        pool.close().await;
        gap
    })
}

fn run_bare(case: &Case, input: &Path, ca_file: &Path) -> Measure {
    let mut command = wrapped(std::env::current_exe().expect("this benchmark's path").to_str().unwrap());
    command.args(["--bare-pool", input.to_str().unwrap(), &case.workers.to_string()]);
    if case.tls {
        command.arg(ca_file);
    }
    let (measure, out) = measure(command);
    assert_eq!(out.trim(), case.urls.to_string(), "the bare pool fetched a different count");
    measure
}

/// The baseline: the pipeline's shape with nothing stored. A producer task
/// sends the URLs into a bounded `async-channel` (room for 4 × `concurrency`
/// jobs, as trawler's), and `concurrency` tokio tasks share one reqwest
/// client (the crate's defaults, with the features trawler builds it with):
/// each takes a URL, reads the whole body, checks for a 2xx and stores
/// nothing. Trusts the CA in `ca_file` too, if given. Prints how many pages
/// it fetched.
fn bare_pool(input: &Path, concurrency: usize, ca_file: Option<&Path>) {
    let urls: Vec<String> = std::io::BufReader::new(std::fs::File::open(input).expect("URL list"))
        .lines()
        .map(|line| line.expect("a line"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fetched = runtime.block_on(async move {
        let mut client = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).expect("the CA file");
            client = client.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("PEM"));
        }
        let client = client.build().expect("client");
        let (jobs, queue) = async_channel::bounded::<String>(concurrency * 4);
        tokio::spawn(async move {
            for url in urls {
                jobs.send(url).await.expect("workers are running");
            }
        });
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, queue) = (client.clone(), queue.clone());
                tokio::spawn(async move {
                    let mut fetched = 0;
                    while let Ok(url) = queue.recv().await {
                        let response = client.get(&url).send().await.expect("fetch");
                        assert!(response.status().is_success(), "{url}: {}", response.status());
                        response.bytes().await.expect("body");
                        fetched += 1;
                    }
                    fetched
                })
            })
            .collect();
        let mut fetched = 0;
        for worker in workers {
            fetched += worker.await.expect("worker");
        }
        fetched
    });
    println!("{fetched}");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// One row of the table: medians over the rounds.
struct Row {
    case: Case,
    trawler: Vec<Measure>,
    bare: Vec<Measure>,
    summary: String,
}

impl Row {
    fn column(runs: &[Measure], f: impl Fn(&Measure) -> f64) -> f64 {
        median(runs.iter().map(f).collect())
    }

    fn print(&self) {
        let n = self.case.urls;
        let (t, b) = (&self.trawler, &self.bare);
        let t_rate = Self::column(t, |m| m.pages_per_s(n));
        let b_rate = Self::column(b, |m| m.pages_per_s(n));
        let t_cpu = Self::column(t, |m| m.cpu_per_1000(n));
        let b_cpu = Self::column(b, |m| m.cpu_per_1000(n));
        println!(
            "| {} | {t_rate:.0} | {b_rate:.0} | {:.2}× | {t_cpu:.4} | {b_cpu:.4} | {:.2}× | {:.1} MiB | {:.1} MiB |",
            self.case.name(),
            t_rate / b_rate,
            t_cpu / b_cpu,
            Self::column(t, Measure::rss_mib),
            Self::column(b, Measure::rss_mib),
        );
    }

    fn print_details(&self) {
        let n = self.case.urls;
        if self.case.latency_ms > 0 {
            let ideal = (n as f64 / self.case.workers as f64).ceil() * self.case.latency_ms as f64 / 1000.0;
            let t_wall = Self::column(&self.trawler, |m| m.wall.as_secs_f64());
            let b_wall = Self::column(&self.bare, |m| m.wall.as_secs_f64());
            println!(
                "{}: trawler {t_wall:.2} s, bare pool {b_wall:.2} s ({:.3}× its wall time), ideal {ideal:.2} s",
                self.case.name(),
                t_wall / b_wall
            );
        }
        if self.case.save_body {
            let bound = 64.0 + 2.0 * self.case.workers as f64 * MAX_BODY_BYTES as f64 / (1024.0 * 1024.0);
            let peak = self.trawler.iter().map(Measure::rss_mib).fold(0.0, f64::max);
            let verdict = if peak <= bound { "within" } else { "OVER" };
            println!(
                "{}: peak RSS {peak:.1} MiB, bound {bound:.0} MiB (64 MiB + 2 x workers x max_body_bytes): {verdict}",
                self.case.name()
            );
        }
    }
}

/// A many-hosts run, against the politeness ideal.
struct HostsRow {
    case: Case,
    run: Measure,
    smallest_gap_ms: Option<i64>,
}

impl HostsRow {
    fn print(&self) {
        let (n, wall) = (self.case.urls, self.run.wall.as_secs_f64());
        let ideal = self.case.ideal_s();
        println!(
            "| {} | {} | {wall:.2} s | {ideal:.2} s | {:.2}× | {:.0} | {:.4} | {:.1} MiB | {} |",
            self.case.name(),
            self.case.requests(),
            ideal / wall,
            self.run.pages_per_s(n),
            self.run.cpu_per_1000(n),
            self.run.rss_mib(),
            self.smallest_gap_ms.map_or("-".to_owned(), |ms| format!("{ms} ms")),
        );
    }
}

fn write_input(case: &Case, server: &TestServer, input: &Path) {
    let mut out = BufWriter::new(std::fs::File::create(input).unwrap());
    let port = server.addr.port();
    // Host by host, as a list made from sitemaps or a site export comes.
    for i in 0..case.urls {
        match case.hosts {
            0 if case.tls => writeln!(out, "https://{}/page/{i}", server.addr),
            0 => writeln!(out, "http://{}/page/{i}", server.addr),
            hosts => {
                let per_host = case.per_host();
                writeln!(out, "http://h{}.bench.test:{port}/page/{i}", (i / per_host) % hosts)
            }
        }
        .unwrap();
    }
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--bare-pool") {
        let concurrency = argv[2].parse().expect("a concurrency");
        return bare_pool(Path::new(&argv[1]), concurrency, argv.get(3).map(Path::new));
    }
    let args = parse_args(std::mem::take(&mut argv));
    // The server in this process holds a connection per fetch in flight and
    // per idle pooled one: thousands, with many hosts.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = server::TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write the CA");
    let (mut rows, mut hosts_rows) = (Vec::new(), Vec::new());
    for case in &args.cases {
        let server = TestServer::with_options(Options {
            latency: Duration::from_millis(case.latency_ms),
            page_bytes: case.page_bytes,
            random_pages: case.random_pages,
            record: false,
            tls: case.tls.then(|| ca.server.clone()),
            ..Options::default()
        });
        let input = dir.path().join("urls.txt");
        write_input(case, &server, &input);
        if case.hosts > 0 {
            // Measured against its ideal, not the bare pool: one run.
            let (run, _) = run_trawler(case, &input, dir.path(), &ca_file);
            let row = HostsRow { case: case.clone(), run, smallest_gap_ms: smallest_gap_ms(dir.path()) };
            println!(
                "{}: {:.2} s, ideal {:.2} s, {:.4} CPU-s/1000, peak RSS {:.1} MiB",
                case.name(),
                run.wall.as_secs_f64(),
                case.ideal_s(),
                run.cpu_per_1000(case.urls),
                run.rss_mib()
            );
            hosts_rows.push(row);
            continue;
        }
        let mut row =
            Row { case: case.clone(), trawler: Vec::new(), bare: Vec::new(), summary: String::new() };
        for round in 0..args.rounds {
            let mut trawler = || {
                let (measure, summary) = run_trawler(case, &input, dir.path(), &ca_file);
                row.trawler.push(measure);
                row.summary = summary;
                measure
            };
            let (t, b) = if round % 2 == 0 {
                let b = run_bare(case, &input, &ca_file);
                (trawler(), b)
            } else {
                let t = trawler();
                (t, run_bare(case, &input, &ca_file))
            };
            row.bare.push(b);
            println!(
                "{} round {}: trawler {:.0} pages/s {:.4} CPU-s/1000, bare pool {:.0} pages/s {:.4} CPU-s/1000",
                case.name(),
                round + 1,
                t.pages_per_s(case.urls),
                t.cpu_per_1000(case.urls),
                b.pages_per_s(case.urls),
                b.cpu_per_1000(case.urls),
            );
        }
        rows.push(row);
    }
    if !rows.is_empty() {
        println!();
        println!("median of {} rounds; CPU is CPU-s per 1,000 pages; RSS is peak RSS", args.rounds);
        println!();
        println!(
            "| case | trawler pages/s | bare pool pages/s | ratio | trawler CPU | bare pool CPU | CPU ratio | trawler RSS | bare pool RSS |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &rows {
            row.print();
        }
        println!();
        for row in &rows {
            row.print_details();
        }
    }
    if !hosts_rows.is_empty() {
        println!();
        println!(
            "many hosts, default politeness (2 per host, 250 ms between starts); the ideal is the larger of \
             requests × latency / in flight and the chain of the host whose robots.txt can start last; \
             ratio = ideal / wall"
        );
        println!();
        println!(
            "| case | requests | wall | ideal | ratio | pages/s | CPU-s/1000 pages | peak RSS | smallest gap to a host |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &hosts_rows {
            row.print();
        }
    }
    if let Some(last) = rows.last() {
        println!("\ntrawler's summary of the last run:\n{}", last.summary);
    }
}
