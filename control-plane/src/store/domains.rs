//! `domains`: host names routed by the host proxy to an application. The private key
//! column holds ciphertext only; this module never sees a plaintext key.

use std::sync::Arc;

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::{AcmeState, AcmeStatus, Domain, NewDomain, TlsMode};

#[derive(sqlx::FromRow)]
pub(super) struct DomainRow {
    id: i64,
    application_id: i64,
    app_name: String,
    domain: String,
    container_port: i64,
    tls_mode: String,
    certificate_pem: Option<String>,
    private_key: Option<String>,
    not_after: Option<String>,
    acme_status: Option<String>,
    acme_error: Option<String>,
    acme_attempts: i64,
    acme_next_attempt_at: Option<String>,
    created_at: String,
    updated_at: String,
}

pub(super) const DOMAIN_SELECT: &str = "SELECT d.id, d.application_id, a.name AS app_name, d.domain, \
     d.container_port, d.tls_mode, d.certificate_pem, d.private_key, d.not_after, d.acme_status, \
     d.acme_error, d.acme_attempts, d.acme_next_attempt_at, d.created_at, d.updated_at FROM domains d JOIN applications a ON a.id = d.application_id";

impl Store {
    pub async fn insert_domain(&self, domain: &NewDomain) -> Result<Domain> {
        let changed = self.auth.change_guard();
        // An ACME domain starts pending, its first order due at once.
        let acme = domain.tls_mode == TlsMode::Acme;
        sqlx::query(
            "INSERT INTO domains (application_id, domain, container_port, tls_mode, certificate_pem, \
             private_key, not_after, acme_status, acme_next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, \
             CASE WHEN ? THEN 'pending' END, CASE WHEN ? THEN datetime('now') END)",
        )
        .bind(domain.application_id)
        .bind(&domain.host)
        .bind(i64::from(domain.container_port))
        .bind(domain.tls_mode.as_str())
        .bind(&domain.certificate_pem)
        .bind(&domain.private_key)
        .bind(&domain.not_after)
        .bind(acme)
        .bind(acme)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict(e, || {
                format!(
                    "domain {} is already routed to an application: see `berth domain list`",
                    domain.host
                )
            })
        })?;
        drop(changed);
        self.domain(&domain.host)
            .await?
            .ok_or_else(|| Error::Internal(format!("domain {} vanished", domain.host)))
    }

    /// The domain with this host name, if any.
    pub async fn domain(&self, host: &str) -> Result<Option<Domain>> {
        let row: Option<DomainRow> = sqlx::query_as(&format!("{DOMAIN_SELECT} WHERE d.domain = ?"))
            .bind(host)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?;
        row.map(decode).transpose()
    }

    /// Every domain, or those of one application, by host name.
    pub async fn list_domains(&self, application_id: Option<i64>) -> Result<Vec<Domain>> {
        let rows: Vec<DomainRow> = sqlx::query_as(&format!(
            "{DOMAIN_SELECT} WHERE ? IS NULL OR d.application_id = ? ORDER BY d.domain"
        ))
        .bind(application_id)
        .bind(application_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        rows.into_iter().map(decode).collect()
    }

    /// The applications that have at least one domain, by id: what an agent's connect reads
    /// to know which routes to send it. From memory while no domain or application has been
    /// added or removed since it was read.
    pub async fn applications_with_domains(&self) -> Result<Arc<[i64]>> {
        self.auth
            .remembered(&self.auth.apps_with_domains, &(), || async {
                let ids: Vec<i64> =
                    sqlx::query_scalar("SELECT DISTINCT application_id FROM domains ORDER BY 1")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(internal)?;
                Ok(ids.into())
            })
            .await
    }

    /// Removes a domain; false when there was none.
    pub async fn delete_domain(&self, host: &str) -> Result<bool> {
        let _changed = self.auth.change_guard();
        let done = sqlx::query("DELETE FROM domains WHERE domain = ?")
            .bind(host)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }
}

pub(super) fn decode(row: DomainRow) -> Result<Domain> {
    let tls_mode = TlsMode::parse(&row.tls_mode).ok_or_else(|| {
        Error::Internal(format!(
            "domain {} has an unknown tls mode {:?}",
            row.domain, row.tls_mode
        ))
    })?;
    let container_port = u16::try_from(row.container_port).map_err(|_| {
        Error::Internal(format!(
            "domain {} has an invalid container port {}",
            row.domain, row.container_port
        ))
    })?;
    let acme = match (tls_mode, row.acme_status.as_deref()) {
        (TlsMode::Acme, Some(status)) => Some(AcmeState {
            status: AcmeStatus::parse(status).ok_or_else(|| {
                Error::Internal(format!(
                    "domain {} has an unknown acme status {status:?}",
                    row.domain
                ))
            })?,
            error: row.acme_error,
            attempts: u32::try_from(row.acme_attempts).unwrap_or(u32::MAX),
            next_attempt_at: row.acme_next_attempt_at,
        }),
        (TlsMode::Acme, None) => {
            return Err(Error::Internal(format!(
                "acme domain {} has no acme status",
                row.domain
            )))
        }
        _ => None,
    };
    Ok(Domain {
        id: row.id,
        application_id: row.application_id,
        app_name: row.app_name,
        host: row.domain,
        container_port,
        tls_mode,
        certificate_pem: row.certificate_pem,
        private_key: row.private_key,
        not_after: row.not_after,
        acme,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
