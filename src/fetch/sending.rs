//! One request while it is being sent: what the crawl's gate cleared it
//! with ([`Cleared`]), and what the connection it needs must know.
//!
//! reqwest opens connections out of sight of the caller (its pool decides
//! whether a request needs one), so the request's route and its turn reach
//! the connection through a task-local ([`SENDING`]), set by
//! [`Attempt::request`](super::Attempt::request) around the request:
//! - the resolver answers the name of the request's own proxy without the
//!   address policy (that connection goes to the proxy, not to a crawl
//!   target), and every other name with it ([`super::addresses`]);
//! - once a new connection is ready (DNS, TCP, a proxy's handshake, TLS),
//!   [`PacedConnect`] waits for the request's turn again before it is sent,
//!   so the gap the site sees between two requests is never under the host's
//!   delay, whatever the set-up took ([`Cleared::on_connected`]).
//!
//! A connection that hyper-util finishes in the background (a pooled one won
//! the race) runs outside the task: it resolves with the policy and waits for
//! no turn, as no request is sent on it yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// Waits until a request whose new connection is ready may be sent (its
/// host's politeness turn as sent).
pub type ConnectedHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Whether a request cleared earlier may still be sent now (its host's
/// lease still allows it).
pub type SendCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the crawl's gate cleared one request with.
#[derive(Default)]
pub struct Cleared {
    /// The headers the request carries for where it goes (`[hosts."..."]`
    /// headers by host, secrets by origin), besides the fetch's own.
    pub headers: HeaderMap,
    /// Called when a new connection for the request is ready: returns once
    /// the request may be sent. `None`: sent at once.
    pub on_connected: Option<ConnectedHook>,
    /// Asked once more just before the request is handed to the HTTP
    /// client, its name resolved: `false` withholds it
    /// ([`Attempt::withheld`](super::Attempt::withheld)). A process frozen
    /// after its turn was cleared (SIGSTOP, a stall) wakes with its
    /// attempt's time run out; without this its request would go out past
    /// the host lease's deadline, and be recorded as a timeout. `None`:
    /// always sent.
    pub may_send: Option<SendCheck>,
}

/// The request this task is sending.
pub(super) struct Sending {
    /// The host name of the proxy carrying the request, if one does.
    pub(super) proxy: Option<String>,
    /// See [`Cleared::on_connected`].
    pub(super) on_connected: Option<ConnectedHook>,
    /// When the request went out on a new connection, if it needed one.
    pub(super) sent: Mutex<Option<(Instant, SystemTime)>>,
}

tokio::task_local! {
    /// The request being sent by this task (see the module docs).
    pub(super) static SENDING: Arc<Sending>;
}

/// Whether `name` is resolved for the connection to the proxy of the
/// request this task is sending.
pub(super) fn is_current_proxy(name: &str) -> bool {
    SENDING.try_with(|s| s.proxy.as_deref() == Some(name)).unwrap_or(false)
}

/// A tower layer around reqwest's connector: [`PacedConnect`].
#[derive(Clone, Copy, Default)]
pub(super) struct PacedConnectLayer;

impl<S> tower::Layer<S> for PacedConnectLayer {
    type Service = PacedConnect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PacedConnect(inner)
    }
}

/// reqwest's connector, then the request's turn as sent: see the module docs.
#[derive(Clone)]
pub(super) struct PacedConnect<S>(S);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower::Service<R> for PacedConnect<S>
where
    S: tower::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, destination: R) -> Self::Future {
        // Read in the request's task: the connection future may be moved
        // to a background task later.
        let sending = SENDING.try_with(Arc::clone).ok();
        let connecting = self.0.call(destination);
        Box::pin(async move {
            let connection = connecting.await?;
            if let Some(sending) = sending {
                if let Some(turn) = &sending.on_connected {
                    turn().await;
                }
                *sending.sent.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), SystemTime::now()));
            }
            Ok(connection)
        })
    }
}
