//! One ACME order with instant-acme: the directory's account (loaded from its encrypted
//! credentials, or created once and stored), a new order for the host, its HTTP-01 challenge
//! published through a [`ChallengeResponder`] and reported ready, the order polled until
//! ready, finalized with a CSR for a fresh ECDSA P-256 key, and the chain downloaded. The
//! challenge is withdrawn however the order ends.
//!
//! Architecture invariant: the account credentials and the new key are plaintext only inside
//! `SecretString`/`Zeroizing`; errors carry the CA's problem documents and berth's advice,
//! never a key or a key authorization.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

use super::http::AcmeHttp;
use super::{AcmeConfig, CertificateAuthority, ChallengeResponder, IssuedCertificate};
use crate::error::{Error, Result};
use crate::service::Service;

/// How long the CA gets to validate a challenge, and then to issue the certificate.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));
/// A published challenge is answered this long at most (it is withdrawn at the end).
const CHALLENGE_TTL: Duration = Duration::from_secs(300);

/// The control plane's ACME client for one directory.
pub struct AcmeClient {
    config: AcmeConfig,
    http: AcmeHttp,
    service: Service,
    /// The account, once loaded or created (cheap to clone).
    account: tokio::sync::Mutex<Option<Account>>,
}

impl AcmeClient {
    pub fn new(config: AcmeConfig, service: Service) -> Result<Self> {
        let http = AcmeHttp::new(config.extra_root_pem.as_deref(), config.request_timeout)?;
        Ok(AcmeClient {
            config,
            http,
            service,
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// The directory's account: from its stored credentials, or created now and stored.
    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let directory = &self.config.directory_url;
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let account = match self.service.acme_account_credentials(directory).await? {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_str(json.expose_secret())
                    .map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "the stored ACME account of {directory} cannot be read: {e}"
                        ))
                    })?;
                builder()
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| unavailable(directory, "cannot reach the ACME directory", &e))?
            }
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| {
                        unavailable(
                            directory,
                            "the ACME server refused to create an account",
                            &e,
                        )
                    })?;
                let json = Zeroizing::new(serde_json::to_string(&credentials).map_err(|e| {
                    Error::Internal(format!("cannot serialize the ACME account: {e}"))
                })?);
                self.service
                    .save_acme_account(
                        directory,
                        self.config.email.as_deref(),
                        &SecretString::from(json.as_str()),
                    )
                    .await?;
                tracing::info!(directory = %directory, "acme account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Validates every pending authorization of `order` by HTTP-01; the published tokens are
    /// pushed to `published` as they are, for the caller to withdraw.
    async fn authorize(
        &self,
        host: &str,
        order: &mut Order,
        responder: &dyn ChallengeResponder,
        published: &mut Vec<String>,
    ) -> Result<()> {
        let directory = &self.config.directory_url;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization
                .map_err(|e| unavailable(directory, "cannot read the order's authorization", &e))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Error::Unavailable(format!(
                        "the ACME server holds the authorization of {host} as {other:?}: it is retried with a new order"
                    )))
                }
            }
            let mut challenge = authorization.challenge(ChallengeType::Http01).ok_or_else(|| {
                Error::Unavailable(format!(
                    "the ACME server offers no HTTP-01 challenge for {host}: berth validates by HTTP-01 only"
                ))
            })?;
            let key_authorization =
                SecretString::from(challenge.key_authorization().as_str().to_string());
            let token = challenge.token.clone();
            published.push(token.clone());
            responder.publish(&token, &key_authorization).await?;
            challenge
                .set_ready()
                .await
                .map_err(|e| unavailable(directory, "the ACME server refused the challenge", &e))?;
        }
        Ok(())
    }

    /// Why an order went invalid: the challenge errors the CA reported.
    async fn invalid_reason(order: &mut Order) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            for challenge in &authorization.challenges {
                if let Some(problem) = &challenge.error {
                    reasons.push(problem.to_string());
                }
            }
        }
        if reasons.is_empty() {
            "the order is invalid".to_string()
        } else {
            reasons.join("; ")
        }
    }
}

#[async_trait::async_trait]
impl CertificateAuthority for AcmeClient {
    async fn issue(
        &self,
        host: &str,
        responder: &dyn ChallengeResponder,
    ) -> Result<IssuedCertificate> {
        let directory = &self.config.directory_url;
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| unavailable(directory, "the ACME server refused the order", &e))?;
        let mut published = Vec::new();
        let authorized = self
            .authorize(host, &mut order, responder, &mut published)
            .await;
        let outcome = match authorized {
            Ok(()) => finish(host, directory, &mut order).await,
            Err(e) => Err(e),
        };
        for token in &published {
            responder.withdraw(token).await;
        }
        outcome
    }
}

/// Waits for the order to be ready, finalizes it with a CSR for a new key, and downloads the
/// chain.
async fn finish(host: &str, directory: &str, order: &mut Order) -> Result<IssuedCertificate> {
    // An order whose validation failed comes back invalid, or as an error carrying the CA's
    // problem document: both are the CA's verdict, with the same advice.
    let verdict = match order.poll_ready(&POLL).await {
        Ok(OrderStatus::Ready) => None,
        Ok(_) => Some(AcmeClient::invalid_reason(order).await),
        Err(instant_acme::Error::Api(problem)) => Some(problem.to_string()),
        Err(e) => {
            return Err(unavailable(
                directory,
                &format!("the ACME server did not validate {host}"),
                &e,
            ))
        }
    };
    if let Some(reason) = verdict {
        return Err(Error::Unavailable(format!(
            "the ACME server could not validate {host}: {reason}: check that {host} resolves to the app's hosts and that port 80 there reaches berth-proxy"
        )));
    }
    let (key_pem, csr_der) = key_and_csr(host)?;
    order.finalize_csr(&csr_der).await.map_err(|e| {
        unavailable(
            directory,
            "the ACME server refused to finalize the order",
            &e,
        )
    })?;
    let chain_pem = order.poll_certificate(&POLL).await.map_err(|e| {
        unavailable(
            directory,
            "the ACME server did not issue the certificate",
            &e,
        )
    })?;
    Ok(IssuedCertificate { chain_pem, key_pem })
}

/// A new ECDSA P-256 key (PEM) and a CSR (DER) for `host` signed by it.
fn key_and_csr(host: &str) -> Result<(SecretString, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Internal(format!("cannot generate a key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(|e| Error::Internal(format!("cannot build a CSR for {host}: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Error::Internal(format!("cannot sign the CSR for {host}: {e}")))?;
    let key_pem = SecretString::from(key.serialize_pem());
    Ok((key_pem, csr.der().to_vec()))
}

/// An ACME failure as an error that says what went wrong where (no secret: instant-acme's
/// errors are problem documents, HTTP and JSON failures).
fn unavailable(directory: &str, what: &str, e: &instant_acme::Error) -> Error {
    Error::Unavailable(format!("{what} ({directory}): {e}"))
}

/// The challenge stays answerable for the whole order, at most [`CHALLENGE_TTL`].
pub fn challenge_ttl() -> Duration {
    CHALLENGE_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csr_names_the_host_and_the_key_is_p256() {
        let (key_pem, csr_der) = key_and_csr("shop.example.com").unwrap();
        assert!(key_pem.expose_secret().contains("BEGIN PRIVATE KEY"));
        use x509_parser::prelude::FromDer as _;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .unwrap();
        csr.verify_signature().unwrap();
        let names: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, vec!["DNSName(shop.example.com)".to_string()]);
    }
}
