//! `key_ring` and the SQL of a rewrap: finding ciphertexts not under a key, swapping
//! them compare-and-swap, counting rows per key id.

use sqlx::Row as _;

use super::{encrypted_rows, internal, Store};
use crate::crypto::columns::{EncryptedColumn, KEY_CHECK_SETTING};
use crate::crypto::Aad;
use crate::error::{Error, Result};

/// `system_settings` key of an unfinished rotation: the key id rows are rewrapped to.
pub const ROTATION_SETTING: &str = "key_rotation_target";

/// One stored ring key (wrapped, never the key itself).
#[derive(Clone, sqlx::FromRow)]
pub struct KeyRingRow {
    pub id: String,
    pub wrapped: String,
    /// `active` or `old`.
    pub state: String,
    pub encryptions: i64,
    pub created_at: String,
}

impl std::fmt::Debug for KeyRingRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRingRow")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("encryptions", &self.encryptions)
            .finish_non_exhaustive()
    }
}

/// A ciphertext found by a rewrap: its rowid, AAD and value.
pub type Candidate = (i64, Aad, String);

impl Store {
    /// A consistent copy of the database at `path` (`VACUUM INTO`: one read transaction, so
    /// writers go on while it runs). `path` must not exist.
    pub async fn snapshot_into(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().ok_or_else(|| {
            Error::FailedPrecondition(format!("{} is not valid utf-8", path.display()))
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(path)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot snapshot the database: {e}")))?;
        Ok(())
    }

    /// `PRAGMA integrity_check`: `["ok"]` for a sound database.
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn key_ring(&self) -> Result<Vec<KeyRingRow>> {
        sqlx::query_as(
            "SELECT id, wrapped, state, encryptions, created_at FROM key_ring ORDER BY created_at, rowid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Adds a key as the active one (the previous active one becomes `old`), with its first
    /// reserved block of encryptions; with `start_rotation`, records the rewrap to do in the
    /// same transaction.
    pub async fn insert_active_key(
        &self,
        id: &str,
        wrapped: &str,
        encryptions: i64,
        start_rotation: bool,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        sqlx::query("UPDATE key_ring SET state = 'old' WHERE state = 'active'")
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        sqlx::query(
            "INSERT INTO key_ring (id, wrapped, state, encryptions) VALUES (?, ?, 'active', ?)",
        )
        .bind(id)
        .bind(wrapped)
        .bind(encryptions)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        if start_rotation {
            sqlx::query(
                "INSERT INTO system_settings (key, value) VALUES (?, ?) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = datetime('now')",
            )
            .bind(ROTATION_SETTING)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        tx.commit().await.map_err(internal)
    }

    /// Persists `n` more encryptions under a key before they are made.
    /// Through the group commit, like every hot write (a rewrap reserves often).
    pub async fn reserve_encryptions(&self, id: &str, n: i64) -> Result<()> {
        let id = id.to_string();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE key_ring SET encryptions = encryptions + ? WHERE id = ?",
                    )
                    .bind(n)
                    .bind(&id)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    if done.rows_affected() != 1 {
                        return Err(Error::Internal(format!("key ring entry {id} is gone")));
                    }
                    Ok(())
                })
            })
            .await
    }

    /// Up to `limit` ciphertexts of `column` not under `key_id`, after `after_rowid`, in rowid
    /// order.
    pub async fn rewrap_candidates(
        &self,
        column: &EncryptedColumn,
        key_id: &str,
        after_rowid: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>> {
        let parts: Vec<String> = column
            .aad_columns
            .iter()
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect();
        let prefix = format!("v1:{key_id}:");
        let sql = format!(
            "SELECT rowid, {}, {col} FROM {table} WHERE {cond} AND rowid > ? \
             AND substr({col}, 1, ?) != ? ORDER BY rowid LIMIT ?",
            parts.join(", "),
            col = column.column,
            table = column.table,
            cond = encrypted_rows(column),
        );
        let rows = sqlx::query(&sql)
            .bind(after_rowid)
            .bind(prefix.len() as i64)
            .bind(&prefix)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(internal)?;
        rows.iter()
            .map(|row| {
                let rowid: i64 = row.try_get(0).map_err(internal)?;
                let n = column.aad_columns.len();
                let parts = (1..=n)
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<std::result::Result<Vec<String>, _>>()
                    .map_err(internal)?;
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                let ciphertext: String = row.try_get(n + 1).map_err(internal)?;
                Ok((rowid, column.aad(&refs), ciphertext))
            })
            .collect()
    }

    /// Replaces ciphertexts in one transaction, each only if the row still holds the old
    /// value (a concurrent write wins). Returns how many were replaced.
    pub async fn swap_ciphertexts(
        &self,
        column: &EncryptedColumn,
        swaps: &[(i64, String, String)],
    ) -> Result<u64> {
        let sql = format!(
            "UPDATE {table} SET {col} = ? WHERE rowid = ? AND {col} = ?",
            table = column.table,
            col = column.column
        );
        // Through the group commit, in turn with every other write: a rewrap of many batches
        // never starves a deploy of SQLite's write lock (busy waits of up to a second were
        // measured when it took the lock on its own).
        let swaps = swaps.to_vec();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let mut swapped = 0;
                    for (rowid, old, new) in &swaps {
                        swapped += sqlx::query(&sql)
                            .bind(new)
                            .bind(rowid)
                            .bind(old)
                            .execute(&mut *conn)
                            .await
                            .map_err(internal)?
                            .rows_affected();
                    }
                    Ok(swapped)
                })
            })
            .await
    }

    /// Rows of `column` per key id.
    pub async fn key_usage(&self, column: &EncryptedColumn) -> Result<Vec<(String, i64)>> {
        // `v1:<id>:…`: the id starts at 4 and ends before the next ':'.
        let sql = format!(
            "SELECT substr({col}, 4, instr(substr({col}, 4), ':') - 1) AS kid, COUNT(*) \
             FROM {table} WHERE {cond} GROUP BY kid ORDER BY kid",
            col = column.column,
            table = column.table,
            cond = encrypted_rows(column),
        );
        sqlx::query_as(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    /// Deletes an `old` ring key. `false` when there is no such old key.
    pub async fn delete_old_key(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM key_ring WHERE id = ? AND state = 'old'")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a rotation to `key_id` (no-op if another one was recorded since).
    pub async fn finish_rotation(&self, key_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM system_settings WHERE key = ? AND value = ?")
            .bind(ROTATION_SETTING)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// A root-key rotation: every ring row's wrapped key and the key check, in one
    /// transaction, each compare-and-swap on the value it was computed from.
    pub async fn replace_root_wrapped(
        &self,
        ring: &[(String, String, String)],
        key_check: Option<(String, String)>,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        for (id, old, new) in ring {
            let done = sqlx::query("UPDATE key_ring SET wrapped = ? WHERE id = ? AND wrapped = ?")
                .bind(new)
                .bind(id)
                .bind(old)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            if done.rows_affected() != 1 {
                return Err(Error::FailedPrecondition(format!(
                    "key ring entry {id} changed during the root-key rotation: run it again"
                )));
            }
        }
        if let Some((old, new)) = key_check {
            let done =
                sqlx::query("UPDATE system_settings SET value = ? WHERE key = ? AND value = ?")
                    .bind(new)
                    .bind(KEY_CHECK_SETTING)
                    .bind(old)
                    .execute(&mut *tx)
                    .await
                    .map_err(internal)?;
            if done.rows_affected() != 1 {
                return Err(Error::FailedPrecondition(
                    "the key check changed during the root-key rotation: run it again".to_string(),
                ));
            }
        }
        tx.commit().await.map_err(internal)
    }
}
