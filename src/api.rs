//! The service's HTTP API (`trawler run`, `api.listen`; off unless set):
//!
//! - `POST /urls` adds seed URLs. The body is a JSON array of strings
//!   (`Content-Type: application/json`) or one URL per line (any other type;
//!   blank lines and `#` comments are skipped, as in an input file). Valid
//!   URLs are added even when others are rejected; rejected ones are reported
//!   with their position and recorded in `input_errors` (source `api`).
//!   Answers `200` with `{"received", "new", "known", "invalid": [{"item",
//!   "text", "reason"}], "urls": [{"url", "id"}]}`, where `item` is the
//!   1-based line or array position and `urls` gives each valid URL
//!   (normalized) with its id. A body that is not a JSON array of strings
//!   (when it says it is JSON), not UTF-8, or over [`MAX_BODY_BYTES`] is
//!   refused with `400` / `413` and adds nothing.
//! - `GET /urls/{id}` answers the URL's `results` row as JSON (state, last
//!   attempt's status, error kind, attempts...), or `404`.
//!
//! The API has no authentication: it listens on loopback unless configured
//! otherwise, and is meant to sit behind a proxy that authenticates.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tower::limit::ConcurrencyLimitLayer;

use crate::config::ApiConfig;
use crate::job::NewUrl;
use crate::listen::{self, ListenLimits};
use crate::seeds::{self, SeedError, parse_seed};
use crate::stats::CrawlStats;
use crate::store::{Backend, InputError, StoreError};

/// The largest request body accepted: 16 MiB, about 100,000 typical URLs.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// `input_errors.source` of URLs rejected by the API.
pub const SOURCE: &str = "api";

/// What the handlers share.
pub struct Api {
    pub store: Arc<Backend>,
    /// Wakes the producer when URLs were added.
    pub wake: Arc<Notify>,
    pub stats: Arc<CrawlStats>,
    /// `discovery.strip_query_params`, for the one normalization of URLs.
    pub strip_query_params: Vec<String>,
}

/// What `POST /urls` answers.
#[derive(Debug, Serialize)]
struct Added {
    /// Items in the body (lines, blank and comment lines included; or array
    /// elements).
    received: u64,
    /// URLs not stored before.
    new: u64,
    /// Valid URLs that were already stored (in any state).
    known: u64,
    invalid: Vec<Rejected>,
    urls: Vec<Stored>,
}

#[derive(Debug, Serialize)]
struct Rejected {
    /// 1-based line number or array position.
    item: u64,
    #[serde(flatten)]
    error: SeedError,
}

#[derive(Debug, Serialize)]
struct Stored {
    url: String,
    id: i64,
}

/// Binds the API's address (`api.listen`) before anything runs.
///
/// Errors: the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = listen::bind("api.listen", addr).await?;
    tracing::info!(address = %listener.local_addr()?, "HTTP API: POST /urls, GET /urls/{{id}}");
    Ok(listener)
}

/// Serves the API on `listener` until `stop`, within `config`'s limits
/// (see [`crate::listen`]); requests under way finish.
///
/// Errors: accepting connections failed for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    config: &ApiConfig,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // A body is read only once its request is let through, so this bounds
    // the memory that request bodies take.
    let posts = ConcurrencyLimitLayer::new(config.max_posts_in_flight.get());
    let app = Router::new()
        .route("/urls", post(add_urls).layer(posts))
        .route("/urls/{id}", get(url_state))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(api));
    let limits = ListenLimits {
        max_connections: config.max_connections.get(),
        header_timeout: config.header_timeout,
        request_timeout: config.request_timeout,
    };
    listen::serve(listener, app, limits, stop).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn store_error(e: StoreError) -> Response {
    tracing::error!("API: {e}");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn add_urls(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    // The body (up to 16 MiB) is freed here, before the store work: with
    // several posts in flight, every copy held across the writes counts.
    let Parsed { received, urls, invalid } = match parse_body(is_json, body, &api.strip_query_params) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let errors: Vec<InputError> = invalid
        .iter()
        .map(|r| InputError {
            source: SOURCE.to_owned(),
            line: r.item,
            text: r.error.text.clone(),
            reason: r.error.reason.clone(),
        })
        .collect();
    let new = match seeds::add(&*api.store, &urls, &errors, &api.wake, &api.stats).await {
        Ok(new) => new,
        Err(e) => return store_error(e),
    };
    drop(errors);
    let wanted: Vec<&str> = urls.iter().map(|u| u.url.as_str()).collect();
    let ids = match api.store.ids(&wanted).await {
        Ok(ids) => ids,
        Err(e) => return store_error(e),
    };
    drop(wanted);
    let valid = urls.len() as u64;
    // Each URL's string moves into the answer rather than being copied.
    let stored = urls
        .into_iter()
        .filter_map(|u| Some(Stored { id: *ids.get(&u.url)?, url: u.url }))
        .collect::<Vec<_>>();
    drop(ids);
    tracing::info!(new, known = valid - new, invalid = invalid.len(), "API: URLs added");
    let added = Added { received, new, known: valid - new, invalid, urls: stored };
    (StatusCode::OK, axum::Json(added)).into_response()
}

/// A `POST /urls` body, parsed.
struct Parsed {
    /// Items in the body, as [`Added::received`] counts them.
    received: u64,
    urls: Vec<NewUrl>,
    invalid: Vec<Rejected>,
}

/// Parses a `POST /urls` body item by item, without a second copy of it.
///
/// Errors: why the body is not a JSON array of strings (when `is_json`) or
/// not UTF-8, for a `400` answer.
fn parse_body(is_json: bool, body: Bytes, strip: &[String]) -> Result<Parsed, String> {
    let mut parsed = Parsed { received: 0, urls: Vec::new(), invalid: Vec::new() };
    let mut take = |item: &str| {
        parsed.received += 1;
        match parse_seed(item, strip) {
            Ok(None) => {}
            Ok(Some(url)) => parsed.urls.push(url),
            Err(error) => parsed.invalid.push(Rejected { item: parsed.received, error }),
        }
    };
    if is_json {
        let items: Vec<String> =
            serde_json::from_slice(&body).map_err(|e| format!("expected a JSON array of URLs: {e}"))?;
        drop(body);
        items.iter().for_each(|item| take(item));
    } else {
        let text = std::str::from_utf8(&body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
        text.lines().for_each(take);
    }
    Ok(parsed)
}

async fn url_state(State(api): State<Arc<Api>>, Path(id): Path<i64>) -> Response {
    match api.store.result(id).await {
        Ok(Some(row)) => (StatusCode::OK, axum::Json(row)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no URL with id {id}")),
        Err(e) => store_error(e),
    }
}
