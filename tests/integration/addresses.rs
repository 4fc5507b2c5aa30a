//! `fetch.deny_ips` / `fetch.allow_ips` through the real binary: internal
//! addresses are refused however they are written, on every hop, for
//! robots.txt too, and a refused URL fails as `blocked_address`, unretried.

use crate::server::TestServer;
use crate::util::{count_in, engines, result_in, strings_in};

#[tokio::test]
async fn internal_addresses_are_refused_however_written_and_wherever_reached() {
    for engine in engines("internal_addresses_are_refused_however_written_and_wherever_reached").await {
        // The crawl's own site is allowed; the rest of loopback stands for the
        // internal network a hostile page points at.
        let site = TestServer::start_on("127.0.0.70");
        let internal = TestServer::start_on("127.0.0.2");
        let port = internal.addr.port();
        let dir = tempfile::tempdir().unwrap();
        let spellings = [
            format!("http://[::ffff:127.0.0.2]:{port}/ok/mapped"),
            format!("http://2130706434:{port}/ok/decimal"),
            format!("http://0x7f.0.0.2:{port}/ok/hex"),
            format!("http://0177.0.0.2:{port}/ok/octal"),
            format!("http://127.2:{port}/ok/short"),
        ];
        let mut urls: Vec<String> = spellings.iter().map(|to| site.url(&format!("/goto?to={to}"))).collect();
        let (direct, by_name, fine) =
            (internal.url("/ok/direct"), format!("http://localhost:{port}/ok/by-name"), site.url("/ok/fine"));
        urls.extend([direct.clone(), by_name.clone(), fine.clone()]);
        let toml = "[fetch]\ndeny_ips = [\"127.0.0.0/8\", \"::1/128\", \"::ffff:0:0/96\"]\n\
                    allow_ips = [\"127.0.0.70/32\"]\n";
        let db = engine.crawl_with_config(dir.path(), &urls, toml);

        assert!(
            internal.hits().is_empty() && internal.robots_hits().is_empty(),
            "an internal address was reached"
        );
        assert_eq!(result_in(&db, &fine).await.state, "done");
        for url in urls.iter().filter(|u| **u != fine) {
            let row = result_in(&db, url).await;
            assert_eq!(
                (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
                ("failed", Some("blocked_address"), 1),
                "{url}: {:?}",
                row.error_message
            );
            assert!(row.error_message.unwrap().contains("refused by fetch.deny_ips"), "{url}");
        }
        // The redirect targets are named as the url crate reads them.
        let finals =
            strings_in(&db, "SELECT final_url FROM results WHERE url LIKE '%/goto?%' ORDER BY final_url")
                .await;
        assert_eq!(
            finals.iter().filter(|u| u.starts_with(&format!("http://127.0.0.2:{port}/"))).count(),
            4,
            "{finals:?}"
        );
        assert!(finals.contains(&format!("http://[::ffff:7f00:2]:{port}/ok/mapped")), "{finals:?}");
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts WHERE outcome = 'retry'").await, 0);
    }
}

/// `fetch.resolve` answers names without DNS (exact names and `*.`
/// domains); the URL keeps its name for politeness and robots.txt, and the
/// addresses it gives still go through `fetch.deny_ips`.
#[tokio::test]
async fn resolve_overrides_answer_names_and_still_go_through_the_deny_list() {
    for engine in engines("resolve_overrides_answer_names_and_still_go_through_the_deny_list").await {
        let site = TestServer::start_on("127.0.0.78");
        let internal = TestServer::start_on("127.0.0.2");
        let dir = tempfile::tempdir().unwrap();
        let (port, internal_port) = (site.addr.port(), internal.addr.port());
        let by_domain = format!("http://www.site.test:{port}/ok/domain");
        let by_name = format!("http://site.test:{port}/ok/name");
        let denied = format!("http://intranet.site.test:{internal_port}/ok/denied");
        let toml = "[fetch]\ndeny_ips = [\"127.0.0.2/32\"]\n\
                    [fetch.resolve]\n\"*.site.test\" = [\"127.0.0.78\"]\n\"site.test\" = [\"127.0.0.78\"]\n\
                    \"intranet.site.test\" = [\"127.0.0.2\"]\n";
        let db =
            engine.crawl_with_config(dir.path(), &[by_domain.clone(), by_name.clone(), denied.clone()], toml);

        for url in [&by_domain, &by_name] {
            let row = result_in(&db, url).await;
            assert_eq!((row.state.as_str(), row.http_status), ("done", Some(200)), "{url}");
        }
        // Two names, two hosts: each had its own robots.txt.
        assert_eq!(site.robots_hits().len(), 2);
        assert_eq!(
            strings_in(&db, "SELECT host FROM urls ORDER BY host").await,
            ["intranet.site.test", "site.test", "www.site.test"]
        );
        let row = result_in(&db, &denied).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref()), ("failed", Some("blocked_address")));
        assert!(internal.hits().is_empty() && internal.robots_hits().is_empty());
    }
}

/// Every name a request goes to is resolved, and the time it took is the
/// attempt's `dns_ms`: `fetch.resolve` names, names from `/etc/hosts`
/// (through hickory-dns, which reads it before asking any DNS server), and
/// redirect targets; an IP-literal URL resolves nothing (NULL).
#[tokio::test]
async fn each_attempt_records_the_time_its_names_took_to_resolve() {
    for engine in engines("each_attempt_records_the_time_its_names_took_to_resolve").await {
        let site = TestServer::start();
        let port = site.addr.port();
        let dir = tempfile::tempdir().unwrap();
        let by_override = format!("http://site.test:{port}/ok/override");
        let by_hosts_file = format!("http://localhost:{port}/ok/hosts-file");
        let literal = site.url("/ok/literal");
        let toml = "[fetch.resolve]\n\"site.test\" = [\"127.0.0.1\"]\n";
        let db = engine.crawl_with_config(
            dir.path(),
            &[by_override.clone(), by_hosts_file.clone(), literal.clone()],
            toml,
        );

        for url in [&by_override, &by_hosts_file, &literal] {
            let row = result_in(&db, url).await;
            assert_eq!(
                (row.state.as_str(), row.http_status),
                ("done", Some(200)),
                "{url}: {:?}",
                row.error_message
            );
        }
        let dns_ms = |url: &str| {
            format!(
                "SELECT coalesce(a.dns_ms, -1) FROM attempts a JOIN urls u ON u.id = a.url_id WHERE u.url = '{url}'"
            )
        };
        for url in [&by_override, &by_hosts_file] {
            let ms = count_in(&db, &dns_ms(url)).await;
            assert!((0..5_000).contains(&ms), "{url}: dns_ms {ms}");
        }
        assert_eq!(count_in(&db, &dns_ms(&literal)).await, -1, "an IP literal is not resolved");
    }
}

/// `ttfb_ms` is the wait for the response's headers, within `elapsed_ms`;
/// NULL when no response came.
#[tokio::test]
async fn each_attempt_records_its_time_to_first_byte() {
    for engine in engines("each_attempt_records_its_time_to_first_byte").await {
        let site = TestServer::start_on("127.0.0.82");
        let dir = tempfile::tempdir().unwrap();
        let (slow, refused) = (site.url("/slow/300/ttfb"), "http://127.0.0.82:9/refused".to_owned());
        let db =
            engine.crawl_to_end(dir.path(), &[slow.clone(), refused.clone()], &["--max-attempts", "1"]).0;
        let timing = |url: &str| {
            format!(
                "SELECT coalesce(a.ttfb_ms, -1) * 100000 + a.elapsed_ms FROM attempts a \
                 JOIN urls u ON u.id = a.url_id WHERE u.url = '{url}'"
            )
        };
        let packed = count_in(&db, &timing(&slow)).await;
        let (ttfb, elapsed) = (packed / 100_000, packed % 100_000);
        assert!((300..5_000).contains(&ttfb) && ttfb <= elapsed, "ttfb {ttfb} ms, elapsed {elapsed} ms");
        assert!(count_in(&db, &timing(&refused)).await < 0, "no response, no time to first byte");
    }
}

#[tokio::test]
async fn a_name_that_does_not_exist_is_final_after_one_retry() {
    use crate::dns::{Answer, DnsServer};
    for engine in engines("a_name_that_does_not_exist_is_final_after_one_retry").await {
        let server = crate::server::TestServer::start_on("127.0.0.91");
        let dns = DnsServer::start(
            "127.0.0.92",
            &[
                ("exists.test", Answer::Address("127.0.0.91".parse().unwrap())),
                ("gone.test", Answer::NxDomain),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let port = server.addr.port();
        let (exists, gone, failing) = (
            format!("http://exists.test:{port}/ok/a"),
            format!("http://gone.test:{port}/ok/b"),
            format!("http://servfail.test:{port}/ok/c"),
        );
        let toml = format!(
            "[fetch]\nnameservers = [\"{}\"]\n[retry]\nmax_attempts = 4\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\n\
             [politeness]\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\n",
            dns.addr
        );
        let db =
            engine.crawl_with_config(dir.path(), &[exists.clone(), gone.clone(), failing.clone()], &toml);

        assert_eq!(result_in(&db, &exists).await.http_status, Some(200));
        // NXDOMAIN: one retry, then final, saying why.
        let row = result_in(&db, &gone).await;
        assert_eq!(
            (row.state.as_str(), row.error_kind.as_deref(), row.attempts),
            ("failed", Some("dns"), 2),
            "{row:?}"
        );
        assert!(row.error_message.as_deref().is_some_and(|m| m.contains("does not exist")), "{row:?}");
        // SERVFAIL says nothing of the name: every attempt is made.
        let row = result_in(&db, &failing).await;
        assert_eq!((row.state.as_str(), row.error_kind.as_deref(), row.attempts), ("failed", Some("dns"), 4));
        assert!(dns.queries_for("gone.test") >= 1);
    }
}
