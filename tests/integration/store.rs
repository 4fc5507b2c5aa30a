//! The store's contract: claims, retries, recrawls on both engines; on
//! SQLite, exclusive ownership and schema versions. PostgreSQL's own
//! (host leases, stale completions, newer schemas) are in `postgres.rs`.

use std::time::Duration;

use trawler::store::{
    AttemptRecord, Completion, NewUrl, Next, PageLimits, RecrawlPolicy, SqliteStore, Store, StoreError,
};

use crate::util::{Engine, count_in, engines, strings_in, test_config};

/// The store of `engine`'s database for `dir`, opened as a crawler.
async fn open(engine: &Engine, dir: &std::path::Path) -> trawler::store::Backend {
    trawler::store::Backend::open(&engine.config(dir).store, Duration::from_secs(5)).await.unwrap()
}

fn new_url(path: &str) -> NewUrl {
    NewUrl { url: format!("http://127.0.0.1/{path}"), host: "127.0.0.1".into(), depth: 0, found_on: None }
}

/// Claims up to `n` URLs of 127.0.0.1 due at `now_ms`.
async fn claim(store: &impl Store, now_ms: i64, n: u32) -> Vec<trawler::store::Job> {
    store.claim(now_ms, &[("127.0.0.1".to_owned(), n)]).await.unwrap().jobs
}

/// A completion of `job` under `lease`: a 200, the URL done.
pub fn done(job: &trawler::store::Job, lease: i64) -> Completion {
    Completion {
        url_id: job.url_id,
        lease,
        host: job.host.clone(),
        host_backoff_changed: false,
        host_backoff_until_ms: None,
        attempt: job.attempt,
        record: AttemptRecord { http_status: Some(200), ..Default::default() },
        next: Next::Done,
        links: Vec::new(),
        dropped_links: Vec::new(),
        recrawl_after: None,
        revisit: job.revisit.clone(),
        adaptive: None,
    }
}

#[tokio::test]
async fn a_completion_with_a_stale_lease_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = SqliteStore::open(&config.store).await.unwrap();
    assert_eq!(store.enqueue(&[new_url("a"), new_url("a"), new_url("b")]).await.unwrap(), 2);

    let first = claim(&store, i64::MAX, 1).await.remove(0);
    assert_eq!(first.attempt, 1);
    assert_eq!(store.requeue_abandoned().await.unwrap(), 1);
    let second = claim(&store, i64::MAX, 1).await.remove(0);
    assert_eq!(second.url_id, first.url_id);
    assert_ne!(second.lease, first.lease);

    // The first claim's completion arrives late: ignored.
    assert_eq!(
        store.complete(&[done(&first, first.lease)], PageLimits::default()).await.unwrap().applied(),
        0
    );
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.in_flight, counts.done, counts.queued), (1, 0, 1));

    assert_eq!(
        store.complete(&[done(&second, second.lease)], PageLimits::default()).await.unwrap().applied(),
        1
    );
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.in_flight, counts.done, counts.queued), (0, 1, 1));
    // Both requests are in `attempts`, the late one as PostgreSQL records
    // it; `results` shows the one that took effect.
    let path = &config.store.path;
    let outcomes = crate::util::strings(path, "SELECT outcome FROM attempts ORDER BY id").await;
    assert_eq!(outcomes, ["stale_lease", "done"]);
    let result = "SELECT state || ' ' || coalesce(CAST(http_status AS TEXT), '-') FROM results WHERE url_id IS NOT NULL ORDER BY url_id";
    assert_eq!(crate::util::strings(path, result).await, ["done 200", "queued -"]);
    store.close().await;
}

/// SQLite writes no claim: a crawler that dies holding every due URL of a
/// host leaves the rows queued, and the next run knows how many it held
/// and gives the host its work back.
#[tokio::test]
async fn claims_a_crashed_sqlite_crawler_held_are_due_again_at_the_next_start() {
    const NOW: i64 = 1_000_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = SqliteStore::open(&config.store).await.unwrap();
    store.enqueue(&[new_url("a"), new_url("b"), new_url("c")]).await.unwrap();
    let jobs = claim(&store, NOW, 10).await;
    assert_eq!(jobs.len(), 3);
    assert!(claim(&store, NOW, 10).await.is_empty(), "a held URL is not claimed twice");
    // The next batch moves the host's work past what is held: none left.
    store.complete(&[done(&jobs[0], jobs[0].lease)], PageLimits::default()).await.unwrap();
    assert!(store.ready_hosts(NOW, &[], 10, 10).await.unwrap().is_empty(), "no work left");
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.in_flight, counts.done), (0, 2, 1));
    let path = &config.store.path;
    assert_eq!(
        crate::util::strings(path, "SELECT state FROM urls ORDER BY id").await,
        ["done", "queued", "queued"]
    );
    // The crash: the process ends without letting go of its claims.
    drop(store);

    let store = SqliteStore::open(&config.store).await.unwrap();
    assert_eq!(store.requeue_abandoned().await.unwrap(), 2);
    assert_eq!(store.ready_hosts(NOW, &[], 10, 10).await.unwrap(), ["127.0.0.1"]);
    let again: Vec<i64> = claim(&store, NOW, 10).await.iter().map(|job| job.url_id).collect();
    assert_eq!(again, [jobs[1].url_id, jobs[2].url_id]);
    // A clean stop lets go of them and gives the host its work back.
    assert_eq!(store.release(&[]).await.unwrap(), 2);
    assert_eq!(store.ready_hosts(NOW, &[], 10, 10).await.unwrap(), ["127.0.0.1"]);
    assert_eq!(store.requeue_abandoned().await.unwrap(), 0, "nothing held after a clean stop");
    store.close().await;
}

#[tokio::test]
async fn a_retry_waits_for_its_not_before_time() {
    for engine in engines("a_retry_waits_for_its_not_before_time").await {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&engine, dir.path()).await;
        store.enqueue(&[new_url("later")]).await.unwrap();
        let job = claim(&store, 1_000, 10).await.remove(0);
        let retry = Completion { next: Next::RetryAt(5_000), ..done(&job, job.lease) };
        store.complete(&[retry], PageLimits::default()).await.unwrap();

        assert!(claim(&store, 4_999, 10).await.is_empty());
        assert_eq!(store.next_ready().await.unwrap(), Some(5_000));
        assert!(store.ready_hosts(4_999, &[], 10, 10).await.unwrap().is_empty());
        assert_eq!(store.ready_hosts(5_000, &[], 10, 10).await.unwrap(), ["127.0.0.1"]);
        let again = claim(&store, 5_000, 10).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempt, 2);
        store.close().await;
    }
}

#[tokio::test]
async fn one_claim_takes_each_picked_hosts_own_count_of_due_urls() {
    for engine in engines("one_claim_takes_each_picked_hosts_own_count_of_due_urls").await {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&engine, dir.path()).await;
        let on = |host: &str, path: &str| NewUrl {
            url: format!("http://{host}/{path}"),
            host: host.into(),
            depth: 0,
            found_on: None,
        };
        let urls: Vec<NewUrl> = ["a.test", "b.test", "c.test"]
            .iter()
            .flat_map(|host| (0..4).map(move |i| on(host, &i.to_string())))
            .collect();
        store.enqueue(&urls).await.unwrap();
        // b.test's first URL is retried later: not due at 1_000.
        let first_b = store.claim(0, &[("b.test".into(), 1)]).await.unwrap().jobs.remove(0);
        let retry = Completion { next: Next::RetryAt(5_000), ..done(&first_b, first_b.lease) };
        store.complete(&[retry], PageLimits::default()).await.unwrap();

        let picks = [("a.test".to_owned(), 3), ("b.test".to_owned(), 10), ("d.test".to_owned(), 2)];
        let jobs = store.claim(1_000, &picks).await.unwrap().jobs;
        let taken: Vec<&str> = jobs.iter().map(|job| job.url.as_str()).collect();
        assert_eq!(
            taken,
            [
                "http://a.test/0",
                "http://a.test/1",
                "http://a.test/2",
                "http://b.test/1",
                "http://b.test/2",
                "http://b.test/3"
            ],
            "a.test: its oldest 3; b.test: the 3 due; c.test: not picked; d.test: nothing queued"
        );
        // One lease token per claim (SQLite) or per host lease (PostgreSQL).
        assert!(jobs.iter().all(|job| job.host == job.url[7..13]));
        let same_host_same_lease =
            jobs.windows(2).all(|w| w[0].host != w[1].host || w[0].lease == w[1].lease);
        assert!(same_host_same_lease, "{jobs:?}");
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.in_flight, counts.queued), (6, 6));

        // One host alone (a statement of its own): only its due URLs, oldest first.
        assert!(
            store.claim(1_000, &[("b.test".into(), 5)]).await.unwrap().jobs.is_empty(),
            "b.test/0 is due at 5_000"
        );
        let c: Vec<String> = store
            .claim(1_000, &[("c.test".into(), 2)])
            .await
            .unwrap()
            .jobs
            .into_iter()
            .map(|j| j.url)
            .collect();
        assert_eq!(c, ["http://c.test/0", "http://c.test/1"]);
        let b = store.claim(5_000, &[("b.test".into(), 5)]).await.unwrap().jobs;
        assert_eq!(b.iter().map(|j| j.url.as_str()).collect::<Vec<_>>(), ["http://b.test/0"]);
        assert_eq!(b[0].attempt, 2, "its retry");
        store.close().await;
    }
}

#[tokio::test]
async fn a_second_owner_is_refused_while_readers_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let owner = SqliteStore::open(&config.store).await.unwrap();
    owner.enqueue(&[new_url("x")]).await.unwrap();

    let err = SqliteStore::open(&config.store).await.err().expect("second open refused");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another trawler"), "{err}");
    assert_eq!(crate::util::scalar(&config.store.path, "SELECT count(*) FROM urls").await, 1);

    owner.close().await;
    drop(owner);
    SqliteStore::open(&config.store).await.expect("free again once the owner is gone").close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_trawler_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    SqliteStore::open(&config.store).await.unwrap().close().await;
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&config.store.path);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (999999, 'from the future', 1, x'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let err = SqliteStore::open(&config.store).await.err().expect("refused");
    assert!(matches!(err, StoreError::NewerSchema { found: 999999, .. }), "{err}");
    assert!(err.to_string().contains("newer than this trawler knows"), "{err}");
}

#[tokio::test]
async fn a_recrawl_is_a_new_visit_that_keeps_the_history() {
    for engine in engines("a_recrawl_is_a_new_visit_that_keeps_the_history").await {
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        let store = open(&engine, dir.path()).await;
        store.enqueue(&[new_url("a"), new_url("b")]).await.unwrap();
        let jobs = claim(&store, i64::MAX, 2).await;
        // "a" took a retry before it was done, and is due again at 1000 ms;
        // "b" has no recrawl time.
        let a = jobs.iter().find(|j| j.url.ends_with("/a")).unwrap().clone();
        let b = jobs.iter().find(|j| j.url.ends_with("/b")).unwrap().clone();
        let retry = Completion { next: Next::RetryAt(0), ..done(&a, a.lease) };
        store.complete(&[retry, done(&b, b.lease)], PageLimits::default()).await.unwrap();
        let a = claim(&store, i64::MAX, 1).await.remove(0);
        assert_eq!(a.attempt, 2);
        let finished = Completion { recrawl_after: Some(Duration::from_secs(60)), ..done(&a, a.lease) };
        store.complete(&[finished], PageLimits::default()).await.unwrap();
        let due = "SELECT count(*) FROM urls WHERE url LIKE '%/a' AND recrawl_at_ms = finished_ms + 60000";
        assert_eq!(count_in(&config, due).await, 1, "due a minute after it finished");

        let now = trawler::frontier::now_ms();
        assert_eq!(store.requeue_recrawls(now, 100).await.unwrap(), 0);
        assert_eq!(store.requeue_recrawls(now + 61_000, 100).await.unwrap(), 1);
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.queued, counts.done), (1, 1));
        let again = claim(&store, i64::MAX, 10).await;
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].url_id, again[0].attempt), (a.url_id, 1), "the retry count starts again");
        store.complete(&[done(&again[0], again[0].lease)], PageLimits::default()).await.unwrap();

        let row = |sql: &'static str| count_in(&config, sql);
        let sql = "SELECT CAST(attempts * 100 + recrawls * 10 + attempts_before AS BIGINT) FROM urls
                   WHERE url LIKE '%/a'";
        assert_eq!(row(sql).await, 312, "3 attempts in all, 1 recrawl, 2 before this visit");
        let numbers = "SELECT CAST(attempt AS TEXT) FROM attempts a JOIN urls u ON u.id = a.url_id
                       WHERE u.url LIKE '%/a' ORDER BY a.id";
        assert_eq!(strings_in(&config, numbers).await, ["1", "2", "1"]);

        // A policy puts every finished URL on the schedule, a host's own
        // setting first; taking the policy away takes them off again.
        let policy = RecrawlPolicy {
            adaptive: false,
            default: Some(Duration::from_secs(60)),
            per_host: [("127.0.0.1".to_owned(), Duration::from_secs(5))].into(),
        };
        assert_eq!(store.schedule_recrawls(&policy).await.unwrap(), 2);
        assert_eq!(store.schedule_recrawls(&policy).await.unwrap(), 0, "nothing changed");
        assert_eq!(row("SELECT count(*) FROM urls WHERE recrawl_at_ms = finished_ms + 5000").await, 2);
        // `trawler stats` reports the schedule.
        let stats = store.stats(trawler::frontier::now_ms()).await.unwrap();
        assert_eq!(stats.recrawls_scheduled, 2);
        let next = row("SELECT min(recrawl_at_ms) FROM urls").await;
        let next =
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(next as u64));
        assert_eq!(stats.next_recrawl_at, Some(next.to_string()));
        assert_eq!(store.schedule_recrawls(&RecrawlPolicy::default()).await.unwrap(), 2);
        assert_eq!(row("SELECT count(*) FROM urls WHERE recrawl_at_ms IS NOT NULL").await, 0);
        store.close().await;
    }
}

#[tokio::test]
async fn a_stale_completion_in_the_same_batch_as_the_live_one_adds_no_links() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = SqliteStore::open(&config.store).await.unwrap();
    store.enqueue(&[new_url("page")]).await.unwrap();
    let first = claim(&store, i64::MAX, 1).await.remove(0);
    store.requeue_abandoned().await.unwrap();
    let second = claim(&store, i64::MAX, 1).await.remove(0);
    let with_link = |job: &trawler::store::Job, link: &str| Completion {
        links: vec![NewUrl { found_on: Some(job.url_id), depth: 1, ..new_url(link) }],
        ..done(job, job.lease)
    };
    let batch = [with_link(&first, "from-stale"), with_link(&second, "from-live")];
    assert_eq!(store.complete(&batch, PageLimits::default()).await.unwrap().applied(), 1);
    let urls = crate::util::strings(&config.store.path, "SELECT url FROM urls ORDER BY id").await;
    assert_eq!(urls, ["http://127.0.0.1/page", "http://127.0.0.1/from-live"]);
    // Both requests were made: the late one is kept, and changed nothing.
    let outcomes = crate::util::strings(&config.store.path, "SELECT outcome FROM attempts ORDER BY id").await;
    assert_eq!(outcomes, ["stale_lease", "done"]);
    store.close().await;
}

/// A stale and the live attempt of one URL in one batch, both with
/// redirect hops: each hop names its own attempt.
#[tokio::test]
async fn hops_of_a_stale_and_a_live_attempt_in_one_batch_name_their_own_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let store = SqliteStore::open(&config.store).await.unwrap();
    store.enqueue(&[new_url("moved")]).await.unwrap();
    let first = claim(&store, i64::MAX, 1).await.remove(0);
    store.requeue_abandoned().await.unwrap();
    let second = claim(&store, i64::MAX, 1).await.remove(0);
    let via = |job: &trawler::store::Job, hop: &str| {
        let mut c = done(job, job.lease);
        c.record.hops = vec![trawler::store::Hop {
            url: format!("http://127.0.0.1/{hop}"),
            host: "127.0.0.1".into(),
            started_at: std::time::SystemTime::now(),
            http_status: Some(301),
        }];
        c
    };
    let batch = [via(&first, "stale-hop"), via(&second, "live-hop")];
    assert_eq!(store.complete(&batch, PageLimits::default()).await.unwrap().applied(), 1);

    let path = &config.store.path;
    let hops = "SELECT a.outcome || ' ' || h.url FROM redirect_hops h JOIN attempts a ON a.id = h.attempt_id
                ORDER BY h.attempt_id";
    let expected = ["stale_lease http://127.0.0.1/stale-hop", "done http://127.0.0.1/live-hop"];
    assert_eq!(crate::util::strings(path, hops).await, expected);
    store.close().await;
}

/// A committed batch says what it did to the count of finished URLs, which
/// the crawl's progress follows: which completions took effect, and how
/// many `done` URLs went back in the queue. Here a shorter path to pages at
/// the maximum depth (so not parsed) sends back one that is done and takes
/// back one in flight, whose late completion then finishes nothing.
#[tokio::test]
async fn a_batch_reports_completions_that_took_effect_and_urls_queued_again() {
    for engine in engines("a_batch_reports_completions_that_took_effect_and_urls_queued_again").await {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&engine, dir.path()).await;
        let deep = |path: &str| NewUrl { depth: 2, ..new_url(path) };
        store.enqueue(&[deep("done-deep"), deep("flying-deep"), new_url("seed")]).await.unwrap();
        let jobs = claim(&store, i64::MAX, 10).await;
        let job = |path: &str| jobs.iter().find(|j| j.url.ends_with(path)).unwrap().clone();
        let (done_deep, flying_deep, seed) = (job("done-deep"), job("flying-deep"), job("seed"));
        let limits = PageLimits { max_depth: 2, ..PageLimits::default() };

        let committed = store.complete(&[done(&done_deep, done_deep.lease)], limits).await.unwrap();
        assert!(committed.took_effect(&done(&done_deep, done_deep.lease)));
        assert_eq!(committed.reopened, 0);

        let links = ["done-deep", "flying-deep"]
            .map(|path| NewUrl { found_on: Some(seed.url_id), depth: 1, ..new_url(path) })
            .to_vec();
        let seed_done = Completion { links, ..done(&seed, seed.lease) };
        let committed = store.complete(std::slice::from_ref(&seed_done), limits).await.unwrap();
        assert!(committed.took_effect(&seed_done));
        assert_eq!(committed.reopened, 1, "done-deep is queued again; flying-deep was not finished");

        let late = done(&flying_deep, flying_deep.lease);
        let committed = store.complete(std::slice::from_ref(&late), limits).await.unwrap();
        assert!(!committed.took_effect(&late), "flying-deep was taken back: its completion is stale");
        assert_eq!(committed.applied(), 0);
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.done, counts.queued, counts.in_flight), (1, 2, 0));
        store.close().await;
    }
}

/// A page retried in the batch that also finds a shorter path to it is no
/// longer being fetched: it keeps its retry time (and is parsed when it is
/// fetched then), as on PostgreSQL.
#[tokio::test]
async fn a_page_retried_in_the_batch_that_lowers_it_keeps_its_retry_time() {
    for engine in engines("a_page_retried_in_the_batch_that_lowers_it_keeps_its_retry_time").await {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&engine, dir.path()).await;
        store.enqueue(&[NewUrl { depth: 2, ..new_url("deep") }, new_url("seed")]).await.unwrap();
        let jobs = claim(&store, 1_000, 10).await;
        let job = |path: &str| jobs.iter().find(|j| j.url.ends_with(path)).unwrap().clone();
        let (deep, seed) = (job("deep"), job("seed"));
        let limits = PageLimits { max_depth: 2, ..PageLimits::default() };
        let retry = Completion { next: Next::RetryAt(5_000), ..done(&deep, deep.lease) };
        let links = vec![NewUrl { found_on: Some(seed.url_id), depth: 1, ..new_url("deep") }];
        let seed_done = Completion { links, ..done(&seed, seed.lease) };
        let committed = store.complete(&[retry.clone(), seed_done], limits).await.unwrap();
        assert!(committed.took_effect(&retry));
        assert_eq!(committed.reopened, 0);
        assert!(claim(&store, 4_999, 10).await.is_empty(), "not due before its retry time");
        let again = claim(&store, 5_000, 10).await;
        assert_eq!((again.len(), again[0].depth, again[0].attempt), (1, 1, 2));
        store.close().await;
    }
}
