//! Checks a TLS certificate and key given for a domain before anything is stored: the PEM
//! chain and key parse, the key is the leaf certificate's, the leaf covers the host (a SAN
//! DNS name, or a `*.` wildcard one level up), and it is valid now.
//!
//! Architecture invariant: no error built here quotes the key or any part of it; the key is
//! parsed from a `SecretString` into buffers that are zeroed when dropped.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use secrecy::{ExposeSecret as _, SecretString};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};

/// Largest PEM chain accepted (a leaf and a few intermediates).
const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Largest PEM key accepted (an RSA 8192 key is ~6.5 KiB).
const MAX_KEY_BYTES: usize = 16 * 1024;

/// What is stored of a checked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCertificate {
    /// Expiry of the leaf, `YYYY-MM-DD HH:MM:SS` UTC (the store's timestamp format).
    pub not_after: String,
    /// The leaf's validity period (ACME renewal is planned from its length).
    pub valid_from: OffsetDateTime,
    pub valid_until: OffsetDateTime,
}

/// Checks that `chain_pem` (leaf first) and `key_pem` belong together and serve `host` at
/// `now`.
pub fn check(
    host: &str,
    chain_pem: &str,
    key_pem: &SecretString,
    now: OffsetDateTime,
) -> Result<CheckedCertificate> {
    if chain_pem.len() > MAX_CHAIN_BYTES {
        return Err(Error::invalid(format!(
            "the certificate file is {} bytes, the limit is {MAX_CHAIN_BYTES}",
            chain_pem.len()
        )));
    }
    if key_pem.expose_secret().len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "the key file is larger than {MAX_KEY_BYTES} bytes"
        )));
    }
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::invalid(format!(
                "the certificate file is not valid PEM ({e}): give the PEM chain, leaf first"
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::invalid(
            "the certificate file holds no CERTIFICATE block: give the PEM chain, leaf first",
        ));
    }
    // The parser's error could quote what it read: only its absence is reported.
    let key: PrivateKeyDer<'static> =
        match rustls_pemfile::private_key(&mut key_pem.expose_secret().as_bytes()) {
            Ok(Some(key)) => key,
            Ok(None) | Err(_) => {
                return Err(Error::invalid(
                    "the key file holds no readable private key: give a PEM key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                ))
            }
        };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        Error::invalid(
            "the private key is of an unsupported type: use an ECDSA (P-256, P-384), Ed25519 or RSA key",
        )
    })?;
    drop(key);
    CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::invalid(
                "the private key does not match the certificate: the first certificate of the file must be the leaf issued for this key",
            ),
            other => Error::invalid(format!("cannot read the leaf certificate: {other}")),
        })?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| Error::invalid(format!("cannot read the leaf certificate: {e}")))?;
    let names = dns_names(&leaf)?;
    if !names.iter().any(|name| covers(name, host)) {
        let listed = if names.is_empty() {
            "no DNS name".to_string()
        } else {
            names.join(", ")
        };
        return Err(Error::invalid(format!(
            "the certificate does not cover {host}: its subject alternative names are {listed}"
        )));
    }
    let validity = leaf.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if not_after <= now {
        return Err(Error::invalid(format!(
            "the certificate expired on {}: give a current one",
            timestamp(not_after)
        )));
    }
    if not_before > now {
        return Err(Error::invalid(format!(
            "the certificate is not valid before {}: give one valid now",
            timestamp(not_before)
        )));
    }
    Ok(CheckedCertificate {
        not_after: timestamp(not_after),
        valid_from: not_before,
        valid_until: not_after,
    })
}

/// The leaf's SAN DNS names, lower-cased.
fn dns_names(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>> {
    let san = leaf.subject_alternative_name().map_err(|e| {
        Error::invalid(format!(
            "cannot read the certificate's subject alternative names: {e}"
        ))
    })?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether a SAN DNS name covers a host: equal, or `*.rest` for a host one label above
/// `rest` (a wildcard covers exactly one label, RFC 6125).
fn covers(name: &str, host: &str) -> bool {
    if name == host {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(rest), Some((label, host_rest))) => !label.is_empty() && rest == host_rest,
        _ => false,
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as SQLite's `datetime()` writes it.
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{CertificateParams, KeyPair};
    use time::Duration;

    use super::*;

    /// A self-signed certificate for `names`, valid from `from` to `until` (relative to now),
    /// and its key, both PEM.
    pub fn certificate(names: &[&str], from: Duration, until: Duration) -> (String, SecretString) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now + from;
        params.not_after = now + until;
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), SecretString::from(key.serialize_pem()))
    }

    pub fn valid_for(names: &[&str]) -> (String, SecretString) {
        certificate(names, Duration::days(-1), Duration::days(90))
    }

    fn refused(host: &str, chain: &str, key: &SecretString, says: &str) {
        let e = check(host, chain, key, OffsetDateTime::now_utc())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
        assert!(
            !e.contains(key.expose_secret().lines().nth(1).unwrap()),
            "{e}"
        );
    }

    #[test]
    fn a_matching_current_certificate_is_accepted_with_its_expiry() {
        let (chain, key) = valid_for(&["shop.example.com"]);
        let checked = check("shop.example.com", &chain, &key, OffsetDateTime::now_utc()).unwrap();
        let in_90_days = timestamp(OffsetDateTime::now_utc() + Duration::days(90));
        assert_eq!(checked.not_after[..10], in_90_days[..10]);
    }

    #[test]
    fn a_wildcard_covers_one_label() {
        let (chain, key) = valid_for(&["*.example.com"]);
        let now = OffsetDateTime::now_utc();
        check("shop.example.com", &chain, &key, now).unwrap();
        refused(
            "a.shop.example.com",
            &chain,
            &key,
            "does not cover a.shop.example.com",
        );
        refused("example.com", &chain, &key, "*.example.com");
    }

    #[test]
    fn mismatches_expiry_and_garbage_are_refused() {
        let (chain, _) = valid_for(&["shop.example.com"]);
        let (_, other_key) = valid_for(&["shop.example.com"]);
        refused(
            "shop.example.com",
            &chain,
            &other_key,
            "does not match the certificate",
        );
        let (chain, key) = valid_for(&["other.example.com"]);
        refused("shop.example.com", &chain, &key, "other.example.com");
        let (chain, key) = certificate(
            &["shop.example.com"],
            Duration::days(-90),
            Duration::days(-1),
        );
        refused("shop.example.com", &chain, &key, "expired on");
        let (chain, key) =
            certificate(&["shop.example.com"], Duration::days(2), Duration::days(90));
        refused("shop.example.com", &chain, &key, "not valid before");
        let (_, key) = valid_for(&["shop.example.com"]);
        refused("shop.example.com", "not pem", &key, "no CERTIFICATE block");
        let (chain, _) = valid_for(&["shop.example.com"]);
        let e = check(
            "shop.example.com",
            &chain,
            &SecretString::from(
                "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            ),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }
}
