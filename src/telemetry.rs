//! Logging set-up: `tracing` to stderr, filtered by `log.level` (or
//! `RUST_LOG` when it is set), as text (colour only on a terminal) or one JSON
//! object per line. The filter sits behind a `tracing_subscriber::reload`
//! layer so that a config reload can change it.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;
use crate::progress::BarAwareStderr;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over `log.level`, then and on reload.
    pinned_by_env: bool,
}

impl LogLevel {
    /// Puts `directives` (an `EnvFilter` string such as `"warn,trawler=debug"`)
    /// in force. Returns `Ok(false)` without changing anything when `RUST_LOG`
    /// pins the filter. Errors: the directives do not parse, or the
    /// subscriber is gone.
    pub fn set(&self, directives: &str) -> Result<bool, String> {
        if self.pinned_by_env {
            return Ok(false);
        }
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Installs the global subscriber with `level` as its filter (unless
/// `RUST_LOG` is set), and returns the handle that changes the filter later.
/// Call once, before anything logs.
pub fn init(format: LogFormat, level: &str) -> LogLevel {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let pinned_by_env = from_env.is_some();
    let filter = from_env
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(BarAwareStderr).with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(BarAwareStderr)).init()
        }
    }
    LogLevel { handle, pinned_by_env }
}
