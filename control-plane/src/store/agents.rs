//! `agents` and `enrollment_tokens`.

use std::collections::BTreeMap;

use super::{conflict, internal, Store};
use crate::error::{Error, Result};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    /// JSON object of labels.
    pub labels: String,
    pub cert_fingerprint: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<String>,
    pub status: String,
    pub version: Option<String>,
    pub docker_version: Option<String>,
    pub last_seen_at: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The certificate the current one renewed, valid until the current one is first
    /// presented (a renewal whose answer was lost must not lock the agent out).
    pub prev_cert_fingerprint: Option<String>,
}

impl AgentRow {
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }
}

/// A consumed enrollment token: who the agent will be.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub agent_name: String,
    pub labels: BTreeMap<String, String>,
}

/// An enrollment token's row as read before anything is written (`Fleet::enroll` checks it
/// without taking the write lock).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentToken {
    /// The stored digest, compared again in constant time by the caller.
    pub token_hash: String,
    pub agent_name: String,
    pub used_at: Option<String>,
    pub expires_at: String,
    /// `expires_at` has passed (decided by the database's clock, as the consuming update is).
    pub expired: bool,
}

impl EnrollmentToken {
    /// Why this token cannot enroll anyone, if it cannot.
    pub fn refusal(&self) -> Option<Error> {
        if self.used_at.is_some() {
            Some(Error::Unauthenticated(
                "enrollment token was already used".into(),
            ))
        } else if self.expired {
            Some(Error::Unauthenticated(format!(
                "enrollment token expired at {}",
                self.expires_at
            )))
        } else {
            None
        }
    }
}

/// The refusal of a token that matches no row.
pub fn unknown_enrollment_token() -> Error {
    Error::Unauthenticated("invalid enrollment token".into())
}

/// An agent by the certificate it presents (every mTLS call): answered from two indexes
/// (migration 0016), never by a scan of the fleet.
const BY_FINGERPRINT: &str =
    "SELECT * FROM agents WHERE cert_fingerprint = ?1 OR prev_cert_fingerprint = ?1";

impl Store {
    pub async fn insert_enrollment_token(
        &self,
        token_hash: &str,
        agent_name: &str,
        labels: &BTreeMap<String, String>,
        ttl_seconds: i64,
    ) -> Result<String> {
        sqlx::query_scalar(
            "INSERT INTO enrollment_tokens (token_hash, agent_name, labels, expires_at) \
             VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ? || ' seconds')) RETURNING expires_at",
        )
        .bind(token_hash)
        .bind(agent_name)
        .bind(serde_json::to_string(labels).expect("labels serialize"))
        .bind(ttl_seconds.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    /// Reads a token by its digest: a read only, so that callers who present no valid token
    /// never take the write lock.
    pub async fn enrollment_token(&self, token_hash: &str) -> Result<Option<EnrollmentToken>> {
        sqlx::query_as(
            "SELECT token_hash, agent_name, used_at, expires_at, \
             expires_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now') AS expired \
             FROM enrollment_tokens WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)
    }

    /// Marks the token used and returns its enrollment, in one statement, so two agents racing
    /// with one token cannot both enroll. Reuse and expiry get distinct errors.
    pub async fn consume_enrollment_token(&self, token_hash: &str) -> Result<Enrollment> {
        let row: Option<(String, String)> = sqlx::query_as(
            "UPDATE enrollment_tokens SET used_at = datetime('now') \
             WHERE token_hash = ? AND used_at IS NULL AND expires_at > strftime('%Y-%m-%dT%H:%M:%SZ', 'now') \
             RETURNING agent_name, labels",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        if let Some((agent_name, labels)) = row {
            return Ok(Enrollment {
                agent_name,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
            });
        }
        Err(match self.enrollment_token(token_hash).await? {
            Some(token) => token.refusal().unwrap_or_else(unknown_enrollment_token),
            None => unknown_enrollment_token(),
        })
    }

    /// Records an enrolled (or re-enrolled) agent and its certificate.
    pub async fn upsert_agent(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        fingerprint: &str,
        serial: &str,
        not_after: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (name, labels, cert_fingerprint, cert_serial, cert_not_after, status) \
             VALUES (?, ?, ?, ?, ?, 'enrolled') \
             ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, cert_fingerprint = excluded.cert_fingerprint, \
             cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after, status = 'enrolled', revoked_at = NULL, \
             prev_cert_fingerprint = NULL",
        )
        .bind(name)
        .bind(serde_json::to_string(labels).expect("labels serialize"))
        .bind(fingerprint)
        .bind(serial)
        .bind(not_after)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("agent {name:?} already exists")))?;
        Ok(())
    }

    /// Makes `fingerprint` the agent's certificate; `presented` (the one the request came
    /// with) stays valid until the new one is first presented.
    pub async fn renew_agent_certificate(
        &self,
        name: &str,
        presented: &str,
        fingerprint: &str,
        serial: &str,
        not_after: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE agents SET prev_cert_fingerprint = ?, cert_fingerprint = ?, cert_serial = ?, cert_not_after = ? \
                     WHERE name = ? AND revoked_at IS NULL")
            .bind(presented)
            .bind(fingerprint)
            .bind(serial)
            .bind(not_after)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// The agent whose current certificate, or previous one still valid, has `fingerprint`.
    pub async fn agent_by_fingerprint(&self, fingerprint: &str) -> Result<Option<AgentRow>> {
        sqlx::query_as(BY_FINGERPRINT)
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)
    }

    /// The agent presented its current certificate: the one it renewed is valid no more.
    pub async fn retire_previous_certificate(&self, name: &str, current: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET prev_cert_fingerprint = NULL WHERE name = ? AND cert_fingerprint = ?")
            .bind(name)
            .bind(current)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn agent(&self, name: &str) -> Result<AgentRow> {
        sqlx::query_as("SELECT * FROM agents WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?
            .ok_or_else(|| Error::not_found(format!("agent {name:?} not found")))
    }

    /// Names of unrevoked agents with this name, or with this label (one indexed lookup or
    /// one scan in SQLite, without loading every row into the process).
    pub async fn target_agents(
        &self,
        name: Option<&str>,
        label: Option<(&str, &str)>,
    ) -> Result<Vec<String>> {
        match (name, label) {
            (Some(name), _) => sqlx::query_scalar("SELECT name FROM agents WHERE name = ? AND revoked_at IS NULL")
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(internal),
            (None, Some((key, value))) => sqlx::query_scalar(
                "SELECT name FROM agents WHERE revoked_at IS NULL AND json_extract(labels, '$.\"' || ? || '\"') = ? ORDER BY name",
            )
            .bind(key)
            .bind(value)
            .fetch_all(&self.pool)
            .await
            .map_err(internal),
            (None, None) => sqlx::query_scalar("SELECT name FROM agents WHERE revoked_at IS NULL ORDER BY name LIMIT 2")
                .fetch_all(&self.pool)
                .await
                .map_err(internal),
        }
    }

    /// Enrolled agents (revoked ones included) and how many of them are revoked.
    pub async fn count_agents(&self) -> Result<(i64, i64)> {
        sqlx::query_as("SELECT COUNT(*), COUNT(revoked_at) FROM agents")
            .fetch_one(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRow>> {
        sqlx::query_as("SELECT * FROM agents ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn revoke_agent(&self, name: &str) -> Result<()> {
        let done = sqlx::query("UPDATE agents SET revoked_at = datetime('now'), status = 'revoked', prev_cert_fingerprint = NULL \
                                 WHERE name = ? AND revoked_at IS NULL")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("active agent {name:?} not found")));
        }
        Ok(())
    }

    /// Written on connect and disconnect only: heartbeats stay in memory.
    pub async fn agent_seen(
        &self,
        name: &str,
        status: &str,
        version: Option<&str>,
        docker_version: Option<&str>,
    ) -> Result<()> {
        // Through the group commit: a reconnect storm of thousands of agents is a few
        // commits, not an fsync per agent.
        let (status, version, docker_version, name) = (
            status.to_string(),
            version.map(str::to_string),
            docker_version.map(str::to_string),
            name.to_string(),
        );
        self.writer
            .write_statement(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE agents SET status = ?, last_seen_at = datetime('now'), version = COALESCE(?, version), \
                         docker_version = COALESCE(?, docker_version) WHERE name = ? AND revoked_at IS NULL",
                    )
                    .bind(status)
                    .bind(version)
                    .bind(docker_version)
                    .bind(name)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    Ok(())
                })
            })
            .await
    }

    /// Records a connecting agent as `connected` only if it is still unrevoked and its
    /// current (or, during a renewal, previous) certificate is still `fingerprint`: the check
    /// and the presence are one statement, so a revocation or re-enrollment either comes
    /// before it (refused: `false`) or after it (and finds the stream to end).
    pub async fn admit_agent(
        &self,
        name: &str,
        fingerprint: &str,
        version: &str,
        docker_version: &str,
    ) -> Result<bool> {
        let (name, fingerprint, version, docker_version) = (
            name.to_string(),
            fingerprint.to_string(),
            version.to_string(),
            docker_version.to_string(),
        );
        self.writer
            .write_statement(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE agents SET status = 'connected', last_seen_at = datetime('now'), version = ?, docker_version = ? \
                         WHERE name = ? AND revoked_at IS NULL AND (cert_fingerprint = ?4 OR prev_cert_fingerprint = ?4)",
                    )
                    .bind(version)
                    .bind(docker_version)
                    .bind(name)
                    .bind(fingerprint)
                    .execute(conn)
                    .await
                    .map_err(internal)?;
                    Ok(done.rows_affected() > 0)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite plans for a statement, one detail per line.
    async fn plan(store: &Store, sql: &str) -> Vec<String> {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind("sha256:00")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        rows.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// Each agent's connect looks it up by certificate: a scan of `agents` there made a
    /// reconnect storm quadratic in the fleet's size.
    #[tokio::test]
    async fn an_agent_is_found_by_its_certificate_without_a_scan() {
        let store = Store::open_in_memory().await.unwrap();
        let plan = plan(&store, BY_FINGERPRINT).await;
        assert!(plan.iter().all(|d| !d.starts_with("SCAN")), "{plan:?}");
        assert!(
            plan.iter()
                .any(|d| d.contains("idx_agents_cert_fingerprint")),
            "{plan:?}"
        );
    }
}
