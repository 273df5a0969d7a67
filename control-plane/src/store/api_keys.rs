//! `api_keys`: digests only; the key itself is never stored.

use std::sync::Arc;

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::ApiKey;

impl Store {
    pub async fn insert_api_key(
        &self,
        name: &str,
        role: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        let _changed = self.auth.change_guard();
        sqlx::query_as(
            "INSERT INTO api_keys (name, role, key_hash, prefix) VALUES (?, ?, ?, ?) RETURNING *",
        )
        .bind(name)
        .bind(role)
        .bind(key_hash)
        .bind(prefix)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("api key {name:?} already exists")))
    }

    /// Active keys whose public prefix matches; the caller compares digests in constant time.
    /// From memory while no write to `api_keys` has happened since they were read.
    pub async fn api_keys_by_prefix(&self, prefix: &str) -> Result<Arc<[ApiKey]>> {
        self.auth
            .remembered(&self.auth.keys_by_prefix, prefix, || async {
                let keys: Vec<ApiKey> = sqlx::query_as(
                    "SELECT * FROM api_keys WHERE prefix = ? AND revoked_at IS NULL",
                )
                .bind(prefix)
                .fetch_all(&self.pool)
                .await
                .map_err(internal)?;
                Ok(keys.into())
            })
            .await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        sqlx::query_as("SELECT * FROM api_keys ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn count_api_keys(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn revoke_api_key(&self, name: &str) -> Result<()> {
        let _changed = self.auth.change_guard();
        let done = sqlx::query("UPDATE api_keys SET revoked_at = datetime('now') WHERE name = ? AND revoked_at IS NULL")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!(
                "active api key {name:?} not found"
            )));
        }
        Ok(())
    }

    /// Records use, at most once a minute per key so reads do not turn into writes.
    pub async fn touch_api_key(&self, id: i64) -> Result<()> {
        // The cached row's `last_used_at` is re-read after the touch (else every call would
        // touch again).
        let _changed = self.auth.change_guard();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE api_keys SET last_used_at = datetime('now') WHERE id = ? \
                         AND (last_used_at IS NULL OR last_used_at < datetime('now', '-60 seconds'))",
                    )
                    .bind(id)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    Ok(())
                })
            })
            .await
    }
}
