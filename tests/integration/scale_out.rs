//! Several `trawler run` daemons sharing one crawl on one PostgreSQL
//! database: each URL ends with one result, each host is fetched by one
//! daemon at a time with its delay kept across daemons, and a daemon that
//! stops, dies or freezes hands its hosts on. Hosts are names under
//! `fleet.test` that `fetch.resolve` sends to one test server, which logs
//! each request's `Host` and arrival.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use sqlx::{Connection, PgConnection};

use crate::postgres::{TestDatabase, sleep_once_in};
use crate::server::{Hit, TestServer};
use crate::util::{Daemon, eventually, signal, spawn_trawler_with_env, wait_within};

/// How long the test freezes a daemon inside its claim.
const FROZEN_FOR: Duration = Duration::from_secs(3);

/// The longest a daemon may go without finishing a fetch while another is
/// frozen inside its claim: hundreds finish per second otherwise.
const LONGEST_LULL: Duration = Duration::from_secs(1);

/// The per-host delay every daemon keeps.
const DELAY: Duration = Duration::from_millis(50);

/// The server records arrivals; a daemon records starts. Three daemons, a
/// server and PostgreSQL on two cores delay some requests on their way by
/// tens of milliseconds, so the arrivals are checked against half the delay
/// (which still catches two daemons fetching from one host at once), and
/// the starts (`host_politeness`, every daemon's attempts) against all of it.
const JITTER: Duration = Duration::from_millis(25);

/// How late (ms) a loaded machine may record a request's start after the
/// turn politeness gave it (see `check_shared_crawl`).
const RECORDED_START_SLACK_MS: i64 = 5;

/// A daemon's config: `lease` for its host leases, 1 s requests.
fn fleet_config(lease: &str) -> String {
    format!(
        "[crawl]\nconcurrency = 8\n\
         [politeness]\nper_host_concurrency = 1\nper_host_delay = \"{}ms\"\n\
         [fetch]\ntimeout = \"1s\"\n\
         [fetch.resolve]\n\"*.fleet.test\" = [\"127.0.0.1\"]\n\
         [retry]\nbackoff_base = \"20ms\"\nbackoff_max = \"100ms\"\n\
         [store]\nlease = \"{lease}\"\n\
         [shutdown]\ngrace = \"5s\"\n\
         [log]\nlevel = \"info\"\n",
        DELAY.as_millis()
    )
}

/// `hosts` x `per_host` URLs on `server`: `/{path}/{i}` of `h{n}.fleet.test`.
fn fleet_urls(server: &TestServer, hosts: usize, per_host: usize, path: &str) -> Vec<String> {
    named_fleet_urls(server, "h", hosts, per_host, path)
}

/// As [`fleet_urls`], on hosts `{prefix}{n}.fleet.test`.
fn named_fleet_urls(
    server: &TestServer,
    prefix: &str,
    hosts: usize,
    per_host: usize,
    path: &str,
) -> Vec<String> {
    let port = server.addr.port();
    (0..hosts)
        .flat_map(|h| {
            (0..per_host).map(move |i| format!("http://{prefix}{h}.fleet.test:{port}/{path}/{prefix}{h}-{i}"))
        })
        .collect()
}

/// Three daemons (each with a directory of its own) on the database at
/// `url`, with `config`.
fn start_fleet(url: &str, config: &str) -> (Vec<tempfile::TempDir>, Vec<Daemon>) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let daemons = dirs.iter().map(|d| start_daemon(url, config, d.path())).collect();
    (dirs, daemons)
}

/// One daemon of a fleet, in `dir`, on the database at `url`.
fn start_daemon(url: &str, config: &str, dir: &std::path::Path) -> Daemon {
    // The config file's politeness, over what spawned test daemons default to.
    let delay = format!("{}ms", DELAY.as_millis());
    let env = [
        ("TRAWLER_STORE__URL", url),
        ("TRAWLER_POLITENESS__PER_HOST_CONCURRENCY", "1"),
        ("TRAWLER_POLITENESS__PER_HOST_DELAY", delay.as_str()),
    ];
    Daemon::start_with_env(dir, config, &env)
}

fn enqueue(url: &str, urls: &[String]) {
    let mut args = vec!["enqueue", "--db", url];
    args.extend(urls.iter().map(String::as_str));
    let mut child = spawn_trawler_with_env(&args, &[]);
    assert_eq!(wait_within(&mut child, Duration::from_secs(20)).0.code(), Some(0));
}

async fn scalar(db: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Waits until every one of `n` URLs has a final result.
async fn wait_for_results(url: &str, n: i64, limit: Duration) {
    let mut db = PgConnection::connect(url).await.unwrap();
    eventually("every URL's result", limit, async || {
        let finished = scalar(&mut db, "SELECT count(*) FROM urls WHERE state IN ('done', 'failed')").await;
        if finished >= n { Ok(()) } else { Err(format!("{finished} of {n}")) }
    })
    .await;
}

/// Hosts leased to the daemons whose process ids are `pids` (a worker
/// name is `host:pid:random`).
async fn hosts_held_by(db: &mut PgConnection, pids: &[u32]) -> i64 {
    let owners: Vec<String> = pids.iter().map(|pid| format!("%:{pid}:%")).collect();
    sqlx::query_scalar("SELECT count(*) FROM hosts WHERE lease_owner LIKE ANY($1)")
        .bind(owners)
        .fetch_one(db)
        .await
        .unwrap()
}

/// The smallest gap between two request arrivals to one host, and the host.
fn min_gap_per_host(hits: &[Hit]) -> (Duration, String) {
    let mut per_host: HashMap<&str, Vec<(std::time::Instant, &str)>> = HashMap::new();
    for hit in hits {
        per_host.entry(&hit.host).or_default().push((hit.at, &hit.path));
    }
    per_host
        .into_iter()
        .flat_map(|(host, mut times)| {
            times.sort();
            times
                .windows(2)
                .map(|w| (w[1].0 - w[0].0, format!("{host} ({} then {})", w[0].1, w[1].1)))
                .collect::<Vec<_>>()
        })
        .min()
        .expect("two requests to one host at least")
}

/// Checks what every shared crawl must end with, whatever happened to its
/// daemons: each of the `n` URLs has one `done` result; no request reached
/// the server after a URL's result was committed (its attempt's
/// `fetched_at`); the smallest gap between two requests to one host, at the
/// server and in `host_politeness` (every daemon's attempts), is the delay.
/// Returns the attempts per worker and outcome.
async fn check_shared_crawl(url: &str, n: i64, hits: &[Hit]) -> BTreeMap<(String, String), i64> {
    let mut db = PgConnection::connect(url).await.unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) FROM results WHERE state = 'done'").await, n);
    let twice = "SELECT count(*) FROM (SELECT url_id FROM attempts WHERE outcome = 'done' GROUP BY url_id
                 HAVING count(*) > 1) AS t";
    assert_eq!(scalar(&mut db, twice).await, 0, "one result per URL");
    let finished: Vec<(String, f64)> = sqlx::query_as(
        "SELECT r.url, extract(epoch FROM a.fetched_at)::float8 FROM results AS r
         JOIN attempts AS a ON a.url_id = r.url_id AND a.outcome = 'done'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    // URLs end in a name of their own (`/{host}-{i}`).
    let name = |path: &str| path.rsplit_once('/').map_or(String::new(), |(_, name)| name.to_owned());
    let finished: HashMap<String, f64> = finished.into_iter().map(|(url, at)| (name(&url), at)).collect();
    for hit in hits {
        let at = finished.get(&name(&hit.path)).unwrap_or_else(|| panic!("{} has no result", hit.path));
        let arrived = hit.wall.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(arrived <= *at + 0.001, "{} requested {:.3} s after its result", hit.path, arrived - at);
    }
    let (gap, host) = min_gap_per_host(hits);
    assert!(gap + JITTER >= DELAY, "{gap:?} between two requests to {host}");
    let logged: i64 = scalar(&mut db, "SELECT coalesce(min(min_gap_ms), 1000000) FROM host_politeness").await;
    // An attempt's recorded start is read just after politeness grants the
    // turn; a thread preempted in between (five processes on two cores)
    // records it a few ms late. Two daemons at one host at once would show
    // as a gap near zero.
    if logged + RECORDED_START_SLACK_MS < DELAY.as_millis() as i64 {
        // Which two requests, by whom: what a failure needs to be read.
        let pair: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "WITH r AS (SELECT u.host, a.worker, a.started_ms, u.url FROM attempts a JOIN urls u ON u.id = a.url_id),
             g AS (SELECT host, worker, started_ms, url,
                          lag(worker) OVER w AS before, started_ms - lag(started_ms) OVER w AS gap
                   FROM r WINDOW w AS (PARTITION BY host ORDER BY started_ms))
             SELECT url, worker || ' after ' || coalesce(before, '-'), started_ms, gap FROM g
             WHERE gap < $1 ORDER BY gap LIMIT 5",
        )
        .bind(DELAY.as_millis() as i64)
        .fetch_all(&mut db)
        .await
        .unwrap();
        panic!("host_politeness: min gap {logged} ms: {pair:?}");
    }
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT worker, outcome, count(*) FROM attempts GROUP BY worker, outcome")
            .fetch_all(&mut db)
            .await
            .unwrap();
    rows.into_iter().map(|(worker, outcome, n)| ((worker, outcome), n)).collect()
}

#[test]
fn three_daemons_share_a_crawl_and_a_stopping_one_hands_its_hosts_over_at_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("three_daemons_share_a_crawl")) else { return };
    let server = TestServer::start();
    // A one-minute lease: the stopped daemon's hosts must not wait for it.
    let (_dirs, mut daemons) = start_fleet(&pg.url, &fleet_config("60s"));
    let urls = fleet_urls(&server, 40, 50, "ok/fleet");
    enqueue(&pg.url, &urls);
    let quarter = async || server.hits().len() >= urls.len() / 4;
    runtime.block_on(eventually("a quarter of the crawl", Duration::from_secs(30), quarter));
    // The daemon that stops holds hosts; once it has exited, it holds none:
    // they were handed over, not left to lapse in a minute.
    let leaving = daemons.remove(0);
    let pid = leaving.child.id();
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    runtime.block_on(eventually(
        "hosts leased to the daemon that stops",
        Duration::from_secs(5),
        async || hosts_held_by(&mut db, &[pid]).await > 0,
    ));
    leaving.stop();
    let held = runtime.block_on(hosts_held_by(&mut db, &[pid]));
    assert_eq!(held, 0, "its hosts were given up at the stop");
    runtime.block_on(wait_for_results(&pg.url, urls.len() as i64, Duration::from_secs(30)));
    for daemon in daemons {
        daemon.stop();
    }
    let hits = server.hits();
    let per_worker = runtime.block_on(check_shared_crawl(&pg.url, urls.len() as i64, &hits));
    // Nobody died: each URL was requested once, and all three did a share.
    assert_eq!(hits.len(), urls.len(), "each URL requested once");
    let workers: Vec<_> = per_worker.keys().filter(|(_, outcome)| outcome == "done").collect();
    assert_eq!(workers.len(), 3, "{per_worker:?}");
    let leased =
        runtime.block_on(scalar(&mut db, "SELECT count(*) FROM hosts WHERE lease_owner IS NOT NULL"));
    assert_eq!(leased, 0, "every daemon gave its hosts up");
}

/// Issue 24: a daemon that joined a running crawl made 466 of 10,200
/// requests, as the first kept every busy host (its next URL always in
/// flight, waiting for its turn). Now the first hands over its hosts
/// beyond its share, and the second has them within about a lease.
#[test]
fn a_daemon_that_joins_a_running_crawl_gets_its_share_of_the_hosts_within_a_lease() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("a_daemon_joins_a_running_crawl")) else { return };
    let server = TestServer::start();
    // Busy to the end of the test: 200 URLs a host, DELAY apart, 10 s.
    let (hosts, lease) = (12, Duration::from_secs(3));
    let urls = fleet_urls(&server, hosts, 200, "ok/join");
    enqueue(&pg.url, &urls);
    let config = fleet_config(&format!("{}s", lease.as_secs()));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first = start_daemon(&pg.url, &config, dirs[0].path());
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    let (first_pid, all) = (first.child.id(), hosts as i64);
    runtime.block_on(eventually("the first daemon holds every host", Duration::from_secs(10), async || {
        let held = hosts_held_by(&mut db, &[first_pid]).await;
        if held == all { Ok(()) } else { Err(format!("{held} of {all}")) }
    }));
    let second = start_daemon(&pg.url, &config, dirs[1].path());
    let second_pid = second.child.id();
    // A lease round of the first (a third of a lease) finds the second,
    // its hosts handed over are given up once what they have in flight has
    // finished (a DELAY), and the second's intake takes them: a lease,
    // and the second's start-up, which a loaded machine slows.
    runtime.block_on(eventually("the second daemon's share of the hosts", 2 * lease, async || {
        let (theirs, its) =
            (hosts_held_by(&mut db, &[first_pid]).await, hosts_held_by(&mut db, &[second_pid]).await);
        if its >= all / 2 - 1 { Ok(()) } else { Err(format!("the first holds {theirs}, the second {its}")) }
    }));
    first.stop();
    second.stop();
    let twice = "SELECT count(*) FROM (SELECT url_id FROM attempts WHERE outcome = 'done' GROUP BY url_id
                 HAVING count(*) > 1) AS t";
    assert_eq!(runtime.block_on(scalar(&mut db, twice)), 0, "one result per URL");
}

#[test]
fn a_killed_and_a_frozen_daemon_lose_their_hosts_and_no_result_is_fetched_again() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("killed_and_frozen_daemons")) else { return };
    let server = TestServer::start();
    // 3 s leases: a silent daemon's hosts go to the others 3 s after its
    // last renewal. Each response takes 200 ms, so every daemon has
    // requests in flight whenever it is killed or frozen.
    let (_dirs, mut daemons) = start_fleet(&pg.url, &fleet_config("3s"));
    let urls = fleet_urls(&server, 30, 20, "slow/200/fleet");
    enqueue(&pg.url, &urls);
    let sixth = async || server.hits().len() >= urls.len() / 6;
    runtime.block_on(eventually("a sixth of the crawl", Duration::from_secs(30), sixth));
    let killed = daemons.remove(0);
    signal(&killed.child, libc::SIGKILL);
    signal(&daemons[0].child, libc::SIGSTOP);
    // Past its lease and the round that ends it elsewhere: neither holds a
    // host, and what they had in flight is back in the queue.
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    runtime.block_on(eventually("the silent daemons' leases to end", Duration::from_secs(30), async || {
        let held = hosts_held_by(&mut db, &[killed.child.id(), daemons[0].child.id()]).await;
        if held == 0 { Ok(()) } else { Err(format!("{held} hosts still held")) }
    }));
    signal(&daemons[0].child, libc::SIGCONT);
    runtime.block_on(wait_for_results(&pg.url, urls.len() as i64, Duration::from_secs(60)));
    // Frozen between two statements of a transaction for longer than its
    // lease, the daemon finds its session ended by the server on waking and
    // tries the transaction again; frozen elsewhere, it carries on. Either
    // way it stops cleanly.
    let mut frozen = daemons.remove(0);
    signal(&frozen.child, libc::SIGTERM);
    let (status, _) = wait_within(&mut frozen.child, Duration::from_secs(10));
    let log = frozen.stderr.all();
    assert_eq!(status.code(), Some(0), "{log}");
    daemons.remove(0).stop();
    drop(killed);
    let per_worker = runtime.block_on(check_shared_crawl(&pg.url, urls.len() as i64, &server.hits()));
    let stale: i64 = per_worker.iter().filter(|((_, o), _)| o == "stale_lease").map(|(_, n)| n).sum();
    // Its fetches in flight when frozen report late, as stale_lease.
    assert!(stale > 0, "the frozen daemon's late reports are kept as stale_lease: {per_worker:?}");
    // A late report changed nothing: each of its URLs has its result from
    // another attempt, and results leave stale reports out.
    let orphans = runtime.block_on(scalar(
        &mut db,
        "SELECT count(*) FROM attempts AS s WHERE s.outcome = 'stale_lease'
           AND NOT EXISTS (SELECT 1 FROM attempts AS d WHERE d.url_id = s.url_id AND d.outcome = 'done')",
    ));
    assert_eq!(orphans, 0);
}

/// Makes the next lease daemon `pid` takes of a host new to it (inside a
/// claim: no test page redirects) sleep `sleep_s` in the database, holding
/// the row locks its claim took, so that the test can freeze it there.
async fn sleep_in_next_claim_of(db: &mut PgConnection, pid: u32, sleep_s: f64) {
    let trigger = format!(
        "AFTER UPDATE ON hosts FOR EACH ROW WHEN (OLD.lease_owner IS NULL AND NEW.lease_owner LIKE '%:{pid}:%')"
    );
    sleep_once_in(db, &trigger, "", sleep_s).await;
}

/// The longest stretch of `between` (Unix seconds) in which `worker`
/// finished no fetch (by its attempts' `fetched_at`).
async fn longest_lull(db: &mut PgConnection, worker: &str, between: (f64, f64)) -> Duration {
    let mut at: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM fetched_at)::float8 FROM attempts
         WHERE worker = $1 AND fetched_at BETWEEN to_timestamp($2) AND to_timestamp($3)",
    )
    .bind(worker)
    .bind(between.0)
    .bind(between.1)
    .fetch_all(db)
    .await
    .unwrap();
    at.sort_by(f64::total_cmp);
    let mut edges = vec![between.0];
    edges.extend(at);
    edges.push(between.1);
    let longest = edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Duration::from_secs_f64(longest)
}

/// Unix seconds of `t`.
fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A daemon frozen (SIGSTOP) inside a claim, after the statement that
/// locked the host rows it is taking on, costs the others nothing: their
/// claims pass those hosts by instead of waiting for its locks, and their
/// lease renewals do not wait behind their claims. Before, both others
/// stopped fetching until the frozen one woke (or its session ended).
#[test]
fn a_daemon_frozen_inside_its_claim_does_not_stall_the_others() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = runtime.block_on(TestDatabase::create("frozen_inside_a_claim")) else { return };
    let server = TestServer::start();
    // 10 s leases: the frozen daemon's session outlives the freeze.
    let (_dirs, daemons) = start_fleet(&pg.url, &fleet_config("10s"));
    let first = named_fleet_urls(&server, "a", 24, 300, "ok/first");
    enqueue(&pg.url, &first);
    let under_way = async || server.hits().len() >= 300;
    runtime.block_on(eventually("the crawl under way", Duration::from_secs(30), under_way));
    // Every first host is leased by now; new hosts come next, and every
    // daemon (its workers mostly waiting on delays) takes some on: too many
    // for the others to take them all before the frozen one's claim.
    let pid = daemons[0].child.id();
    let mut db = runtime.block_on(PgConnection::connect(&pg.url)).unwrap();
    runtime.block_on(sleep_in_next_claim_of(&mut db, pid, 0.5));
    enqueue(&pg.url, &named_fleet_urls(&server, "b", 120, 40, "ok/second"));
    let session = format!("trawler %:{pid}:%");
    let sleeping =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 AND wait_event = 'PgSleep'";
    runtime.block_on(eventually("the frozen daemon's claim to sleep", Duration::from_secs(20), async || {
        sqlx::query_scalar::<_, i64>(sleeping).bind(&session).fetch_one(&mut db).await.unwrap() > 0
    }));
    signal(&daemons[0].child, libc::SIGSTOP);
    let stopped = SystemTime::now();
    std::thread::sleep(FROZEN_FOR);
    let resumed = SystemTime::now();
    signal(&daemons[0].child, libc::SIGCONT);
    // Stopping flushes what each daemon fetched to the database.
    for daemon in daemons {
        daemon.stop();
    }
    let frozen_worker = format!("%:{pid}:%");
    let others: Vec<String> = runtime
        .block_on(
            sqlx::query_scalar("SELECT DISTINCT worker FROM attempts WHERE worker NOT LIKE $1 ORDER BY 1")
                .bind(&frozen_worker)
                .fetch_all(&mut db),
        )
        .unwrap();
    assert_eq!(others.len(), 2, "{others:?}");
    for worker in &others {
        let lull = runtime.block_on(longest_lull(&mut db, worker, (unix_s(stopped), unix_s(resumed))));
        assert!(lull < LONGEST_LULL, "{worker} finished no fetch for {lull:?} of the {FROZEN_FOR:?} freeze");
    }
}
