//! Agent enrollment and certificate renewal: the control plane signs a CSR
//! generated on the agent; the agent's private key never leaves its host.
//!
//! Architecture invariant: an enrollment attempt is unauthenticated until its token checks
//! out, so it passes the [`EnrollGate`] (a few at a time) and writes nothing — takes no write
//! lock — before a read has found its token valid (issue 9, attack path 7).

use std::collections::BTreeMap;

use rcgen::{
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SerialNumber,
};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::Fleet;
use crate::crypto::{generate_token, token_digest, token_matches};
use crate::error::{Error, Result};
use crate::service::{Actor, Permission};
use crate::validate;

pub const ENROLLMENT_TOKEN_PREFIX: &str = "bet_";
const DEFAULT_TOKEN_TTL_SECONDS: i64 = 3600;
const MAX_TOKEN_TTL_SECONDS: i64 = 7 * 86400;
/// Enrollment attempts served at once: until its token checks out a caller is anyone, so
/// all of them together hold at most this many of the store's connections.
const ENROLL_CONCURRENCY: usize = 2;
/// How long an attempt waits for its turn before it is refused (a flood of bogus attempts
/// delays enrollments, never the rest of the node).
const ENROLL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The bound on unauthenticated enrollment attempts: [`ENROLL_CONCURRENCY`] at once, the
/// others wait their turn (first come, first served) at most [`ENROLL_WAIT`], then are
/// refused with RESOURCE_EXHAUSTED.
pub(super) struct EnrollGate {
    turns: Semaphore,
    wait: std::time::Duration,
}

impl EnrollGate {
    pub(super) fn new() -> Self {
        EnrollGate {
            turns: Semaphore::new(ENROLL_CONCURRENCY),
            wait: ENROLL_WAIT,
        }
    }

    async fn enter(&self) -> Result<SemaphorePermit<'_>> {
        match tokio::time::timeout(self.wait, self.turns.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(_)) => Err(Error::Unavailable("enrollment is closed".into())),
            Err(_) => Err(Error::ResourceExhausted(format!(
                "too many enrollment attempts in progress (waited {} s for a turn); retry in a \
                 minute",
                self.wait.as_secs()
            ))),
        }
    }
}

/// A certificate issued to an agent.
pub struct IssuedCertificate {
    pub pem: String,
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
}

impl Fleet {
    /// `berth agent token create`: a one-time, expiring token for one agent name.
    pub async fn create_enrollment_token(
        &self,
        actor: &Actor,
        agent_name: &str,
        labels: &BTreeMap<String, String>,
        ttl_seconds: Option<u32>,
    ) -> Result<(SecretString, String)> {
        actor.require(Permission::Write)?;
        validate::name("agent", agent_name)?;
        for (k, v) in labels {
            validate::name("label key", k)?;
            validate::name("label value", v)?;
        }
        let ttl = ttl_seconds
            .map(i64::from)
            .unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) {
            return Err(Error::invalid(format!(
                "ttl must be between 1 and {MAX_TOKEN_TTL_SECONDS} seconds"
            )));
        }
        let token = generate_token(ENROLLMENT_TOKEN_PREFIX);
        let store = self.service().store();
        let expires_at = store
            .insert_enrollment_token(
                &token_digest(token.expose_secret()),
                agent_name,
                labels,
                ttl,
            )
            .await?;
        store
            .audit(
                &actor.name,
                "agent.token_create",
                agent_name,
                Some(&format!("expires {expires_at}")),
            )
            .await?;
        Ok((token, expires_at))
    }

    /// Checks the token (a read), signs the agent's CSR, then consumes the token (the first
    /// write). A refused token or CSR writes nothing and spends nothing.
    pub async fn enroll(
        &self,
        token: &SecretString,
        csr_pem: &str,
    ) -> Result<(String, BTreeMap<String, String>, IssuedCertificate)> {
        let _turn = self.inner.enroll_gate.enter().await?;
        let store = self.service().store();
        let digest = token_digest(token.expose_secret());
        let pending = store
            .enrollment_token(&digest)
            .await?
            .filter(|t| token_matches(token, &t.token_hash))
            .ok_or_else(crate::store::unknown_enrollment_token)?;
        if let Some(refused) = pending.refusal() {
            return Err(refused);
        }
        let issued = self.sign_csr(&pending.agent_name, csr_pem)?;
        // Two agents racing with one token: this update lets exactly one through.
        let enrollment = store.consume_enrollment_token(&digest).await?;
        if store
            .agent(&enrollment.agent_name)
            .await
            .map(|a| a.revoked_at.is_none())
            .unwrap_or(false)
        {
            // Re-enrolling a live name replaces its certificate (a rebuilt host).
            tracing::info!(agent = %enrollment.agent_name, "agent re-enrolled; previous certificate replaced");
        }
        store
            .upsert_agent(
                &enrollment.agent_name,
                &enrollment.labels,
                &issued.fingerprint,
                &issued.fingerprint[7..23],
                &issued.not_after.unix_timestamp().to_string(),
            )
            .await?;
        self.drop_stream(&enrollment.agent_name);
        store
            .audit(
                &format!("agent:{}", enrollment.agent_name),
                "agent.enroll",
                &enrollment.agent_name,
                None,
            )
            .await?;
        Ok((enrollment.agent_name, enrollment.labels, issued))
    }

    /// Issues a new certificate to an already authenticated agent.
    /// Signs a renewed certificate for an agent that authenticated with the certificate
    /// `presented`, which stays valid until the new one is first presented: an agent whose
    /// answer was lost, or that crashed before saving it, connects with the old one and
    /// renews again.
    pub async fn renew(
        &self,
        agent_name: &str,
        presented: &str,
        csr_pem: &str,
    ) -> Result<IssuedCertificate> {
        let issued = self.sign_csr(agent_name, csr_pem)?;
        let store = self.service().store();
        store
            .renew_agent_certificate(
                agent_name,
                presented,
                &issued.fingerprint,
                &issued.fingerprint[7..23],
                &issued.not_after.unix_timestamp().to_string(),
            )
            .await?;
        store
            .audit(
                &format!("agent:{agent_name}"),
                "agent.renew",
                agent_name,
                None,
            )
            .await?;
        Ok(issued)
    }

    fn sign_csr(&self, agent_name: &str, csr_pem: &str) -> Result<IssuedCertificate> {
        if csr_pem.len() > 16 * 1024 {
            return Err(Error::invalid("csr is too large"));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::invalid(format!("invalid certificate signing request: {e}")))?;
        // Only the public key comes from the agent; everything else is ours.
        let now = OffsetDateTime::now_utc();
        let not_after = now + self.cert_ttl();
        let params = &mut csr.params;
        params.subject_alt_names.clear();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, agent_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "berth agents");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - Duration::minutes(5);
        params.not_after = not_after;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let (ca_cert, ca_key) = self.pki().ca();
        let cert = csr
            .signed_by(ca_cert, ca_key)
            .map_err(|e| Error::Internal(format!("sign agent certificate: {e}")))?;
        Ok(IssuedCertificate {
            fingerprint: format!("sha256:{}", hex::encode(Sha256::digest(cert.der()))),
            pem: cert.pem(),
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[tokio::test(start_paused = true)]
    async fn enrollment_attempts_past_the_bound_wait_their_turn_then_are_refused() {
        let gate = EnrollGate::new();
        let held: Vec<_> = (0..ENROLL_CONCURRENCY)
            .map(|_| gate.turns.try_acquire().unwrap())
            .collect();
        let e = gate.enter().await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
        assert!(
            e.to_string().contains("too many enrollment attempts"),
            "{e}"
        );

        // A turn given back is taken by the next attempt in line.
        let (entered, ()) = tokio::join!(gate.enter(), async {
            tokio::time::sleep(ENROLL_WAIT / 2).await;
            drop(held);
        });
        assert!(entered.is_ok());
    }
}
