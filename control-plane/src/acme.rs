//! ACME (RFC 8555) certificates for domains added with `--acme`: the control plane is
//! the ACME client. One background task ([`orders::run`]) starts every order that is due —
//! a new domain's first, a retry after a failure, a renewal — one at a time; an order
//! ([`client::AcmeClient`], instant-acme over berth's own HTTP client, `http.rs`) uses the
//! directory's account (created once, stored encrypted), validates the host by HTTP-01
//! through the host proxies of the app's agents ([`ChallengeResponder`], implemented by the
//! fleet), and finalizes with a CSR for a fresh ECDSA P-256 key made here. What an order
//! decides — store, retry, give up, renew when — is the service's
//! (`service/domains/acme.rs`).
//!
//! Architecture invariant: the account key and a domain's key exist in plaintext only in
//! memory, inside `SecretString`/`Zeroizing`, between the ACME client and the service, which
//! encrypts them; a certificate serving a domain is replaced only by a newer one that was
//! checked and stored, never removed by a failed order. This module speaks HTTP to the ACME
//! server only; agents are reached through the fleet.

pub mod client;
mod http;
pub mod orders;

use std::time::Duration;

use secrecy::SecretString;

use crate::error::Result;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where certificates come from.
#[derive(Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory_url: String,
    /// Contact of the account (`mailto:`), for the CA's expiry notices.
    pub email: Option<String>,
    /// A PEM root trusted for the directory besides the system's (a test CA such as Pebble).
    pub extra_root_pem: Option<String>,
    /// Each request to the ACME server gets this long.
    pub request_timeout: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: LETS_ENCRYPT_DIRECTORY.to_string(),
            email: None,
            extra_root_pem: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeConfig")
            .field("directory_url", &self.directory_url)
            .field("email", &self.email)
            .field("extra_root", &self.extra_root_pem.is_some())
            .finish()
    }
}

/// Makes the hosts that serve a domain answer an HTTP-01 token.
#[async_trait::async_trait]
pub trait ChallengeResponder: Send + Sync {
    /// Returns once every host that may be validated answers `token` with
    /// `key_authorization`; an error says which cannot and what to do.
    async fn publish(&self, token: &str, key_authorization: &SecretString) -> Result<()>;
    /// Stops answering `token` (best effort).
    async fn withdraw(&self, token: &str);
}

/// A certificate chain (PEM, leaf first) and the key it was issued for.
pub struct IssuedCertificate {
    pub chain_pem: String,
    pub key_pem: SecretString,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate").finish_non_exhaustive()
    }
}

/// Obtains a certificate for one host name.
#[async_trait::async_trait]
pub trait CertificateAuthority: Send + Sync {
    async fn issue(
        &self,
        host: &str,
        responder: &dyn ChallengeResponder,
    ) -> Result<IssuedCertificate>;
}
