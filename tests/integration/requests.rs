//! What requests carry per host (`[hosts."..."]` headers, credentials,
//! cookies, proxy, certificates) and where they may go: secrets from the
//! environment or files, sent to their origin only, never logged or stored.
//! Through the real binary; every address is on loopback.

use std::time::Duration;

use crate::server::{Options, TestCa, TestServer};
use crate::util::{
    Daemon, engines, eventually, output_of, result_in, spawn_crawl_in, spawn_trawler_with_env, wait_within,
};

#[tokio::test]
async fn secrets_go_to_their_origin_only_and_plain_headers_follow_the_host() {
    for engine in engines("secrets_go_to_their_origin_only_and_plain_headers_follow_the_host").await {
        let own = TestServer::start_on("127.0.0.61");
        let (other_port, other_host) =
            (TestServer::start_on("127.0.0.61"), TestServer::start_on("127.0.0.62"));
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-3141-secret\n").unwrap();
        // Keys as an operator may write them: 2130706493 is 127.0.0.61, and
        // the origin's scheme in capitals; both are normalized as URLs are.
        let toml = format!(
            "[hosts.\"2130706493\"]\nheaders = {{ \"X-Team\" = \"crawl\" }}\n\
             [hosts.\"HTTP://127.0.0.61:{}\"]\n\
             secret_headers = {{ \"X-Api-Key\" = \"env:T_API_KEY\" }}\n\
             bearer_token = \"file:{}\"\ncookies = \"env:T_COOKIES\"\n",
            own.addr.port(),
            token.display()
        );
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, &toml).unwrap();
        let to_other_port = own.url(&format!("/goto?to={}", other_port.url("/ok/elsewhere")));
        let to_other_host = own.url(&format!("/goto?to={}", other_host.url("/ok/far")));
        let lines = [own.url("/ok/page"), to_other_port.clone(), to_other_host];
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
        assert_eq!(robots.header("x-api-key"), Some("key-2718-secret"), "the same origin's robots.txt");
        let secret = |h: &crate::server::Hit| {
            ["x-api-key", "authorization", "cookie"].iter().any(|n| h.header(n).is_some())
        };
        // Another port of the same host: its plain header, no secret, on
        // its robots.txt and its page (curl's rule since CVE-2022-27776).
        let elsewhere: Vec<_> = other_port.hits().into_iter().chain(other_port.robots_hits()).collect();
        assert_eq!(elsewhere.len(), 2, "{elsewhere:?}");
        for hit in &elsewhere {
            assert!(!secret(hit), "a secret went to another port: {hit:?}");
            assert_eq!(hit.header("x-team"), Some("crawl"), "{hit:?}");
        }
        // Another host: nothing of it.
        let far: Vec<_> = other_host.hits().into_iter().chain(other_host.robots_hits()).collect();
        assert_eq!(far.len(), 2, "{far:?}");
        assert!(far.iter().all(|h| !secret(h) && h.header("x-team").is_none()), "{far:?}");
        let followed = result_in(&db, &to_other_port).await;
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
        assert!(printed.contains(&format!("[hosts.\"http://127.0.0.61:{}\"]", own.addr.port())), "{printed}");
        assert!(printed.contains("[hosts.\"127.0.0.61\"]"), "the key as URLs carry it: {printed}");
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

#[tokio::test]
async fn no_secret_follows_a_redirect_from_https_to_plain_http() {
    for engine in engines("no_secret_follows_a_redirect_from_https_to_plain_http").await {
        let ca = TestCa::new();
        let tls = TestServer::with_options(Options { tls: Some(ca.server.clone()), ..Options::default() });
        let plain = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let origin = format!("https://localhost:{}", tls.addr.port());
        let toml = format!(
            "[fetch]\nca_file = {:?}\n\
             [hosts.\"{origin}\"]\nbasic_auth_user = \"crawler\"\nbasic_auth_password = \"env:T_PASS\"\n\
             secret_headers = {{ \"X-Api-Key\" = \"env:T_API_KEY\" }}\n\
             [hosts.\"localhost\"]\nsecret_headers = {{ \"X-Bare\" = \"env:T_BARE\" }}\n",
            ca_file.to_str().unwrap()
        );
        let seed = format!("{origin}/goto?to=http://localhost:{}/ok/plain", plain.addr.port());
        let env = [("T_PASS", "pw-5772-secret"), ("T_API_KEY", "key-1414-secret"), ("T_BARE", "bare-secret")];
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, &toml).unwrap();
        let (db, _) = engine.crawl_to_end_with_env(
            dir.path(),
            std::slice::from_ref(&seed),
            &["--config", config.to_str().unwrap()],
            &env,
        );
        assert_eq!(result_in(&db, &seed).await.http_status, Some(200));

        let redirect = tls.hits().into_iter().find(|h| h.path == "/goto").expect("the https page");
        // RFC 7617 §2: base64("crawler:pw-5772-secret").
        assert_eq!(redirect.header("authorization"), Some("Basic Y3Jhd2xlcjpwdy01NzcyLXNlY3JldA=="));
        assert_eq!(redirect.header("x-api-key"), Some("key-1414-secret"));
        // A bare name's secrets go to https on port 443 only.
        assert_eq!(redirect.header("x-bare"), None);
        let cleartext: Vec<_> = plain.hits().into_iter().chain(plain.robots_hits()).collect();
        assert_eq!(cleartext.len(), 2, "{cleartext:?}");
        for hit in &cleartext {
            for name in ["authorization", "x-api-key", "x-bare"] {
                assert_eq!(hit.header(name), None, "{name} went in clear to {hit:?}");
            }
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
        // Keys that could never match a request.
        ("[hosts.\"a.test:8443\"]\ndelay = \"1s\"\n", "`hosts.\"a.test:8443\"`: a port needs a scheme"),
        ("[hosts.\"A.test\"]\ndelay = \"1s\"\n[hosts.\"a.test\"]\ndelay = \"2s\"\n", "names the same host"),
        ("[hosts.\"https://a.test:8443\"]\ndelay = \"1s\"\n", "`hosts.\"https://a.test:8443\".delay`"),
        ("[hosts.\"a.test/path\"]\ndelay = \"1s\"\n", "`hosts.\"a.test/path\"`: not a host"),
        // A credential that would be silently wrong.
        (
            "[hosts.\"a.test\"]\nbasic_auth_user = \"me:you\"\nbasic_auth_password = \"env:T_PASSWORD\"\n",
            "hosts.\"a.test\".basic_auth_user",
        ),
        (
            "[hosts.\"a.test\"]\nbasic_auth_user = \"me\"\nbasic_auth_password = \"env:T_BROKEN_PASSWORD\"\n",
            "hosts.\"a.test\".basic_auth_password: env:T_BROKEN_PASSWORD holds a control character",
        ),
    ] {
        let config = dir.path().join("trawler.toml");
        std::fs::write(&config, toml).unwrap();
        let flags = ["--config", config.to_str().unwrap()];
        let env = [("T_PASSWORD", "hunter2"), ("T_BROKEN_PASSWORD", "hunter2\r\nX-Injected: 1")];
        let (mut child, _) = spawn_crawl_in(dir.path(), &["http://127.0.0.1:9/".to_owned()], &flags, &env);
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

#[tokio::test]
async fn a_reload_whose_secret_vanished_keeps_the_running_one_and_says_so() {
    let server = TestServer::start_on("127.0.0.68");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-2236-secret\n").unwrap();
    let toml = format!(
        "[hosts.\"http://127.0.0.68:{}\"]\nbearer_token = \"file:{}\"\n",
        server.addr.port(),
        token.display()
    );
    let daemon = Daemon::start_with_env(dir.path(), &toml, &[]);
    std::fs::remove_file(&token).unwrap();
    daemon.reload(&toml);
    let log = daemon.stderr.wait_for("the next start will fail").await;
    assert!(log.contains("hosts.\"http://127.0.0.68:") && log.contains(".bearer_token"), "{log}");
    assert!(log.contains(token.to_str().unwrap()), "names the file: {log}");

    // The running value is still sent.
    daemon.enqueue(&[server.url("/ok/after-reload")]);
    eventually("the page after the reload", Duration::from_secs(10), async || !server.hits().is_empty())
        .await;
    assert_eq!(server.hits()[0].header("authorization"), Some("Bearer tok-2236-secret"));
    daemon.stop();
}

#[tokio::test]
async fn a_proxy_opens_no_door_past_deny_ips() {
    for engine in engines("a_proxy_opens_no_door_past_deny_ips").await {
        // The proxy is named `localhost` (it answers every request itself);
        // `localhost` as a crawl target is judged like any other name.
        let (proxy, internal) = (TestServer::start(), TestServer::start());
        let allowed = TestServer::start_on("127.0.0.64");
        let dir = tempfile::tempdir().unwrap();
        let proxy_url = format!("http://localhost:{}", proxy.addr.port());
        let toml = format!(
            "[fetch]\ndeny_ips = [\"127.0.0.0/8\", \"::1/128\"]\nallow_ips = [\"127.0.0.64/32\"]\n\
             resolve = {{ \"ok.test\" = [\"127.0.0.64\"], \"mixed.test\" = [\"127.0.0.64\", \"127.0.0.65\"], \
             \"direct-mixed.test\" = [\"127.0.0.65\", \"127.0.0.64\"] }}\n\
             [hosts.\"ok.test\"]\nproxy = \"{proxy_url}\"\n[hosts.\"mixed.test\"]\nproxy = \"{proxy_url}\"\n\
             [robots]\nobey = false\n"
        );
        let (port, internal_port) = (allowed.addr.port(), internal.addr.port());
        let via = format!("http://ok.test:{port}/ok/via");
        let direct = format!("http://localhost:{internal_port}/ok/direct");
        let hop = allowed.url(&format!("/goto?to=http://localhost:{internal_port}/ok/hop"));
        let mixed_via = format!("http://mixed.test:{port}/ok/mixed-via");
        let mixed_direct = format!("http://direct-mixed.test:{port}/ok/mixed-direct");
        let lines = [via.clone(), direct.clone(), hop.clone(), mixed_via.clone(), mixed_direct.clone()];
        let db = engine.crawl_with_config(dir.path(), &lines, &toml);

        assert_eq!(result_in(&db, &via).await.http_status, Some(200));
        let proxied: Vec<String> = proxy.hits().iter().map(|h| format!("{} {}", h.host, h.path)).collect();
        assert_eq!(proxied, ["ok.test /ok/via"], "only ok.test went through the proxy");
        // The proxy's name as a target, directly or by a redirect: refused.
        assert!(internal.hits().is_empty(), "{:?}", internal.hits());
        for url in [&direct, &hop] {
            let row = result_in(&db, url).await;
            assert_eq!(row.error_kind.as_deref(), Some("blocked_address"), "{url}: {:?}", row.error_message);
        }
        // Through a proxy, which resolves names itself, one denied address
        // refuses the name; directly, the permitted address is connected to.
        let row = result_in(&db, &mixed_via).await;
        assert_eq!(row.error_kind.as_deref(), Some("blocked_address"), "{:?}", row.error_message);
        assert!(row.error_message.as_deref().is_some_and(|m| m.contains("127.0.0.65")), "{row:?}");
        assert_eq!(result_in(&db, &mixed_direct).await.http_status, Some(200));
        let mut direct_hits: Vec<String> = allowed.hits().iter().map(|h| h.path.clone()).collect();
        direct_hits.sort();
        assert_eq!(direct_hits, ["/goto", "/ok/mixed-direct"]);
    }
}
