//! `trawler stats` and `trawler export`: reading a database, also while a
//! crawler writes to it (read-only, no lock).
//!
//! Stats are a snapshot, for people or (`--json`) machines. Export streams
//! the `results` view as JSON lines or CSV (the `csv` crate quotes), one row
//! at a time, so memory stays flat for any size of database.

use crate::config::StoreConfig;
use std::fmt;
use std::io::Write;

use futures::StreamExt;

use crate::CrawlError;
use crate::clock::now_ms;
use crate::store::{Backend, ExportFilter, StatsReport};

/// `trawler export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header row (RFC 4180 quoting).
    Csv,
    /// WARC 1.1, gzipped per record: the stored responses (see `warc.rs`).
    Warc,
}

/// Writes a stats snapshot of the database `config` names to `out`, as text or
/// as one JSON object.
///
/// Errors: the database cannot be read; `out` cannot be written.
pub async fn stats(config: &StoreConfig, json: bool, mut out: impl Write) -> Result<(), CrawlError> {
    let store = Backend::open_read_only(config).await?;
    let report = store.stats(now_ms()).await?;
    store.close().await;
    if json {
        serde_json::to_writer(&mut out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", Text(&report))?;
    }
    Ok(())
}

/// Streams the `results` rows of the database `config` names that match `filter`
/// to `out`. Returns how many rows were written. A reader that goes away
/// (`trawler export | head`: a closed pipe) ends the export quietly, as
/// `sqlite3` or `grep` end, with the rows written so far.
///
/// Errors: the database cannot be read; `out` cannot be written for another
/// reason (a full disk).
pub async fn export(
    config: &StoreConfig,
    format: ExportFormat,
    filter: &ExportFilter,
    out: impl Write,
) -> Result<u64, CrawlError> {
    let store = Backend::open_read_only(config).await?;
    let mut rows = 0;
    let written = async {
        let mut stream = std::pin::pin!(store.export(filter));
        match format {
            ExportFormat::Jsonl => {
                let mut out = std::io::BufWriter::new(out);
                while let Some(row) = stream.next().await {
                    serde_json::to_writer(&mut out, &row?).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                    rows += 1;
                }
                out.flush()?;
            }
            ExportFormat::Csv => {
                let mut out = csv::Writer::from_writer(out);
                while let Some(row) = stream.next().await {
                    out.serialize(row?).map_err(csv_error)?;
                    rows += 1;
                }
                out.flush()?;
            }
            ExportFormat::Warc => rows = archive(&store, filter, out).await?,
        }
        Ok::<_, CrawlError>(())
    }
    .await;
    store.close().await;
    match written {
        Err(CrawlError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(rows),
        Err(e) => Err(e),
        Ok(()) => Ok(rows),
    }
}

/// Writes the attempts with a final response as WARC records (see
/// `warc.rs`), a body read from the store at a time. Returns how many
/// attempts were archived; says how many had no stored body.
async fn archive(store: &Backend, filter: &ExportFilter, out: impl Write) -> Result<u64, CrawlError> {
    let software = concat!("trawler/", env!("CARGO_PKG_VERSION"));
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut warc = crate::warc::WarcWriter::new(std::io::BufWriter::new(out), software, &now)?;
    let mut attempts = std::pin::pin!(store.archive(filter));
    let mut archived = 0;
    while let Some(attempt) = attempts.next().await {
        let attempt = attempt?;
        let body = match attempt.body_sha256.as_deref().filter(|_| warc.needs_body(&attempt)) {
            Some(sha256) => store.body(sha256).await?,
            None => None,
        };
        warc.attempt(&attempt, body.as_deref())?;
        archived += 1;
    }
    let written = warc.finish()?;
    if written.without_body > 0 {
        tracing::warn!(
            responses = written.without_body,
            "responses without a stored body (store.save_body was off when they were fetched) \
             are written as metadata records: status, type, size and digest, no content"
        );
    }
    tracing::info!(responses = written.responses, revisits = written.revisits, "WARC written");
    Ok(archived)
}

/// A CSV error as an I/O error, keeping the kind of one that was I/O (a
/// closed pipe must stay recognisable).
fn csv_error(e: csv::Error) -> std::io::Error {
    if e.is_io_error() {
        match e.into_kind() {
            csv::ErrorKind::Io(e) => e,
            other => std::io::Error::other(format!("{other:?}")),
        }
    } else {
        std::io::Error::other(e)
    }
}

/// `--since`: an RFC 3339 time (a date alone means midnight UTC) in the
/// form `fetched_at` is stored in, so that text comparison orders by time.
///
/// Errors: not an RFC 3339 time.
pub fn since(text: &str) -> Result<String, CrawlError> {
    let text = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    let time = humantime::parse_rfc3339_weak(&text).map_err(|e| {
        CrawlError::Config(format!("--since {text:?}: {e} (expected e.g. 2026-11-22T08:00:00Z)"))
    })?;
    Ok(humantime::format_rfc3339_millis(time).to_string())
}

struct Text<'a>(&'a StatsReport);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        writeln!(
            f,
            "frontier   {} queued, {} in flight, {} done, {} failed ({} input lines rejected)",
            r.queued, r.in_flight, r.done, r.failed, r.invalid_lines
        )?;
        let list = |pairs: &[(String, u64)]| {
            if pairs.is_empty() {
                "none".to_owned()
            } else {
                pairs.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            }
        };
        writeln!(f, "outcomes   {}", list(&r.outcomes))?;
        writeln!(f, "dropped    {} (links not followed, by reason)", list(&r.dropped_links))?;
        writeln!(f, "hosts      {}", list(&r.top_hosts))?;
        writeln!(f, "failing    {}", list(&r.top_failing_hosts))?;
        writeln!(
            f,
            "throughput {} attempts in the last minute, {} in the last hour",
            r.attempts_last_minute, r.attempts_last_hour
        )?;
        match (r.latency_p50_ms, r.latency_p95_ms) {
            (Some(p50), Some(p95)) => writeln!(f, "latency    p50 {p50} ms, p95 {p95} ms (last hour)")?,
            _ => writeln!(f, "latency    no attempts in the last hour")?,
        }
        match &r.next_recrawl_at {
            Some(next) => {
                writeln!(f, "recrawl    {} URLs scheduled, the next at {next}", r.recrawls_scheduled)?
            }
            None => writeln!(f, "recrawl    none scheduled")?,
        }
        for round in &r.recrawls {
            writeln!(
                f,
                "recrawl {:<3}{} pages: {} changed, {} not modified (304), {} the same body",
                round.recrawl,
                round.pages,
                round.changed,
                round.not_modified,
                round.pages - round.changed - round.not_modified
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_times_and_dates() {
        assert_eq!(since("2026-11-22T08:00:00Z").unwrap(), "2026-11-22T08:00:00.000Z");
        assert_eq!(since("2026-11-22").unwrap(), "2026-11-22T00:00:00.000Z");
        assert!(since("yesterday").unwrap_err().to_string().contains("--since"));
    }
}
