//! `secret_providers` (settings, encrypted credentials, last sync), the `synced` secrets of a
//! linked group, and `secret_syncs` (one row per sync attempt).

use super::{conflict, internal, Store};
use crate::error::{Error, Result};

/// A `secret_providers` row. `credentials` is ciphertext.
#[derive(Clone, sqlx::FromRow)]
pub struct ProviderRow {
    pub id: i64,
    pub name: String,
    #[sqlx(rename = "type")]
    pub provider_type: String,
    /// Non-secret settings as JSON.
    pub config: String,
    pub credentials: Option<String>,
    pub enabled: bool,
    pub auto_sync: bool,
    pub last_sync_at: Option<String>,
    pub last_sync_status: Option<String>,
    pub last_sync_error: Option<String>,
    pub sync_interval_s: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The group it syncs into, if one is linked.
    pub group_name: Option<String>,
}

impl std::fmt::Debug for ProviderRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("type", &self.provider_type)
            .field("group", &self.group_name)
            .finish_non_exhaustive()
    }
}

const PROVIDER_COLUMNS: &str = "p.id, p.name, p.type, p.config, p.credentials, p.enabled, p.auto_sync, \
     p.last_sync_at, p.last_sync_status, p.last_sync_error, p.sync_interval_s, p.created_at, p.updated_at, \
     (SELECT g.name FROM secret_groups g WHERE g.provider_id = p.id ORDER BY g.id LIMIT 1) AS group_name";

/// A secret of a group as a sync compares it.
#[derive(Clone, sqlx::FromRow)]
pub struct GroupSecretRow {
    pub id: i64,
    pub name: String,
    pub source: String,
    pub provider_id: Option<i64>,
    /// Ciphertext.
    pub value: String,
}

/// A secret a sync writes: ciphertext and preview already computed.
pub struct SyncedSecret {
    pub name: String,
    pub value: String,
    pub value_preview: String,
    pub reference: String,
}

/// Everything one sync changes, applied in one transaction.
pub struct SyncWrite {
    pub provider_id: i64,
    pub group_id: i64,
    pub create: Vec<SyncedSecret>,
    pub update: Vec<(i64, SyncedSecret)>,
    pub remove: Vec<i64>,
    pub unchanged: Vec<i64>,
    pub stale: Vec<i64>,
    pub status: &'static str,
    pub duration_ms: i64,
}

/// A `secret_syncs` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRow {
    pub id: i64,
    pub status: String,
    pub created_count: i64,
    pub updated_count: i64,
    pub removed_count: i64,
    pub unchanged_count: i64,
    pub duration_ms: Option<i64>,
    pub error_message: Option<String>,
    pub started_at: String,
    pub completed_at: Option<String>,
}

impl Store {
    /// Inserts a provider and its encrypted credentials in one transaction; `seal` encrypts
    /// them for the new row's id.
    pub async fn insert_provider(
        &self,
        name: &str,
        provider_type: &str,
        config_json: &str,
        sync_interval_s: i64,
        seal: impl FnOnce(i64) -> String,
    ) -> Result<ProviderRow> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO secret_providers (name, type, config, sync_interval_s) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(provider_type)
        .bind(config_json)
        .bind(sync_interval_s)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict(e, || format!("provider {name:?} already exists")))?;
        sqlx::query("UPDATE secret_providers SET credentials = ? WHERE id = ?")
            .bind(seal(id))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.provider(name).await
    }

    /// Replaces a provider's settings, and its credentials when `credentials` is given.
    pub async fn update_provider(
        &self,
        id: i64,
        config_json: &str,
        credentials: Option<&str>,
        sync_interval_s: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE secret_providers SET config = ?, credentials = COALESCE(?, credentials), sync_interval_s = ?, \
             updated_at = datetime('now') WHERE id = ?",
        )
        .bind(config_json)
        .bind(credentials)
        .bind(sync_interval_s)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }

    pub async fn provider(&self, name: &str) -> Result<ProviderRow> {
        sqlx::query_as(&format!(
            "SELECT {PROVIDER_COLUMNS} FROM secret_providers p WHERE p.name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("provider {name:?} not found")))
    }

    pub async fn list_providers(&self) -> Result<Vec<ProviderRow>> {
        sqlx::query_as(&format!(
            "SELECT {PROVIDER_COLUMNS} FROM secret_providers p ORDER BY p.name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Removes a provider; its group and secrets stay, as manual ones (the seed's
    /// `ON DELETE SET NULL`, and `source` back to `manual` so they can be edited).
    pub async fn delete_provider(&self, id: i64) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        sqlx::query(
            "UPDATE secrets SET source = 'manual', provider_reference = NULL, stale_since = NULL \
             WHERE provider_id = ?",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        sqlx::query("DELETE FROM secret_providers WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)
    }

    /// Links a group to a provider (or unlinks it with `None`).
    pub async fn link_group(
        &self,
        group_id: i64,
        provider_id: Option<i64>,
        auto_sync: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE secret_groups SET provider_id = ?, auto_sync = ?, updated_at = datetime('now') WHERE id = ?",
        )
        .bind(provider_id)
        .bind(auto_sync)
        .bind(group_id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// Names of a group's secrets that a provider owns, with the provider's name.
    pub async fn synced_secrets(&self, group_id: i64) -> Result<Vec<(String, String)>> {
        sqlx::query_as(
            "SELECT s.name, COALESCE(p.name, '?') FROM secrets s LEFT JOIN secret_providers p ON p.id = s.provider_id \
             WHERE s.group_id = ? AND s.source = 'synced' ORDER BY s.name",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn group_secrets(&self, group_id: i64) -> Result<Vec<GroupSecretRow>> {
        sqlx::query_as(
            "SELECT id, name, source, provider_id, value FROM secrets WHERE group_id = ? ORDER BY name",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Applies a planned sync and records it, all or nothing.
    pub async fn apply_sync(&self, w: &SyncWrite) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        for s in &w.create {
            sqlx::query(
                "INSERT INTO secrets (name, group_id, value, value_preview, source, provider_id, provider_reference, last_synced_at) \
                 VALUES (?, ?, ?, ?, 'synced', ?, ?, datetime('now'))",
            )
            .bind(&s.name)
            .bind(w.group_id)
            .bind(&s.value)
            .bind(&s.value_preview)
            .bind(w.provider_id)
            .bind(&s.reference)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, || format!("secret {:?} already exists", s.name)))?;
        }
        for (id, s) in &w.update {
            sqlx::query(
                "UPDATE secrets SET value = ?, value_preview = ?, provider_reference = ?, stale_since = NULL, \
                 last_synced_at = datetime('now'), updated_at = datetime('now') WHERE id = ? AND provider_id = ?",
            )
            .bind(&s.value)
            .bind(&s.value_preview)
            .bind(&s.reference)
            .bind(id)
            .bind(w.provider_id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        for id in &w.remove {
            sqlx::query("DELETE FROM secrets WHERE id = ? AND provider_id = ?")
                .bind(id)
                .bind(w.provider_id)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
        }
        // Unchanged values are not rewritten; only the time they were last confirmed moves.
        for id in &w.unchanged {
            sqlx::query(
                "UPDATE secrets SET last_synced_at = datetime('now'), stale_since = NULL WHERE id = ?",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        for id in &w.stale {
            sqlx::query(
                "UPDATE secrets SET stale_since = COALESCE(stale_since, datetime('now')) WHERE id = ?",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        sqlx::query(
            "INSERT INTO secret_syncs (provider_id, group_id, status, created_count, updated_count, removed_count, \
             unchanged_count, duration_ms, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, datetime('now'))",
        )
        .bind(w.provider_id)
        .bind(w.group_id)
        .bind(w.status)
        .bind(w.create.len() as i64)
        .bind(w.update.len() as i64)
        .bind(w.remove.len() as i64)
        .bind(w.unchanged.len() as i64)
        .bind(w.duration_ms)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        sqlx::query(
            "UPDATE secret_providers SET last_sync_at = datetime('now'), last_sync_status = ?, last_sync_error = NULL \
             WHERE id = ?",
        )
        .bind(w.status)
        .bind(w.provider_id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)
    }

    /// Records a sync that failed before changing anything.
    pub async fn record_failed_sync(
        &self,
        provider_id: i64,
        group_id: Option<i64>,
        error: &str,
        duration_ms: i64,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        sqlx::query(
            "INSERT INTO secret_syncs (provider_id, group_id, status, duration_ms, error_message, completed_at) \
             VALUES (?, ?, 'failed', ?, ?, datetime('now'))",
        )
        .bind(provider_id)
        .bind(group_id)
        .bind(duration_ms)
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        sqlx::query(
            "UPDATE secret_providers SET last_sync_at = datetime('now'), last_sync_status = 'failed', last_sync_error = ? \
             WHERE id = ?",
        )
        .bind(error)
        .bind(provider_id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)
    }

    /// The newest sync attempts of a provider first.
    pub async fn sync_history(&self, provider_id: i64, limit: i64) -> Result<Vec<SyncRow>> {
        sqlx::query_as(
            "SELECT id, status, created_count, updated_count, removed_count, unchanged_count, duration_ms, \
             error_message, started_at, completed_at FROM secret_syncs WHERE provider_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(provider_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }
}
