//! `audit_log` and `system_settings`.

use super::{internal, Store};
use crate::error::Result;

/// One audit row. `details` must never contain a secret value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: Option<String>,
    pub at: String,
}

impl Store {
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: Option<&str>,
    ) -> Result<()> {
        let (actor, action, target, details) = (
            actor.to_string(),
            action.to_string(),
            target.to_string(),
            details.map(str::to_string),
        );
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO audit_log (actor, action, target, details) VALUES (?, ?, ?, ?)",
                    )
                    .bind(actor)
                    .bind(action)
                    .bind(target)
                    .bind(details)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    Ok(())
                })
            })
            .await
    }

    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        sqlx::query_as("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM system_settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)
    }

    /// Tests only: a database from before the master-key check existed.
    #[cfg(test)]
    pub(crate) async fn delete_setting(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM system_settings WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO system_settings (key, value) VALUES (?, ?) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = datetime('now')",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }
}
