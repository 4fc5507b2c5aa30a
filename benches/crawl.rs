//! End-to-end crawl benchmark, trawler beside two baselines: for each case
//! the real `trawler` binary crawls N URLs from a local server on 127.0.0.1
//! into a fresh SQLite database (every attempt and result committed,
//! `synchronous = normal`), and, at the same concurrency from the same
//! server, so do
//!
//! - the **storing pool** (issue 24): the bare pool below plus the least any
//!   crawler that records its work must write per page, the URL row at
//!   ingest, then one attempt row and the URL row's final state, written
//!   plainly with rusqlite into a fresh database (WAL, `synchronous =
//!   NORMAL`, prepared statements; `urls(url UNIQUE)` and an index on
//!   `(state, id)`). Each batch of 256 input lines is inserted with one
//!   `INSERT … ON CONFLICT DO NOTHING RETURNING id, url` before it is
//!   fetched; completions go to the one database thread, up to 256 messages
//!   a transaction. After each run this process checks the rows it stored
//!   (every URL row done, one attempt row each) and stops if they are not.
//!   With `--storing-sqlx` it writes through sqlx, trawler's SQLite driver,
//!   set-based as trawler writes (one multi-row statement per table and
//!   chunk): what the driver costs beside rusqlite.
//! - the **bare pool**: the same tokio + reqwest worker pool (a bounded
//!   `async-channel`, one shared client) that stores nothing.
//!
//! All three run as child processes of this one (the pools are this binary
//! run again with `--storing-pool` or `--bare-pool`), so pages/s, CPU
//! seconds per 1,000 pages and peak RSS come from the same `wait4` rusage;
//! the server runs in this process.
//!
//! Absolute numbers drift by up to 2× on shared machines from hour to hour;
//! the ratios, measured in the same run, are the figures of record (issues
//! 10 and 24): trawler ÷ storing pool, trawler ÷ bare pool and storing ÷
//! bare pool, for pages/s and for CPU per page, on each round's line and in
//! the table. Rounds rotate which of the three goes first, and the table
//! shows the median of each column over the rounds (a ratio there is that
//! of the medians).
//!
//! ```text
//! cargo bench --bench crawl                      # the standard table
//! cargo bench --bench crawl -- [--rounds N] [--urls N] [--workers N] [--latency-ms MS]
//!                              [--page-bytes N] [--save-body] [--random-pages] [--tls]
//!                              [--hosts N [--per-host N]] [--storing-sqlx]
//! cargo bench --bench crawl -- --urls 20000 --latency-ms 0 --workers 64 --rounds 3   # issue 24's case
//! ```
//! With no case flag, the table has the standard cases: 20,000 URLs of 1 KiB
//! at 0 ms with 64 in flight, and 5,000 URLs at 100 ms with 100 in flight
//! (latency-bound; its ideal is 5.00 s), the first again over HTTPS (`--tls`)
//! and the many-hosts cases (`--hosts N`, trawler alone, against the
//! politeness ideal). Any case flag runs one custom case instead, from those
//! defaults. `--save-body` stores every body (`store.save_body`; the storing
//! pool still stores none), and `--random-pages` makes them incompressible;
//! the run then also prints the memory bound of issue 8 (64 MiB + 2 ×
//! workers × `fetch.max_body_bytes`, 10 MiB) and whether peak RSS stayed
//! under it, e.g.
//! `-- --urls 200 --workers 64 --page-bytes 10000000 --save-body --random-pages`.
//!
//! To profile, set `BENCH_WRAPPER` to a command that runs the one after it,
//! e.g. `BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=cg.%p"`
//! (instruction counts: repeatable on a noisy machine) or `"perf record -o
//! perf.%p --"`: trawler and both pools run under it, and the table's
//! numbers then include the wrapper's cost.
//!
//! Targets (2-core machine, SQLite): on 20,000 URLs / 0 ms / 64 in flight,
//! trawler at least 0.7× the storing pool's pages/s and at most 1.6× its
//! CPU per page (issue 10's targets, measured since issue 24 against the
//! storing pool, not the bare one); on the latency-bound case, at most
//! 1.03× the bare pool's wall time. The storing pool itself should cost
//! about what the bare pool does (issue 24 measured 1.02× its pages/s and
//! 0.97× its CPU per page): if it does not, find out why before blaming
//! SQLite.

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
    /// The storing pool writes through sqlx (trawler's SQLite driver: a
    /// thread per connection, each statement a message to it) instead of
    /// rusqlite, the same statements in the same transactions: what the
    /// driver alone costs.
    storing_via_sqlx: bool,
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
        if self.storing_via_sqlx {
            name += " / storing via sqlx";
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
            storing_via_sqlx: false,
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
            "--storing-sqlx" => case.storing_via_sqlx = true,
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

/// `dir/name`, with no database there (nor its WAL and shared memory).
fn fresh_db(dir: &Path, name: &str) -> std::path::PathBuf {
    let db = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    db
}

fn run_trawler(case: &Case, input: &Path, dir: &Path, ca_file: &Path) -> (Measure, String) {
    let db = fresh_db(dir, "bench.db");
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

/// Who crawls in a round: trawler, or one of the baselines (this binary
/// run again with `--storing-pool` or `--bare-pool`).
#[derive(Clone, Copy)]
enum Crawler {
    Trawler,
    Storing,
    Bare,
}

/// Runs `baseline` (not trawler) on the case; for the storing pool, into a
/// fresh `dir/storing.db`, then checks the rows it stored.
fn run_baseline(baseline: Crawler, case: &Case, input: &Path, dir: &Path, ca_file: &Path) -> Measure {
    let mut command = wrapped(std::env::current_exe().expect("this benchmark's path").to_str().unwrap());
    let (input, workers) = (input.to_str().unwrap(), case.workers.to_string());
    let db = fresh_db(dir, "storing.db");
    let name = match baseline {
        Crawler::Bare => {
            command.args(["--bare-pool", input, &workers]);
            "bare pool"
        }
        Crawler::Storing => {
            let mode = if case.storing_via_sqlx { "--storing-pool-sqlx" } else { "--storing-pool" };
            command.args([mode, input, db.to_str().unwrap(), &workers]);
            "storing pool"
        }
        Crawler::Trawler => unreachable!("trawler is no baseline"),
    };
    if case.tls {
        command.arg(ca_file);
    }
    let (measure, out) = measure(command);
    assert_eq!(out.trim(), case.urls.to_string(), "the {name} fetched a different count");
    if let Crawler::Storing = baseline {
        check_stored(&db, case.urls);
    }
    measure
}

/// The URLs of the input file, one a line.
fn read_urls(input: &Path) -> Vec<String> {
    std::io::BufReader::new(std::fs::File::open(input).expect("URL list"))
        .lines()
        .map(|line| line.expect("a line"))
        .collect()
}

/// The baselines' one HTTP client: reqwest's defaults, with the features
/// trawler builds it with, trusting the CA in `ca_file` too, if given.
fn http_client(ca_file: Option<&Path>) -> reqwest::Client {
    let mut client = reqwest::Client::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).expect("the CA file");
        client = client.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("PEM"));
    }
    client.build().expect("client")
}

/// What a baseline learns from one fetch.
struct Page {
    /// The response's status code; always a 2xx (anything else panics).
    status: u16,
    /// The length of the whole body, in bytes.
    body_bytes: usize,
    /// When the request started, in ms since the Unix epoch.
    started_ms: i64,
    /// From the request's start to the body's end, in ms.
    elapsed_ms: i64,
}

/// The baselines' worker pool: `concurrency` tokio tasks share `client`,
/// each takes a job from `queue`, fetches `url(&job)`, reads the whole body,
/// checks for a 2xx and hands the job and its page to `done`. Returns how
/// many pages they fetched once `queue` is closed and empty.
async fn fetch_all<J: Send + 'static>(
    client: reqwest::Client,
    queue: async_channel::Receiver<J>,
    concurrency: usize,
    url: fn(&J) -> &str,
    done: impl Fn(J, Page) + Clone + Send + 'static,
) -> usize {
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, queue, done) = (client.clone(), queue.clone(), done.clone());
            tokio::spawn(async move {
                let mut fetched = 0;
                while let Ok(job) = queue.recv().await {
                    let (started_ms, start) = (unix_ms(), Instant::now());
                    let response = client.get(url(&job)).send().await.expect("fetch");
                    let status = response.status();
                    assert!(status.is_success(), "{}: {status}", url(&job));
                    let body_bytes = response.bytes().await.expect("body").len();
                    let elapsed_ms = start.elapsed().as_millis() as i64;
                    done(job, Page { status: status.as_u16(), body_bytes, started_ms, elapsed_ms });
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
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

/// The first baseline, the bare pool: the pipeline's shape with nothing
/// stored. A producer task sends the URLs into a bounded `async-channel`
/// (room for 4 × `concurrency` jobs, as trawler's), and [`fetch_all`]'s
/// workers fetch them and store nothing. Prints how many pages it fetched.
fn bare_pool(input: &Path, concurrency: usize, ca_file: Option<&Path>) {
    let urls = read_urls(input);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fetched = runtime.block_on(async move {
        let (jobs, queue) = async_channel::bounded::<String>(concurrency * 4);
        tokio::spawn(async move {
            for url in urls {
                jobs.send(url).await.expect("workers are running");
            }
        });
        fetch_all(http_client(ca_file), queue, concurrency, String::as_str, |_, _| {}).await
    });
    println!("{fetched}");
}

/// How many input lines the storing pool inserts at once, and how many
/// messages its database thread writes in one transaction.
const STORE_BATCH: usize = 256;

/// The storing pool's schema: the least a crawler that records its work
/// keeps, a URL row (unique, with its state) and an attempt row per fetch.
const STORE_SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE urls (
        id INTEGER PRIMARY KEY,
        url TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL DEFAULT 'queued'
    );
    CREATE INDEX urls_state ON urls (state, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        url_id INTEGER NOT NULL REFERENCES urls (id),
        http_status INTEGER NOT NULL,
        body_bytes INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        elapsed_ms INTEGER NOT NULL
    );
";

/// URL rows the storing pool inserted, as (id, URL).
type UrlRows = Vec<(i64, String)>;

/// A message to the storing pool's database thread.
enum StoreOp {
    /// Input lines to insert; the rows inserted go back on the reply once
    /// their transaction has committed.
    Ingest(Vec<String>, tokio::sync::oneshot::Sender<UrlRows>),
    /// A finished fetch of the URL row with this id.
    Complete(i64, Page),
}

/// The second baseline, the storing pool: the bare pool plus the least any
/// crawler that records its work must write per page, written plainly
/// (issue 24). The producer sends each batch of [`STORE_BATCH`] input lines
/// to the database thread ([`write_loop`]), which inserts them into a fresh
/// database at `db`; once committed, their rows are the jobs (the next batch
/// is inserted while they are fetched). Each completion goes to the same
/// thread, which writes its attempt row and its URL row's final state.
/// Prints how many pages it fetched once all is committed.
fn storing_pool(input: &Path, db: &Path, concurrency: usize, ca_file: Option<&Path>, via_sqlx: bool) {
    let urls = read_urls(input);
    let store = rusqlite::Connection::open(db).expect("open the storing pool's database");
    store.execute_batch(STORE_SCHEMA).expect("the storing pool's schema");
    let (writes, inbox) = std::sync::mpsc::channel();
    let database = match via_sqlx {
        false => std::thread::spawn(move || write_loop(store, &inbox)),
        true => {
            drop(store);
            let db = db.to_owned();
            std::thread::spawn(move || write_loop_sqlx(&db, &inbox))
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fetched = runtime.block_on(async move {
        let (jobs, queue) = async_channel::bounded(concurrency * 4);
        let ingest = writes.clone();
        tokio::spawn(async move {
            let mut urls = urls.into_iter();
            let mut ingest_next = || {
                let batch: Vec<String> = urls.by_ref().take(STORE_BATCH).collect();
                if batch.is_empty() {
                    return None;
                }
                let (reply, inserted) = tokio::sync::oneshot::channel();
                ingest.send(StoreOp::Ingest(batch, reply)).expect("the database thread is running");
                Some(inserted)
            };
            let mut next = ingest_next();
            while let Some(inserted) = next {
                let inserted = inserted.await.expect("the batch's rows");
                next = ingest_next();
                for job in inserted {
                    jobs.send(job).await.expect("workers are running");
                }
            }
        });
        let done = move |(id, _): (i64, String), page| {
            writes.send(StoreOp::Complete(id, page)).expect("the database thread is running");
        };
        fetch_all(http_client(ca_file), queue, concurrency, |(_, url)| url, done).await
    });
    // Every sender is gone with the workers: the thread commits and ends.
    database.join().expect("the database thread");
    println!("{fetched}");
}

/// How long the database thread lets completions gather for one
/// transaction, and how often it looks for more meanwhile.
const STORE_LINGER: Duration = Duration::from_millis(10);
const STORE_TICK: Duration = Duration::from_millis(1);

/// The storing pool's database thread: gathers a transaction's messages
/// ([`gather`]), writes them ([`write_batch`]), commits, then answers the
/// ingests among them. Returns when every sender is gone; panics on any
/// database error.
fn write_loop(mut store: rusqlite::Connection, inbox: &std::sync::mpsc::Receiver<StoreOp>) {
    let mut batch = Vec::with_capacity(STORE_BATCH);
    while let Ok(first) = inbox.recv() {
        batch.push(first);
        gather(inbox, &mut batch);
        let tx = store.transaction().expect("begin");
        let replies = write_batch(&tx, batch.drain(..));
        tx.commit().expect("commit");
        for (reply, rows) in replies {
            let _ = reply.send(rows);
        }
    }
}

/// [`write_loop`] through sqlx instead of rusqlite (`--storing-sqlx`): one
/// `SqliteConnection` (WAL, `synchronous = NORMAL`, sqlx's statement
/// cache), driven from this thread by a runtime of its own, the same
/// batches and transactions. Each statement is a message to sqlx's thread
/// for the connection, so a transaction's completions are written as
/// trawler writes them, set-based: their attempt rows in one multi-row
/// `INSERT` and their URL rows in one `UPDATE`, for each chunk of 256, 64,
/// 16 or 1 (a few statement texts, which sqlx prepares once).
fn write_loop_sqlx(db: &Path, inbox: &std::sync::mpsc::Receiver<StoreOp>) {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut store = runtime.block_on(sqlx::SqliteConnection::connect_with(&options)).expect("open");
    let mut batch = Vec::with_capacity(STORE_BATCH);
    while let Ok(first) = inbox.recv() {
        batch.push(first);
        gather(inbox, &mut batch);
        let replies = runtime.block_on(async {
            let mut tx = store.begin().await.expect("begin");
            let (mut replies, mut done) = (Vec::new(), Vec::new());
            for op in batch.drain(..) {
                match op {
                    StoreOp::Ingest(urls, reply) => {
                        let sql = insert_urls_sql(urls.len());
                        let insert = urls.iter().fold(sqlx::query_as(&sql), |q, url| q.bind(url));
                        replies.push((reply, insert.fetch_all(&mut *tx).await.expect("insert the URLs")));
                    }
                    StoreOp::Complete(id, page) => done.push((id, page)),
                }
            }
            let mut rest = &done[..];
            while !rest.is_empty() {
                let n = [256, 64, 16, 1].into_iter().find(|&n| n <= rest.len()).expect("1 fits");
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let values = vec!["(?, ?, ?, ?, ?)"; n].join(", ");
                let sql = format!(
                    "INSERT INTO attempts (url_id, http_status, body_bytes, started_ms, elapsed_ms) VALUES {values}"
                );
                let insert = chunk.iter().fold(sqlx::query(&sql), |q, (id, page)| {
                    q.bind(id).bind(page.status).bind(page.body_bytes as i64).bind(page.started_ms).bind(page.elapsed_ms)
                });
                insert.execute(&mut *tx).await.expect("insert the attempts");
                let sql = format!("UPDATE urls SET state = 'done' WHERE id IN ({})", vec!["?"; n].join(", "));
                let update = chunk.iter().fold(sqlx::query(&sql), |q, (id, _)| q.bind(id));
                let updated = update.execute(&mut *tx).await.expect("update the URLs");
                assert_eq!(updated.rows_affected(), n as u64, "URL rows");
            }
            tx.commit().await.expect("commit");
            replies
        });
        for (reply, rows) in replies {
            let _ = reply.send(rows);
        }
    }
}

/// Adds what waits in `inbox` to `batch`, up to [`STORE_BATCH`] messages,
/// and, while no ingest is among them (the producer waits for its rows),
/// looks again every [`STORE_TICK`] for up to [`STORE_LINGER`]. Without
/// that wait the thread, faster than the workers, commits every few pages:
/// ten times the commits (each a WAL append and its locks, and more
/// checkpoints) for the same rows. Returns early once every sender is gone.
fn gather(inbox: &std::sync::mpsc::Receiver<StoreOp>, batch: &mut Vec<StoreOp>) {
    use std::sync::mpsc::TryRecvError;
    let deadline = Instant::now() + STORE_LINGER;
    let mut urgent = batch.iter().any(|op| matches!(op, StoreOp::Ingest(..)));
    while batch.len() < STORE_BATCH {
        match inbox.try_recv() {
            Ok(op) => {
                urgent |= matches!(op, StoreOp::Ingest(..));
                batch.push(op);
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) if urgent || Instant::now() >= deadline => return,
            Err(TryRecvError::Empty) => std::thread::sleep(STORE_TICK),
        }
    }
}

/// Writes one transaction's messages with prepared statements: an ingest's
/// URL rows in one statement (returning the (id, URL) of those inserted,
/// for the reply), a completion's attempt row and its URL row's final state.
fn write_batch(
    tx: &rusqlite::Transaction,
    batch: impl Iterator<Item = StoreOp>,
) -> Vec<(tokio::sync::oneshot::Sender<UrlRows>, UrlRows)> {
    let mut insert_attempt = tx
        .prepare_cached(
            "INSERT INTO attempts (url_id, http_status, body_bytes, started_ms, elapsed_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .expect("prepare");
    let mut finish = tx.prepare_cached("UPDATE urls SET state = 'done' WHERE id = ?1").expect("prepare");
    let mut replies = Vec::new();
    for op in batch {
        match op {
            StoreOp::Ingest(urls, reply) => {
                // One statement for the batch: SQLite gathers RETURNING's
                // rows in an ephemeral table, made and dropped at each
                // execution, which per line cost as much as the insert.
                // Their order is arbitrary, so each names its URL; a
                // duplicate line returns none, being queued already.
                let mut insert_urls = tx.prepare_cached(&insert_urls_sql(urls.len())).expect("prepare");
                let rows = insert_urls
                    .query_map(rusqlite::params_from_iter(&urls), |row| Ok((row.get(0)?, row.get(1)?)))
                    .expect("insert the URLs")
                    .collect::<Result<UrlRows, _>>()
                    .expect("the inserted rows");
                replies.push((reply, rows));
            }
            StoreOp::Complete(id, page) => {
                let Page { status, body_bytes, started_ms, elapsed_ms } = page;
                insert_attempt
                    .execute((id, status, body_bytes as i64, started_ms, elapsed_ms))
                    .expect("insert the attempt");
                assert_eq!(finish.execute([id]).expect("update the URL"), 1, "URL row {id}");
            }
        }
    }
    replies
}

/// The storing pool's insert of `n` URL rows, returning the (id, URL) of
/// each row inserted.
fn insert_urls_sql(n: usize) -> String {
    let values = vec!["(?)"; n].join(", ");
    format!("INSERT INTO urls (url) VALUES {values} ON CONFLICT DO NOTHING RETURNING id, url")
}

/// Checks, from this process, that the storing pool stored what it should:
/// `urls` rows, all done, each with exactly one attempt row. Panics if not.
fn check_stored(db: &Path, urls: usize) {
    let store = rusqlite::Connection::open(db).expect("open the storing pool's database");
    let count = |sql: &str| -> usize {
        store.query_row(sql, [], |row| row.get::<_, i64>(0)).expect(sql).try_into().expect("a count")
    };
    let counts = [
        count("SELECT count(*) FROM urls"),
        count("SELECT count(*) FROM urls WHERE state = 'done'"),
        count("SELECT count(*) FROM attempts"),
        count("SELECT count(DISTINCT url_id) FROM attempts"),
    ];
    assert_eq!(
        counts, [urls; 4],
        "the storing pool stored [URL rows, done, attempt rows, URLs attempted] = {counts:?}, not {urls} each"
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// One value for each of the three crawlers of a round.
#[derive(Default)]
struct Three<T> {
    trawler: T,
    storing: T,
    bare: T,
}

impl<T> Three<T> {
    fn get_mut(&mut self, crawler: Crawler) -> &mut T {
        match crawler {
            Crawler::Trawler => &mut self.trawler,
            Crawler::Storing => &mut self.storing,
            Crawler::Bare => &mut self.bare,
        }
    }

    fn map<U>(&self, f: impl Fn(&T) -> U) -> Three<U> {
        Three { trawler: f(&self.trawler), storing: f(&self.storing), bare: f(&self.bare) }
    }
}

impl Three<f64> {
    /// Trawler ÷ storing pool, trawler ÷ bare pool, storing ÷ bare pool.
    fn ratios(&self) -> [f64; 3] {
        [self.trawler / self.storing, self.trawler / self.bare, self.storing / self.bare]
    }
}

/// One round's line: each crawler's pages/s and CPU, and their ratios.
fn print_round(case: &Case, round: usize, runs: &Three<Measure>) {
    let n = case.urls;
    let (rate, cpu) = (runs.map(|m| m.pages_per_s(n)), runs.map(|m| m.cpu_per_1000(n)));
    let ([rt_s, rt_b, rs_b], [ct_s, ct_b, cs_b]) = (rate.ratios(), cpu.ratios());
    println!(
        "{} round {round}: trawler {:.0} pages/s {:.4} CPU-s/1000, storing pool {:.0} pages/s {:.4} CPU-s/1000, \
         bare pool {:.0} pages/s {:.4} CPU-s/1000; pages/s ratios (CPU ratios): trawler ÷ storing {rt_s:.2}× \
         ({ct_s:.2}×), trawler ÷ bare {rt_b:.2}× ({ct_b:.2}×), storing ÷ bare {rs_b:.2}× ({cs_b:.2}×)",
        case.name(),
        rate.trawler,
        cpu.trawler,
        rate.storing,
        cpu.storing,
        rate.bare,
        cpu.bare,
    );
}

/// One row of the table: medians over the rounds.
struct Row {
    case: Case,
    runs: Three<Vec<Measure>>,
    summary: String,
}

impl Row {
    fn column(&self, f: impl Fn(&Measure) -> f64) -> Three<f64> {
        self.runs.map(|runs| median(runs.iter().map(&f).collect()))
    }

    const HEADER: &str = "| case | trawler pages/s | storing pool pages/s | bare pool pages/s \
        | trawler ÷ storing | trawler ÷ bare | storing ÷ bare \
        | trawler CPU | storing pool CPU | bare pool CPU \
        | CPU trawler ÷ storing | CPU trawler ÷ bare | CPU storing ÷ bare \
        | trawler RSS | storing pool RSS | bare pool RSS |\n\
        |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    fn print(&self) {
        let n = self.case.urls;
        let (rate, cpu, rss) = (
            self.column(|m| m.pages_per_s(n)),
            self.column(|m| m.cpu_per_1000(n)),
            self.column(Measure::rss_mib),
        );
        let ([rt_s, rt_b, rs_b], [ct_s, ct_b, cs_b]) = (rate.ratios(), cpu.ratios());
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {rt_s:.2}× | {rt_b:.2}× | {rs_b:.2}× | {:.4} | {:.4} | {:.4} \
             | {ct_s:.2}× | {ct_b:.2}× | {cs_b:.2}× | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            self.case.name(),
            rate.trawler,
            rate.storing,
            rate.bare,
            cpu.trawler,
            cpu.storing,
            cpu.bare,
            rss.trawler,
            rss.storing,
            rss.bare,
        );
    }

    fn print_details(&self) {
        let n = self.case.urls;
        if self.case.latency_ms > 0 {
            let ideal = (n as f64 / self.case.workers as f64).ceil() * self.case.latency_ms as f64 / 1000.0;
            let wall = self.column(|m| m.wall.as_secs_f64());
            println!(
                "{}: trawler {:.2} s, storing pool {:.2} s, bare pool {:.2} s ({:.3}× its wall time), ideal {ideal:.2} s",
                self.case.name(),
                wall.trawler,
                wall.storing,
                wall.bare,
                wall.trawler / wall.bare
            );
        }
        if self.case.save_body {
            let bound = 64.0 + 2.0 * self.case.workers as f64 * MAX_BODY_BYTES as f64 / (1024.0 * 1024.0);
            let peak = self.runs.trawler.iter().map(Measure::rss_mib).fold(0.0, f64::max);
            let verdict = if peak <= bound { "within" } else { "OVER" };
            println!(
                "{}: peak RSS {peak:.1} MiB, bound {bound:.0} MiB (64 MiB + 2 x workers x max_body_bytes): {verdict}",
                self.case.name()
            );
        }
    }
}

/// Runs the case `rounds` times, each round trawler and both baselines one
/// after another, printing a line per round. Which goes first rotates: the
/// bare pool, then the storing pool, then trawler.
fn run_rounds(case: &Case, rounds: usize, input: &Path, dir: &Path, ca_file: &Path) -> Row {
    let mut row = Row { case: case.clone(), runs: Three::default(), summary: String::new() };
    let order = [Crawler::Bare, Crawler::Storing, Crawler::Trawler];
    for round in 0..rounds {
        let mut runs = Three::<Option<Measure>>::default();
        for i in 0..order.len() {
            let crawler = order[(round + i) % order.len()];
            let measure = match crawler {
                Crawler::Trawler => {
                    let (measure, summary) = run_trawler(case, input, dir, ca_file);
                    row.summary = summary;
                    measure
                }
                baseline => run_baseline(baseline, case, input, dir, ca_file),
            };
            *runs.get_mut(crawler) = Some(measure);
            row.runs.get_mut(crawler).push(measure);
        }
        print_round(case, round + 1, &runs.map(|m| m.expect("each crawler ran")));
    }
    row
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

/// Runs this binary as one of the baselines when its first argument names
/// one (`--bare-pool INPUT WORKERS [CA]`, `--storing-pool INPUT DB WORKERS
/// [CA]`, or `--storing-pool-sqlx`, its arguments alike); returns whether it
/// did.
fn run_pool(argv: &[String]) -> bool {
    match argv.first().map(String::as_str) {
        Some("--bare-pool") => {
            let concurrency = argv[2].parse().expect("a concurrency");
            bare_pool(Path::new(&argv[1]), concurrency, argv.get(3).map(Path::new));
        }
        Some(mode @ ("--storing-pool" | "--storing-pool-sqlx")) => {
            let concurrency = argv[3].parse().expect("a concurrency");
            let (input, db) = (Path::new(&argv[1]), Path::new(&argv[2]));
            storing_pool(input, db, concurrency, argv.get(4).map(Path::new), mode == "--storing-pool-sqlx");
        }
        _ => return false,
    }
    true
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if run_pool(&argv) {
        return;
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
        let row = run_rounds(case, args.rounds, &input, dir.path(), &ca_file);
        rows.push(row);
    }
    if !rows.is_empty() {
        println!();
        println!("median of {} rounds; CPU is CPU-s per 1,000 pages; RSS is peak RSS", args.rounds);
        println!();
        println!("{}", Row::HEADER);
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
