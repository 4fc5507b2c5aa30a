//! Every task of a crawl on one `TaskTracker`, supervised: the first task
//! that fails for good (returns an error, or panics) has its error recorded
//! and logged, and stops the whole crawl the graceful way (the same stop as
//! SIGTERM, so fetches in flight get the grace period and everything that
//! finished is committed). The crawl then ends with that error, and the
//! process with exit status 1, which makes systemd restart the service.
//!
//! This is what keeps a dead task from leaving the others waiting on it
//! forever, as vector's topology does with its `abort_tx`: a writer that
//! fails no longer leaves the producer claiming for workers that are gone.
//!
//! What is a failure is decided once, in the store (`store/faults.rs`), for
//! every task alike: a lock, a write of its own still running, or the
//! database away within `store.outage_grace` is waited out inside the
//! store's operation, so no task stops on an error another would ride out.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::error::CrawlError;
use crate::shutdown::Shutdown;

/// Spawns and supervises a crawl's tasks. Clones share the tracker and the
/// recorded failure.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    /// Stopped (gracefully) by the first failure.
    shutdown: Shutdown,
    /// The first failure; later ones are only logged.
    failure: Arc<Mutex<Option<CrawlError>>>,
    /// Set with the first failure, for `/healthz`.
    failed: Arc<AtomicBool>,
}

impl Tasks {
    /// Tasks whose failure stops `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self { tracker: TaskTracker::new(), shutdown, failure: Arc::default(), failed: Arc::default() }
    }

    /// Spawns `task`, called `name` in logs. The handle yields `Some(value)`
    /// when the task returns `Ok(value)`, `None` when it failed (its error,
    /// or its panic, is then recorded and the crawl stopped).
    pub fn spawn<T, E>(
        &self,
        name: &'static str,
        task: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> JoinHandle<Option<T>>
    where
        T: Send + 'static,
        E: Into<CrawlError> + Send + 'static,
    {
        let tasks = self.clone();
        self.tracker.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(value)) => Some(value),
                Ok(Err(error)) => {
                    tasks.fail(name, error.into());
                    None
                }
                Err(panic) => {
                    tasks.fail(name, CrawlError::Panicked { task: name, message: panic_message(&*panic) });
                    None
                }
            }
        })
    }

    /// Spawns a task that returns no error; a panic in it still stops the
    /// crawl.
    pub fn spawn_infallible(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<Option<()>> {
        self.spawn(name, task.map(Ok::<(), CrawlError>))
    }

    /// Records `error` as the crawl's failure (unless one is recorded
    /// already), logs it, and stops the crawl.
    pub fn fail(&self, task: &'static str, error: CrawlError) {
        tracing::error!(task, "{error}; stopping the crawl");
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(error);
            self.failed.store(true, Ordering::SeqCst);
        }
        drop(failure);
        self.shutdown.stop();
    }

    /// The first failure, if any task failed; taking it leaves none.
    pub fn take_failure(&self) -> Option<CrawlError> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Set once a task has failed (for `/healthz`).
    pub fn failed_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }

    /// Waits for every task spawned so far (and any they spawn) to end.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The text of a panic's payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_stops_the_crawl_and_its_error_is_kept() {
        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        let ok = tasks.spawn("fine", async { Ok::<_, CrawlError>(7) });
        let failing =
            tasks.spawn("broken", async { Err::<(), _>(CrawlError::Config("the first failure".into())) });
        assert_eq!(ok.await.unwrap(), Some(7));
        assert_eq!(failing.await.unwrap(), None);
        assert!(shutdown.is_stopping() && !shutdown.is_forced());
        tasks.spawn("later", async { Err::<(), _>(CrawlError::Config("a later one".into())) });
        tasks.wait().await;
        assert!(tasks.failed_flag().load(Ordering::SeqCst));
        assert_eq!(tasks.take_failure().unwrap().to_string(), "invalid setting: the first failure");
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_crawl_with_its_message() {
        let shutdown = Shutdown::new();
        let tasks = Tasks::new(shutdown.clone());
        let id = 42;
        let handle = tasks.spawn_infallible("writer", async move { panic!("boom at {id}") });
        assert_eq!(handle.await.unwrap(), None, "the panic is caught, not propagated to the join");
        assert!(shutdown.is_stopping());
        assert_eq!(tasks.take_failure().unwrap().to_string(), "the writer task panicked: boom at 42");
    }
}
