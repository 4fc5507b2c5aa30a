//! What requests carry per host (`[hosts."..."]` headers, credentials,
//! cookies, proxy, certificates) and where they may go: secrets from the
//! environment or files, sent to their host only, never logged or stored.
//! Through the real binary; every address is on loopback.

use std::time::Duration;

use crate::server::{Options, TestCa, TestServer};
use crate::util::{engines, output_of, result_in, spawn_crawl_in, spawn_trawler_with_env, wait_within};

#[tokio::test]
async fn a_hosts_headers_and_secrets_go_to_that_host_only() {
    for engine in engines("a_hosts_headers_and_secrets_go_to_that_host_only").await {
        let (own, other) = (TestServer::start_on("127.0.0.61"), TestServer::start_on("127.0.0.62"));
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-3141-secret\n").unwrap();
        let toml = format!(
            "[hosts.\"127.0.0.61\"]\nheaders = {{ \"X-Team\" = \"crawl\" }}\n\
             secret_headers = {{ \"X-Api-Key\" = \"env:T_API_KEY\" }}\n\
             bearer_token = \"file:{}\"\ncookies = \"env:T_COOKIES\"\n",
            token.display()
        );
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, &toml).unwrap();
        let redirect = own.url(&format!("/goto?to={}", other.url("/ok/elsewhere")));
        let lines = [own.url("/ok/page"), redirect];
        let mut env = engine.env();
        env.extend([("T_API_KEY", "key-2718-secret"), ("T_COOKIES", "session=cookie-1618-secret")]);
        let (db, log) =
            engine.crawl_to_end_with_env(dir.path(), &lines, &["--config", config.to_str().unwrap()], &env);

        let page = own.hits().into_iter().find(|h| h.path == "/ok/page").expect("the page was fetched");
        assert_eq!(page.header("x-team"), Some("crawl"));
        assert_eq!(page.header("x-api-key"), Some("key-2718-secret"));
        assert_eq!(page.header("authorization"), Some("Bearer tok-3141-secret"));
        assert_eq!(page.header("cookie"), Some("session=cookie-1618-secret"));
        let robots = &own.robots_hits()[0];
        assert_eq!(robots.header("x-api-key"), Some("key-2718-secret"), "the same host's robots.txt");
        // The redirect's target is another host: none of it goes there.
        let elsewhere = other.hits();
        assert_eq!(elsewhere.len(), 1);
        let leaked = |h: &crate::server::Hit| {
            ["x-team", "x-api-key", "authorization", "cookie"].iter().any(|n| h.header(n).is_some())
        };
        assert!(!leaked(&elsewhere[0]) && !leaked(&other.robots_hits()[0]), "{elsewhere:?}");
        let followed = result_in(&db, &lines[1]).await;
        assert_eq!((followed.http_status, followed.redirects), (Some(200), Some(1)));

        // Never logged, stored or printed by `trawler config`.
        let mut export =
            spawn_trawler_with_env(&["export", "--db", dir.path().join("crawl.db").to_str().unwrap()], &env);
        wait_within(&mut export, Duration::from_secs(10));
        let (rows, _) = output_of(export);
        let mut shown = spawn_trawler_with_env(&["config", "--config", config.to_str().unwrap()], &env);
        wait_within(&mut shown, Duration::from_secs(10));
        let (printed, _) = output_of(shown);
        assert!(printed.contains("env:T_API_KEY"), "{printed}");
        for secret in ["key-2718-secret", "tok-3141-secret", "cookie-1618-secret"] {
            for (what, text) in [("log", &log), ("export", &rows), ("config", &printed)] {
                assert!(!text.contains(secret), "{secret} in the {what}: {text}");
            }
        }
        if engine.name == "SQLite" {
            let bytes = std::fs::read(dir.path().join("crawl.db")).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("secret"), "a secret in the database file");
        }
    }
}

#[test]
fn a_secret_written_inline_or_missing_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, says) in [
        ("[hosts.\"a.test\"]\nbearer_token = \"hunter2-inline\"\n", "never written inline"),
        ("[hosts.\"a.test\"]\nbearer_token = \"env:T_UNSET_TOKEN\"\n", "hosts.\"a.test\".bearer_token"),
        ("[hosts.\"a.test\"]\ncookies = \"file:/nonexistent/cookies\"\n", "/nonexistent/cookies"),
        ("[fetch]\nproxy = \"http://user:pw@127.0.0.1:3128\"\n", "no credentials"),
    ] {
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, toml).unwrap();
        let flags = ["--config", config.to_str().unwrap()];
        let (mut child, _) = spawn_crawl_in(dir.path(), &["http://127.0.0.1:9/".to_owned()], &flags, &[]);
        let (status, _) = wait_within(&mut child, Duration::from_secs(30));
        let (_, log) = output_of(child);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains(says), "{says}: {log}");
        assert!(!log.contains("hunter2") && !log.contains(":pw@"), "{log}");
    }
}

#[tokio::test]
async fn a_proxy_carries_requests_but_deny_ips_still_judges_the_target() {
    for engine in engines("a_proxy_carries_requests_but_deny_ips_still_judges_the_target").await {
        // The proxy (on a denied address, named in the config) answers
        // every request itself; the target server is the one allowed address.
        let (proxy, target) = (TestServer::start_on("127.0.0.63"), TestServer::start_on("127.0.0.64"));
        let dir = tempfile::tempdir().unwrap();
        let port = target.addr.port();
        let toml = format!(
            "[fetch]\nproxy = \"http://proxy.test:{}\"\nno_proxy = [\"direct.test\"]\n\
             deny_ips = [\"127.0.0.0/8\"]\nallow_ips = [\"127.0.0.64/32\"]\n\
             resolve = {{ \"proxy.test\" = [\"127.0.0.63\"], \"via.test\" = [\"127.0.0.64\"], \
             \"direct.test\" = [\"127.0.0.64\"], \"denied.test\" = [\"127.0.0.65\"] }}\n\
             [robots]\nobey = false\n",
            proxy.addr.port()
        );
        let (via, direct, denied) = (
            format!("http://via.test:{port}/ok/1"),
            format!("http://direct.test:{port}/ok/2"),
            format!("http://denied.test:{port}/ok/3"),
        );
        let db = engine.crawl_with_config(dir.path(), &[via.clone(), direct.clone(), denied.clone()], &toml);

        assert_eq!(result_in(&db, &via).await.http_status, Some(200));
        let proxied: Vec<String> = proxy.hits().iter().map(|h| format!("{} {}", h.host, h.path)).collect();
        assert_eq!(proxied, ["via.test /ok/1"], "only via.test went through the proxy");
        assert_eq!(result_in(&db, &direct).await.http_status, Some(200));
        let direct_hits: Vec<String> =
            target.hits().iter().map(|h| format!("{} {}", h.host, h.path)).collect();
        assert_eq!(direct_hits, ["direct.test /ok/2"]);
        assert_eq!(result_in(&db, &denied).await.error_kind.as_deref(), Some("blocked_address"));
    }
}

#[tokio::test]
async fn accept_invalid_certs_trusts_one_host_and_says_so_loudly() {
    for engine in engines("accept_invalid_certs_trusts_one_host_and_says_so_loudly").await {
        let ca = TestCa::new();
        let server = TestServer::with_options(Options { tls: Some(ca.server.clone()), ..Options::default() });
        let url = format!("https://localhost:{}/ok/lax", server.addr.port());
        let lax = [("TRAWLER_HOSTS__localhost__ACCEPT_INVALID_CERTS", "true")];
        let crawl = |url: &String| {
            let dir = tempfile::tempdir().unwrap();
            let crawled = engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(url), &[], &lax);
            (crawled, dir)
        };
        let ((db, log), _dir) = crawl(&url);
        let row = result_in(&db, &url).await;
        assert_eq!((row.state.as_str(), row.http_status), ("done", Some(200)), "{:?}", row.error_message);
        assert!(log.contains("ANY certificate is accepted from this host"), "{log}");
        // Another host name for the same server is held to the rules.
        let strict = format!("https://127.0.0.1:{}/ok/strict", server.addr.port());
        let ((db, _), _dir) = crawl(&strict);
        assert_eq!(result_in(&db, &strict).await.error_kind.as_deref(), Some("tls"));
    }
}

#[tokio::test]
async fn the_environments_proxy_is_used_only_when_the_config_says_so() {
    for engine in engines("the_environments_proxy_is_used_only_when_the_config_says_so").await {
        let (proxy, target) = (TestServer::start_on("127.0.0.66"), TestServer::start_on("127.0.0.67"));
        let from_env = format!("http://127.0.0.66:{}", proxy.addr.port());
        for opt_in in ["false", "true"] {
            let dir = tempfile::tempdir().unwrap();
            let url = target.url(&format!("/ok/{opt_in}"));
            let env = [
                ("HTTP_PROXY", from_env.as_str()),
                ("http_proxy", from_env.as_str()),
                ("TRAWLER_FETCH__PROXY_FROM_ENV", opt_in),
                ("TRAWLER_ROBOTS__OBEY", "false"),
            ];
            let (db, _) = engine.crawl_to_end_with_env(dir.path(), std::slice::from_ref(&url), &[], &env);
            assert_eq!(result_in(&db, &url).await.http_status, Some(200));
        }
        let paths = |server: &TestServer| server.hits().iter().map(|h| h.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&target), ["/ok/false"], "direct unless proxy_from_env");
        assert_eq!(paths(&proxy), ["/ok/true"], "the environment's proxy with proxy_from_env");
    }
}
