//! The one transaction of `berth import-v1`: reads what berth already holds and writes
//! what the plan creates, on one connection under `BEGIN IMMEDIATE`, so the service decides
//! every row against a state no other writer can change before the commit.
//!
//! Dropping an [`ImportTx`] without [`ImportTx::commit`] rolls everything back: a dry run,
//! a conflict, an error at any row.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::env::scope_parts;
use super::secrets::SECRET_COLUMNS;
use super::{conflict, internal, Store};
use crate::error::Result;
use crate::model::{EnvScope, NewEnvVar, NewSecret, PortMapping, Repository, Secret};

/// Rows per multi-row INSERT: 8 parameters a secret, well below SQLite's 32,766.
const ROWS_PER_INSERT: usize = 500;

/// An open import transaction.
pub struct ImportTx {
    tx: Transaction<'static, Sqlite>,
    /// Imported applications are new webhook gates.
    auth: std::sync::Arc<super::auth_cache::AuthCache>,
}

/// An application as the import compares it.
#[derive(Debug, Clone)]
pub struct ImportedAppRow {
    pub id: i64,
    pub name: String,
    pub image: String,
    pub repository: Option<String>,
    pub ports: Vec<PortMapping>,
}

/// A provider as the import compares it; `credentials` is ciphertext.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImportedProviderRow {
    pub id: i64,
    pub name: String,
    #[sqlx(rename = "type")]
    pub provider_type: String,
    pub config: String,
    pub credentials: Option<String>,
}

/// A variable as the import compares it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImportedEnvRow {
    pub key: String,
    pub value_type: String,
    pub value: String,
    pub secret_id: Option<i64>,
}

/// A secret the import creates: sealed, with its V1 timestamps.
pub struct ImportedSecret<'a> {
    pub secret: NewSecret,
    pub created_at: Option<&'a str>,
    pub updated_at: Option<&'a str>,
}

/// An application the import creates. Everything not here takes the schema's default.
pub struct NewImportedApplication<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub version: Option<&'a str>,
    pub repository_id: Option<i64>,
    pub ports: &'a [PortMapping],
    pub status: &'a str,
    pub webhook_token_digest: &'a str,
    pub webhook_token_prefix: &'a str,
    pub last_deployed_at: Option<&'a str>,
    pub created_at: Option<&'a str>,
    pub updated_at: Option<&'a str>,
}

impl Store {
    /// Opens the import transaction, taking the write lock at once.
    pub async fn begin_import(&self) -> Result<ImportTx> {
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        Ok(ImportTx {
            tx,
            auth: self.auth.clone(),
        })
    }
}

impl ImportTx {
    pub async fn group_id(&mut self, name: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT id FROM secret_groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(internal)
    }

    pub async fn create_group(&mut self, name: &str, description: &str) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO secret_groups (name, description) VALUES (?, ?) RETURNING id",
        )
        .bind(name)
        .bind(description)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| conflict(e, || format!("group {name:?} already exists")))
    }

    /// The group's secrets by name.
    pub async fn group_secrets(&mut self, group_id: i64) -> Result<HashMap<String, Secret>> {
        let rows: Vec<Secret> = sqlx::query_as(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets s JOIN secret_groups g ON g.id = s.group_id \
             WHERE s.group_id = ?"
        ))
        .bind(group_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        Ok(rows.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    /// Manual secrets, a few hundred rows per statement; their V1 timestamps when given,
    /// else now. Returns their ids by name.
    pub async fn insert_secrets(
        &mut self,
        group_id: i64,
        secrets: &[ImportedSecret<'_>],
    ) -> Result<HashMap<String, i64>> {
        let mut ids = HashMap::with_capacity(secrets.len());
        for chunk in secrets.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO secrets (name, group_id, value, value_preview, description, source, \
                 created_at, updated_at) ",
            );
            q.push_values(chunk, |mut row, s| {
                row.push_bind(&s.secret.name)
                    .push_bind(group_id)
                    .push_bind(&s.secret.value)
                    .push_bind(&s.secret.value_preview)
                    .push_bind(&s.secret.description)
                    .push("'manual'")
                    .push("COALESCE(")
                    .push_bind_unseparated(s.created_at)
                    .push_unseparated(", datetime('now'))")
                    .push("COALESCE(")
                    .push_bind_unseparated(s.updated_at)
                    .push_unseparated(", ")
                    .push_bind_unseparated(s.created_at)
                    .push_unseparated(", datetime('now'))");
            });
            // RETURNING gives no order: the ids are matched by name.
            q.push(" RETURNING id, name");
            let rows: Vec<(i64, String)> = q
                .build_query_as()
                .fetch_all(&mut *self.tx)
                .await
                .map_err(|e| conflict(e, || "a secret of the import already exists".into()))?;
            ids.extend(rows.into_iter().map(|(id, name)| (name, id)));
        }
        Ok(ids)
    }

    pub async fn repositories(&mut self) -> Result<HashMap<String, Repository>> {
        let rows: Vec<Repository> = sqlx::query_as(
            "SELECT id, name, url, username, password, created_at FROM repositories",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        Ok(rows.into_iter().map(|r| (r.name.clone(), r)).collect())
    }

    pub async fn insert_repository(
        &mut self,
        name: &str,
        url: &str,
        username: Option<&str>,
        password_ciphertext: Option<&str>,
    ) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO repositories (name, url, username, password) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(url)
        .bind(username)
        .bind(password_ciphertext)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| conflict(e, || format!("repository {name:?} already exists")))
    }

    pub async fn providers(&mut self) -> Result<HashMap<String, ImportedProviderRow>> {
        let rows: Vec<ImportedProviderRow> =
            sqlx::query_as("SELECT id, name, type, config, credentials FROM secret_providers")
                .fetch_all(&mut *self.tx)
                .await
                .map_err(internal)?;
        Ok(rows.into_iter().map(|p| (p.name.clone(), p)).collect())
    }

    /// A provider, unlinked; its credentials sealed for the new row's id.
    pub async fn insert_provider(
        &mut self,
        name: &str,
        provider_type: &str,
        config_json: &str,
        sync_interval_s: i64,
        seal: impl FnOnce(i64) -> String,
    ) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO secret_providers (name, type, config, sync_interval_s) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(provider_type)
        .bind(config_json)
        .bind(sync_interval_s)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| conflict(e, || format!("provider {name:?} already exists")))?;
        sqlx::query("UPDATE secret_providers SET credentials = ? WHERE id = ?")
            .bind(seal(id))
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(internal)?;
        Ok(id)
    }

    pub async fn applications(&mut self) -> Result<HashMap<String, ImportedAppRow>> {
        let rows: Vec<(i64, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT a.id, a.name, a.image, r.name, a.ports FROM applications a \
             LEFT JOIN repositories r ON r.id = a.repository_id",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        rows.into_iter()
            .map(|(id, name, image, repository, ports)| {
                let ports = serde_json::from_str(&ports).map_err(|e| {
                    crate::error::Error::Internal(format!(
                        "application {name:?} has unreadable ports: {e}"
                    ))
                })?;
                Ok((
                    name.clone(),
                    ImportedAppRow {
                        id,
                        name,
                        image,
                        repository,
                        ports,
                    },
                ))
            })
            .collect()
    }

    pub async fn insert_application(&mut self, app: &NewImportedApplication<'_>) -> Result<i64> {
        let ports = serde_json::to_string(app.ports).expect("ports serialize");
        sqlx::query_scalar(
            "INSERT INTO applications (name, image, version, repository_id, ports, status, webhook_enabled, \
             webhook_token, webhook_token_prefix, last_deployed_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, COALESCE(?, datetime('now')), COALESCE(?, ?, datetime('now'))) \
             RETURNING id",
        )
        .bind(app.name)
        .bind(app.image)
        .bind(app.version)
        .bind(app.repository_id)
        .bind(ports)
        .bind(app.status)
        .bind(app.webhook_token_digest)
        .bind(app.webhook_token_prefix)
        .bind(app.last_deployed_at)
        .bind(app.created_at)
        .bind(app.updated_at)
        .bind(app.created_at)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| conflict(e, || format!("application {:?} already exists", app.name)))
    }

    /// The variables of one scope by key.
    pub async fn env(&mut self, scope: EnvScope) -> Result<HashMap<String, ImportedEnvRow>> {
        let (scope_name, project_id) = scope_parts(scope);
        let rows: Vec<ImportedEnvRow> = sqlx::query_as(
            "SELECT key, value_type, value, secret_id FROM environment_variables \
             WHERE scope = ? AND project_id IS ?",
        )
        .bind(scope_name)
        .bind(project_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        Ok(rows.into_iter().map(|r| (r.key.clone(), r)).collect())
    }

    /// Variables, a few hundred rows per statement.
    pub async fn insert_env(&mut self, vars: &[(EnvScope, NewEnvVar)]) -> Result<()> {
        for chunk in vars.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO environment_variables (scope, project_id, key, value, value_type, \
                 secret_id, description) ",
            );
            q.push_values(chunk, |mut row, (scope, var)| {
                let (scope_name, project_id) = scope_parts(*scope);
                row.push_bind(scope_name)
                    .push_bind(project_id)
                    .push_bind(&var.key)
                    .push_bind(&var.value)
                    .push_bind(var.value_type)
                    .push_bind(var.secret_id)
                    .push_bind(&var.description);
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .map_err(|e| conflict(e, || "a variable of the import already exists".into()))?;
        }
        Ok(())
    }

    pub async fn image_patterns(&mut self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT pattern FROM image_whitelists")
            .fetch_all(&mut *self.tx)
            .await
            .map_err(internal)
    }

    pub async fn insert_image_pattern(&mut self, pattern: &str, description: &str) -> Result<()> {
        sqlx::query("INSERT INTO image_whitelists (pattern, description) VALUES (?, ?)")
            .bind(pattern)
            .bind(description)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| conflict(e, || format!("image pattern {pattern:?} already exists")))?;
        Ok(())
    }

    /// Every routed host with its application's name.
    pub async fn domains(&mut self) -> Result<HashMap<String, String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT d.domain, a.name FROM domains d JOIN applications a ON a.id = d.application_id",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(internal)?;
        Ok(rows.into_iter().collect())
    }

    /// A plain-HTTP domain to the application's first container port.
    pub async fn insert_domain(&mut self, application_id: i64, host: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO domains (application_id, domain, container_port, tls_mode) VALUES (?, ?, 0, 'none')",
        )
        .bind(application_id)
        .bind(host)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| conflict(e, || format!("domain {host} already exists")))?;
        Ok(())
    }

    pub async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        details: &str,
    ) -> Result<()> {
        debug_assert!(
            super::is_action_name(action),
            "audit action {action:?} breaks the scheme"
        );
        sqlx::query("INSERT INTO audit_log (actor, action, target, details) VALUES (?, ?, ?, ?)")
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(details)
            .execute(&mut *self.tx)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        let _changed = self.auth.change_guard();
        self.tx.commit().await.map_err(internal)
    }
}

#[cfg(test)]
impl Store {
    /// Rows per table an import writes (and the audit log): "nothing written" is this,
    /// unchanged.
    pub(crate) async fn import_table_counts(&self) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        for table in [
            "secret_groups",
            "secrets",
            "repositories",
            "secret_providers",
            "applications",
            "environment_variables",
            "image_whitelists",
            "domains",
            "audit_log",
        ] {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&self.pool)
                .await
                .unwrap();
            out.push((table, n));
        }
        out
    }
}
