//! `applications`, `application_targets` and the read side of `deployment_logs`.

use sqlx::SqliteConnection;

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::{
    Application, ApplicationPatch, DeploymentLog, NewApplication, PortMapping, StopSettings, Target,
};

#[derive(sqlx::FromRow)]
struct ApplicationRow {
    id: i64,
    name: String,
    image: String,
    version: Option<String>,
    repository: Option<String>,
    ports: String,
    status: String,
    webhook_enabled: bool,
    webhook_token_prefix: Option<String>,
    auto_deploy: bool,
    last_deployed_at: Option<String>,
    created_at: String,
    updated_at: String,
    deploy_batch_size: i64,
    health_check: Option<String>,
    restart_policy: String,
    command: Option<String>,
    drain_timeout_s: i64,
    stop_timeout_s: i64,
    stop_signal: String,
    cancel_in_progress: bool,
    /// `[[kind, value], …]` in the order they were given.
    targets: String,
}

/// An application as the webhook's first checks see it (see [`Store::webhook_gate_by_name`]).
#[derive(Clone, sqlx::FromRow)]
pub struct WebhookGate {
    pub id: i64,
    pub name: String,
    pub webhook_enabled: bool,
    /// The token's digest (never the token); `None` for an application without one.
    pub webhook_token: Option<String>,
}

impl std::fmt::Debug for WebhookGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookGate")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("webhook_enabled", &self.webhook_enabled)
            .finish_non_exhaustive()
    }
}

const GATE_SELECT: &str = "SELECT id, name, webhook_enabled, webhook_token FROM applications";

const APP_SELECT: &str = "SELECT a.id, a.name, a.image, a.version, r.name AS repository, a.ports, a.status, \
     a.webhook_enabled, a.webhook_token_prefix, a.auto_deploy, a.last_deployed_at, a.created_at, a.updated_at, \
     a.deploy_batch_size, a.health_check, a.restart_policy, a.command, \
     a.drain_timeout_s, a.stop_timeout_s, a.stop_signal, a.cancel_in_progress, \
     (SELECT json_group_array(json_array(t.kind, t.value) ORDER BY t.id) FROM application_targets t \
      WHERE t.application_id = a.id) AS targets \
     FROM applications a LEFT JOIN repositories r ON r.id = a.repository_id";

impl Store {
    pub async fn insert_application(&self, app: &NewApplication) -> Result<Application> {
        let changed = self.auth.change_guard();
        let ports = serde_json::to_string(&app.ports).expect("ports serialize");
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO applications (name, image, version, repository_id, ports, webhook_enabled, \
             webhook_token, webhook_token_prefix, auto_deploy, deploy_batch_size, health_check, restart_policy, \
             drain_timeout_s, stop_timeout_s, stop_signal, cancel_in_progress) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&app.name)
        .bind(&app.image)
        .bind(&app.version)
        .bind(app.repository_id)
        .bind(ports)
        .bind(app.webhook_enabled)
        .bind(&app.webhook_token_digest)
        .bind(&app.webhook_token_prefix)
        .bind(app.auto_deploy)
        .bind(app.deploy_batch_size)
        .bind(app.health_check.as_ref().map(|h| serde_json::to_string(h).expect("health check serializes")))
        .bind(&app.restart_policy)
        .bind(i64::from(app.stop.drain_timeout_s))
        .bind(i64::from(app.stop.stop_timeout_s))
        .bind(&app.stop.stop_signal)
        .bind(app.cancel_in_progress)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict(e, || format!("application {:?} already exists", app.name)))?;
        replace_targets(&mut tx, id, &app.targets).await?;
        tx.commit().await.map_err(internal)?;
        drop(changed);
        self.application_by_id(id).await
    }

    pub async fn application(&self, name: &str) -> Result<Application> {
        let row: Option<ApplicationRow> = sqlx::query_as(&format!("{APP_SELECT} WHERE a.name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?;
        let row = row.ok_or_else(|| Error::not_found(format!("application {name:?} not found")))?;
        with_targets(row)
    }

    pub async fn application_by_id(&self, id: i64) -> Result<Application> {
        let row: Option<ApplicationRow> = sqlx::query_as(&format!("{APP_SELECT} WHERE a.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?;
        let row = row.ok_or_else(|| Error::not_found(format!("application {id} not found")))?;
        with_targets(row)
    }

    pub async fn list_applications(&self) -> Result<Vec<Application>> {
        let rows: Vec<ApplicationRow> = sqlx::query_as(&format!("{APP_SELECT} ORDER BY a.name"))
            .fetch_all(&self.pool)
            .await
            .map_err(internal)?;
        rows.into_iter().map(with_targets).collect()
    }

    /// What the webhook checks before anything else is read: the application by name,
    /// whether its webhook is enabled, and its token digest, in one read. `None`: unknown.
    /// From memory while no write to `applications` has happened since it was read.
    pub async fn webhook_gate_by_name(&self, name: &str) -> Result<Option<WebhookGate>> {
        self.auth
            .remembered(&self.auth.gates_by_name, name, || async {
                sqlx::query_as(&format!("{GATE_SELECT} WHERE name = ?"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(internal)
            })
            .await
    }

    /// [`Store::webhook_gate_by_name`] by application id.
    pub async fn webhook_gate_by_id(&self, id: i64) -> Result<Option<WebhookGate>> {
        self.auth
            .remembered(&self.auth.gates_by_id, &id, || async {
                sqlx::query_as(&format!("{GATE_SELECT} WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(internal)
            })
            .await
    }

    /// The stored webhook token digest of an application.
    pub async fn webhook_token_digest(&self, app_id: i64) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT webhook_token FROM applications WHERE id = ?")
            .bind(app_id)
            .fetch_one(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn update_application(
        &self,
        id: i64,
        patch: &ApplicationPatch,
    ) -> Result<Application> {
        let changed = self.auth.change_guard();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let ports = patch
            .ports
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("ports serialize"));
        sqlx::query(
            "UPDATE applications SET image = COALESCE(?, image), version = COALESCE(?, version), \
             repository_id = CASE WHEN ? THEN ? ELSE repository_id END, ports = COALESCE(?, ports), \
             webhook_enabled = COALESCE(?, webhook_enabled), auto_deploy = COALESCE(?, auto_deploy), \
             deploy_batch_size = COALESCE(?, deploy_batch_size), \
             health_check = CASE WHEN ? THEN ? ELSE health_check END, \
             restart_policy = COALESCE(?, restart_policy), \
             drain_timeout_s = COALESCE(?, drain_timeout_s), stop_timeout_s = COALESCE(?, stop_timeout_s), \
             stop_signal = COALESCE(?, stop_signal), cancel_in_progress = COALESCE(?, cancel_in_progress), \
             updated_at = datetime('now') WHERE id = ?",
        )
        .bind(&patch.image)
        .bind(&patch.version)
        .bind(patch.repository_id.is_some())
        .bind(patch.repository_id.flatten())
        .bind(ports)
        .bind(patch.webhook_enabled)
        .bind(patch.auto_deploy)
        .bind(patch.deploy_batch_size)
        .bind(patch.health_check.is_some())
        .bind(patch.health_check.clone().flatten().map(|h| serde_json::to_string(&h).expect("health check serializes")))
        .bind(&patch.restart_policy)
        .bind(patch.drain_timeout_s.map(i64::from))
        .bind(patch.stop_timeout_s.map(i64::from))
        .bind(&patch.stop_signal)
        .bind(patch.cancel_in_progress)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
        if let Some(targets) = &patch.targets {
            replace_targets(&mut tx, id, targets).await?;
        }
        tx.commit().await.map_err(internal)?;
        drop(changed);
        self.application_by_id(id).await
    }

    pub async fn set_webhook_token(&self, id: i64, digest: &str, prefix: &str) -> Result<()> {
        let _changed = self.auth.change_guard();
        sqlx::query(
            "UPDATE applications SET webhook_token = ?, webhook_token_prefix = ?, updated_at = datetime('now') WHERE id = ?",
        )
        .bind(digest)
        .bind(prefix)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }

    pub async fn delete_application(&self, id: i64) -> Result<()> {
        let _changed = self.auth.change_guard();
        sqlx::query("DELETE FROM applications WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn repository_id(&self, name: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?
            .ok_or_else(|| Error::not_found(format!("repository {name:?} not found")))
    }

    pub async fn recent_deployments(&self, app_id: i64, limit: i64) -> Result<Vec<DeploymentLog>> {
        sqlx::query_as(
            "SELECT * FROM deployment_logs WHERE application_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(app_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }
}

/// An application from its row, whose `targets` column carries its targets.
fn with_targets(row: ApplicationRow) -> Result<Application> {
    let targets: Vec<(String, String)> = serde_json::from_str(&row.targets).map_err(|e| {
        Error::Internal(format!(
            "application {:?} has unreadable targets: {e}",
            row.name
        ))
    })?;
    let ports: Vec<PortMapping> = serde_json::from_str(&row.ports).map_err(|e| {
        Error::Internal(format!(
            "application {:?} has unreadable ports: {e}",
            row.name
        ))
    })?;
    Ok(Application {
        id: row.id,
        name: row.name,
        image: row.image,
        version: row.version,
        repository: row.repository,
        ports,
        status: row.status,
        webhook_enabled: row.webhook_enabled,
        webhook_token_prefix: row.webhook_token_prefix,
        auto_deploy: row.auto_deploy,
        last_deployed_at: row.last_deployed_at,
        targets: targets
            .into_iter()
            .map(|(kind, value)| decode_target(&kind, &value))
            .collect(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        deploy_batch_size: row.deploy_batch_size,
        health_check: row
            .health_check
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok()),
        restart_policy: row.restart_policy,
        command: row
            .command
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default(),
        // The schema's CHECKs keep both within 0..=3600.
        stop: StopSettings {
            drain_timeout_s: u32::try_from(row.drain_timeout_s).unwrap_or(0),
            stop_timeout_s: u32::try_from(row.stop_timeout_s).unwrap_or(0),
            stop_signal: row.stop_signal,
        },
        cancel_in_progress: row.cancel_in_progress,
    })
}

async fn replace_targets(
    conn: &mut SqliteConnection,
    app_id: i64,
    targets: &[Target],
) -> Result<()> {
    sqlx::query("DELETE FROM application_targets WHERE application_id = ?")
        .bind(app_id)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
    for target in targets {
        let (kind, value) = match target {
            Target::Agent(name) => ("agent", name.clone()),
            Target::Label { key, value } => ("label", format!("{key}={value}")),
        };
        sqlx::query("INSERT OR IGNORE INTO application_targets (application_id, kind, value) VALUES (?, ?, ?)")
            .bind(app_id)
            .bind(kind)
            .bind(value)
            .execute(&mut *conn)
            .await
            .map_err(internal)?;
    }
    Ok(())
}

fn decode_target(kind: &str, value: &str) -> Target {
    match (kind, value.split_once('=')) {
        ("label", Some((k, v))) => Target::Label {
            key: k.to_string(),
            value: v.to_string(),
        },
        _ => Target::Agent(value.to_string()),
    }
}
