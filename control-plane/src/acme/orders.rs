//! The background task of ACME orders: when the next one is planned (at most [`TICK`] apart),
//! and at once when a domain with ACME is added, it runs the orders that are due (a first issuance, a retry, a renewal), one at a
//! time, each within [`ORDER_TIMEOUT`]. A success is stored by the service and the app's
//! routes are pushed, so its proxies serve the new certificate; a failure is recorded with
//! the next retry. At stop, an order in flight is dropped: nothing of it was stored, and its
//! challenge expires by itself.
//!
//! Architecture invariant: the outcome of an order is written only through the service
//! (`record_acme_certificate` / `record_acme_failure`), so a failure never touches the
//! certificate that serves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;

use super::{client, CertificateAuthority, ChallengeResponder};
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::model::Domain;

/// How often due orders are looked for (renewals and retries are planned in minutes).
const TICK: Duration = Duration::from_secs(30);
/// An order that takes longer is abandoned and recorded as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs due orders until `stop` resolves.
pub async fn run(fleet: Fleet, ca: Arc<dyn CertificateAuthority>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            done = run_due(&fleet, ca.as_ref()) => match done {
                Ok(_) => last_error = None,
                Err(e) => {
                    // Logged once per distinct failure, not on every tick.
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::error!(error = %text, "cannot run the due acme orders");
                    }
                    last_error = Some(text);
                }
            },
        }
        let pause = until_next_due(&fleet).await;
        tokio::select! {
            _ = &mut stop => return,
            _ = fleet.acme_woken() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long to sleep: until the next planned order, at most [`TICK`] (a second at least, so
/// a clock step never spins the loop).
async fn until_next_due(fleet: &Fleet) -> Duration {
    match fleet.service().acme_next_due().await {
        Ok(Some(at)) => {
            let left = at - OffsetDateTime::now_utc();
            Duration::try_from(left)
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_secs(1), TICK)
        }
        Ok(None) | Err(_) => TICK,
    }
}

/// Runs every order due now, one after the other; returns how many ran.
pub async fn run_due(fleet: &Fleet, ca: &dyn CertificateAuthority) -> Result<usize> {
    let due = fleet
        .service()
        .acme_due_domains(OffsetDateTime::now_utc())
        .await?;
    let count = due.len();
    for domain in due {
        order(fleet, ca, domain).await?;
    }
    Ok(count)
}

/// One order for `domain`, and its outcome recorded.
async fn order(fleet: &Fleet, ca: &dyn CertificateAuthority, domain: Domain) -> Result<()> {
    let responder = AgentsResponder {
        fleet: fleet.clone(),
        application_id: domain.application_id,
    };
    let renewal = domain.certificate_pem.is_some();
    tracing::info!(host = %domain.host, app = %domain.app_name, renewal, "acme order started");
    let issued = tokio::time::timeout(ORDER_TIMEOUT, ca.issue(&domain.host, &responder))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "the ACME order for {} did not finish within {} s: check that the ACME directory is reachable",
                domain.host,
                ORDER_TIMEOUT.as_secs()
            )))
        });
    let service = fleet.service();
    let stored = match issued {
        Ok(issued) => {
            service
                .record_acme_certificate(
                    &domain,
                    &issued.chain_pem,
                    &issued.key_pem,
                    OffsetDateTime::now_utc(),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match stored {
        Ok(true) => {
            tracing::info!(host = %domain.host, app = %domain.app_name, "acme certificate issued");
            fleet.push_routes(domain.application_id).await?;
        }
        Ok(false) => {
            tracing::info!(host = %domain.host, "domain removed during its acme order");
        }
        Err(e) => {
            let state = service
                .record_acme_failure(&domain, &e.to_string(), OffsetDateTime::now_utc())
                .await?;
            tracing::warn!(
                host = %domain.host,
                app = %domain.app_name,
                error = %e,
                attempt = state.attempts,
                next = state.next_attempt_at.as_deref().unwrap_or("none (gave up)"),
                "acme order failed"
            );
        }
    }
    Ok(())
}

/// Publishes challenges on the host proxies of the app's connected agents.
struct AgentsResponder {
    fleet: Fleet,
    application_id: i64,
}

#[async_trait::async_trait]
impl ChallengeResponder for AgentsResponder {
    async fn publish(&self, token: &str, key_authorization: &SecretString) -> Result<()> {
        self.fleet
            .publish_challenge(
                self.application_id,
                token,
                key_authorization,
                client::challenge_ttl(),
            )
            .await
            .map(|_| ())
    }

    async fn withdraw(&self, token: &str) {
        if let Err(e) = self
            .fleet
            .withdraw_challenge(self.application_id, token)
            .await
        {
            tracing::warn!(error = %e, "cannot withdraw an acme challenge; it expires by itself");
        }
    }
}
