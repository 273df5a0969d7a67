//! Encryption at rest and token digests.
//!
//! Stored format: `v1:<key-id>:<nonce-b64>:<ciphertext+tag-b64>`, AES-256-GCM with a fresh
//! random 96-bit nonce per encryption. Every ciphertext is bound to the row it lives in by
//! its additional authenticated data ([`Aad`]): a value copied into another row, column or
//! table fails to decrypt.
//!
//! Architecture invariant: this module is the only one that sees key material; keys are
//! zeroized on drop and never printed (`Debug` is redacted).

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub mod archive;
pub mod columns;
pub mod ring;

pub use ring::{KeyRing, Sealer};

const FORMAT_VERSION: &str = "v1";
pub(crate) const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// The 32-byte master key and its short public id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
    /// The key itself, only to derive purpose keys from ([`MasterKey::derive`]).
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::invalid(format!(
                "master key must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let digest = Sha256::new_with_prefix(b"berth-key-id:")
            .chain_update(bytes)
            .finalize();
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        secret.copy_from_slice(bytes);
        Ok(MasterKey {
            id: hex::encode(&digest[..4]),
            cipher: Aes256Gcm::new_from_slice(bytes).expect("length checked above"),
            secret,
        })
    }

    /// Parses the textual form: 64 hex characters or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 2 * KEY_LEN {
            hex::decode(text).map_err(|_| Error::invalid("master key is not valid hex"))?
        } else {
            STANDARD.decode(text).map_err(|_| {
                Error::invalid("master key must be 64 hex characters or base64 of 32 bytes")
            })?
        });
        Self::from_bytes(&bytes)
    }

    pub fn generate() -> (Self, Zeroizing<String>) {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::thread_rng().fill_bytes(bytes.as_mut());
        let text = Zeroizing::new(hex::encode(bytes.as_ref()));
        (
            Self::from_bytes(bytes.as_ref()).expect("fixed length"),
            text,
        )
    }

    /// Reads a key file; refuses files readable by group or others.
    pub fn read_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::FailedPrecondition(format!(
                "cannot read master key file {}: {e}",
                path.display()
            ))
        })?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(Error::FailedPrecondition(format!(
                    "master key file {} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        Self::parse(&text)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A key for another purpose (`label`), derived with HMAC-SHA256 over `label || salt`:
    /// the backup archive's key, for one.
    pub(crate) fn derive(&self, label: &[u8], salt: &[u8]) -> Aes256Gcm {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_ref())
            .expect("hmac takes any key length");
        mac.update(label);
        mac.update(salt);
        let mut derived = Zeroizing::new([0u8; KEY_LEN]);
        derived.copy_from_slice(&mac.finalize().into_bytes());
        Aes256Gcm::new_from_slice(derived.as_ref()).expect("sha-256 output is 32 bytes")
    }

    /// Encrypts `plaintext` for the row named by `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &Aad) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad_bytes = aad.to_bytes();
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad_bytes,
                },
            )
            .expect("aes-gcm encryption of an in-memory buffer cannot fail");
        format!(
            "{FORMAT_VERSION}:{}:{}:{}",
            self.id,
            STANDARD.encode(nonce),
            STANDARD.encode(ciphertext)
        )
    }

    /// Decrypts a stored value. The error names the row (from `aad`), never the content.
    pub fn decrypt(&self, stored: &str, aad: &Aad) -> Result<Zeroizing<Vec<u8>>> {
        let fail = |why: &str| Error::FailedPrecondition(format!("cannot decrypt {aad}: {why}"));
        let mut parts = stored.splitn(4, ':');
        let (Some(version), Some(key_id), Some(nonce), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("not in the berth encrypted format"));
        };
        if version != FORMAT_VERSION {
            return Err(fail(&format!("unknown format version {version:?}")));
        }
        if key_id != self.id {
            return Err(fail(&format!(
                "encrypted with master key {key_id}, but the loaded key is {}",
                self.id
            )));
        }
        let nonce = STANDARD
            .decode(nonce)
            .map_err(|_| fail("bad nonce encoding"))?;
        if nonce.len() != NONCE_LEN {
            return Err(fail("bad nonce length"));
        }
        let ciphertext = STANDARD
            .decode(ciphertext)
            .map_err(|_| fail("bad ciphertext encoding"))?;
        let aad_bytes = aad.to_bytes();
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad_bytes,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| fail("authentication failed (wrong key, or value moved from another row)"))
    }

    /// Decrypts a stored value that must be UTF-8 text.
    pub fn decrypt_string(&self, stored: &str, aad: &Aad) -> Result<SecretString> {
        let bytes = self.decrypt(stored, aad)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::FailedPrecondition(format!("cannot decrypt {aad}: value is not utf-8"))
        })?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// Names the row a ciphertext belongs to: table, column, then the row's identifying values.
/// Encoded with length prefixes so that no two distinct rows share an encoding.
#[derive(Debug, Clone)]
pub struct Aad {
    table: &'static str,
    column: &'static str,
    row: Vec<String>,
}

impl Aad {
    /// Only through a [`columns::EncryptedColumn`], so every AAD names a registered column.
    fn new(table: &'static str, column: &'static str, row: &[&str]) -> Self {
        Aad {
            table,
            column,
            row: row.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"berth-aad-v1");
        for part in [self.table, self.column]
            .into_iter()
            .chain(self.row.iter().map(String::as_str))
        {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

impl fmt::Display for Aad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)?;
        if !self.row.is_empty() {
            write!(f, " [{}]", self.row.join("/"))?;
        }
        Ok(())
    }
}

/// A bearer token (`whk_…`, `bk_…`, `bet_…`): shown once, stored only as [`token_digest`].
pub fn generate_token(prefix: &str) -> SecretString {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    SecretString::from(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of a token: `sha256:<hex>`. Tokens carry 192 random bits, so a fast hash
/// is the right tool (no password stretching needed).
pub fn token_digest(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Compares a presented token against a stored digest in constant time.
pub fn token_matches(token: &SecretString, stored_digest: &str) -> bool {
    let presented = token_digest(token.expose_secret());
    presented.as_bytes().ct_eq(stored_digest.as_bytes()).into()
}

/// The masked display of a token: its first `n` characters and an ellipsis.
pub fn token_preview(token: &str, n: usize) -> String {
    let head: String = token.chars().take(n).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn round_trip_uses_the_versioned_format_with_a_96_bit_nonce() {
        let k = key();
        let stored = k.encrypt(b"postgres://u:p@h/db", &Aad::secret(1, "DATABASE_URL"));
        let parts: Vec<&str> = stored.split(':').collect();
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[1], k.id());
        assert_eq!(STANDARD.decode(parts[2]).unwrap().len(), 12);
        assert!(!stored.contains("postgres"));
        let plain = k.decrypt(&stored, &Aad::secret(1, "DATABASE_URL")).unwrap();
        assert_eq!(&plain[..], b"postgres://u:p@h/db");
    }

    #[test]
    fn nonces_are_fresh() {
        let k = key();
        let a = k.encrypt(b"same", &Aad::secret(1, "A"));
        let b = k.encrypt(b"same", &Aad::secret(1, "A"));
        assert_ne!(a, b);
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_fails() {
        let k = key();
        let stored = k.encrypt(b"value", &Aad::secret(1, "A"));
        assert!(k.decrypt(&stored, &Aad::secret(1, "B")).is_err());
        assert!(k.decrypt(&stored, &Aad::secret(2, "A")).is_err());
        assert!(k
            .decrypt(&stored, &Aad::new("repositories", "password", &["1", "A"]))
            .is_err());
        // Length prefixes keep ("1", "2/x") and ("1/2", "x") apart.
        let s = k.encrypt(b"v", &Aad::new("t", "c", &["1", "2x"]));
        assert!(k.decrypt(&s, &Aad::new("t", "c", &["12", "x"])).is_err());
    }

    #[test]
    fn a_wrong_key_fails_with_a_clear_error_and_no_content() {
        let stored = key().encrypt(b"hunter2", &Aad::secret(1, "A"));
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        let err = other
            .decrypt(&stored, &Aad::secret(1, "A"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("encrypted with master key"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let mut stored = k.encrypt(b"value", &Aad::secret(1, "A"));
        let last = stored.pop().unwrap();
        stored.push(if last == 'A' { 'B' } else { 'A' });
        assert!(k.decrypt(&stored, &Aad::secret(1, "A")).is_err());
    }

    #[test]
    fn key_parsing_accepts_hex_and_base64_and_rejects_short_keys() {
        let hex_key = "11".repeat(32);
        assert!(MasterKey::parse(&hex_key).is_ok());
        assert!(MasterKey::parse(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(MasterKey::parse("abcd").is_err());
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let k = MasterKey::from_bytes(&[0xAB; 32]).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.to_lowercase().contains("abab"), "{dbg}");
    }

    #[test]
    fn tokens_are_stored_as_digests_and_compared() {
        let t = generate_token("whk_");
        assert!(t.expose_secret().starts_with("whk_"));
        assert_eq!(t.expose_secret().len(), 4 + 32);
        let d = token_digest(t.expose_secret());
        assert!(!d.contains(t.expose_secret()));
        assert!(token_matches(&t, &d));
        assert!(!token_matches(
            &SecretString::from("whk_other".to_string()),
            &d
        ));
    }
}
