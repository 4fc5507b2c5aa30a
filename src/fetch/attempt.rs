//! One attempt in progress ([`Attempt`]): a request at a time, each redirect
//! resolved and checked before the next, the final response's body read
//! within its caps, hashed and passed to link extraction as it streams.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION, RETRY_AFTER,
};
use sha2::{Digest, Sha256};
use url::Url;

use super::addresses::{BlockedAddress, Purpose};
use super::content::{header_text, headers_json, parse_retry_after};
use super::errors::{Failure, classify, closed_before_response, lookup_failure, out_of_descriptors};
use super::sending::{Cleared, SENDING, Sending};
use super::{Fetched, Fetcher, Refusal, check_http};
use crate::job::{AttemptRecord, ErrorKind, Hop, Validators};
use crate::links::{Directives, Found, LinkExtractor, is_html};
use crate::redact::ForLog;

/// What stays true across redirects and survives a timeout mid-attempt.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) record: AttemptRecord,
    pub(super) retry_after: Option<Duration>,
    pub(super) found: Option<Found>,
    pub(super) out_of_descriptors: bool,
    /// Validators the next request sends (the attempt's first only).
    pub(super) conditional: Option<Validators>,
    /// Why the final response's body was not read, if it was not.
    pub(super) skipped: Option<String>,
    /// The final response was a 304 to validators this attempt sent.
    pub(super) not_modified: bool,
    /// A name the attempt needed does not exist (NXDOMAIN).
    pub(super) name_not_found: bool,
}

/// One attempt in progress: a request at a time, so that the caller can
/// check and pace each redirect hop (robots.txt, politeness) before it is
/// sent. The requests' own time is bounded by `fetch.timeout` in all; time
/// spent between them (waiting for a host's turn) does not count.
pub struct Attempt<'f> {
    pub(super) fetcher: &'f Fetcher,
    /// Where the next request goes; `None` once the attempt has ended.
    pub(super) next: Option<Url>,
    pub(super) extract: bool,
    pub(super) progress: Progress,
    /// When the first request was sent.
    pub(super) started_at: Option<SystemTime>,
    /// Time spent in requests so far.
    pub(super) spent: Duration,
    /// How the attempt ended, once it has.
    pub(super) outcome: Option<Result<(), Failure>>,
    /// Its last request was withheld ([`Cleared::may_send`]).
    pub(super) withheld: bool,
}

impl Attempt<'_> {
    /// The URL the next request goes to, or `None` when the attempt is over.
    pub fn next_url(&self) -> Option<&Url> {
        self.next.as_ref()
    }

    /// Whether the last request was withheld, not sent: its clearance
    /// ([`Cleared::may_send`]) no longer held when it was about to go out.
    /// The attempt is then to be abandoned: nothing of it was sent.
    pub fn withheld(&self) -> bool {
        self.withheld
    }

    /// Requests made so far (redirects followed plus one, once started).
    pub fn requests(&self) -> usize {
        self.progress.record.redirect_chain.len() + usize::from(self.started_at.is_some())
    }

    /// Makes the attempt's first request conditional on `validators` (the
    /// URL's last response's, for a recrawl), if there are any: a `304 Not
    /// Modified` to it ends the attempt with [`Fetched::not_modified`].
    pub fn conditional(&mut self, validators: &Validators) {
        if self.started_at.is_none() && !validators.is_empty() {
            self.progress.conditional = Some(validators.clone());
        }
    }

    /// Sends the next request, as the crawl's gate `cleared` it (the
    /// headers it carries, its turn once its connection is ready).
    /// Afterwards [`next_url`](Self::next_url) is the redirect's target, or
    /// `None` when the response was final or the request failed.
    ///
    /// The target's address is checked first: an IP literal against
    /// `fetch.deny_ips`, a name by resolving it (timed, within the attempt's
    /// time; the connect then gets the same answer from the resolver's
    /// cache). A request a proxy carries is refused if any address of its
    /// name is denied, as the proxy resolves the name itself.
    ///
    /// Cancel safe: dropping it abandons the attempt and records nothing.
    pub async fn request(&mut self, cleared: Cleared) {
        let Some(url) = self.next.take() else { return };
        let fetcher = self.fetcher;
        // An IP literal is never resolved, so the resolver cannot check it.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !fetcher.addresses.permits(*ip)) {
            let refused = BlockedAddress { host: url.host_str().unwrap_or_default().to_owned(), ip };
            self.next = Some(url);
            self.refuse(Refusal::new(ErrorKind::BlockedAddress, refused.to_string()));
            return;
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let now = SystemTime::now();
        if self.started_at.is_none() {
            self.started_at = Some(now);
        } else {
            let hop = Hop { url: url.to_string(), host: host.clone(), started_at: now, http_status: None };
            self.progress.record.hops.push(hop);
        }
        let route = fetcher.proxies.route(&host);
        let purpose = if route.is_some() { Purpose::Proxied } else { Purpose::Connect };
        let sending = Arc::new(Sending {
            proxy: route.flatten(),
            on_connected: cleared.on_connected,
            sent: Mutex::new(None),
        });
        let limit = fetcher.config.timeout;
        let start = Instant::now();
        let name = url.host_str().filter(|_| literal.is_none());
        let (mut dns, mut withheld) = (None, false);
        let (extract, headers, may_send) = (self.extract, cleared.headers, cleared.may_send);
        let progress = &mut self.progress;
        let request = async {
            if let Some(name) = name {
                let resolving = Instant::now();
                let resolved = fetcher.resolver.resolve(name, purpose).await;
                dns = Some(resolving.elapsed());
                resolved.map_err(|e| lookup_failure(&*e, progress))?;
            }
            if may_send.is_some_and(|may| !may()) {
                withheld = true;
                return Ok(None);
            }
            fetcher.request_once(&url, extract, headers, progress).await
        };
        let sent =
            tokio::time::timeout(limit.saturating_sub(self.spent), SENDING.scope(sending.clone(), request))
                .await;
        self.spent += start.elapsed();
        if withheld {
            self.withheld = true;
            return;
        }
        if let Some(dns) = dns {
            let total = self.progress.record.dns_ms.unwrap_or(0) + dns.as_millis() as u64;
            self.progress.record.dns_ms = Some(total);
        }
        // On a new connection the request went out once it was set up, in
        // its turn: that is when the site saw it start.
        if let Some((_, at)) = *sending.sent.lock().unwrap_or_else(|p| p.into_inner()) {
            match self.progress.record.hops.last_mut() {
                Some(hop) => hop.started_at = at,
                None => self.started_at = Some(at),
            }
        }
        match sent {
            Ok(Ok(Some(next))) => self.next = Some(next),
            Ok(Ok(None)) => self.outcome = Some(Ok(())),
            Ok(Err(failure)) => self.outcome = Some(Err(failure)),
            Err(_) => {
                let took = humantime::format_duration(limit);
                self.outcome =
                    Some(Err(Failure(ErrorKind::Timeout, format!("attempt took longer than {took}"))));
            }
        }
    }

    /// Ends the attempt at the redirect it just followed, without requesting
    /// the target, which is returned (`None` if there is none): the attempt
    /// ends as that redirect's response (its status; `final_url` the URL
    /// that answered it; the redirects before it), for the target to be
    /// crawled as a URL of its own.
    pub fn hand_over(&mut self) -> Option<Url> {
        let target = self.next.take()?;
        self.progress.record.redirect_chain.pop();
        self.outcome = Some(Ok(()));
        Some(target)
    }

    /// Ends the attempt without sending the next request, as `refusal`
    /// says (e.g. robots.txt disallows the redirect's target): its error,
    /// when to try again, and the time of the request that failed it (a
    /// robots.txt that got no response), which is the attempt's own.
    pub fn refuse(&mut self, refusal: Refusal) {
        let Some(url) = self.next.take() else { return };
        let Refusal { kind, message, retry_after, took, name_not_found } = refusal;
        self.progress.retry_after = retry_after;
        self.progress.name_not_found |= name_not_found;
        self.progress.record.final_url = Some(url.to_string());
        self.progress.record.http_status = None;
        if self.started_at.is_none() && !took.is_zero() {
            self.started_at = Some(SystemTime::now() - took);
        }
        self.spent += took;
        self.outcome = Some(Err(Failure(kind, message)));
    }

    /// What the attempt observed, ready to store.
    pub fn finish(self) -> Fetched {
        let mut record = self.progress.record;
        let now = SystemTime::now();
        record.started_at = Some(self.started_at.unwrap_or(now));
        record.fetched_at = Some(now);
        record.elapsed_ms = self.spent.as_millis() as u64;
        record.elapsed_us = self.spent.as_micros() as u64;
        let error = match self.outcome {
            Some(Ok(())) => None,
            Some(Err(Failure(kind, message))) => {
                record.error_kind = Some(kind);
                record.error_message = Some(message);
                Some(kind)
            }
            None => {
                // Ended before its last request (a caller stopped it).
                record.error_kind = Some(ErrorKind::Timeout);
                Some(ErrorKind::Timeout)
            }
        };
        let not_modified = self.progress.not_modified && error.is_none();
        if not_modified {
            // No content came (the empty body read says nothing of it): the
            // store keeps the URL's own.
            (record.content_type, record.body_bytes, record.body_sha256) = (None, None, None);
        }
        let skipped = match self.progress.skipped.filter(|_| error.is_none()) {
            Some(why) => {
                record.error_message = Some(why);
                true
            }
            None => false,
        };
        Fetched {
            record,
            error,
            retry_after: self.progress.retry_after,
            found: self.progress.found,
            out_of_descriptors: self.progress.out_of_descriptors,
            name_not_found: self.progress.name_not_found && error == Some(ErrorKind::Dns),
            not_modified,
            skipped,
        }
    }
}

impl Fetcher {
    /// One request to `url`: `Some(next)` when it answered with a redirect
    /// that may be followed, `None` when its response was final (and read).
    pub(super) async fn request_once(
        &self,
        url: &Url,
        extract: bool,
        headers: HeaderMap,
        progress: &mut Progress,
    ) -> Result<Option<Url>, Failure> {
        let sent = Instant::now();
        progress.record.ttfb_ms = None;
        let conditional = progress.conditional.take();
        let response = self.send(url, conditional.as_ref(), headers).await.map_err(|e| {
            progress.out_of_descriptors = out_of_descriptors(&e);
            classify(e)
        })?;
        progress.record.ttfb_ms = Some(sent.elapsed().as_millis() as u64);
        let status = response.status();
        progress.record.http_status = Some(status.as_u16());
        progress.record.final_url = Some(url.to_string());
        if let Some(hop) = progress.record.hops.last_mut() {
            hop.http_status = Some(status.as_u16());
        }
        if status == reqwest::StatusCode::NOT_MODIFIED {
            // RFC 9110 §15.4.5: a 304 answers a conditional request only;
            // to one that sent no validators it says nothing of the content.
            if conditional.is_none() {
                return Err(Failure(
                    ErrorKind::Protocol,
                    "304 Not Modified to a request that sent no validators: no content to keep".to_owned(),
                ));
            }
            progress.not_modified = true;
        }
        // RFC 9110 §15.4: only these redirect to `Location`; a 300 (a
        // choice), 304, 305 (deprecated) or an unknown 3xx is final.
        if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
            && let Some(location) = response.headers().get(LOCATION)
        {
            return self.next_hop(url, location.as_bytes(), &mut progress.record).map(Some);
        }
        self.read_final(response, extract, progress).await.map(|()| None)
    }

    /// Sends one GET for `url`. A pooled keep-alive connection that the
    /// server closed just as the request went out fails before any byte of
    /// a response; GET is idempotent, so it is sent again at once, once, on
    /// a fresh connection, within the same attempt (RFC 9110 §9.2.2).
    /// With `conditional`, the request carries its validators
    /// (`If-None-Match`, `If-Modified-Since`; RFC 9110 §13.1.2, §13.1.3); one
    /// that is no valid header value is left out.
    pub(super) async fn send(
        &self,
        url: &Url,
        conditional: Option<&Validators>,
        cleared: HeaderMap,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut headers = cleared;
        if let Some(conditional) = conditional {
            headers.extend(conditional_headers(conditional));
        }
        let host = url.host_str().unwrap_or_default();
        let client = match &self.insecure {
            Some((lax, hosts)) if hosts.contains(host) => lax,
            _ => &self.client,
        };
        match client.get(url.clone()).headers(headers.clone()).send().await {
            Err(e) if closed_before_response(&e) => {
                tracing::debug!(
                    url = %ForLog(url.as_str()),
                    "connection closed before the response: sent again on a fresh one"
                );
                client.get(url.clone()).headers(headers).send().await
            }
            other => other,
        }
    }

    /// Resolves a redirect's `Location` against the current URL (RFC 9110
    /// §10.2.2 allows relative references) and checks the hop is allowed.
    pub(super) fn next_hop(
        &self,
        current: &Url,
        location: &[u8],
        record: &mut AttemptRecord,
    ) -> Result<Url, Failure> {
        if record.redirect_chain.len() >= self.config.max_redirects as usize {
            return Err(Failure(
                ErrorKind::RedirectLimit,
                format!("more than {} redirects", self.config.max_redirects),
            ));
        }
        let location = String::from_utf8_lossy(location);
        let next = current
            .join(location.trim())
            .map_err(|e| {
                let location = crate::redact::credentials_in_text(&location).into_owned();
                Failure(ErrorKind::InvalidUrl, format!("redirect to {location:?}: {e}"))
            })
            .and_then(|u| {
                check_http(&u)
                    .map_err(|why| Failure(ErrorKind::InvalidUrl, format!("redirect to {u}: {why}")))?;
                Ok(u)
            })?;
        let mut next = next;
        next.set_fragment(None);
        // Credentials in a Location are neither sent nor recorded.
        crate::redact::strip_credentials(&mut next);
        record.redirect_chain.push(current.to_string());
        if record.redirect_chain.iter().any(|seen| seen == next.as_str()) {
            return Err(Failure(ErrorKind::RedirectLoop, format!("redirect back to {next}")));
        }
        Ok(next)
    }

    /// Reads the final response: what its headers say, then its body
    /// unless `fetch.accept_content_types` leaves its type out.
    pub(super) async fn read_final(
        &self,
        response: reqwest::Response,
        extract: bool,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let said = self.read_headers(&response, progress);
        if let Some(accept) = self.accept.as_deref().filter(|_| response.status().is_success()) {
            let media_type = progress.record.content_type.as_deref().unwrap_or("application/octet-stream");
            if !accept.accepts(media_type) {
                progress.skipped = Some(format!(
                    "Content-Type {media_type} is not in fetch.accept_content_types: body not read"
                ));
                return Ok(());
            }
        }
        self.read_body(response, extract, said, progress).await
    }

    /// What the final response's headers say, into the record: type,
    /// validators, `Retry-After`, the headers themselves when kept, and the
    /// page-level robots directives of `X-Robots-Tag` (returned, for the
    /// page's meta tags to join).
    fn read_headers(&self, response: &reqwest::Response, progress: &mut Progress) -> Directives {
        let (headers, success) = (response.headers(), response.status().is_success());
        let record = &mut progress.record;
        record.content_type = header_text(headers, CONTENT_TYPE.as_str());
        // Validators describe content: a 2xx's, or those a 304 updates
        // (RFC 9111 §4.3.4). An error page's are not revalidated later.
        if success || progress.not_modified {
            record.validators = Validators {
                etag: header_text(headers, ETAG.as_str()),
                last_modified: header_text(headers, LAST_MODIFIED.as_str()),
            };
        }
        progress.retry_after = headers.get(RETRY_AFTER).and_then(|v| parse_retry_after(v.as_bytes()));
        if self.save_headers {
            record.headers = Some(headers_json(headers));
        }
        let x_robots_tag = headers.get_all("x-robots-tag").iter().map(HeaderValue::as_bytes);
        let said = Directives::from_x_robots_tag(x_robots_tag, &self.robots_token);
        if success {
            record.noindex =
                (said.noindex || !is_html(record.content_type.as_deref())).then_some(said.noindex);
        }
        said
    }

    /// Reads the body within `fetch.max_body_bytes`, hashing it, keeping it
    /// when bodies are saved (a prefix over the cap for callers that use
    /// one), and passing a 2xx HTML page to link extraction as it streams,
    /// whose meta tags join the header's directives `said`.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        extract: bool,
        said: Directives,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let record = &mut progress.record;
        let max = self.config.max_body_bytes.get();
        let declared =
            header_text(response.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        // A compressed body's Content-Length is the encoded size: only a
        // declared size already over the cap can be refused before reading.
        if declared.is_some_and(|n| n > max) && !self.keep_prefix {
            return Err(body_too_large(max));
        }
        let mut hasher = Sha256::new();
        let mut len: u64 = 0;
        // The declared length, when under the cap, is the size to expect (a
        // compressed body's is a start): no reallocation on the way.
        let expected = declared.unwrap_or(0).min(max) as usize;
        let mut kept = self.save_body.then(|| Vec::with_capacity(expected));
        let mut extractor = self
            .extract_links
            .filter(|_| extract && response.status().is_success() && is_html(record.content_type.as_deref()))
            .map(|max| LinkExtractor::new(max, &self.robots_token, record.content_type.as_deref()));
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            len += chunk.len() as u64;
            if len > max {
                record.body_bytes = Some(len);
                // What fits under the cap stays available to callers that
                // use a prefix (robots.txt, RFC 9309 §2.5).
                if let Some(mut kept) = kept {
                    let room = (max as usize).saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    record.body = Some(kept);
                }
                return Err(body_too_large(max));
            }
            hasher.update(&chunk);
            if let Some(extractor) = extractor.as_mut() {
                extractor.write(&chunk);
            }
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(&chunk);
            }
        }
        record.body_bytes = Some(len);
        record.body_sha256 = Some(format!("{:x}", hasher.finalize()));
        record.body = kept;
        if let Some(extractor) = extractor {
            let mut found = extractor.finish();
            found.directives = found.directives.union(said);
            record.noindex = Some(found.directives.noindex);
            progress.found = Some(found);
        }
        Ok(())
    }
}

/// `If-None-Match` and `If-Modified-Since` for `validators`, leaving out
/// one that is no valid header value.
pub(super) fn conditional_headers(validators: &Validators) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let valid = |text: Option<&str>| text.and_then(|t| HeaderValue::from_str(t).ok());
    if let Some(etag) = valid(validators.etag.as_deref()) {
        headers.insert(IF_NONE_MATCH, etag);
    }
    if let Some(date) = valid(validators.last_modified.as_deref()) {
        headers.insert(IF_MODIFIED_SINCE, date);
    }
    headers
}

pub(super) fn body_too_large(max: u64) -> Failure {
    Failure(ErrorKind::BodyTooLarge, format!("body larger than {max} bytes"))
}
