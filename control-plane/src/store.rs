//! All SQL of berth lives under this module (SQLite through sqlx). Services call typed methods
//! and receive [`crate::error::Error`]; they never see `sqlx::Error`.
//!
//! Architecture invariant: no SQL outside `store/`. A PostgreSQL backend would be a second
//! implementation of these methods, not a change to the services.

mod agents;
mod api_keys;
mod applications;
mod audit;
mod deployments;
mod env;
mod notifications;
mod providers;
mod registry;
mod secrets;

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use crate::crypto::columns::{EncryptedColumn, ENCRYPTED_COLUMNS};
use crate::crypto::Aad;
use crate::error::Error;

pub use agents::{AgentRow, Enrollment};
pub use audit::AuditEntry;
pub use deployments::{DeploymentEventRow, DeploymentTargetRow, NewDeployment};
pub use env::{EnvResolutionRow, ImportOutcome};
pub use notifications::{AttemptRecord, DeliveryRow, DueDelivery, NewDelivery, WebhookRow};
pub use providers::{GroupSecretRow, ProviderRow, SyncRow, SyncWrite, SyncedSecret};
pub use secrets::WriteCounts;

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Connections with `synchronous=NORMAL`, for the deployment step log only: in WAL mode a
    /// commit there survives kill -9 of the process (it is in the OS page cache) but not a
    /// power cut, and costs no fsync. Nothing written through it is acknowledged to anyone.
    log_pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    ///
    /// WAL lets readers proceed during a write; `synchronous=FULL` makes every acknowledged
    /// admin write survive a power cut or kill -9; foreign keys are enforced on every connection.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let store = Self::connect(options.clone()).await?;
        let log_pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|e| Error::Unavailable(format!("cannot open database: {e}")))?;
        Ok(Store { log_pool, ..store })
    }

    /// An in-memory database, for unit tests and benchmarks.
    pub async fn open_in_memory() -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(internal)?
            .foreign_keys(true);
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self, Error> {
        let pool = SqlitePoolOptions::new()
            // A single in-memory database only exists on one connection.
            .max_connections(if options.get_filename() == Path::new(":memory:") {
                1
            } else {
                8
            })
            .connect_with(options)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot open database: {e}")))?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot migrate database: {e}")))?;
        Ok(Store {
            log_pool: pool.clone(),
            pool,
        })
    }

    pub async fn close(&self) {
        self.log_pool.close().await;
        self.pool.close().await;
    }

    /// Number of rows holding ciphertext in any registered column, to know whether a master
    /// key is required.
    pub async fn count_encrypted_rows(&self) -> Result<i64, Error> {
        let counts: Vec<String> = ENCRYPTED_COLUMNS
            .iter()
            .map(|c| {
                format!(
                    "(SELECT COUNT(*) FROM {} WHERE {})",
                    c.table,
                    encrypted_rows(c)
                )
            })
            .collect();
        sqlx::query_scalar(&format!("SELECT {}", counts.join(" + ")))
            .fetch_one(&self.pool)
            .await
            .map_err(internal)
    }

    /// Ciphertexts of one registered column with their AAD, in rowid order, at most `limit`
    /// of them (`None`: all): what a key check, a rewrap or a backup verifier decrypts.
    pub async fn encrypted_values(
        &self,
        column: &EncryptedColumn,
        limit: Option<i64>,
    ) -> Result<Vec<(Aad, String)>, Error> {
        let parts: Vec<String> = column
            .aad_columns
            .iter()
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect();
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} ORDER BY rowid LIMIT ?",
            parts.join(", "),
            column.column,
            column.table,
            encrypted_rows(column)
        );
        let rows = sqlx::query(&sql)
            .bind(limit.unwrap_or(-1))
            .fetch_all(&self.pool)
            .await
            .map_err(internal)?;
        rows.iter()
            .map(|row| {
                let n = column.aad_columns.len();
                let parts = (0..n)
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(internal)?;
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                let ciphertext = row.try_get::<String, _>(n).map_err(internal)?;
                Ok((column.aad(&refs), ciphertext))
            })
            .collect()
    }
}

/// The SQL condition selecting the rows of a table whose `column` holds ciphertext.
fn encrypted_rows(column: &EncryptedColumn) -> String {
    match column.only_where {
        Some(condition) => format!("{} IS NOT NULL AND {condition}", column.column),
        None => format!("{} IS NOT NULL", column.column),
    }
}

/// Maps an unexpected database error. Constraint violations that callers expect are mapped
/// with [`conflict`] at the call site, where a specific message can be given.
pub(crate) fn internal(e: sqlx::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

/// Maps a unique violation to `AlreadyExists(message)`, a foreign-key violation to
/// `FailedPrecondition`, and everything else to `Internal`.
pub(crate) fn conflict(e: sqlx::Error, message: impl FnOnce() -> String) -> Error {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return Error::AlreadyExists(message());
        }
        if db.is_foreign_key_violation() {
            return Error::FailedPrecondition(format!("{}: still referenced", message()));
        }
    }
    internal(e)
}
