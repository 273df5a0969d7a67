//! `audit_log` and `system_settings`.

use sqlx::{QueryBuilder, Sqlite};

use super::{internal, Store};
use crate::error::Result;

/// Whether an action follows the one naming scheme of audit rows: `<noun>.<verb>`, two
/// lowercase words, the noun being the CLI's (`app.create`, `secret.reveal`), words of the
/// verb joined by `_` (`agent.token_create`). Rows from before the scheme were renamed by
/// migration 0011.
pub fn is_action_name(action: &str) -> bool {
    let word = |w: &str, extra: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    action
        .split_once('.')
        .is_some_and(|(noun, verb)| word(noun, "") && word(verb, "_"))
}

/// Which audit rows to read. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// The actor exactly (`apikey:ops`, `system`, `webhook:1.2.3.4`).
    pub actor: Option<String>,
    /// An action (`secret.reveal`), or a noun alone (`secret`) for all its actions.
    pub action: Option<String>,
    /// Rows at or after this instant, in the column's own format (`…T…:…:….mmmZ`).
    pub since: Option<String>,
    /// Rows about one application: its own rows (target = the name), its variables
    /// (`APP:KEY`), its group imports (`APP <- GROUP`) and its domains (`app=APP` details).
    pub app: Option<String>,
}

/// Which side of the trail to read.
#[derive(Debug, Clone, Copy)]
pub enum AuditCursor {
    /// Newest first; only rows older than this id when given (the next page).
    Before(Option<i64>),
    /// Oldest first, rows newer than this id (what a follower has not seen yet). Ids grow
    /// in commit order: SQLite has one writer.
    After(i64),
}

impl AuditFilter {
    fn push_where(&self, q: &mut QueryBuilder<'_, Sqlite>) {
        q.push(" WHERE 1 = 1");
        if let Some(actor) = &self.actor {
            q.push(" AND actor = ").push_bind(actor.clone());
        }
        match &self.action {
            Some(action) if action.contains('.') => {
                q.push(" AND action = ").push_bind(action.clone());
            }
            Some(noun) => {
                q.push(" AND substr(action, 1, length(")
                    .push_bind(noun.clone())
                    .push(") + 1) = ")
                    .push_bind(noun.clone())
                    .push(" || '.'");
            }
            None => {}
        }
        if let Some(since) = &self.since {
            q.push(" AND at >= ").push_bind(since.clone());
        }
        if let Some(app) = &self.app {
            // Prefix tests with substr, not LIKE: an app name may hold `_`, a LIKE wildcard.
            q.push(" AND (target = ")
                .push_bind(app.clone())
                .push(" OR substr(target, 1, length(")
                .push_bind(app.clone())
                .push(") + 1) = ")
                .push_bind(app.clone())
                .push(" || ':' OR substr(target, 1, length(")
                .push_bind(app.clone())
                .push(") + 4) = ")
                .push_bind(app.clone())
                .push(" || ' <- ' OR (action LIKE 'domain.%' AND (details = 'app=' || ")
                .push_bind(app.clone())
                .push(" OR substr(details, 1, length(")
                .push_bind(app.clone())
                .push(") + 5) = 'app=' || ")
                .push_bind(app.clone())
                .push(" || ' ')))");
        }
    }
}

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
        debug_assert!(
            is_action_name(action),
            "audit action {action:?} breaks the scheme"
        );
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

    /// Audit rows matching `filter` on one side of `cursor`, at most `limit`.
    pub async fn find_audit(
        &self,
        filter: &AuditFilter,
        cursor: AuditCursor,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::new("SELECT * FROM audit_log");
        filter.push_where(&mut q);
        match cursor {
            AuditCursor::Before(None) => q.push(" ORDER BY id DESC"),
            AuditCursor::Before(Some(id)) => {
                q.push(" AND id < ").push_bind(id).push(" ORDER BY id DESC")
            }
            AuditCursor::After(id) => q.push(" AND id > ").push_bind(id).push(" ORDER BY id"),
        };
        q.push(" LIMIT ").push_bind(limit);
        q.build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    /// The id of the newest audit row (0 when there is none).
    pub async fn last_audit_id(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM audit_log")
            .fetch_one(&self.pool)
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
