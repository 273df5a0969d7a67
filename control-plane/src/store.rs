//! All SQL of berth lives under this module (SQLite through sqlx). Services call typed methods
//! and receive [`crate::error::Error`]; they never see `sqlx::Error`.
//!
//! Architecture invariant: no SQL outside `store/`. A PostgreSQL backend would be a second
//! implementation of these methods, not a change to the services.

mod acme;
mod agents;
mod api_keys;
mod applications;
mod audit;
mod auth_cache;
mod deployments;
mod domains;
mod env;
mod env_structure;
mod import;
mod key_ring;
mod notifications;
mod providers;
mod registry;
mod reports;
mod secrets;
mod writer;

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use crate::crypto::columns::{EncryptedColumn, ENCRYPTED_COLUMNS};
use crate::crypto::Aad;
use crate::error::Error;

/// Now, UTC to the millisecond (`2026-11-30T16:25:27.123Z`): timestamps comparable as text.
const NOW_MS: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub use acme::{AcmeAccountRow, AcmeIssued};
pub use agents::{unknown_enrollment_token, AgentRow, Enrollment, EnrollmentToken};
pub use applications::WebhookGate;
pub use audit::{is_action_name, AuditCursor, AuditEntry, AuditFilter};
pub use deployments::{
    Admission, DeploymentEventRow, DeploymentTargetRow, FailureText, NewDeployment, ServingRow,
    Slot,
};
pub use env::{EnvResolutionRow, ImportOutcome};
pub use env_structure::EnvStructure;
pub use import::{
    ImportTx, ImportedAppRow, ImportedEnvRow, ImportedProviderRow, ImportedSecret,
    NewImportedApplication,
};
pub use key_ring::{Candidate, KeyRingRow, ROTATION_SETTING};
pub use notifications::{AttemptRecord, DeliveryRow, DueDelivery, NewDelivery, WebhookRow};
pub use providers::{GroupSecretRow, ProviderRow, SyncRow, SyncWrite, SyncedSecret};
pub(crate) use reports::Report;
pub use secrets::WriteCounts;

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The group-committing writer of the hot write paths (deployments, targets, the step
    /// log, agent presence, audit).
    writer: writer::Writer,
    /// Environment structures by application, valid for one value of the change counter.
    env_cache: env_structure::SharedEnvCache,
    /// Agents' reports waiting to be written together.
    reports: reports::Reports,
    /// API keys and webhook gates, valid until the next write to `api_keys`/`applications`.
    auth: std::sync::Arc<auth_cache::AuthCache>,
}

impl Store {
    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    ///
    /// WAL lets readers proceed during a write; `synchronous=FULL` makes every acknowledged
    /// admin write survive a power cut or kill -9; foreign keys are enforced on every connection.
    /// `temp_store=MEMORY`: the statement journal of a multi-row statement inside a
    /// transaction (every admission, every batch of reports) and temporary sort tables stay in
    /// memory — by default each was a file created and unlinked in /var/tmp, an inode
    /// allocation per write (seen in `perf` of the webhook bench). They hold nothing that
    /// must survive a crash: the WAL does.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .pragma("temp_store", "MEMORY")
            .busy_timeout(Duration::from_secs(10));
        let store = Self::connect(options.clone()).await?;
        let writer = writer::Writer::start(options.clone()).await?;
        Ok(Store { writer, ..store })
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
        migrate(&pool).await?;
        Ok(Store {
            writer: writer::Writer::Pool(pool.clone()),
            env_cache: Default::default(),
            reports: Default::default(),
            auth: Default::default(),
            pool,
        })
    }

    /// Transactions the group-committing writer has committed so far, each holding one or
    /// more writes (`None` for an in-memory store): writes per commit, for benchmarks.
    pub fn write_batches(&self) -> Option<u64> {
        self.writer.batches()
    }

    /// Returns once every write queued before this call is durable (the writer commits in
    /// order): for a reader that must see writes queued without waiting, such as agents'
    /// events.
    #[cfg(test)]
    pub(crate) async fn queued_writes_durable(&self) -> crate::error::Result<()> {
        self.writer.write(|_| Box::pin(async { Ok(()) })).await
    }

    pub async fn close(&self) {
        self.writer.close().await;
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

    /// For tests: opens a write transaction (`BEGIN IMMEDIATE`, holding SQLite's one write
    /// lock) that stays open until [`WriteLock::release`], as a long legitimate write would.
    #[cfg(test)]
    pub(crate) async fn hold_write_lock(&self) -> Result<WriteLock, Error> {
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        Ok(WriteLock(tx))
    }
}

/// An open write transaction (tests only).
#[cfg(test)]
pub(crate) struct WriteLock(sqlx::Transaction<'static, sqlx::Sqlite>);

#[cfg(test)]
impl WriteLock {
    /// Commits (writes one audit row, so the transaction is a real write) and releases it.
    pub(crate) async fn release(mut self) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, target) VALUES ('test', 'test.write', 'lock')",
        )
        .execute(&mut *self.0)
        .await
        .map_err(internal)?;
        self.0.commit().await.map_err(internal)
    }
}

/// Applies pending migrations with foreign keys off, then checks them. SQLite changes a
/// constraint by rebuilding the table, and dropping the old table would otherwise fire the
/// children's `ON DELETE CASCADE` (a migration runs inside a transaction, where the pragma
/// cannot change). Every migration is one transaction; the connection gets its foreign keys
/// back whatever happens.
async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot open database: {e}")))?;
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    let migrated = sqlx::migrate!("../migrations").run_direct(&mut *conn).await;
    let violations = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut *conn)
        .await
        .map(|rows| rows.len());
    let restored = sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await;
    if restored.is_err() {
        // Never hand a connection without foreign keys back to the pool.
        conn.detach();
    }
    migrated.map_err(|e| Error::FailedPrecondition(format!("cannot migrate database: {e}")))?;
    restored.map_err(internal)?;
    match violations.map_err(internal)? {
        0 => Ok(()),
        n => Err(Error::FailedPrecondition(format!(
            "cannot migrate database: {n} rows break a foreign key after the migration"
        ))),
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
///
/// A full disk is not internal: the caller is told what is wrong and that a retry will do once
/// an operator freed space (`Unavailable`); SQLite rolled the write back, so nothing is stored
/// half-way, and the same connections work again as soon as there is room.
pub(crate) fn internal(e: sqlx::Error) -> Error {
    if is_disk_full(&e) {
        tracing::error!(error = %e, "cannot write to the database: the disk is full");
        return Error::Unavailable(DISK_FULL.to_owned());
    }
    Error::Internal(format!("database: {e}"))
}

/// What a client is told when a write cannot be stored for want of space.
pub const DISK_FULL: &str = "the control plane's disk is full: the change was not stored; free space in its data directory, then retry";

/// `SQLITE_FULL` (13, "database or disk is full"), whatever its extended code.
fn is_disk_full(e: &sqlx::Error) -> bool {
    const SQLITE_FULL: i64 = 13;
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_FULL)
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

#[cfg(test)]
mod migration_tests {
    use std::borrow::Cow;

    use super::*;

    /// Applies the migrations numbered below `version`: a database as an older berth left it.
    async fn migrate_before(pool: &SqlitePool, version: i64) {
        let mut before = sqlx::migrate!("../migrations");
        before.migrations = Cow::Owned(
            before
                .migrations
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        );
        before.run(pool).await.unwrap();
    }

    /// Migration 5 rebuilds `deployment_logs`; the children of every deployment (targets and
    /// the step log, both `ON DELETE CASCADE`) must survive it.
    #[tokio::test]
    async fn rebuilding_a_parent_table_keeps_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("berth.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        migrate_before(&pool, 5).await;
        for sql in [
            "INSERT INTO applications (name, image) VALUES ('web', 'team/web')",
            "INSERT INTO deployment_logs (application_id, version, deployment_id, trigger_type, status) \
             VALUES (1, 'v1', 'd1', 'manual', 'success')",
            "INSERT INTO deployment_targets (deployment_id, agent_name, status) VALUES ('d1', 'a1', 'success')",
            "INSERT INTO deployment_events (deployment_id, phase, message) VALUES ('d1', 'done', 'ok')",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        migrate(&pool).await.unwrap();
        let count = |table: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(count("deployment_logs").await, 1);
        assert_eq!(count("deployment_targets").await, 1);
        assert_eq!(count("deployment_events").await, 1);
        // The new states are accepted, and foreign keys are enforced again.
        sqlx::query("UPDATE deployment_logs SET status = 'superseded', superseded_by = 'd2'")
            .execute(&pool)
            .await
            .unwrap();
        let orphan = sqlx::query(
            "INSERT INTO deployment_targets (deployment_id, agent_name, status) VALUES ('nope', 'a1', 'pending')",
        )
        .execute(&pool)
        .await;
        assert!(orphan.is_err(), "foreign keys are on after migrating");
    }

    /// Migration 6 rebuilds the seed's `domains`: a row written before it keeps its columns
    /// (a NULL container port becomes 0, the app's first port), and applications get the
    /// stop settings' defaults.
    #[tokio::test]
    async fn the_domains_rebuild_keeps_seed_rows_and_applications_get_defaults() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::from_str("sqlite::memory:")
                    .unwrap()
                    .foreign_keys(true),
            )
            .await
            .unwrap();
        migrate_before(&pool, 6).await;
        for sql in [
            "INSERT INTO applications (name, image) VALUES ('web', 'team/web')",
            "INSERT INTO domains (application_id, domain) VALUES (1, 'shop.example.com')",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        migrate(&pool).await.unwrap();
        let (app, port, mode): (i64, i64, String) = sqlx::query_as(
            "SELECT application_id, container_port, tls_mode FROM domains WHERE domain = 'shop.example.com'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((app, port, mode.as_str()), (1, 0, "none"));
        let stop: (i64, i64, String, bool) = sqlx::query_as(
            "SELECT drain_timeout_s, stop_timeout_s, stop_signal, cancel_in_progress FROM applications",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(stop, (30, 10, String::new(), false));
        // The table still cascades from its application.
        sqlx::query("DELETE FROM applications")
            .execute(&pool)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Migration 11 renames the audit actions written before the one naming scheme, and
    /// leaves every other row as it was.
    #[tokio::test]
    async fn audit_actions_from_before_the_scheme_are_renamed() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::from_str("sqlite::memory:").unwrap())
            .await
            .unwrap();
        migrate_before(&pool, 11).await;
        let old = [
            "application.create",
            "application.update",
            "application.delete",
            "application.rotate_token",
            "deployment.start",
            "deployment.refused",
            "agent.token.create",
            "acme.account.create",
            "domain.acme.issue",
            "domain.acme.fail",
            "key.rotate.resume",
            "secret.reveal",
        ];
        for action in old {
            sqlx::query("INSERT INTO audit_log (actor, action, target) VALUES ('system', ?, 't')")
                .bind(action)
                .execute(&pool)
                .await
                .unwrap();
        }
        migrate(&pool).await.unwrap();
        let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(
            actions,
            [
                "app.create",
                "app.update",
                "app.delete",
                "app.rotate_token",
                "deploy.start",
                "deploy.refused",
                "agent.token_create",
                "acme.account_create",
                "domain.acme_issue",
                "domain.acme_fail",
                "key.rotate_resume",
                "secret.reveal",
            ]
        );
        assert!(actions.iter().all(|a| is_action_name(a)), "{actions:?}");
    }
}

#[cfg(test)]
mod disk_full_tests {
    use super::*;
    use crate::error::ErrorCode;

    /// SQLite's page limit stands in for the disk: past it, a write fails as on a full disk
    /// (`SQLITE_FULL`). The caller is told so and what to do, not "internal error"; the
    /// write is not stored; reads go on; and with room again, writes succeed.
    #[tokio::test]
    async fn a_full_disk_is_a_clear_unavailable_error_and_writes_resume_with_room() {
        let store = Store::open_in_memory().await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&store.pool)
            .await
            .unwrap();
        let big = "x".repeat(64 * 1024);
        let err = store.put_setting("big", &big).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert_eq!(err.to_string(), DISK_FULL);
        assert_eq!(store.setting("big").await.unwrap(), None, "nothing stored");

        sqlx::query(&format!("PRAGMA max_page_count = {}", pages * 100))
            .execute(&store.pool)
            .await
            .unwrap();
        store.put_setting("big", &big).await.unwrap();
        assert_eq!(store.setting("big").await.unwrap(), Some(big));
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    /// Every connection of a store on a file — the readers' and the writer's — is in WAL mode,
    /// `synchronous=FULL` (2), and keeps SQLite's temporary files in memory (`temp_store` 2).
    #[tokio::test]
    async fn every_connection_is_durable_and_keeps_temporary_files_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.db")).await.unwrap();
        let read = |sql: &'static str| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, String>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(read("PRAGMA journal_mode").await, "wal");
        assert_eq!(
            read("SELECT CAST(synchronous AS TEXT) FROM pragma_synchronous").await,
            "2"
        );
        assert_eq!(
            read("SELECT CAST(temp_store AS TEXT) FROM pragma_temp_store").await,
            "2"
        );
        let on_writer: (i64, i64) = store
            .writer
            .write(|tx| {
                Box::pin(async move {
                    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(internal)?;
                    let temp: i64 = sqlx::query_scalar("PRAGMA temp_store")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(internal)?;
                    Ok((sync, temp))
                })
            })
            .await
            .unwrap();
        assert_eq!(on_writer, (2, 2));
        store.close().await;
    }
}
