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
    /// Kept although gone upstream (`stale_since` is set).
    pub stale: bool,
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
    /// Unchanged upstream: counted, never written.
    pub unchanged: usize,
    /// Unchanged values that were stale and are back upstream: no longer stale.
    pub revived: Vec<i64>,
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
            "SELECT id, name, source, provider_id, value, stale_since IS NOT NULL AS stale FROM secrets \
             WHERE group_id = ? ORDER BY name",
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
        // One statement for all new secrets (a first sync creates every one): the rows travel
        // as one JSON array of [name, ciphertext, preview, reference].
        if !w.create.is_empty() {
            let rows: Vec<[&str; 4]> = w
                .create
                .iter()
                .map(|s| [&*s.name, &*s.value, &*s.value_preview, &*s.reference])
                .collect();
            sqlx::query(
                "INSERT INTO secrets (name, group_id, value, value_preview, source, provider_id, provider_reference, last_synced_at) \
                 SELECT j.value ->> 0, ?, j.value ->> 1, j.value ->> 2, 'synced', ?, j.value ->> 3, datetime('now') \
                 FROM json_each(?) j",
            )
            .bind(w.group_id)
            .bind(w.provider_id)
            .bind(serde_json::to_string(&rows).expect("strings serialize"))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                conflict(e, || {
                    "a secret this sync creates was added to the group meanwhile; sync again".into()
                })
            })?;
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
        // Unchanged rows are not written at all: when the group was last confirmed upstream is
        // the provider's `last_sync_at`. Only a stale one that is back stops being stale.
        for id in &w.revived {
            sqlx::query(
                "UPDATE secrets SET last_synced_at = datetime('now'), stale_since = NULL \
                 WHERE id = ? AND provider_id = ?",
            )
            .bind(id)
            .bind(w.provider_id)
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
        .bind(w.unchanged as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(name: &str) -> SyncedSecret {
        SyncedSecret {
            name: name.into(),
            value: format!("ciphertext-of-{name}"),
            value_preview: "****".into(),
            reference: format!("kv/{name}"),
        }
    }

    fn write(provider_id: i64, group_id: i64) -> SyncWrite {
        SyncWrite {
            provider_id,
            group_id,
            create: Vec::new(),
            update: Vec::new(),
            remove: Vec::new(),
            unchanged: 0,
            revived: Vec::new(),
            stale: Vec::new(),
            status: "success",
            duration_ms: 1,
        }
    }

    #[tokio::test]
    async fn an_unchanged_sync_writes_no_secret_row_and_a_revived_one_is_no_longer_stale() {
        let store = Store::open_in_memory().await.unwrap();
        let group = store.create_group("g", None).await.unwrap();
        let provider = store
            .insert_provider("p", "hashicorp-vault", "{}", 300, |_| "sealed".into())
            .await
            .unwrap();
        store
            .link_group(group.id, Some(provider.id), false)
            .await
            .unwrap();
        store
            .apply_sync(&SyncWrite {
                create: vec![synced("A"), synced("B")],
                ..write(provider.id, group.id)
            })
            .await
            .unwrap();
        let created = store.list_secrets(Some(group.id)).await.unwrap();
        let rows: Vec<(&str, &str, &str)> = created
            .iter()
            .map(|s| (&*s.name, &*s.value, &*s.source))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("A", "ciphertext-of-A", "synced"),
                ("B", "ciphertext-of-B", "synced")
            ]
        );
        let ids: Vec<i64> = created.iter().map(|s| s.id).collect();
        // A name created meanwhile (by hand) fails the whole sync, which then writes nothing.
        let e = store
            .apply_sync(&SyncWrite {
                create: vec![synced("C"), synced("A")],
                ..write(provider.id, group.id)
            })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        assert_eq!(store.list_secrets(Some(group.id)).await.unwrap().len(), 2);
        // Timestamps a sync today cannot write, and B kept stale by an earlier sync.
        sqlx::query(
            "UPDATE secrets SET last_synced_at = '2000-01-01 00:00:00', \
             updated_at = '2000-01-01 00:00:00', \
             stale_since = CASE name WHEN 'B' THEN '2000-01-01 00:00:00' END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let before = store.list_secrets(Some(group.id)).await.unwrap();

        store
            .apply_sync(&SyncWrite {
                unchanged: 2,
                revived: vec![ids[1]],
                ..write(provider.id, group.id)
            })
            .await
            .unwrap();
        let after = store.list_secrets(Some(group.id)).await.unwrap();
        let row = |list: &[crate::model::Secret], i: usize| {
            let s = &list[i];
            (
                s.value.clone(),
                s.updated_at.clone(),
                s.last_synced_at.clone(),
                s.stale_since.clone(),
            )
        };
        assert_eq!(row(&after, 0), row(&before, 0), "A is not written at all");
        assert_eq!(after[1].value, before[1].value);
        assert_eq!(after[1].updated_at, before[1].updated_at);
        assert_eq!(after[1].stale_since, None, "B is back upstream");
        assert_ne!(after[1].last_synced_at, before[1].last_synced_at);
        let history = store.sync_history(provider.id, 10).await.unwrap();
        assert_eq!(history[0].unchanged_count, 2);
    }
}
