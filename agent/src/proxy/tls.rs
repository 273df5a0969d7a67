//! TLS for domains: certificates are parsed once when a route is set, and the HTTPS listener
//! picks one per handshake by SNI from the current snapshot.
//!
//! Architecture invariant: a handshake without SNI or for a host with no certificate is
//! refused (no default certificate is ever served); key material is only read here, from a
//! `SecretString`, and never put in an error message.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use secrecy::ExposeSecret as _;
use zeroize::Zeroizing;

use super::error::ProxyError;
use super::route::Route;
use super::table::RouteTable;

/// The certificates of `route`'s domains, by host, or the first one that is unusable.
pub fn route_certs(route: &Route) -> Result<HashMap<String, Arc<CertifiedKey>>, ProxyError> {
    let mut certs = HashMap::new();
    for domain in &route.domains {
        if let Some(tls) = &domain.tls {
            let key = certified_key(&domain.host, &tls.cert_pem, tls.key_pem.expose_secret())?;
            certs.insert(domain.host.clone(), key);
        }
    }
    Ok(certs)
}

fn certified_key(
    host: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, ProxyError> {
    let invalid = |why: String| ProxyError::InvalidArgument(format!("TLS of {host}: {why}"));
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("the certificate PEM cannot be read ({e})")))?;
    if chain.is_empty() {
        return Err(invalid(
            "the certificate holds no PEM CERTIFICATE block: give the chain, leaf first".into(),
        ));
    }
    // The DER copy of the key is wiped when dropped; errors say which part failed, never what
    // it held.
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| invalid("the key PEM cannot be read".into()))?
        .ok_or_else(|| {
            invalid("the key holds no PEM PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)".into())
        })?;
    let _wipe = Zeroizing::new(key.secret_der().to_vec());
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| invalid("the key type is not supported (use RSA, ECDSA or Ed25519)".into()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            invalid("the key does not match the certificate".into())
        }
        other => invalid(format!(
            "the certificate cannot be checked against its key ({other})"
        )),
    })?;
    Ok(Arc::new(certified))
}

/// Chooses the certificate by SNI from the current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<RouteTable>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name()?.to_ascii_lowercase();
        let cert = self.table.load().cert(&host);
        if cert.is_none() {
            tracing::debug!(sni = %host, "no certificate for the server name: handshake refused");
        }
        cert
    }
}

/// The HTTPS listener's TLS configuration (HTTP/1.1 only).
pub fn server_config(table: Arc<RouteTable>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { table }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
