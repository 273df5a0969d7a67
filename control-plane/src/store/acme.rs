//! `acme_accounts` and the ACME columns of `domains`: ACME accounts per directory, the domains
//! whose next order is due, and an order's outcome. The credentials and key columns hold
//! ciphertext only; this module never sees a plaintext key.

use super::{conflict, internal, Store};
use crate::error::Result;
use crate::model::{AcmeStatus, Domain};

/// An ACME account as stored: `credentials` is ciphertext.
#[derive(sqlx::FromRow)]
pub struct AcmeAccountRow {
    pub directory_url: String,
    pub email: Option<String>,
    pub credentials: String,
}

impl std::fmt::Debug for AcmeAccountRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeAccountRow")
            .field("directory_url", &self.directory_url)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// What an order that succeeded writes, all in one row update.
pub struct AcmeIssued<'a> {
    pub host: &'a str,
    pub certificate_pem: &'a str,
    /// Ciphertext of the new key.
    pub private_key: &'a str,
    pub not_after: &'a str,
    /// When the renewal order starts.
    pub renew_at: &'a str,
}

impl Store {
    /// The account of an ACME directory, if one was created.
    pub async fn acme_account(&self, directory_url: &str) -> Result<Option<AcmeAccountRow>> {
        sqlx::query_as(
            "SELECT directory_url, email, credentials FROM acme_accounts WHERE directory_url = ?",
        )
        .bind(directory_url)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)
    }

    /// Stores a new account's encrypted credentials (one account per directory).
    pub async fn insert_acme_account(
        &self,
        directory_url: &str,
        email: Option<&str>,
        credentials: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory_url, email, credentials) VALUES (?, ?, ?)",
        )
        .bind(directory_url)
        .bind(email)
        .bind(credentials)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict(e, || {
                format!("an ACME account for {directory_url} exists already")
            })
        })?;
        Ok(())
    }

    /// ACME domains whose next order is due at `now` (`YYYY-MM-DD HH:MM:SS` UTC), oldest due
    /// first.
    pub async fn acme_due_domains(&self, now: &str) -> Result<Vec<Domain>> {
        let rows: Vec<super::domains::DomainRow> = sqlx::query_as(&format!(
            "{} WHERE d.tls_mode = 'acme' AND d.acme_next_attempt_at IS NOT NULL \
             AND d.acme_next_attempt_at <= ? ORDER BY d.acme_next_attempt_at, d.domain",
            super::domains::DOMAIN_SELECT
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        rows.into_iter().map(super::domains::decode).collect()
    }

    /// When the next ACME order is due (`YYYY-MM-DD HH:MM:SS` UTC), if any is planned.
    pub async fn acme_next_due(&self) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT MIN(acme_next_attempt_at) FROM domains WHERE tls_mode = 'acme' \
             AND acme_next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    /// Stores an issued certificate with its key, expiry and renewal time in one update;
    /// false when the domain is gone (removed while its order ran).
    pub async fn acme_issued(&self, issued: &AcmeIssued<'_>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE domains SET certificate_pem = ?, private_key = ?, not_after = ?, \
             acme_status = 'issued', acme_error = NULL, acme_attempts = 0, \
             acme_next_attempt_at = ?, updated_at = datetime('now') \
             WHERE domain = ? AND tls_mode = 'acme'",
        )
        .bind(issued.certificate_pem)
        .bind(issued.private_key)
        .bind(issued.not_after)
        .bind(issued.renew_at)
        .bind(issued.host)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a failed order: the status, the reason, the count and the next attempt. The
    /// certificate columns are not touched: a certificate issued before keeps serving.
    pub async fn acme_failed(
        &self,
        host: &str,
        status: AcmeStatus,
        error: &str,
        attempts: u32,
        next_attempt_at: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE domains SET acme_status = ?, acme_error = ?, acme_attempts = ?, \
             acme_next_attempt_at = ?, updated_at = datetime('now') \
             WHERE domain = ? AND tls_mode = 'acme'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(i64::from(attempts))
        .bind(next_attempt_at)
        .bind(host)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }
}
