//! The PostgreSQL engine, for several daemons sharing one crawl: connecting
//! and the schema (`migrations/postgres/`, the same public interface as
//! SQLite's at the same version). The frontier's operations on PostgreSQL
//! (host leases, fenced completions) are not written yet, so no command
//! opens a PostgreSQL database so far.

use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::StoreError;
use crate::redact::ForLog;

/// PostgreSQL's migrations. Their versions are the same public schema as
/// SQLite's at the same number, so the first is 5.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long opening waits for a connection before it reports the server
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A trawler database on a PostgreSQL server.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// libpq's URI form; the password, if any, in the URL or in `PGPASSWORD`)
    /// with at most `max_connections` connections, and applies pending
    /// migrations. Several daemons may open one database at once: sqlx
    /// takes PostgreSQL's advisory lock while it migrates, so only one
    /// applies a migration.
    ///
    /// Errors: [`StoreError::NewerSchema`] when the database holds
    /// migrations this binary does not know; [`StoreError::Database`] when
    /// the URL is malformed, the server cannot be reached or refuses, or a
    /// migration fails. Messages name the URL without its password.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let shown = ForLog(url).to_string();
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::Database {
            context: "open",
            source: format!("{shown}: not a PostgreSQL URL: {e}").into(),
        })?;
        let options = options.application_name("trawler");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database { context: "open", source: format!("{shown}: {e}").into() })?;
        migrate(&pool, &shown).await?;
        Ok(Self { pool })
    }

    /// The schema version the database is at: its newest applied migration.
    ///
    /// Errors: the database cannot be read.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::Database { context: "schema version", source: Box::new(e) })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn migrate(pool: &PgPool, shown: &str) -> Result<(), StoreError> {
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(found)) => Err(StoreError::NewerSchema {
            path: shown.to_owned(),
            found,
            known: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
        }),
        Err(e) => Err(StoreError::Database { context: "migrate", source: format!("{shown}: {e}").into() }),
    }
}
