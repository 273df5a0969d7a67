//! The credential of `gcp-secret-manager`: a Google service-account key file (the JSON that
//! `gcloud iam service-accounts keys create` writes), and the signed JWT it trades for an
//! access token (the OAuth 2.0 JWT bearer grant, RFC 7523; Google's "OAuth 2.0 for server
//! to server applications").
//!
//! Architecture invariant: nothing read from the key file but `client_email`, `token_uri` and
//! `private_key_id` ever reaches an error or Debug output; parse errors say which field is
//! wrong, never what it holds.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Google's token endpoint: where a key file that names no `token_uri` logs in (every key
/// Google issues names it), and the assertion's `aud` wherever it is posted: Google documents
/// that "when making an access token request this value is always" this URL, and its own
/// client library (google-auth) sends it whatever the key's `token_uri`.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long an assertion is valid; Google accepts at most one hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// A parsed service-account key, ready to sign.
pub struct ServiceAccount {
    /// The account's identity (`berth@my-project.iam.gserviceaccount.com`): the JWT's `iss`.
    pub client_email: String,
    /// The OAuth token endpoint: where the assertion is posted.
    pub token_uri: String,
    /// Which of the account's keys signs (the JWT header's `kid`).
    key_id: Option<String>,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a key file. Errors name the field at fault, never its content.
    pub fn parse(credential: &SecretString) -> Result<Self> {
        let json: serde_json::Value =
            serde_json::from_str(credential.expose_secret()).map_err(|e| {
                Error::invalid(format!(
                    "the credential must be a service-account key file (JSON): \
                     syntax error at line {}, column {}",
                    e.line(),
                    e.column()
                ))
            })?;
        let field = |name: &str| -> Result<Option<&str>> {
            match &json[name] {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::String(s) => Ok(Some(s.as_str())),
                _ => Err(Error::invalid(format!(
                    "service-account key: {name} is not a string"
                ))),
            }
        };
        if !json.is_object() {
            return Err(Error::invalid(
                "the credential must be a service-account key file (a JSON object)",
            ));
        }
        match field("type")? {
            None | Some("service_account") => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "the credential is a {other:?} credential, not a service-account key \
                     (\"type\": \"service_account\"): create a key for a service account"
                )))
            }
        }
        let client_email = field("client_email")?
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::invalid("service-account key: client_email is missing"))?
            .to_string();
        let token_uri = field("token_uri")?
            .filter(|u| !u.is_empty())
            .unwrap_or(GOOGLE_TOKEN_URI)
            .to_string();
        let key_id = field("private_key_id")?
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        let pem = field("private_key")?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::invalid("service-account key: private_key is missing"))?;
        let key = rsa_key(pem)?;
        Ok(ServiceAccount {
            client_email,
            token_uri,
            key_id,
            key,
        })
    }

    /// The signed JWT (RS256) asking for `scope`, issued at `now` (seconds since the epoch).
    /// It is a bearer credential for an hour: it travels as a `SecretString`.
    pub fn assertion(&self, scope: &str, now: u64) -> Result<SecretString> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": GOOGLE_TOKEN_URI,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| Error::Internal("signing the service-account assertion failed".into()))?;
        Ok(SecretString::from(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// The RSA key of a PEM block: PKCS#8 (`BEGIN PRIVATE KEY`, what Google issues) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`).
fn rsa_key(pem: &str) -> Result<RsaKeyPair> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let item = rustls_pemfile::read_one(&mut reader)
        .map_err(|_| Error::invalid("service-account key: private_key is not a PEM block"))?;
    let rejected = |e: ring::error::KeyRejected| {
        Error::invalid(format!(
            "service-account key: private_key is not a usable RSA key ({e})"
        ))
    };
    match item {
        Some(rustls_pemfile::Item::Pkcs8Key(der)) => {
            let der = Zeroizing::new(der.secret_pkcs8_der().to_vec());
            RsaKeyPair::from_pkcs8(&der).map_err(rejected)
        }
        Some(rustls_pemfile::Item::Pkcs1Key(der)) => {
            let der = Zeroizing::new(der.secret_pkcs1_der().to_vec());
            RsaKeyPair::from_der(&der).map_err(rejected)
        }
        _ => Err(Error::invalid(
            "service-account key: private_key must be an RSA key in PEM \
             (BEGIN PRIVATE KEY), as in the key files Google issues",
        )),
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    use super::*;

    /// A throwaway RSA key made for these tests only (`openssl genpkey -algorithm RSA`).
    const TEST_KEY_PEM: &str = include_str!("test_only_key.pem");

    fn key_file(pem: &str) -> SecretString {
        SecretString::from(
            serde_json::json!({
                "type": "service_account",
                "project_id": "berth-test",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "berth@berth-test.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.example/token",
            })
            .to_string(),
        )
    }

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let raw = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn an_assertion_is_an_rs256_jwt_signed_by_the_key_with_the_grant_claims() {
        let account = ServiceAccount::parse(&key_file(TEST_KEY_PEM)).unwrap();
        let jwt = account
            .assertion("https://scope.example", 1_700_000_000)
            .unwrap();
        let jwt = jwt.expose_secret();
        assert_eq!(
            part(jwt, 0),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
        );
        assert_eq!(
            part(jwt, 1),
            serde_json::json!({
                "iss": "berth@berth-test.iam.gserviceaccount.com",
                "scope": "https://scope.example",
                "aud": GOOGLE_TOKEN_URI,
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let (signed, signature) = jwt.rsplit_once('.').unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, account.key.public());
        public
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .expect("the signature verifies with the key's public half");
        let mut tampered = signed.to_string();
        tampered.push('x');
        assert!(public
            .verify(
                tampered.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap()
            )
            .is_err());
    }

    #[test]
    fn a_bad_key_file_is_refused_without_echoing_it() {
        let cases = [
            (
                "not json at all: -----BEGIN PRIVATE KEY----- s3cr3t",
                "syntax error",
            ),
            (r#"["s3cr3t"]"#, "JSON object"),
            (
                r#"{"type": "authorized_user", "refresh_token": "s3cr3t"}"#,
                "not a service-account key",
            ),
            (r#"{"private_key": "s3cr3t"}"#, "client_email is missing"),
            (
                r#"{"client_email": "a@b", "private_key": "s3cr3t"}"#,
                "must be an RSA key in PEM",
            ),
            (
                r#"{"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nczNjcjN0\n-----END PRIVATE KEY-----\n"}"#,
                "not a usable RSA key",
            ),
            (
                r#"{"client_email": "a@b", "private_key": 123456789}"#,
                "private_key is not a string",
            ),
        ];
        for (credential, expected) in cases {
            let e = ServiceAccount::parse(&SecretString::from(credential.to_string()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{credential}: {e}");
            assert!(
                !e.contains("s3cr3t") && !e.contains("czNjcjN0") && !e.contains("123456789"),
                "no credential in errors: {e}"
            );
        }
        let account = ServiceAccount::parse(&key_file(TEST_KEY_PEM)).unwrap();
        let debug = format!("{account:?}");
        assert!(
            debug.contains("berth@") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }

    #[test]
    fn a_key_file_without_token_uri_logs_in_at_google() {
        let mut json: serde_json::Value =
            serde_json::from_str(key_file(TEST_KEY_PEM).expose_secret()).unwrap();
        json.as_object_mut().unwrap().remove("token_uri");
        let account = ServiceAccount::parse(&SecretString::from(json.to_string())).unwrap();
        assert_eq!(account.token_uri, GOOGLE_TOKEN_URI);
    }
}
