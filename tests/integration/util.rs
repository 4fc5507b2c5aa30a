//! Helpers shared by the integration tests: a fast test config, running a
//! crawl in-process or as the real binary, and reading the database back.

#![allow(dead_code)]

use std::num::NonZeroU32;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use trawler::config::{Config, Synchronous};
use trawler::seeds::SeedSource;
pub use trawler::store::ResultRow;
use trawler::{Shutdown, Summary};

/// An engine a behaviour test runs on: SQLite, or PostgreSQL in a database
/// of the test's own (see [`crate::postgres::TestDatabase`]).
pub struct Engine {
    pub name: &'static str,
    database: Option<crate::postgres::TestDatabase>,
}

impl Engine {
    /// [`test_config`] on this engine.
    pub fn config(&self, dir: &Path) -> Config {
        let mut config = test_config(dir);
        config.store.url = self.database.as_ref().map(|d| d.url.clone());
        config
    }

    /// [`crawl_with_config`] on this engine; returns a config that reads
    /// its database ([`result_in`], [`count_in`]).
    pub fn crawl_with_config(&self, dir: &Path, lines: &[String], toml: &str) -> Config {
        let file = dir.join("trawler.toml");
        std::fs::write(&file, toml).unwrap();
        self.crawl_to_end(dir, lines, &["--config", file.to_str().unwrap()]).0
    }

    /// [`crawl_to_end`] on this engine; returns a config that reads its
    /// database ([`result_in`], [`count_in`], [`strings_in`]) and the log.
    pub fn crawl_to_end(&self, dir: &Path, lines: &[String], extra: &[&str]) -> (Config, String) {
        self.crawl_to_end_with_env(dir, lines, extra, &[])
    }

    /// [`Engine::crawl_to_end`] with extra environment variables.
    pub fn crawl_to_end_with_env(
        &self,
        dir: &Path,
        lines: &[String],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Config, String) {
        let mut env = env.to_vec();
        env.extend(self.env());
        let (db, log) = crawl_to_end(dir, lines, extra, &env);
        (self.reading(&db), log)
    }

    /// The environment that points a spawned `trawler` at this engine's
    /// database: none on SQLite (`--db` names the file), `store.url` on
    /// PostgreSQL (it wins over `--db FILE`).
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        self.database.iter().map(|d| ("TRAWLER_STORE__URL", d.url.as_str())).collect()
    }

    /// A config that reads the database a command given `--db file` and
    /// [`Engine::env`] wrote ([`result_in`], [`count_in`], [`strings_in`]).
    pub fn reading(&self, file: &Path) -> Config {
        let mut config = self.config(file.parent().expect("a file in a directory"));
        config.store.path = file.to_owned();
        config
    }

    /// Takes a lock on the database that the command given `--db file`
    /// and [`Engine::env`] writes, from a session of the test's, as an
    /// analyst's open transaction would hold it: SQLite's write lock
    /// ([`WriteLock`]), or on PostgreSQL `LOCK TABLE attempts IN SHARE
    /// MODE`, which lets every read through and no attempt be recorded.
    pub async fn hold_write_lock(&self, file: &Path) -> HeldLock {
        use sqlx::Connection;
        match &self.database {
            None => HeldLock::Sqlite(WriteLock::take(file).await),
            Some(database) => {
                let mut session = sqlx::PgConnection::connect(&database.url).await.unwrap();
                sqlx::raw_sql("BEGIN; LOCK TABLE attempts IN SHARE MODE")
                    .execute(&mut session)
                    .await
                    .unwrap();
                let pid: i32 =
                    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut session).await.unwrap();
                HeldLock::Postgres(session, pid)
            }
        }
    }

    /// [`Daemon::start_with_env`] on this engine's database.
    pub fn start_daemon(&self, dir: &Path, toml: &str, env: &[(&str, &str)]) -> Daemon {
        let mut env = env.to_vec();
        env.extend(self.env());
        Daemon::start_with_env(dir, toml, &env)
    }
}

/// A test that fails on one engine says which.
impl Drop for Engine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(the failure above is on {})", self.name);
        }
    }
}

/// The engines a behaviour test that is not about SQLite runs on: SQLite,
/// and PostgreSQL unless the server is out of reach (then the test says it
/// skipped PostgreSQL, or fails under `TRAWLER_REQUIRE_POSTGRES`).
pub async fn engines(test: &str) -> Vec<Engine> {
    let mut engines = vec![Engine { name: "SQLite", database: None }];
    if let Some(database) = crate::postgres::TestDatabase::create(test).await {
        engines.push(Engine { name: "PostgreSQL", database: Some(database) });
    }
    engines
}

/// The `results` row of `url` in `config`'s database, on either engine,
/// read through trawler's own export.
pub async fn result_in(config: &Config, url: &str) -> ResultRow {
    use futures::TryStreamExt;
    let store = trawler::store::Backend::open_read_only(&config.store).await.expect("open the database");
    let filter = trawler::store::ExportFilter::default();
    let rows: Vec<ResultRow> = store.export(&filter).try_collect().await.expect("export");
    store.close().await;
    rows.into_iter().find(|r| r.url == url).unwrap_or_else(|| panic!("no result for {url}"))
}

/// The first column of every row of a query, in `config`'s database, on
/// either engine.
pub async fn column_in<T>(config: &Config, sql: &str) -> Vec<T>
where
    T: Send + Unpin,
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    match &config.store.url {
        Some(url) => {
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut db).await.unwrap()
        }
        None => {
            let pool = reader(&config.store.path).await;
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    }
}

/// One count from a query, in `config`'s database, on either engine.
pub async fn count_in(config: &Config, sql: &str) -> i64 {
    column_in(config, sql).await.into_iter().next().expect("a row")
}

/// The first column of every row of a query, as text, in `config`'s
/// database, on either engine.
pub async fn strings_in(config: &Config, sql: &str) -> Vec<String> {
    column_in(config, sql).await
}

/// Moves every finished URL's last visit `by` into the past in `config`'s
/// database, on either engine: `finished_ms`, and `recrawl_at_ms`, which a
/// crawl sets from it. As if that much time had passed since, for a
/// recrawl test that would otherwise sleep; `changed_ms` stays, being what
/// a test compares across visits.
pub async fn age_visits(config: &Config, by: Duration) {
    let ms = by.as_millis();
    let sql = format!(
        "UPDATE urls SET finished_ms = finished_ms - {ms}, recrawl_at_ms = recrawl_at_ms - {ms}
         WHERE finished_ms IS NOT NULL"
    );
    use sqlx::Connection;
    match &config.store.url {
        Some(url) => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(&sql).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
        }
        None => {
            let options = SqliteConnectOptions::new().filename(&config.store.path);
            let mut db = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
            sqlx::query(&sql).execute(&mut db).await.unwrap();
            db.close().await.unwrap();
        }
    }
}

/// A config for tests: a database in `dir`, short timeouts and backoffs.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.store.path = dir.join("crawl.db");
    config.store.synchronous = Synchronous::Normal;
    config.crawl.concurrency = NonZeroU32::new(8).unwrap();
    // Most tests crawl one host (127.0.0.1) and are about other things;
    // politeness tests set their own limits.
    config.politeness.per_host_concurrency = NonZeroU32::new(8).unwrap();
    config.politeness.per_host_delay = Duration::ZERO;
    config.fetch.timeout = Duration::from_secs(5);
    config.retry.max_attempts = NonZeroU32::new(3).unwrap();
    config.retry.backoff_base = Duration::from_millis(20);
    config.retry.backoff_max = Duration::from_millis(100);
    config.shutdown.grace = Duration::from_secs(5);
    config
}

/// Writes `lines` to `dir/urls.txt` and returns its path.
pub fn write_input(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("urls.txt");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Crawls `lines` in-process with `config` to the end.
pub async fn crawl_lines(config: &Config, lines: &[String]) -> Summary {
    let dir = config.store.path.parent().unwrap();
    let input = write_input(dir, lines);
    trawler::crawl(config, Some(SeedSource::File(input)), &Shutdown::new()).await.expect("crawl runs")
}

/// A read-only pool on the database, as an analyst's `sqlite3` would open it.
pub async fn reader(db: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open database read-only")
}

/// Every row of `results`.
pub async fn results(db: &Path) -> Vec<ResultRow> {
    let pool = reader(db).await;
    let rows = sqlx::query_as("SELECT * FROM results ORDER BY url").fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

/// The `results` row of `url`.
pub async fn result_for(db: &Path, url: &str) -> ResultRow {
    results(db).await.into_iter().find(|r| r.url == url).unwrap_or_else(|| panic!("no result for {url}"))
}

/// One integer from a query.
pub async fn scalar(db: &Path, sql: &str) -> i64 {
    let pool = reader(db).await;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

/// The first column of every row of a query, as text.
pub async fn strings(db: &Path, sql: &str) -> Vec<String> {
    let pool = reader(db).await;
    let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

/// Starts the real `trawler` binary with `args`; stdin, stdout and stderr
/// are pipes (take `child.stdin` to feed `crawl -`).
pub fn spawn_trawler(args: &[&str]) -> Child {
    spawn_trawler_with_env(args, &[])
}

/// [`spawn_trawler`] with extra environment variables.
pub fn spawn_trawler_with_env(args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(args)
        .env("RUST_LOG", "info")
        // As in test_config: one host, no politeness delay.
        .env("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "8")
        .env("TRAWLER_POLITENESS__PER_HOST_DELAY", "0s")
        // The test's own variables win.
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trawler")
}

/// Starts `trawler crawl INPUT --db DB EXTRA...`.
pub fn spawn_crawl(input: &str, db: &Path, extra: &[&str]) -> Child {
    spawn_crawl_with_env(input, db, extra, &[])
}

/// [`spawn_crawl`] with extra environment variables.
pub fn spawn_crawl_with_env(input: &str, db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut args = vec!["crawl", input, "--db", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    spawn_trawler_with_env(&args, env)
}

/// [`crawl_to_end`] with `toml` as the config file (`--config`).
pub fn crawl_with_config(dir: &Path, lines: &[String], toml: &str) -> PathBuf {
    let config = dir.join("trawler.toml");
    std::fs::write(&config, toml).unwrap();
    crawl_to_end(dir, lines, &["--config", config.to_str().unwrap()], &[]).0
}

/// Crawls `lines` with the real binary, `trawler crawl INPUT --db DB
/// EXTRA...` with `env`, in `dir`, to its end (30 s at most); panics unless
/// it exits 0. Returns the database's path and what it logged.
pub fn crawl_to_end(dir: &Path, lines: &[String], extra: &[&str], env: &[(&str, &str)]) -> (PathBuf, String) {
    let (mut child, db) = spawn_crawl_in(dir, lines, extra, env);
    let (status, _) = wait_within(&mut child, Duration::from_secs(30));
    let (_, log) = output_of(child);
    assert_eq!(status.code(), Some(0), "{log}");
    (db, log)
}

/// Starts `trawler crawl INPUT --db DB EXTRA...` with `env`, `lines` as
/// `dir`'s input and `dir/crawl.db` as its database; returns the child and
/// the database's path.
pub fn spawn_crawl_in(
    dir: &Path,
    lines: &[String],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let (input, db) = (write_input(dir, lines), dir.join("crawl.db"));
    (spawn_crawl_with_env(input.to_str().unwrap(), &db, extra, env), db)
}

/// Waits for `child` to exit, at most `limit`; panics (after killing it)
/// past that. Returns its status and how long it took. Blocks the calling
/// thread: use it where nothing of the test's own must run meanwhile.
///
/// A thread of its own waits for the exit itself (`waitid` with `WNOWAIT`,
/// which leaves the child to be reaped here and its stdin open, unlike
/// `Child::wait`), so the exit is seen at once, not at the next look.
pub fn wait_within(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let (start, pid) = (Instant::now(), child.id());
    let (exited_tx, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: waitid writes one siginfo_t through the pointer given.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let options = libc::WEXITED | libc::WNOWAIT;
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, options) };
        let _ = exited_tx.send(rc);
    });
    if exited.recv_timeout(limit).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("trawler did not exit within {limit:?}");
    }
    let status = child.try_wait().unwrap().expect("the child exited");
    (status, start.elapsed())
}

/// Output of a finished child.
pub fn output_of(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What one look at a fact found, for [`eventually`]: `true`, `Some(value)`
/// or `Ok(value)` once the fact holds; `false`, `None` or `Err(what stands
/// instead)` until then (a timeout reports the last `Err`).
pub trait Look {
    /// What the fact gives once it holds.
    type Value;
    /// The value, or (the fact does not hold yet) what stands instead.
    fn holds(self) -> Result<Self::Value, String>;
}

impl Look for bool {
    type Value = ();
    fn holds(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Look for Option<T> {
    type Value = T;
    fn holds(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Display> Look for Result<T, E> {
    type Value = T;
    fn holds(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// The first look at once, then a pause that doubles up to this, so that a
/// look that costs a connection or a request does not load the machine.
const LOOK_EVERY_AT_MOST: Duration = Duration::from_millis(100);

/// Waits until `fact` holds, looking at once and then again after 10 ms,
/// 20 ms... (at most [`LOOK_EVERY_AT_MOST`] apart); returns its value.
/// Panics after `limit` naming `what` it waited for and, if the last look
/// said, what stood instead; a look still running at the deadline counts
/// as the fact not holding. Async, so that what the test runs on its own
/// runtime (a crawl, a proxy, a database session) goes on meanwhile.
pub async fn eventually<L: Look>(what: &str, limit: Duration, mut fact: impl AsyncFnMut() -> L) -> L::Value {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match tokio::time::timeout_at(deadline, fact()).await {
            Ok(look) => match look.holds() {
                Ok(value) => return value,
                Err(instead) => instead,
            },
            Err(_) => "the last look did not return".to_owned(),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let instead = if last.is_empty() { String::new() } else { format!(": {last}") };
            panic!("timed out after {limit:?} waiting for {what}{instead}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LOOK_EVERY_AT_MOST);
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: i32) {
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// A running child's stderr, collected by a thread as it is written.
pub struct Stderr(std::sync::Arc<(std::sync::Mutex<Written>, std::sync::Condvar)>);

/// What a [`Stderr`] collected so far.
#[derive(Default)]
struct Written {
    text: String,
    /// The pipe is closed (the child exited): `text` is all there is.
    closed: bool,
}

impl Stderr {
    /// Takes `child`'s stderr pipe and starts collecting it.
    pub fn collect(child: &mut Child) -> Self {
        use std::io::BufRead;
        let pipe = child.stderr.take().expect("stderr is piped");
        let shared =
            std::sync::Arc::new((std::sync::Mutex::new(Written::default()), std::sync::Condvar::new()));
        let sink = shared.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut written = sink.0.lock().unwrap();
                written.text.push_str(&line);
                written.text.push('\n');
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        Self(shared)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.0.0.lock().unwrap().text.clone()
    }

    /// Everything the child wrote, for a child that has exited: once this
    /// collector has read to the end of the pipe (2 s at most), as the
    /// last lines may still be on their way when the exit is seen.
    pub fn all(&self) -> String {
        self.written_once("end of the log", |written| written.closed.then(|| written.text.clone()))
    }

    /// Waits until the output contains `needle` (5 s at most) and returns
    /// everything written so far.
    pub async fn wait_for(&self, needle: &str) -> String {
        self.wait_for_within(needle, Duration::from_secs(5)).await
    }

    /// [`Stderr::wait_for`], `limit` at most.
    pub async fn wait_for_within(&self, needle: &str, limit: Duration) -> String {
        let what = format!("{needle:?} in the log");
        eventually(&what, limit, async || self.text().contains(needle)).await;
        self.text()
    }

    /// The first line that contains `needle`, once it is written (2 s at
    /// most). Blocks the calling thread: for a line the child wrote before
    /// something the test already saw (so that only this collector's
    /// thread is waited for), such as an address bound before `READY=1`.
    pub fn line_with(&self, needle: &str) -> String {
        self.written_once(&format!("a line with {needle:?}"), |written| {
            written.text.lines().find(|l| l.contains(needle)).map(str::to_owned)
        })
    }

    /// What `found` finds in what was written, once it finds it: the
    /// collector's thread tells each line as it adds it. 2 s at most, for
    /// what the child has written already (see [`Stderr::line_with`]).
    fn written_once<T>(&self, what: &str, found: impl Fn(&Written) -> Option<T>) -> T {
        let (written, added) = (&self.0.0, &self.0.1);
        let limit = Duration::from_secs(2);
        let (written, _) =
            added.wait_timeout_while(written.lock().unwrap(), limit, |w| found(w).is_none()).unwrap();
        found(&written).unwrap_or_else(|| panic!("no {what} within {limit:?}:\n{}", written.text))
    }

    /// The address (`host:port`) a line with `needle` logged as its
    /// `address` field: where the child bound a listener it was asked to
    /// bind on port 0 (see [`Stderr::line_with`] for when it may be asked).
    pub fn address(&self, needle: &str) -> String {
        let line = self.line_with(needle);
        let address = line.split_whitespace().find_map(|field| field.strip_prefix("address="));
        address.unwrap_or_else(|| panic!("no address in {line:?}")).to_owned()
    }

    /// The last line written.
    pub fn last_line(&self) -> String {
        self.text().lines().last().unwrap_or_default().to_owned()
    }
}

/// A `trawler run` on a config file of the test's, with its notify socket and
/// stderr.
pub struct Daemon {
    pub child: Child,
    pub stderr: Stderr,
    notify: UnixDatagram,
    config: PathBuf,
    pub db: PathBuf,
    /// The admin endpoints' `host:port`: a free port the daemon bound (it
    /// is given port 0) and logged.
    pub admin: String,
    /// The test's own environment variables, for `trawler enqueue` too.
    env: Vec<(String, String)>,
}

impl Daemon {
    /// `/healthz` of the daemon: its status and text.
    pub async fn healthz(&self) -> (u16, String) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = http.get(format!("http://{}/healthz", self.admin)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Waits until the answer of the daemon's `/healthz` is `expected`
    /// (which `holds` tells; 20 s at most) and returns its text.
    pub async fn healthz_until(&self, expected: &str, holds: impl Fn(u16, &str) -> bool) -> String {
        eventually(&format!("/healthz to answer {expected}"), Duration::from_secs(20), async || {
            let (status, text) = self.healthz().await;
            if holds(status, &text) { Ok(text) } else { Err(format!("it stayed {status}: {text}")) }
        })
        .await
    }

    /// Starts the service with `toml` as its config file and waits for `READY=1`.
    pub fn start(dir: &Path, toml: &str) -> Self {
        Self::start_with_env(dir, toml, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Self {
        let (config, db) = (dir.join("trawler.toml"), dir.join("service.db"));
        std::fs::write(&config, toml).unwrap();
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut vars = vec![
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            // Port 0: the daemon binds a free port itself and logs it.
            ("TRAWLER_ADMIN__LISTEN", "127.0.0.1:0"),
            // The log level comes from the config file, as in production.
            ("RUST_LOG", ""),
        ];
        vars.extend_from_slice(env);
        let mut child = spawn_trawler_with_env(
            &["run", "--config", config.to_str().unwrap(), "--db", db.to_str().unwrap()],
            &vars,
        );
        let stderr = Stderr::collect(&mut child);
        let env = env.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
        let mut daemon = Self { child, stderr, notify, config, db, admin: String::new(), env };
        assert!(daemon.next_message().contains("READY=1"));
        // Bound, and logged, before READY=1.
        daemon.admin = daemon.stderr.address("admin endpoints:");
        daemon
    }

    /// The API's `host:port`, for a daemon whose config sets `api.listen`
    /// (port 0 for a free one): where it bound, as it logged at start.
    pub fn api(&self) -> String {
        self.stderr.address("HTTP API:")
    }

    pub fn next_message(&self) -> String {
        next_notification(&self.notify)
    }

    /// Writes `toml` as the config file and sends SIGHUP; returns once the
    /// reload is over (`READY=1` again).
    pub fn reload(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
        signal(&self.child, libc::SIGHUP);
        assert!(self.next_message().contains("RELOADING=1"));
        assert!(self.next_message().contains("READY=1"));
    }

    pub fn enqueue(&self, urls: &[String]) {
        let mut args = vec!["enqueue", "--db", self.db.to_str().unwrap()];
        args.extend(urls.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut enqueue = spawn_trawler_with_env(&args, &env);
        assert_eq!(wait_within(&mut enqueue, Duration::from_secs(10)).0.code(), Some(0));
    }

    pub fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let (status, _) = wait_within(&mut self.child, Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{}", self.stderr.all());
    }
}

/// A test that fails midway must not leave its daemon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A write lock on the database held by another process's connection, as an
/// analyst's `BEGIN IMMEDIATE` in `sqlite3` holds it, until dropped.
pub struct WriteLock(sqlx::SqliteConnection);

impl WriteLock {
    /// Takes the write lock (waiting up to 10 s for a transaction under way).
    pub async fn take(db: &Path) -> Self {
        use sqlx::Connection;
        let options = SqliteConnectOptions::new().filename(db).busy_timeout(Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open the database");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.expect("take the write lock");
        Self(conn)
    }

    /// Ends the transaction and closes the connection.
    pub async fn release(mut self) {
        use sqlx::Connection;
        sqlx::query("ROLLBACK").execute(&mut self.0).await.expect("release the write lock");
        self.0.close().await.unwrap();
    }
}

/// A lock held on either engine's database ([`Engine::hold_write_lock`])
/// until released.
pub enum HeldLock {
    Sqlite(WriteLock),
    /// The session holding the lock, and its process id (what the daemon's
    /// warning names).
    Postgres(sqlx::PgConnection, i32),
}

impl HeldLock {
    /// Ends the transaction, and with it the lock.
    pub async fn release(self) {
        use sqlx::Connection;
        match self {
            HeldLock::Sqlite(lock) => lock.release().await,
            HeldLock::Postgres(mut session, _) => {
                sqlx::query("ROLLBACK").execute(&mut session).await.unwrap();
                session.close().await.unwrap();
            }
        }
    }
}

/// The next `sd_notify` datagram on a socket the test bound as `NOTIFY_SOCKET`.
pub fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Sets the descriptor limit (`RLIMIT_NOFILE`) of the running process `pid`
/// to `n`, soft and hard.
pub fn limit_descriptors(pid: u32, n: u64) {
    set_descriptor_limit(pid, n, n);
}

/// Sets the soft descriptor limit of the running process `pid` to `soft`,
/// leaving the hard limit where it is (so it can be raised again).
pub fn set_descriptor_limit(pid: u32, soft: u64, hard: u64) {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The hard descriptor limit of the running process `pid`.
pub fn hard_descriptor_limit(pid: u32) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    limit.rlim_max
}

/// How many descriptors the process `pid` has open.
pub fn open_descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

/// Established TCP connections to `server` (an IPv4 address) on this
/// machine, from the kernel's table (`/proc/net/tcp`, addresses in
/// little-endian hex).
pub fn connections_to(server: std::net::SocketAddr) -> usize {
    let std::net::IpAddr::V4(ip) = server.ip() else { panic!("an IPv4 address") };
    let remote = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), server.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}
