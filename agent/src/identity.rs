//! The agent's identity on disk: its private key (0600, generated here, never sent), its
//! certificate, the pinned berth CA, and where to dial.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Meta {
    name: String,
    endpoint: String,
    issued_at_unix: i64,
    not_after_unix: i64,
}

pub struct Identity {
    pub name: String,
    /// host:port of the control plane's agent API.
    pub endpoint: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub issued_at_unix: i64,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        dir.join("agent.json"),
        dir.join("ca.crt"),
        dir.join("agent.crt"),
        dir.join("agent.key"),
    )
}

impl Identity {
    pub fn exists(dir: &Path) -> bool {
        paths(dir).0.exists()
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let (meta, ca, cert, key) = paths(dir);
        let meta: Meta = serde_json::from_str(&std::fs::read_to_string(&meta)?)?;
        Ok(Identity {
            name: meta.name,
            endpoint: meta.endpoint,
            ca_pem: std::fs::read_to_string(ca)?,
            cert_pem: std::fs::read_to_string(cert)?,
            key_pem: SecretString::from(std::fs::read_to_string(key)?),
            issued_at_unix: meta.issued_at_unix,
            not_after_unix: meta.not_after_unix,
        })
    }

    /// Writes every file, the key first and 0600, each by write-then-rename so a crash
    /// never leaves a key that does not match its certificate half-written.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let (meta, ca, cert, key) = paths(dir);
        write_atomic(&key, self.key_pem.expose_secret(), true)?;
        write_atomic(&cert, &self.cert_pem, false)?;
        write_atomic(&ca, &self.ca_pem, false)?;
        let m = Meta {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            issued_at_unix: self.issued_at_unix,
            not_after_unix: self.not_after_unix,
        };
        write_atomic(&meta, &serde_json::to_string_pretty(&m)?, false)
    }

    /// Renewal is due once two thirds of the certificate's lifetime have passed.
    pub fn renewal_due_at_unix(&self) -> i64 {
        let lifetime = (self.not_after_unix - self.issued_at_unix).max(0);
        self.issued_at_unix + lifetime * 2 / 3
    }
}

pub(crate) fn write_atomic(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A new P-256 key and a CSR for it. The CSR's subject is ignored by the control plane,
/// which names the certificate after the enrollment token.
pub fn new_key_and_csr() -> anyhow::Result<(SecretString, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((SecretString::from(key.serialize_pem()), csr.pem()?))
}
