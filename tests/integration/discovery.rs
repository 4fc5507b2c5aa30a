//! Link following from seeds: what is enqueued, what is dropped and why,
//! and the link graph in the database.

use std::time::Duration;

use crate::server::TestServer;
use crate::util::{
    Daemon, count_in, crawl_lines, engines, eventually, output_of, spawn_crawl_with_env,
    spawn_trawler_with_env, strings_in, wait_within, write_input,
};

#[tokio::test]
async fn following_links_crawls_the_site_within_scope_and_depth() {
    for engine in engines("following_links_crawls_the_site_within_scope_and_depth").await {
        let server = TestServer::start_on("127.0.0.40");
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.discovery.follow = true;
        config.discovery.max_depth = 3;
        let summary = crawl_lines(&config, &[server.url("/site/index.html")]).await;

        let site = server.url("/site/");
        let found = sorted(
            strings_in(
                &config,
                &format!(
                    "SELECT replace(url, '{site}', '') || ' ' || depth || ' ' || state || ' ' || http_status
                     FROM results"
                ),
            )
            .await,
        );
        assert_eq!(
            found,
            [
                "a.html 1 done 200",
                "b.html 1 done 200",
                "deep/1.html 1 done 200",
                "deep/2.html 2 done 200",
                "deep/3.html 3 done 200",
                "index.html 0 done 200",
                "missing.html 2 done 404",
                "sub/c.html 2 done 200",
            ]
        );
        assert_eq!(summary.done, 8);

        // Each URL fetched once; nofollow, out-of-scope, trap and too-deep never.
        let mut fetched: Vec<String> = server.hits().into_iter().map(|h| h.path).collect();
        fetched.sort();
        fetched.dedup();
        assert_eq!(fetched.len(), server.hits().len(), "a URL was fetched twice");
        for never in ["/site/secret.html", "/site/deep/4.html"] {
            assert!(!fetched.iter().any(|p| p == never), "{never} was fetched");
        }

        // Why links were dropped, per page. Pages at the maximum depth
        // (deep/3) are not parsed at all: their links could not be followed.
        let dropped = strings_in(
            &config,
            &format!(
                "SELECT replace(u.url, '{site}', '') || ' ' || d.reason || ' ' || d.count
                 FROM dropped_links d JOIN urls u ON u.id = d.url_id"
            ),
        )
        .await;
        assert_eq!(
            sorted(dropped),
            [
                "index.html nofollow 1",
                "index.html not_http 1",
                "index.html out_of_scope 1",
                "index.html repeated_segment 1",
            ]
        );

        // The link graph: found_on, in-degree, and the broken-link query.
        let found_on = strings_in(
            &config,
            "SELECT p.url FROM urls c JOIN urls p ON p.id = c.found_on WHERE c.url LIKE '%/sub/c.html'",
        )
        .await;
        assert_eq!(found_on, [server.url("/site/b.html")]);
        let into_index = count_in(
            &config,
            "SELECT count(*) FROM links l JOIN urls u ON u.id = l.to_id WHERE u.url LIKE '%/index.html'",
        )
        .await;
        assert_eq!(into_index, 2, "index.html links to itself (canonical) and a.html links back");
        let broken = strings_in(
            &config,
            "SELECT DISTINCT src.url FROM links l JOIN urls src ON src.id = l.from_id
             JOIN results dst ON dst.url_id = l.to_id WHERE dst.http_status >= 400",
        )
        .await;
        assert_eq!(broken, [server.url("/site/a.html")]);
    }
}

/// `rows` in order (engines order text by their own collations).
fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

#[tokio::test]
async fn without_follow_links_are_not_extracted() {
    for engine in engines("without_follow_links_are_not_extracted").await {
        let server = TestServer::start_on("127.0.0.41");
        let dir = tempfile::tempdir().unwrap();
        let config = engine.config(dir.path());
        crawl_lines(&config, &[server.url("/site/index.html")]).await;
        assert_eq!(count_in(&config, "SELECT count(*) FROM urls").await, 1);
        assert_eq!(count_in(&config, "SELECT count(*) FROM links").await, 0);
    }
}

#[tokio::test]
async fn page_caps_stop_new_urls_but_keep_links_to_known_ones() {
    for (total, per_host, reason) in [(Some(3), None, "max_pages"), (None, Some(3), "max_pages_per_host")] {
        for engine in
            engines(&format!("page_caps_stop_new_urls_but_keep_links_to_known_ones ({reason})")).await
        {
            let server = TestServer::start_on("127.0.0.42");
            let dir = tempfile::tempdir().unwrap();
            let mut config = engine.config(dir.path());
            config.discovery.follow = true;
            config.discovery.max_pages = total;
            config.discovery.max_pages_per_host = per_host;
            crawl_lines(&config, &[server.url("/site/index.html")]).await;

            assert_eq!(count_in(&config, "SELECT count(*) FROM urls").await, 3, "{reason}");
            let capped = count_in(
                &config,
                &format!("SELECT CAST(coalesce(sum(count), 0) AS BIGINT) FROM dropped_links WHERE reason = '{reason}'"),
            )
            .await;
            assert!(capped >= 1, "{reason} not counted");
            // a.html (admitted) links back to index.html (known): the edge is kept.
            let back = count_in(
                &config,
                "SELECT count(*) FROM links l JOIN urls f ON f.id = l.from_id JOIN urls t ON t.id = l.to_id
                 WHERE f.url LIKE '%/a.html' AND t.url LIKE '%/index.html'",
            )
            .await;
            assert_eq!(back, 1, "{reason}");
        }
    }
}

#[tokio::test]
async fn a_sitemap_index_seeds_the_urls_of_its_sitemaps() {
    for engine in engines("a_sitemap_index_seeds_the_urls_of_its_sitemaps").await {
        let server = TestServer::start_on("127.0.0.43");
        let dir = tempfile::tempdir().unwrap();
        let mut config = engine.config(dir.path());
        config.discovery.sitemaps = vec![server.url("/sitemap.xml")];
        let summary = crawl_lines(&config, &[]).await;

        let urls = strings_in(&config, "SELECT url || ' ' || depth FROM results WHERE state = 'done'").await;
        assert_eq!(
            sorted(urls),
            [format!("{} 0", server.url("/ok/s1")), format!("{} 0", server.url("/ok/s2"))],
            "the other host's URL is not taken"
        );
        assert_eq!(summary.done, 2);
        assert_eq!(server.hits_of("/ok/s2").len(), 1);
    }
}

#[tokio::test]
async fn when_following_robots_txt_sitemap_lines_are_read() {
    use crate::server::RobotsTxt;
    for follow in [false, true] {
        for engine in engines(&format!("when_following_robots_txt_sitemap_lines_are_read ({follow})")).await {
            let server = TestServer::with_robots("127.0.0.44", RobotsTxt::WithSitemap);
            let dir = tempfile::tempdir().unwrap();
            let mut config = engine.config(dir.path());
            config.discovery.follow = follow;
            crawl_lines(&config, &[server.url("/ok/seed")]).await;
            let done = count_in(&config, "SELECT count(*) FROM results WHERE state = 'done'").await;
            if follow {
                assert_eq!(done, 3, "the seed, s1 and s2");
            } else {
                assert_eq!(done, 1, "not without --follow");
            }
        }
    }
}

/// Links are read as a browser reads them: `&amp;` and numeric references
/// decoded (legacy ones kept where HTML keeps them), `<noscript>` parsed.
#[tokio::test]
async fn links_written_by_a_cms_are_decoded_and_noscript_links_followed() {
    for engine in engines("links_written_by_a_cms_are_decoded_and_noscript_links_followed").await {
        let server = TestServer::start_on("127.0.0.41");
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = engine.crawl_to_end(dir.path(), &[server.url("/cms/index.html")], &["--follow"]);
        let mut fetched: Vec<String> = server.hits().into_iter().map(|h| h.path_and_query).collect();
        fetched.sort();
        assert_eq!(
            fetched,
            [
                "/cms/dir/f.html?id=3",
                "/cms/dir/h.html",
                "/cms/dir/ns.html",
                "/cms/dir/p.html?a=1&copy=2",
                "/cms/dir/q.html?a=1&b=2",
                "/cms/index.html",
            ]
        );
        let not_ok = count_in(&db, "SELECT count(*) FROM results WHERE http_status <> 200").await;
        assert_eq!(not_ok, 0, "every decoded link resolves to a page");
    }
}

/// With `--follow` and the default scope (the seed's host), nothing takes
/// the crawl to another host: not a robots.txt `Sitemap:` line naming a
/// sitemap elsewhere, nor one redirecting there, nor a URL elsewhere listed
/// in an in-scope sitemap, nor a discovered link redirecting there.
#[tokio::test]
async fn a_crawl_scoped_to_one_host_makes_no_request_to_another() {
    for engine in engines("a_crawl_scoped_to_one_host_makes_no_request_to_another").await {
        use crate::server::RobotsTxt;
        let other = TestServer::start_on("127.0.0.46");
        let robots = format!(
            "User-agent: *\nAllow: /\nSitemap: {}\nSitemap: http://{{host}}/goto?to={}\nSitemap: http://{{host}}/sitemap-1.xml\n",
            other.url("/sitemap.xml"),
            other.url("/sitemap-1.xml"),
        );
        let site = TestServer::with_robots("127.0.0.45", RobotsTxt::Text(Box::leak(robots.into_boxed_str())));
        let away = format!("/goto?to={}", other.url("/ok/away"));
        let seed = site.url(&format!(
            "/linkto?url={}",
            url::form_urlencoded::byte_serialize(away.as_bytes()).collect::<String>()
        ));
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = engine.crawl_to_end(dir.path(), &[seed], &["--follow"]);

        assert_eq!(
            other.hits().len() + other.robots_hits().len(),
            0,
            "requests to another host: {:?}\n{log}",
            other.hits()
        );
        // The in-scope sitemap's own-host URLs are crawled, as seeds.
        let seeds =
            strings_in(&db, "SELECT url FROM urls WHERE url LIKE '%/ok/s%' AND depth = 0 ORDER BY url").await;
        assert_eq!(seeds, [site.url("/ok/s1"), site.url("/ok/s2")]);
        // The discovered redirect away ended as out_of_scope, not requested.
        let away_attempt = format!(
            "SELECT error_kind || ': ' || error_message FROM attempts WHERE final_url = '{}'",
            other.url("/ok/away")
        );
        let outcome = strings_in(&db, &away_attempt).await;
        assert!(matches!(&outcome[..], [one] if one.starts_with("out_of_scope: ")), "{outcome:?}");
        assert!(log.contains("sitemap out of the crawl's scope"), "{log}");
    }
}

/// Links lost to the per-page cap (or any rule) are visible: a warning that
/// names the page the first time, the summary, `trawler stats` and the
/// service's `/metrics`.
#[tokio::test]
async fn dropped_links_are_reported_in_the_summary_stats_and_metrics() {
    for engine in engines("dropped_links_are_reported_in_the_summary_stats_and_metrics").await {
        let server = TestServer::start_on("127.0.0.47");
        let dir = tempfile::tempdir().unwrap();
        let seed = server.url("/site/index.html");
        let input = write_input(dir.path(), std::slice::from_ref(&seed));
        let db = dir.path().join("crawl.db");
        // index.html has 9 links (not counting its stylesheet): 2 are kept.
        let mut env = vec![("TRAWLER_DISCOVERY__MAX_LINKS_PER_PAGE", "2")];
        env.extend(engine.env());
        let mut child = spawn_crawl_with_env(input.to_str().unwrap(), &db, &["--follow"], &env);
        assert_eq!(wait_within(&mut child, Duration::from_secs(30)).0.code(), Some(0));
        let (stdout, log) = output_of(child);
        assert!(stdout.contains("links      7 dropped: 7 too_many_links (see dropped_links)"), "{stdout}");
        assert!(stdout.contains("URLs: 3 done (2 × 2xx, 1 × 404), 0 failed"), "{stdout}");
        let warnings: Vec<&str> =
            log.lines().filter(|l| l.contains("discovery.max_links_per_page")).collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains(&seed), "{log}");

        let mut stats = spawn_trawler_with_env(&["stats", "--db", db.to_str().unwrap()], &engine.env());
        assert_eq!(wait_within(&mut stats, Duration::from_secs(10)).0.code(), Some(0));
        let (stdout, _) = output_of(stats);
        assert!(stdout.contains("dropped    too_many_links 7"), "{stdout}");
    }
    // The service counts what it drops, whatever its database.
    let server = TestServer::start_on("127.0.0.47");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), "[discovery]\nfollow = true\nmax_links_per_page = 2\n");
    daemon.enqueue(&[server.url("/site/index.html")]);
    let metric = r#"trawler_links_dropped_total{reason="too_many_links"} 7"#;
    let url = format!("http://{}/metrics", daemon.admin);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually("the dropped links in /metrics", Duration::from_secs(10), async || {
        let metrics = http.get(&url).send().await.unwrap().text().await.unwrap();
        if metrics.contains(metric) { Ok(()) } else { Err(metrics) }
    })
    .await;
    daemon.stop();
}

/// Depth is the shortest distance from a seed: when a shorter path to a
/// stored page turns up, the page and what it leads to move up, and a page
/// that was at the maximum depth (so not parsed) is fetched again, its
/// links now followed.
#[tokio::test]
async fn depth_is_the_shortest_path_even_when_the_long_one_came_first() {
    for engine in engines("depth_is_the_shortest_path_even_when_the_long_one_came_first").await {
        let server = TestServer::start_on("127.0.0.48");
        let dir = tempfile::tempdir().unwrap();
        let depth3 = ["--follow", "--max-depth", "3"];
        // The long path first: s → a → b → c, c at the maximum depth.
        let (config, _) = engine.crawl_to_end(dir.path(), &[server.url("/graph/s.html")], &depth3);
        let graph = server.url("/graph/");
        let depths = format!(
            "SELECT replace(u.url, '{graph}', '') || ' ' || u.depth || ' ' || coalesce(replace(f.url, '{graph}', ''), '-')
             FROM urls u LEFT JOIN urls f ON f.id = u.found_on"
        );
        let depths = || async { sorted(strings_in(&config, &depths).await) };
        assert_eq!(depths().await, ["a.html 1 s.html", "b.html 2 a.html", "c.html 3 b.html", "s.html 0 -"]);

        // Then a shortcut: t → b.
        engine.crawl_to_end(dir.path(), &[server.url("/graph/t.html")], &depth3);
        assert_eq!(
            depths().await,
            [
                "a.html 1 s.html",
                "b.html 1 t.html",
                "c.html 2 b.html",
                "d.html 3 c.html",
                "s.html 0 -",
                "t.html 0 -"
            ]
        );
        assert_eq!(server.hits_of("/graph/c.html").len(), 2, "c fetched again, now parsed");
        assert_eq!(server.hits_of("/graph/e.html").len(), 0, "d is at the maximum depth");
        assert_eq!(count_in(&config, "SELECT count(*) FROM results WHERE state <> 'done'").await, 0);
    }
}

/// Seeds and discovered links are normalized by one function: a page given
/// as a seed with `%7e` and a tracking parameter, and linked to plainly, is
/// stored once. A URL list saved with a byte-order mark loses no line.
#[tokio::test]
async fn seeds_and_links_are_normalized_alike_and_a_bom_is_skipped() {
    for engine in engines("seeds_and_links_are_normalized_alike_and_a_bom_is_skipped").await {
        let server = TestServer::start_on("127.0.0.49");
        let dir = tempfile::tempdir().unwrap();
        let seeds = [
            format!("\u{feff}{}", server.url("/ok/%7euser/?utm_source=mail&utm_medium=x")),
            server.url("/linkto?url=/ok/~user/"),
        ];
        let (db, _) = engine.crawl_to_end(dir.path(), &seeds, &["--follow"]);
        let urls = sorted(strings_in(&db, "SELECT url FROM urls").await);
        assert_eq!(urls, [server.url("/linkto?url=/ok/~user/"), server.url("/ok/~user/")]);
        assert_eq!(count_in(&db, "SELECT count(*) FROM input_errors").await, 0);
        assert_eq!(server.hits_of("/ok/~user/").len(), 1);
    }
}

#[tokio::test]
async fn the_links_of_rss_and_atom_feeds_are_seeds() {
    for engine in engines("the_links_of_rss_and_atom_feeds_are_seeds").await {
        let server = TestServer::start();
        let dir = tempfile::tempdir().unwrap();
        let (rss, atom) = (server.url("/feed.xml"), server.url("/atom.xml"));
        let (db, log) = engine.crawl_to_end(dir.path(), &[], &["--feed", &rss, "--feed", &atom]);
        let urls =
            strings_in(&db, "SELECT url || ' ' || CAST(depth AS TEXT) || ' ' || state FROM urls").await;
        let mut urls = urls;
        urls.sort();
        let expect: Vec<String> = ["/ok/atom1", "/ok/atom2", "/ok/rss1", "/ok/rss2"]
            .iter()
            .map(|p| format!("{} 0 done", server.url(p)))
            .collect();
        assert_eq!(urls, expect, "entries' page links only, tracking parameters stripped, in scope");
        assert!(log.contains("feed") && log.contains("enqueued=2") && log.contains("dropped=1"), "{log}");
        let fetched = server.hits_per_path();
        assert!(!fetched.contains_key("/ok/audio") && !fetched.contains_key("/ok/edit"), "{fetched:?}");
    }
}

/// A page's own robots directives: `nofollow` in a robots meta tag (or one
/// for trawler's token, or `none`) or an `X-Robots-Tag` header keeps its
/// links from being followed, counted as `page_nofollow`; `noindex` and the
/// canonical link are stored on the attempt. Rules for other crawlers do
/// not apply. Hrefs lose only what a browser trims: `&nbsp;x.html` is a
/// page of its own, not the page itself.
#[tokio::test]
async fn a_page_that_says_nofollow_is_not_followed_and_noindex_and_canonical_are_stored() {
    for engine in
        engines("a_page_that_says_nofollow_is_not_followed_and_noindex_and_canonical_are_stored").await
    {
        let server = TestServer::start_on("127.0.0.57");
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = engine.crawl_to_end(dir.path(), &[server.url("/directives/index.html")], &["--follow"]);

        let fetched: std::collections::BTreeSet<String> = server.hits().into_iter().map(|h| h.path).collect();
        for followed in [
            "/ok/meta-other",
            "/ok/header-other",
            "/ok/trimmed",
            "/directives/%C2%A0x.html",
            "/directives/%C2%A0",
        ] {
            assert!(fetched.contains(followed), "{followed} was not fetched: {fetched:?}");
        }
        for not_followed in [
            "/ok/meta-nofollow",
            "/ok/meta-none",
            "/ok/meta-token",
            "/ok/header-nofollow",
            "/ok/header-token",
            "/directives/canonical.html",
        ] {
            assert!(!fetched.contains(not_followed), "{not_followed} was fetched");
        }
        let base = server.url("/directives/");
        let dropped = strings_in(
            &db,
            &format!(
                "SELECT replace(u.url, '{base}', '') || ' ' || d.reason || ' ' || d.count
                 FROM dropped_links d JOIN urls u ON u.id = d.url_id"
            ),
        )
        .await;
        assert_eq!(
            sorted(dropped),
            [
                "header-nofollow.html page_nofollow 1",
                "header-token.html page_nofollow 1",
                "meta-nofollow.html page_nofollow 2",
                "meta-none.html page_nofollow 1",
                "meta-token.html page_nofollow 1",
            ]
        );
        let noindex = strings_in(
            &db,
            &format!(
                "SELECT replace(u.url, '{base}', '') || ' ' ||
                     CASE WHEN a.noindex THEN 'noindex' WHEN NOT a.noindex THEN 'index' ELSE '-' END
                 FROM attempts a JOIN urls u ON u.id = a.url_id WHERE u.url LIKE '{base}%'"
            ),
        )
        .await;
        assert_eq!(
            sorted(noindex),
            [
                "%C2%A0 -",
                "%C2%A0x.html -",
                "doc.pdf noindex",
                "header-nofollow.html index",
                "header-other.html index",
                "header-token.html noindex",
                "index.html index",
                "meta-nofollow.html noindex",
                "meta-none.html noindex",
                "meta-other.html index",
                "meta-token.html index",
                "nbsp.html index",
            ]
        );
        let canonical =
            strings_in(&db, "SELECT canonical_url FROM attempts WHERE canonical_url IS NOT NULL").await;
        assert_eq!(
            canonical,
            [server.url("/directives/canonical.html")],
            "resolved, tracking parameter stripped"
        );
    }
}

/// `--ignore-robots` ignores a page's own `nofollow` too (as Heritrix's
/// "ignore" robots policy does); its `noindex` is still recorded.
#[tokio::test]
async fn ignoring_robots_follows_the_links_of_a_nofollow_page() {
    for engine in engines("ignoring_robots_follows_the_links_of_a_nofollow_page").await {
        let server = TestServer::start_on("127.0.0.58");
        let dir = tempfile::tempdir().unwrap();
        let seed = server.url("/directives/meta-nofollow.html");
        let (db, _) =
            engine.crawl_to_end(dir.path(), std::slice::from_ref(&seed), &["--follow", "--ignore-robots"]);
        assert_eq!(server.hits_of("/ok/meta-nofollow").len(), 1);
        assert_eq!(count_in(&db, "SELECT count(*) FROM dropped_links").await, 0);
        assert_eq!(count_in(&db, "SELECT count(*) FROM attempts WHERE noindex").await, 1);
    }
}

/// A UTF-16 page is decoded by its byte-order mark, as browsers do, and its
/// links (and robots meta tag) are read; a page in a charset that browsers
/// refuse to decode yields nothing, and the log says why.
#[tokio::test]
async fn a_utf_16_page_yields_its_links_and_an_undecodable_one_a_warning() {
    for engine in engines("a_utf_16_page_yields_its_links_and_an_undecodable_one_a_warning").await {
        let server = TestServer::start_on("127.0.0.59");
        let dir = tempfile::tempdir().unwrap();
        let seeds = ["/utf16/le.html", "/utf16/be.html", "/utf16/refused.html"].map(|p| server.url(p));
        let (db, log) = engine.crawl_to_end(dir.path(), &seeds, &["--follow"]);

        assert_eq!(server.hits_of("/ok/utf16").len(), 1, "{:?}", server.hits());
        assert_eq!(server.hits_of("/ok/f%C3%BCr").len(), 1, "{:?}", server.hits());
        assert!(server.hits_of("/ok/refused").is_empty());
        let noindex =
            count_in(&db, "SELECT count(*) FROM attempts a JOIN urls u ON u.id = a.url_id WHERE a.noindex")
                .await;
        assert_eq!(noindex, 2, "both UTF-16 pages' meta tags were read");
        assert!(log.contains("a page declares a charset that browsers do not decode"), "{log}");
        assert!(log.contains("iso-2022-kr"), "{log}");
    }
}

/// A sitemap gzipped as a file (`sitemap.xml.gz` served as
/// `application/gzip`, without `Content-Encoding`) is decompressed, as
/// sitemaps.org allows; a corrupt one is reported and read no further. A
/// JSON Feed's items' `url`s are seeds, relative ones resolved, and an
/// item's `external_url` is not its page.
#[tokio::test]
async fn gzipped_sitemap_files_and_json_feeds_are_read() {
    for engine in engines("gzipped_sitemap_files_and_json_feeds_are_read").await {
        let server = TestServer::start_on("127.0.0.57");
        let dir = tempfile::tempdir().unwrap();
        let (gz, corrupt, json) =
            (server.url("/sitemap.xml.gz"), server.url("/corrupt.xml.gz"), server.url("/feed.json"));
        let args = ["--sitemap", &gz, "--sitemap", &corrupt, "--feed", &json];
        let (db, log) = engine.crawl_to_end(dir.path(), &[], &args);
        let urls = sorted(
            strings_in(&db, "SELECT url || ' ' || CAST(depth AS TEXT) || ' ' || state FROM urls").await,
        );
        let expect: Vec<String> = ["/ok/gz1", "/ok/gz2", "/ok/json1", "/ok/json2"]
            .iter()
            .map(|p| format!("{} 0 done", server.url(p)))
            .collect();
        assert_eq!(urls, expect, "{log}");
        let warning = log.lines().find(|l| l.contains("sitemap not read")).unwrap_or_else(|| panic!("{log}"));
        assert!(warning.contains("not valid gzip") && warning.contains("/corrupt.xml.gz"), "{warning}");
    }
}

/// The last progress line's `finished` and `total` are the database's: a
/// page fetched again for its links (a shorter path to it turned up, and it
/// was at the maximum depth) is one URL finished, not two, so `finished`
/// never passes `total` (issue 23: "6,638 of 6,565" in a `--follow` crawl).
#[tokio::test]
async fn progress_counts_a_page_fetched_again_for_its_links_once() {
    for engine in engines("progress_counts_a_page_fetched_again_for_its_links_once").await {
        let server = TestServer::start_on("127.0.0.58");
        let dir = tempfile::tempdir().unwrap();
        let depth3 = ["--follow", "--max-depth", "3"];
        // s → a → b → c, c at the maximum depth; then t → b, a shortcut.
        engine.crawl_to_end(dir.path(), &[server.url("/graph/s.html")], &depth3);
        let (db, log) = engine.crawl_to_end(dir.path(), &[server.url("/graph/t.html")], &depth3);
        assert_eq!(server.hits_of("/graph/c.html").len(), 2, "c fetched again, now parsed");

        let last = log.lines().rfind(|l| l.contains(" progress ")).unwrap_or_else(|| panic!("{log}"));
        let field = |name: &str| -> i64 {
            let at = last.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name}: {last}"));
            last[at + name.len() + 2..].split(' ').next().unwrap().parse().unwrap()
        };
        let stored = count_in(&db, "SELECT count(*) FROM urls").await;
        let finished = count_in(&db, "SELECT count(*) FROM urls WHERE state IN ('done', 'failed')").await;
        assert_eq!((field("finished"), field("total")), (finished, stored), "{last}");
        assert_eq!(stored, 6, "s, a, b, c, d, t");
    }
}
