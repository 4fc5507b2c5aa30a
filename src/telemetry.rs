//! Logging set-up: `tracing` to stderr, filtered by `log.level` (or
//! `RUST_LOG` when it is set), as text (colour only on a terminal) or one JSON
//! object per line. The filter sits behind a `tracing_subscriber::reload`
//! layer so that a config reload can change it.
//!
//! When stderr is the systemd journal (`JOURNAL_STREAM` names it,
//! systemd.exec(5)), text lines start with the sd-daemon(3) priority prefix
//! (`<4>` for a warning...), which journald turns into the entry's priority,
//! so `journalctl -p warning` filters by level; the journal's own timestamp
//! replaces ours. (The `tracing-journald` crate would send structured entries
//! instead, but their MESSAGE is the bare message: `journalctl`'s default view
//! would lose every field, such as the URL of a failed fetch.)

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
        let filter = EnvFilter::try_new(with_quiet_notices(directives)).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// `directives` with PostgreSQL's notices (sqlx logs them at info, under
/// `sqlx::postgres::notice`) at warn, and sqlx's pool's own reports of
/// broken connections (`sqlx_core::pool`, info and warn, one per connection)
/// at error, unless they name sqlx themselves: the migrations' `relation
/// "_sqlx_migrations" already exists, skipping` came with every command on
/// PostgreSQL and says nothing to an operator, and the pool's lines came by
/// the dozen with every server restart, which the store reports once.
fn with_quiet_notices(directives: &str) -> String {
    if directives.contains("sqlx") {
        directives.to_owned()
    } else {
        format!("{directives},sqlx::postgres::notice=warn,sqlx_core::pool=error")
    }
}

/// Installs the global subscriber with `level` as its filter (unless
/// `RUST_LOG` is set), and returns the handle that changes the filter later.
/// Call once, before anything logs.
pub fn init(format: LogFormat, level: &str) -> LogLevel {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let pinned_by_env = from_env.is_some();
    let filter = from_env
        .and_then(|v| EnvFilter::try_new(with_quiet_notices(&v)).ok())
        .or_else(|| EnvFilter::try_new(with_quiet_notices(level)).ok())
        .unwrap_or_else(|| EnvFilter::new(with_quiet_notices("info")));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text if stderr_is_journal() => registry
            .with(
                fmt::layer()
                    .with_writer(BarAwareStderr)
                    .with_ansi(false)
                    .event_format(JournalPriority(fmt::format().without_time())),
            )
            .init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(BarAwareStderr).with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(BarAwareStderr)).init()
        }
    }
    LogLevel { handle, pinned_by_env }
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` holds the
/// `device:inode` of the stream systemd connected, to compare with stderr's
/// (systemd.exec(5), "$JOURNAL_STREAM").
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// Prefixes each event with its syslog priority, `<3>` (error) to `<7>`
/// (debug), as sd-daemon(3) describes for services logging to stderr.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgresql_notices_are_quiet_unless_asked_for() {
        assert_eq!(with_quiet_notices("info"), "info,sqlx::postgres::notice=warn,sqlx_core::pool=error");
        assert_eq!(with_quiet_notices("info,sqlx=debug"), "info,sqlx=debug");
        EnvFilter::try_new(with_quiet_notices("warn,trawler=debug")).unwrap();
    }

    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_start_with_their_syslog_priority() {
        let out = Captured::default();
        let sink = out.clone();
        let layer = fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(JournalPriority(fmt::format().without_time()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("e");
            tracing::warn!(key = "crawl.concurrency", "w");
            tracing::info!("i");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let prefixes: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
        assert_eq!(prefixes, ["<3>", "<4>", "<6>"], "{text}");
        assert!(text.contains("w key=\"crawl.concurrency\""), "fields stay in the line: {text}");
    }
}
