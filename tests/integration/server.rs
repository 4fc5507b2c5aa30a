//! A local HTTP server on 127.0.0.1 for tests and the benchmark. It runs on a
//! thread with its own tokio runtime, so a test can block on a child process
//! while it serves, and it records every request (path, arrival time).
//!
//! Routes (every `{*rest}` lets a test make many distinct URLs):
//! - `/ok/{*rest}`: 200, a small HTML page
//! - `/page/{*rest}`: 200, `page_bytes` of body after the server's `latency`
//!   (which `/robots.txt` waits too)
//!   (with `random_pages`, incompressible and different for every path)
//! - `/status/{code}/{*rest}`: that status
//! - `/moved/{code}/{*rest}`: that status with `Location: /ok/target-{code}`
//! - `/etag404/{*rest}`: 404 with `ETag: "e404"`, or 304 to an `If-None-Match` naming it
//! - `/flaky/{n}/{*rest}`: 503 for the first `n` requests of the path, then 200
//! - `/retry-after/{secs}/{*rest}`: 429 with `Retry-After: secs` the first time, then 200
//! - `/slow/{ms}/{*rest}`: 200 after `ms` milliseconds
//! - `/slow503/{ms}/{*rest}`: 503 (no `Retry-After`) after `ms` milliseconds
//! - `/redirect/{n}`: 302 to `/redirect/{n-1}`, and `/redirect/0` to `/ok/end`
//! - `/loop/a`, `/loop/b`: 302 to each other
//! - `/goto?to=URL`: 302 to that (absolute) URL
//! - `/linkto?url=URL`: a page with one link, to that URL
//! - `/credlink`: a page linking to `/ok/linked` on its own host with
//!   credentials `bob:linkpass@`; `/credredirect`: 302 to `/ok/redirected`
//!   with `carol:redirpass@`
//! - `/big/{bytes}`: a body of that many bytes
//! - `/gzip/{*rest}`: [`GZIP_PLAIN`], sent gzip-encoded
//! - `/bomb/{mib}`: that many MiB of zeros, gzip-encoded (a few KiB on the wire)
//! - `/stall/{*rest}`: 200, one chunk of body, then nothing, forever
//! - `/throttle/{secs}/{*rest}`: always 503 with `Retry-After: secs`
//! - `/site/...`: the small HTML site of [`SITE`]; other `/site/` paths are 404
//! - `/graph/...`: the pages of [`GRAPH`], a chain with a shortcut
//! - `/cms/...`: the pages of [`CMS`], each answered only at its exact path
//!   and query (anything else is 404): links written as a CMS writes them
//! - `/sitemap.xml`: a sitemap index naming `/sitemap-1.xml`, a `<urlset>`
//!   of `/ok/s1`, `/ok/s2` (twice) and a URL on another host
//! - `/versioned/{*rest}`: 200, a page of the server's content version
//!   ([`TestServer::set_version`], 1 at start) with `ETag: "v{version}"`,
//!   or 304 to an `If-None-Match` naming it (RFC 9110 §13.1.2)
//! - `/dated/{*rest}`: as `/versioned/`, but with only a `Last-Modified`
//!   (the version's day in 2026-01), and 304 to an `If-Modified-Since` at
//!   or after it
//! - `/feed.xml`: RSS 2.0 items linking `/ok/rss1`, `/ok/rss2?utm_source=rss`,
//!   a URL on another host, and an enclosure only; `/atom.xml`: Atom
//!   entries linking `/ok/atom1` (alternate, beside an edit link) and
//!   `/ok/atom2` (relative, no rel)
//! - `/feed.json`: a JSON Feed whose items link `/ok/json1` and, relative,
//!   `/ok/json2`, and one item with only an `external_url` (`/ok/external`)
//! - `/sitemap.xml.gz`: a `<urlset>` of `/ok/gz1` and `/ok/gz2`, gzipped as
//!   a file, served as `application/gzip` without `Content-Encoding` (as
//!   sitemaps.org's `.xml.gz` usually are); `/corrupt.xml.gz`: its first
//!   half only
//! - `/big-feed/{format}/{entries}`: a feed (`rss`, `atom` or `json`) or a
//!   sitemap (`sitemap`) of that many entries, each linking `/ok/{i}`, as
//!   small as each format allows (the benchmark's 1,000,000-entry feeds)
//! - `/bomb.xml.gz/{mib}`: a `<urlset>` padded with that many MiB of spaces,
//!   gzipped as a file (a few KiB per MiB), as `application/x-gzip`
//! - `/robots.txt` (and `/robots-moved.txt`): as [`Options::robots`] says;
//!   requests for them are kept apart ([`TestServer::robots_hits`])
//! - `/directives/...`: the pages of [`DIRECTIVES`], with their headers:
//!   robots meta tags, `X-Robots-Tag`, a canonical link, `&nbsp;` hrefs
//! - `/utf16/le.html`, `/utf16/be.html`: [`UTF16_PAGE`] in UTF-16 with a
//!   byte-order mark, served as `text/html; charset=utf-16`;
//!   `/utf16/refused.html`: an ASCII page served as
//!   `charset=iso-2022-kr`, which browsers do not decode

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// The decoded body of `/gzip/...`.
pub const GZIP_PLAIN: &[u8] = b"trawler decodes gzip so that lengths and hashes describe the content. ";

fn gzip(plain: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut encoder, plain).unwrap();
    encoder.finish().unwrap()
}

fn gzipped(body: Vec<u8>) -> Response {
    ([(header::CONTENT_ENCODING, "gzip"), (header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    /// The path with its query, as sent (`/a?b=1`).
    pub path_and_query: String,
    /// The `Host` header without its port: which host was asked, when
    /// several names resolve to this server (`fetch.resolve`).
    pub host: String,
    pub at: Instant,
    /// The arrival on the wall clock, to compare with times trawler stores.
    pub wall: std::time::SystemTime,
    /// The request's `If-None-Match` and `If-Modified-Since`, if sent.
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    /// Every request header, lower-case name and value, in order.
    pub headers: Vec<(String, String)>,
}

impl Hit {
    /// The value of request header `name` (lower-case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What `/robots.txt` answers.
#[derive(Debug, Clone, Default)]
pub enum RobotsTxt {
    /// 404: no robots.txt, everything allowed.
    #[default]
    Missing,
    /// 200 with this text, `{host}` replaced by the server's `host:port`.
    Text(&'static str),
    /// This status the first time, then 200 with the text.
    FailsThen(u16, &'static str),
    /// A redirect to `/robots-moved.txt`, which has the text.
    Redirected(&'static str),
    /// Allows everything and names `/sitemap-1.xml` in a `Sitemap:` line.
    WithSitemap,
    /// 200 with the text followed by comment lines, 600 KiB in all (over
    /// the 512 KiB that trawler reads), with its `Content-Length`.
    Padded(&'static str),
}

/// Server-wide behaviour.
#[derive(Debug, Clone)]
pub struct Options {
    pub robots: RobotsTxt,
    /// Delay before answering `/page/...` and `/robots.txt`.
    pub latency: Duration,
    /// Body size of `/page/...`.
    pub page_bytes: usize,
    /// Record hits (the benchmark turns this off).
    pub record: bool,
    /// Fill `/page/...` bodies with pseudo-random bytes, which do not
    /// compress (the benchmark's worst case for stored bodies).
    pub random_pages: bool,
    /// Serve HTTPS (HTTP/1.1) with this certificate ([`TestCa::server`]).
    pub tls: Option<Arc<ServerConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            page_bytes: 1024,
            record: true,
            random_pages: false,
            robots: RobotsTxt::Missing,
            tls: None,
        }
    }
}

/// A certificate authority made for one test run, and a server certificate
/// it signed for `localhost`, `127.0.0.1` and every `*.bench.test` name.
pub struct TestCa {
    /// The CA's certificate, PEM: what `fetch.ca_file` names.
    pub pem: String,
    /// The server's side: its certificate and key, HTTP/1.1 by ALPN.
    pub server: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "trawler test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "*.bench.test".to_owned()];
        let cert =
            rcgen::CertificateParams::new(names).expect("names").signed_by(&key, &issuer).expect("sign");
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server certificate");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { pem: ca_cert.pem(), server: Arc::new(server) }
    }
}

/// Accepts TCP connections and completes their TLS handshake, one at a
/// time (a failed handshake is dropped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

struct Shared {
    options: Options,
    /// Requests being handled now, and the most at once.
    active: std::sync::atomic::AtomicUsize,
    max_active: std::sync::atomic::AtomicUsize,
    hits: Mutex<Vec<Hit>>,
    robots_hits: Mutex<Vec<Hit>>,
    counts: Mutex<HashMap<String, u32>>,
    page: Vec<u8>,
    /// The content version of `/versioned/` and `/dated/` pages.
    version: std::sync::atomic::AtomicU32,
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::with_options(Options::default())
    }

    /// A server on another loopback address (e.g. `127.0.0.2`), so that it is
    /// a host of its own.
    pub fn start_on(ip: &'static str) -> Self {
        Self::bind(ip, Options::default())
    }

    /// A server on `ip` whose `/robots.txt` answers as `robots` says.
    pub fn with_robots(ip: &'static str, robots: RobotsTxt) -> Self {
        Self::bind(ip, Options { robots, ..Options::default() })
    }

    pub fn with_options(options: Options) -> Self {
        Self::bind("127.0.0.1", options)
    }

    fn bind(ip: &'static str, options: Options) -> Self {
        let page = {
            let mut page = b"<!doctype html><title>page</title><p>".to_vec();
            let mut state = 0x2545_f491_4f6c_dd1d_u64;
            while page.len() < options.page_bytes {
                page.push(if options.random_pages {
                    // xorshift64: incompressible, and the same every run.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                } else {
                    b'x'
                });
            }
            page
        };
        let shared = Arc::new(Shared {
            options,
            active: Default::default(),
            max_active: Default::default(),
            hits: Mutex::default(),
            robots_hits: Mutex::default(),
            counts: Mutex::default(),
            page,
            version: std::sync::atomic::AtomicU32::new(1),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tls = shared.options.tls.clone();
        let app = router(shared.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind a loopback port");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stopped = async {
                    let _ = stop_rx.await;
                };
                match tls {
                    None => axum::serve(listener, app).with_graceful_shutdown(stopped).await,
                    Some(config) => {
                        let listener = TlsListener { tcp: listener, acceptor: config.into() };
                        axum::serve(listener, app).with_graceful_shutdown(stopped).await
                    }
                }
                .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("server address");
        Self { addr, shared, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Changes what `/versioned/` and `/dated/` pages hold (and their
    /// validators) to `version`.
    pub fn set_version(&self, version: u32) {
        self.shared.version.store(version, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests for `/robots.txt` and `/robots-moved.txt`, in arrival order.
    pub fn robots_hits(&self) -> Vec<Hit> {
        self.shared.robots_hits.lock().unwrap().clone()
    }

    /// Every request so far except for robots.txt, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The most requests this server handled at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests so far for exactly `path`.
    /// How many times each path was requested.
    pub fn hits_per_path(&self) -> HashMap<String, usize> {
        let mut per_path = HashMap::new();
        for hit in self.hits() {
            *per_path.entry(hit.path).or_default() += 1;
        }
        per_path
    }

    pub fn hits_of(&self, path: &str) -> Vec<Instant> {
        self.hits().into_iter().filter(|h| h.path == path).map(|h| h.at).collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Do not join: graceful shutdown waits for idle keep-alive clients.
        drop(self.thread.take());
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ok/{*rest}", get(|| async { html("<!doctype html><title>ok</title><p>hello") }))
        .route("/page/{*rest}", get(page))
        .route("/versioned/{*rest}", get(versioned))
        .route("/dated/{*rest}", get(dated))
        .route("/status/{code}/{*rest}", get(status))
        .route("/moved/{code}/{*rest}", get(moved))
        .route("/etag404/{*rest}", get(etag404))
        .route("/flaky/{n}/{*rest}", get(flaky))
        .route("/retry-after/{secs}/{*rest}", get(retry_after))
        .route("/slow/{ms}/{*rest}", get(slow))
        .route(
            "/slow503/{ms}/{*rest}",
            get(|Path((ms, _)): Path<(u64, String)>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route("/redirect/{n}", get(redirect))
        .route("/goto", get(|Query(to): Query<HashMap<String, String>>| async move { found(&to["to"]) }))
        .route(
            "/linkto",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let href = q["url"].replace('&', "&amp;").replace('"', "&quot;");
                ([(header::CONTENT_TYPE, "text/html")], format!(r#"<a href="{href}">link</a>"#))
                    .into_response()
            }),
        )
        .route(
            "/credlink",
            get(|headers: axum::http::HeaderMap| async move {
                let page = format!(r#"<a href="http://bob:linkpass@{}/ok/linked">x</a>"#, host_of(&headers));
                ([(header::CONTENT_TYPE, "text/html")], page).into_response()
            }),
        )
        .route(
            "/credredirect",
            get(|headers: axum::http::HeaderMap| async move {
                found(&format!("http://carol:redirpass@{}/ok/redirected", host_of(&headers)))
            }),
        )
        .route("/loop/a", get(|| async { found("/loop/b") }))
        .route("/loop/b", get(|| async { found("/loop/a") }))
        .route("/big/{bytes}", get(|Path(bytes): Path<usize>| async move { vec![b'y'; bytes] }))
        .route("/gzip/{*rest}", get(|| async { gzipped(gzip(GZIP_PLAIN)) }))
        .route("/bomb/{mib}", get(bomb))
        .route("/stall/{*rest}", get(stall))
        .route(
            "/site/{*rest}",
            get(|Path(rest): Path<String>| async move {
                match SITE.iter().find(|(path, _)| *path == rest) {
                    Some((_, html)) => {
                        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], *html).into_response()
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .route(
            "/graph/{page}",
            get(|Path(page): Path<String>| async move {
                match GRAPH.iter().find(|(path, _)| *path == page) {
                    Some((_, body)) => html(body),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .route(
            "/cms/{*rest}",
            get(|uri: axum::http::Uri| async move {
                let wanted = uri.path_and_query().map_or("", |p| p.as_str()).trim_start_matches("/cms/");
                match CMS.iter().find(|(path, _)| *path == wanted) {
                    Some((_, html)) => {
                        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], *html).into_response()
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .route("/robots.txt", get(robots_txt))
        .route(
            "/sitemap.xml",
            get(|headers: axum::http::HeaderMap| async move {
                let host = host_of(&headers);
                format!(
                    r#"<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
                    <sitemap><loc>http://{host}/sitemap-1.xml</loc></sitemap></sitemapindex>"#
                )
            }),
        )
        .route(
            "/feed.xml",
            get(|headers: axum::http::HeaderMap| async move {
                let host = host_of(&headers);
                let rss = format!(
                    r#"<?xml version="1.0"?><rss version="2.0"><channel><title>news</title>
                    <link>http://{host}/</link><description>d</description>
                    <item><title>one</title><link>http://{host}/ok/rss1</link></item>
                    <item><title>two</title><link>http://{host}/ok/rss2?utm_source=rss</link></item>
                    <item><title>elsewhere</title><link>http://127.0.0.99/elsewhere</link></item>
                    <item><title>podcast</title><enclosure url="http://{host}/ok/audio" length="1" type="audio/mpeg"/></item>
                    </channel></rss>"#
                );
                ([(header::CONTENT_TYPE, "application/rss+xml")], rss)
            }),
        )
        .route(
            "/atom.xml",
            get(|headers: axum::http::HeaderMap| async move {
                let host = host_of(&headers);
                let atom = format!(
                    r#"<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
                    <title>t</title><id>urn:x</id><updated>2026-01-01T00:00:00Z</updated>
                    <entry><title>a</title><id>urn:a</id><updated>2026-01-01T00:00:00Z</updated>
                      <link rel="alternate" href="http://{host}/ok/atom1"/><link rel="edit" href="http://{host}/ok/edit"/></entry>
                    <entry><title>b</title><id>urn:b</id><updated>2026-01-01T00:00:00Z</updated>
                      <link href="/ok/atom2"/></entry>
                    </feed>"#
                );
                ([(header::CONTENT_TYPE, "application/atom+xml")], atom)
            }),
        )
        .route(
            "/feed.json",
            get(|headers: axum::http::HeaderMap| async move {
                let host = host_of(&headers);
                let json = format!(
                    r#"{{"version": "https://jsonfeed.org/version/1.1", "title": "news",
                    "items": [{{"id": "1", "url": "http://{host}/ok/json1", "title": "one"}},
                              {{"id": "2", "url": "/ok/json2", "tags": ["a", "b"]}},
                              {{"id": "3", "external_url": "http://{host}/ok/external"}}]}}"#
                );
                ([(header::CONTENT_TYPE, "application/feed+json")], json)
            }),
        )
        .route(
            "/sitemap.xml.gz",
            get(|headers: axum::http::HeaderMap| async move { gzip_file(&gz_sitemap(&host_of(&headers))) }),
        )
        .route(
            "/corrupt.xml.gz",
            get(|headers: axum::http::HeaderMap| async move {
                let mut body = gzip(gz_sitemap(&host_of(&headers)).as_bytes());
                body.truncate(body.len() / 2);
                ([(header::CONTENT_TYPE, "application/gzip")], body).into_response()
            }),
        )
        .route("/big-feed/{format}/{entries}", get(big_feed))
        .route("/bomb.xml.gz/{mib}", get(sitemap_bomb))
        .route(
            "/sitemap-1.xml",
            get(|headers: axum::http::HeaderMap| async move {
                let host = host_of(&headers);
                format!(
                    r#"<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
                    <url><loc>http://{host}/ok/s1</loc></url><url><loc>http://{host}/ok/s2</loc></url>
                    <url><loc>http://{host}/ok/s2</loc></url><url><loc>http://127.0.0.99/elsewhere</loc></url>
                    </urlset>"#
                )
            }),
        )
        .route(
            "/robots-moved.txt",
            get(|State(shared): State<Arc<Shared>>| async move {
                match shared.options.robots {
                    RobotsTxt::Redirected(text) => text.into_response(),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .route(
            "/throttle/{secs}/{*rest}",
            get(|Path((secs, _)): Path<(u64, String)>| async move {
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, secs.to_string())]).into_response()
            }),
        )
        .route("/directives/{*rest}", get(directives))
        .route("/utf16/{name}", get(utf16))
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

/// A page of [`DIRECTIVES`], or 404.
async fn directives(Path(rest): Path<String>) -> Response {
    let Some((_, content_type, headers, body)) = DIRECTIVES.iter().find(|(path, ..)| *path == rest) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = ([(header::CONTENT_TYPE, *content_type)], *body).into_response();
    for (name, value) in *headers {
        response.headers_mut().append(*name, HeaderValue::from_static(value));
    }
    response
}

/// [`UTF16_PAGE`] in UTF-16, little- or big-endian by its byte-order mark,
/// or an undecodable charset.
async fn utf16(Path(name): Path<String>) -> Response {
    let units = UTF16_PAGE.encode_utf16();
    let body: Vec<u8> = match name.as_str() {
        "le.html" => [0xFF, 0xFE].into_iter().chain(units.flat_map(u16::to_le_bytes)).collect(),
        "be.html" => [0xFE, 0xFF].into_iter().chain(units.flat_map(u16::to_be_bytes)).collect(),
        "refused.html" => {
            let page = r#"<a href="/ok/refused">a link no browser shows</a>"#;
            return ([(header::CONTENT_TYPE, "text/html; charset=iso-2022-kr")], page).into_response();
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-16")], body).into_response()
}

/// The page `/utf16/...` serves: a robots meta tag, a link on its own host
/// and one with a non-ASCII path.
pub const UTF16_PAGE: &str = r#"<!doctype html><meta name="robots" content="noindex"><title>UTF-16</title>
<a href="/ok/utf16">ASCII</a> <a href="/ok/für">non-ASCII</a>"#;

/// A page of [`DIRECTIVES`]: its path, `Content-Type`, extra headers
/// (`(name, value)`, a name may repeat) and body.
pub type DirectivePage = (&'static str, &'static str, &'static [(&'static str, &'static str)], &'static str);

/// `/directives/...`. Each page links to a `/ok/` page named after it;
/// `index.html` links to them all.
pub const DIRECTIVES: &[DirectivePage] = &[
    (
        "index.html",
        "text/html",
        &[],
        r#"<a href="meta-nofollow.html">1</a> <a href="meta-none.html">2</a> <a href="meta-token.html">3</a>
        <a href="meta-other.html">4</a> <a href="header-nofollow.html">5</a> <a href="header-token.html">6</a>
        <a href="header-other.html">7</a> <a href="doc.pdf">8</a> <a href="nbsp.html">9</a>"#,
    ),
    (
        "meta-nofollow.html",
        "text/html",
        &[],
        r#"<head><meta name="robots" content="noindex, nofollow">
        <link rel="canonical" href="/directives/canonical.html?utm_source=feed"></head>
        <a href="/ok/meta-nofollow">x</a>"#,
    ),
    (
        "meta-none.html",
        "text/html",
        &[],
        r#"<META NAME="Robots" CONTENT="none"><a href="/ok/meta-none">x</a>"#,
    ),
    (
        "meta-token.html",
        "text/html",
        &[],
        r#"<meta name="Trawler" content="nofollow"><a href="/ok/meta-token">x</a>"#,
    ),
    (
        "meta-other.html",
        "text/html",
        &[],
        r#"<meta name="otherbot" content="noindex, nofollow"><a href="/ok/meta-other">x</a>"#,
    ),
    (
        "header-nofollow.html",
        "text/html",
        &[("x-robots-tag", "nofollow")],
        r#"<a href="/ok/header-nofollow">x</a>"#,
    ),
    (
        "header-token.html",
        "text/html",
        &[("x-robots-tag", "otherbot: noindex"), ("x-robots-tag", "trawler: noindex, nofollow")],
        r#"<a href="/ok/header-token">x</a>"#,
    ),
    (
        "header-other.html",
        "text/html",
        &[("x-robots-tag", "otherbot: none")],
        r#"<a href="/ok/header-other">x</a>"#,
    ),
    ("doc.pdf", "application/pdf", &[("x-robots-tag", "noindex")], "%PDF-1.4 not really"),
    (
        "nbsp.html",
        "text/html",
        &[],
        r#"<a href="&nbsp;x.html">1</a> <a href="&nbsp;">2</a> <a href=" /ok/trimmed&#10;">3</a>"#,
    ),
];

async fn record(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if !shared.options.record {
        return next.run(request).await;
    }
    use std::sync::atomic::Ordering::SeqCst;
    let path = request.uri().path().to_owned();
    let path_and_query = request.uri().path_and_query().map_or(path.clone(), |p| p.as_str().to_owned());
    let log = if path.starts_with("/robots") { &shared.robots_hits } else { &shared.hits };
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(name, _)| name).to_owned();
    let (at, wall) = (Instant::now(), std::time::SystemTime::now());
    let headers = request.headers();
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let if_modified_since =
        headers.get(header::IF_MODIFIED_SINCE).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let all = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()));
    let headers = all.collect();
    log.lock().unwrap().push(Hit {
        path,
        path_and_query,
        host,
        at,
        wall,
        if_none_match,
        if_modified_since,
        headers,
    });
    let now = shared.active.fetch_add(1, SeqCst) + 1;
    shared.max_active.fetch_max(now, SeqCst);
    let response = next.run(request).await;
    shared.active.fetch_sub(1, SeqCst);
    response
}

/// A page of the server's content version: its body, and the validators
/// of that version.
fn version_page(shared: &Shared) -> (String, String, String) {
    let version = shared.version.load(std::sync::atomic::Ordering::SeqCst);
    let body = format!("<!doctype html><title>version {version}</title><p>content of version {version}");
    let etag = format!("\"v{version}\"");
    let last_modified = format!("Thu, {version:02} Jan 2026 00:00:00 GMT");
    (body, etag, last_modified)
}

async fn versioned(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let (body, etag, _) = version_page(&shared);
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()), (header::ETAG, etag)], body)
        .into_response()
}

async fn dated(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let (body, _, last_modified) = version_page(&shared);
    let day = |text: &str| text.get(5..7).and_then(|d| d.trim().parse::<u32>().ok());
    let since = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(day);
    if since.is_some_and(|since| Some(since) >= day(&last_modified)) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::LAST_MODIFIED, last_modified),
        ],
        body,
    )
        .into_response()
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, HeaderValue::from_str(location).unwrap())]).into_response()
}

/// How many times `path` was requested before this request.
fn count(shared: &Shared, path: &str) -> u32 {
    let mut counts = shared.counts.lock().unwrap();
    let n = counts.entry(path.to_owned()).or_default();
    *n += 1;
    *n - 1
}

async fn page(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    if !shared.options.latency.is_zero() {
        tokio::time::sleep(shared.options.latency).await;
    }
    let mut page = shared.page.clone();
    if shared.options.random_pages {
        // Each URL its own body, so that stored bodies do not de-duplicate.
        let path = uri.path().as_bytes();
        let n = path.len().min(page.len());
        page[..n].copy_from_slice(&path[..n]);
    }
    ([(header::CONTENT_TYPE, "text/html")], page).into_response()
}

async fn status(Path((code, _)): Path<(u16, String)>) -> Response {
    StatusCode::from_u16(code).unwrap().into_response()
}

async fn moved(Path((code, _)): Path<(u16, String)>) -> Response {
    let to = format!("/ok/target-{code}");
    (StatusCode::from_u16(code).unwrap(), [(header::LOCATION, to)]).into_response()
}

async fn etag404(headers: axum::http::HeaderMap) -> Response {
    let etag = "\"e404\"";
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::NOT_FOUND, [(header::ETAG, etag)], "no such page").into_response()
}

async fn flaky(State(shared): State<Arc<Shared>>, Path((n, rest)): Path<(u32, String)>) -> Response {
    if count(&shared, &format!("flaky/{n}/{rest}")) < n {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        html("recovered")
    }
}

async fn retry_after(State(shared): State<Arc<Shared>>, Path((secs, rest)): Path<(u64, String)>) -> Response {
    if count(&shared, &format!("retry-after/{secs}/{rest}")) == 0 {
        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs.to_string())]).into_response()
    } else {
        html("thanks for waiting")
    }
}

async fn slow(Path((ms, _)): Path<(u64, String)>) -> Response {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    html("finally")
}

async fn redirect(Path(n): Path<u32>) -> Response {
    if n == 0 { found("/ok/end") } else { found(&format!("/redirect/{}", n - 1)) }
}

async fn stall() -> Response {
    let first = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from("partial"))
    });
    let body = axum::body::Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()));
    ([(header::CONTENT_TYPE, "text/html")], body).into_response()
}

async fn bomb(Path(mib): Path<usize>) -> Response {
    // Compressing takes a while: off the server's only runtime thread.
    let body = tokio::task::spawn_blocking(move || gzip(&vec![0; mib << 20])).await.unwrap();
    gzipped(body)
}

/// The `<urlset>` of `/sitemap.xml.gz`.
fn gz_sitemap(host: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
        <url><loc>http://{host}/ok/gz1</loc></url><url><loc>http://{host}/ok/gz2</loc></url></urlset>"#
    )
}

/// `plain` gzipped as a file: `application/gzip`, no `Content-Encoding`.
fn gzip_file(plain: &str) -> Response {
    ([(header::CONTENT_TYPE, "application/gzip")], gzip(plain.as_bytes())).into_response()
}

async fn big_feed(
    Path((format, entries)): Path<(String, usize)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let host = host_of(&headers);
    // Built off the server's only runtime thread: up to tens of MB.
    let made = tokio::task::spawn_blocking(move || {
        use std::fmt::Write;
        let (head, entry, tail, content_type) = match format.as_str() {
            "rss" => (
                "<rss version=\"2.0\"><channel>",
                "<item><link>/ok/{i}</link></item>",
                "</channel></rss>",
                "application/rss+xml",
            ),
            "atom" => (
                "<feed xmlns=\"http://www.w3.org/2005/Atom\">",
                "<entry><link href=\"/ok/{i}\"/></entry>",
                "</feed>",
                "application/atom+xml",
            ),
            "json" => (
                "{\"version\":\"https://jsonfeed.org/version/1.1\",\"title\":\"bench\",\"items\":[",
                "{\"id\":\"{i}\",\"url\":\"/ok/{i}\"},",
                "{\"id\":\"end\"}]}",
                "application/feed+json",
            ),
            "sitemap" => {
                ("<urlset>", "<url><loc>http://{host}/ok/{i}</loc></url>", "</urlset>", "application/xml")
            }
            _ => return None,
        };
        let mut body =
            String::with_capacity(head.len() + entries * (entry.len() + host.len() + 4) + tail.len());
        body.push_str(head);
        for i in 0..entries {
            let _ = write!(body, "{}", entry.replace("{i}", &i.to_string()).replace("{host}", &host));
        }
        body.push_str(tail);
        Some((content_type, body))
    });
    match made.await.unwrap() {
        Some((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn sitemap_bomb(Path(mib): Path<usize>) -> Response {
    // Members of one gzip file (RFC 1952 §2.2): one MiB compressed once.
    let body = tokio::task::spawn_blocking(move || {
        let spaces = gzip(&vec![b' '; 1 << 20]);
        let mut body = gzip(b"<urlset><url><loc>http://127.0.0.99/bomb</loc></url>");
        for _ in 0..mib {
            body.extend_from_slice(&spaces);
        }
        body.extend_from_slice(&gzip(b"</urlset>"));
        body
    });
    ([(header::CONTENT_TYPE, "application/x-gzip")], body.await.unwrap()).into_response()
}

async fn robots_txt(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    if !shared.options.latency.is_zero() {
        tokio::time::sleep(shared.options.latency).await;
    }
    if let RobotsTxt::WithSitemap = shared.options.robots {
        return format!("User-agent: *\nAllow: /\nSitemap: http://{}/sitemap-1.xml\n", host_of(&headers))
            .into_response();
    }
    match shared.options.robots {
        RobotsTxt::Missing => StatusCode::NOT_FOUND.into_response(),
        RobotsTxt::Text(text) => text.replace("{host}", &host_of(&headers)).into_response(),
        RobotsTxt::FailsThen(status, text) => {
            if count(&shared, "/robots.txt") == 0 {
                StatusCode::from_u16(status).unwrap().into_response()
            } else {
                text.into_response()
            }
        }
        RobotsTxt::Redirected(_) => found("/robots-moved.txt"),
        RobotsTxt::WithSitemap => StatusCode::NOT_FOUND.into_response(),
        RobotsTxt::Padded(text) => {
            let mut body = text.to_owned();
            while body.len() < 600 * 1024 {
                body.push_str("# a long robots.txt, as some sites have, padded with comments\n");
            }
            body.into_response()
        }
    }
}

fn host_of(headers: &axum::http::HeaderMap) -> String {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned()
}

/// Pages under `/site/`, for link following: relative and absolute links, a
/// fragment, a tracking parameter, `<base href>`, a canonical link, nofollow,
/// another host, a non-HTTP link, a path trap, a chain four deep and a broken
/// link (`missing.html`).
pub const SITE: &[(&str, &str)] = &[
    (
        "index.html",
        r#"<html><head><link rel="canonical" href="/site/index.html"><link rel="stylesheet" href="x.css"></head><body>
        <a href="a.html">a</a> <a href="a.html#top">a again</a> <a href="/site/b.html?utm_source=mail">b</a>
        <a href="http://127.0.0.99/elsewhere">another host</a> <a rel="nofollow" href="secret.html">secret</a>
        <a href="deep/1.html">deep</a> <a href="trap/x/x/x/x/x.html">trap</a> <a href="mailto:a@example.org">mail</a>
        </body></html>"#,
    ),
    ("a.html", r#"<a href="index.html">home</a> <a href="missing.html">broken</a>"#),
    ("b.html", r#"<html><head><base href="/site/sub/"></head><body><a href="c.html">c</a></body></html>"#),
    ("sub/c.html", "<p>leaf</p>"),
    ("secret.html", "<p>nofollow</p>"),
    ("deep/1.html", r#"<a href="2.html">next</a>"#),
    ("deep/2.html", r#"<a href="3.html">next</a>"#),
    ("deep/3.html", r#"<a href="4.html">next</a>"#),
    ("deep/4.html", "<p>too deep</p>"),
];

/// `/cms/...`: links with character references in their attributes, as
/// nearly every CMS writes them, and links only inside `<noscript>`. Each
/// page is served at exactly this path and query.
pub const CMS: &[(&str, &str)] = &[
    (
        "index.html",
        r#"<html><head><base href="/cms/d&#105;r/"><link rel="canonical" href="/cms/index.html"></head><body>
        <a href="q.html?a=1&amp;b=2">query</a> <a href="f.html?utm_source=x&amp;id=3">tracked</a>
        <a href="&#104;.html">numeric</a> <a href="p.html?a=1&copy=2">legacy reference left alone</a>
        <noscript><iframe src="x"></iframe><a href="ns.html">without JavaScript</a></noscript>
        </body></html>"#,
    ),
    ("dir/q.html?a=1&b=2", "<p>q</p>"),
    ("dir/f.html?id=3", "<p>f</p>"),
    ("dir/h.html", "<p>h</p>"),
    ("dir/p.html?a=1&copy=2", "<p>p</p>"),
    ("dir/ns.html", "<p>ns</p>"),
];

/// `/graph/...`: the chain s → a → b → c → d → e, and t, which links to b.
pub const GRAPH: &[(&str, &str)] = &[
    ("s.html", r#"<a href="a.html">a</a>"#),
    ("a.html", r#"<a href="b.html">b</a>"#),
    ("b.html", r#"<a href="c.html">c</a>"#),
    ("c.html", r#"<a href="d.html">d</a>"#),
    ("d.html", r#"<a href="e.html">e</a>"#),
    ("e.html", "<p>end</p>"),
    ("t.html", r#"<a href="b.html">b</a>"#),
];
