//! `environment_variables`.

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::{EnvScope, EnvVar, NewEnvVar};

const ENV_COLUMNS: &str = "e.id, e.scope, e.project_id, a.name AS app_name, e.key, e.value, e.value_type, \
     e.secret_id, (g.name || '/' || s.name) AS secret_path, e.description, e.created_at, e.updated_at";

const ENV_FROM: &str = "environment_variables e \
     LEFT JOIN applications a ON a.id = e.project_id \
     LEFT JOIN secrets s ON s.id = e.secret_id \
     LEFT JOIN secret_groups g ON g.id = s.group_id";

pub(super) fn scope_parts(scope: EnvScope) -> (&'static str, Option<i64>) {
    match scope {
        EnvScope::Global => ("global", None),
        EnvScope::Project(id) => ("project", Some(id)),
    }
}

/// One row of an application's environment as resolution needs it: the variable and, for a
/// `secret_ref`, the referenced secret's ciphertext and AAD parts, from one query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnvResolutionRow {
    /// True for project rows, false for global ones.
    pub project: bool,
    pub key: String,
    pub value: String,
    pub value_type: String,
    pub secret_id: Option<i64>,
    pub secret_group_id: Option<i64>,
    pub secret_name: Option<String>,
    pub secret_value: Option<String>,
    /// The referenced secret's group name and masked preview, for the effective view.
    pub secret_group_name: Option<String>,
    pub secret_preview: Option<String>,
}

/// Outcome of importing a group into an application.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub imported: u32,
    pub skipped_keys: Vec<String>,
}

impl Store {
    /// Global and project variables of an application with their referenced secrets, in one
    /// query (the hot path of every deploy).
    pub(super) async fn env_rows(
        conn: &mut sqlx::SqliteConnection,
        app_id: i64,
    ) -> Result<Vec<EnvResolutionRow>> {
        sqlx::query_as(
            "SELECT e.scope = 'project' AS project, e.key, e.value, e.value_type, e.secret_id, \
             s.group_id AS secret_group_id, s.name AS secret_name, s.value AS secret_value, \
             g.name AS secret_group_name, s.value_preview AS secret_preview \
             FROM environment_variables e LEFT JOIN secrets s ON s.id = e.secret_id \
             LEFT JOIN secret_groups g ON g.id = s.group_id \
             WHERE e.scope = 'global' OR e.project_id = ? ORDER BY e.id",
        )
        .bind(app_id)
        .fetch_all(conn)
        .await
        .map_err(internal)
    }

    /// Creates the variable or replaces the one with the same key in the same scope.
    pub async fn upsert_env(&self, scope: EnvScope, var: &NewEnvVar) -> Result<EnvVar> {
        let (scope_name, project_id) = scope_parts(scope);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM environment_variables WHERE scope = ? AND project_id IS ? AND key = ?",
        )
        .bind(scope_name)
        .bind(project_id)
        .bind(&var.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        let id: i64 = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE environment_variables SET value = ?, value_type = ?, secret_id = ?, \
                     description = ?, updated_at = datetime('now') WHERE id = ?",
                )
                .bind(&var.value)
                .bind(var.value_type)
                .bind(var.secret_id)
                .bind(&var.description)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
                id
            }
            None => sqlx::query_scalar(
                "INSERT INTO environment_variables (scope, project_id, key, value, value_type, secret_id, description) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(scope_name)
            .bind(project_id)
            .bind(&var.key)
            .bind(&var.value)
            .bind(var.value_type)
            .bind(var.secret_id)
            .bind(&var.description)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| conflict(e, || format!("variable {} already exists in this scope", var.key)))?,
        };
        tx.commit().await.map_err(internal)?;
        self.env_by_id(id).await
    }

    async fn env_by_id(&self, id: i64) -> Result<EnvVar> {
        sqlx::query_as(&format!(
            "SELECT {ENV_COLUMNS} FROM {ENV_FROM} WHERE e.id = ?"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn list_env(&self, scope: EnvScope) -> Result<Vec<EnvVar>> {
        let (scope_name, project_id) = scope_parts(scope);
        sqlx::query_as(&format!(
            "SELECT {ENV_COLUMNS} FROM {ENV_FROM} WHERE e.scope = ? AND e.project_id IS ? ORDER BY e.key"
        ))
        .bind(scope_name)
        .bind(project_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn delete_env(&self, scope: EnvScope, key: &str) -> Result<()> {
        let (scope_name, project_id) = scope_parts(scope);
        let done = sqlx::query(
            "DELETE FROM environment_variables WHERE scope = ? AND project_id IS ? AND key = ?",
        )
        .bind(scope_name)
        .bind(project_id)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!(
                "variable {key} not found in this scope"
            )));
        }
        Ok(())
    }

    /// The seed's scenario 3, in one transaction: a `secret_ref` variable per secret of the
    /// group, skipping keys the application already has.
    pub async fn import_group_into_app(
        &self,
        group_id: i64,
        group_name: &str,
        app_id: i64,
    ) -> Result<ImportOutcome> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let secrets: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM secrets WHERE group_id = ? ORDER BY name")
                .bind(group_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(internal)?;
        let mut outcome = ImportOutcome::default();
        let description = format!("from group: {group_name}");
        for (secret_id, name) in secrets {
            let done = sqlx::query(
                "INSERT INTO environment_variables (scope, project_id, key, value, value_type, secret_id, description) \
                 VALUES ('project', ?, ?, ?, 'secret_ref', ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(app_id)
            .bind(&name)
            .bind(format!("@secret:{secret_id}"))
            .bind(secret_id)
            .bind(&description)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
            if done.rows_affected() == 1 {
                outcome.imported += 1;
            } else {
                outcome.skipped_keys.push(name);
            }
        }
        tx.commit().await.map_err(internal)?;
        Ok(outcome)
    }
}

#[cfg(test)]
impl Store {
    /// A plain INSERT of a global row, bypassing the upsert, to prove the partial index.
    pub async fn upsert_env_raw_insert_for_test(&self, key: &str) -> Result<()> {
        sqlx::query("INSERT INTO environment_variables (scope, project_id, key, value) VALUES ('global', NULL, ?, 'x')")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict(e, || format!("variable {key} already exists in this scope")))?;
        Ok(())
    }
}
