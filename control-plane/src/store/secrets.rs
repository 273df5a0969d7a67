//! `secret_groups` and `secrets`.

use std::collections::BTreeMap;

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::{NewSecret, Secret, SecretGroup};

const GROUP_COLUMNS: &str = "g.id, g.name, g.description, g.provider_id, g.auto_sync, \
     (SELECT COUNT(*) FROM secrets s WHERE s.group_id = g.id) AS secret_count, g.created_at, g.updated_at, \
     (SELECT p.name FROM secret_providers p WHERE p.id = g.provider_id) AS provider_name";

pub(super) const SECRET_COLUMNS: &str =
    "s.id, s.name, s.group_id, g.name AS group_name, s.value, s.value_preview, \
     s.description, s.source, s.last_synced_at, s.created_at, s.updated_at, \
     (SELECT p.name FROM secret_providers p WHERE p.id = s.provider_id) AS provider_name, s.stale_since";

/// Outcome of writing a batch of secrets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteCounts {
    pub created: u32,
    pub updated: u32,
    pub skipped: u32,
}

impl Store {
    pub async fn create_group(&self, name: &str, description: Option<&str>) -> Result<SecretGroup> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO secret_groups (name, description) VALUES (?, ?) RETURNING id",
        )
        .bind(name)
        .bind(description)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("group {name:?} already exists")))?;
        self.group_by_id(id).await
    }

    pub async fn set_group_description(&self, id: i64, description: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE secret_groups SET description = ?, updated_at = datetime('now') WHERE id = ?",
        )
        .bind(description)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }

    async fn group_by_id(&self, id: i64) -> Result<SecretGroup> {
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM secret_groups g WHERE g.id = ?"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn group(&self, name: &str) -> Result<SecretGroup> {
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM secret_groups g WHERE g.name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("group {name:?} not found")))
    }

    pub async fn list_groups(&self) -> Result<Vec<SecretGroup>> {
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM secret_groups g ORDER BY g.name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Deletes a group and its secrets. With `force`, environment variables referencing the
    /// group or its secrets are deleted in the same transaction; without it, their existence
    /// is an error listing them. Returns the removed references.
    pub async fn delete_group(&self, group: &SecretGroup, force: bool) -> Result<Vec<String>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let refs: Vec<String> = sqlx::query_scalar(
            "SELECT COALESCE(a.name, '(global)') || ':' || e.key FROM environment_variables e \
             LEFT JOIN applications a ON a.id = e.project_id \
             WHERE e.secret_id IN (SELECT id FROM secrets WHERE group_id = ?1) \
                OR (e.value_type = 'group_ref' AND e.value = '@group:' || ?2) ORDER BY 1",
        )
        .bind(group.id)
        .bind(&group.name)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        if !refs.is_empty() && !force {
            return Err(Error::FailedPrecondition(format!(
                "group {:?} is referenced by environment variables {}; use force to delete them too",
                group.name,
                refs.join(", ")
            )));
        }
        sqlx::query(
            "DELETE FROM environment_variables WHERE secret_id IN (SELECT id FROM secrets WHERE group_id = ?1) \
             OR (value_type = 'group_ref' AND value = '@group:' || ?2)",
        )
        .bind(group.id)
        .bind(&group.name)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        sqlx::query("DELETE FROM secret_groups WHERE id = ?")
            .bind(group.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(refs)
    }

    pub async fn secret(&self, group_name: &str, name: &str) -> Result<Secret> {
        sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id \
             WHERE g.name = ? AND s.name = ?"
        ))
        .bind(group_name)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("secret {group_name}/{name} not found")))
    }

    pub async fn secret_by_id(&self, id: i64) -> Result<Option<Secret>> {
        sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id WHERE s.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn list_secrets(&self, group_id: Option<i64>) -> Result<Vec<Secret>> {
        sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id \
             WHERE ?1 IS NULL OR s.group_id = ?1 ORDER BY g.name, s.name"
        ))
        .bind(group_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Secrets of several groups at once, for environment resolution.
    pub(super) async fn secrets_of_groups(
        conn: &mut sqlx::SqliteConnection,
        group_names: &[String],
    ) -> Result<Vec<Secret>> {
        if group_names.is_empty() {
            return Ok(Vec::new());
        }
        let json = serde_json::to_string(group_names).expect("strings serialize");
        sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id \
             WHERE g.name IN (SELECT value FROM json_each(?)) ORDER BY g.name, s.name"
        ))
        .bind(json)
        .fetch_all(conn)
        .await
        .map_err(internal)
    }

    /// Secrets by id, for environment resolution (one query for any number of references).
    pub async fn secrets_by_ids(&self, ids: &[i64]) -> Result<Vec<Secret>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let json = serde_json::to_string(ids).expect("ints serialize");
        sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id \
             WHERE s.id IN (SELECT value FROM json_each(?))"
        ))
        .bind(json)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Creates or replaces secrets of one group, all in one transaction. Existing secrets are
    /// replaced when `overwrite`, skipped otherwise.
    pub async fn write_secrets(
        &self,
        group_id: i64,
        secrets: &[NewSecret],
        overwrite: bool,
    ) -> Result<WriteCounts> {
        let mut counts = WriteCounts::default();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        for secret in secrets {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT id FROM secrets WHERE group_id = ? AND name = ?")
                    .bind(group_id)
                    .bind(&secret.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(internal)?;
            match exists {
                Some(_) if !overwrite => counts.skipped += 1,
                Some(id) => {
                    sqlx::query(
                        "UPDATE secrets SET value = ?, value_preview = ?, description = COALESCE(?, description), \
                         source = 'manual', updated_at = datetime('now') WHERE id = ?",
                    )
                    .bind(&secret.value)
                    .bind(&secret.value_preview)
                    .bind(&secret.description)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(internal)?;
                    counts.updated += 1;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO secrets (name, group_id, value, value_preview, description, source) \
                         VALUES (?, ?, ?, ?, ?, 'manual')",
                    )
                    .bind(&secret.name)
                    .bind(group_id)
                    .bind(&secret.value)
                    .bind(&secret.value_preview)
                    .bind(&secret.description)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| conflict(e, || format!("secret {:?} already exists", secret.name)))?;
                    counts.created += 1;
                }
            }
        }
        sqlx::query("UPDATE secret_groups SET updated_at = datetime('now') WHERE id = ?")
            .bind(group_id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(counts)
    }

    /// Environment variables (as `app:KEY` or `(global):KEY`) referencing each of these
    /// secrets, in one query; a secret nobody references is absent.
    pub async fn secret_references(
        &self,
        secret_ids: &[i64],
    ) -> Result<BTreeMap<i64, Vec<String>>> {
        if secret_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let json = serde_json::to_string(secret_ids).expect("ints serialize");
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT e.secret_id, COALESCE(a.name, '(global)') || ':' || e.key FROM environment_variables e \
             LEFT JOIN applications a ON a.id = e.project_id \
             WHERE e.secret_id IN (SELECT value FROM json_each(?)) ORDER BY 1, 2",
        )
        .bind(json)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (id, reference) in rows {
            out.entry(id).or_default().push(reference);
        }
        Ok(out)
    }

    /// Deletes a secret; with `force`, the variables referencing it go in the same transaction.
    pub async fn delete_secret(&self, secret: &Secret, force: bool) -> Result<Vec<String>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let refs: Vec<String> = sqlx::query_scalar(
            "SELECT COALESCE(a.name, '(global)') || ':' || e.key FROM environment_variables e \
             LEFT JOIN applications a ON a.id = e.project_id WHERE e.secret_id = ? ORDER BY 1",
        )
        .bind(secret.id)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        if !refs.is_empty() && !force {
            return Err(Error::FailedPrecondition(format!(
                "secret {}/{} is referenced by environment variables {}; use force to delete them too",
                secret.group_name,
                secret.name,
                refs.join(", ")
            )));
        }
        sqlx::query("DELETE FROM environment_variables WHERE secret_id = ?")
            .bind(secret.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        sqlx::query("DELETE FROM secrets WHERE id = ?")
            .bind(secret.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(refs)
    }
}
