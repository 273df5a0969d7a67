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

/// Where an identity lives in the agent's data directory.
struct Files {
    /// Name, endpoint and the certificate's validity (`agent.json`).
    meta: PathBuf,
    /// The pinned berth CA (`ca.crt`).
    ca: PathBuf,
    /// The certificate followed by its private key, one file (0600): a renewal replaces
    /// both in one rename, so a crash never pairs a key with another key's certificate.
    credentials: PathBuf,
    /// Before the bundle, agents kept the two apart; still read, removed on the next save.
    legacy_cert: PathBuf,
    legacy_key: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        meta: dir.join("agent.json"),
        ca: dir.join("ca.crt"),
        credentials: dir.join("agent.pem"),
        legacy_cert: dir.join("agent.crt"),
        legacy_key: dir.join("agent.key"),
    }
}

impl Identity {
    pub fn exists(dir: &Path) -> bool {
        files(dir).meta.exists()
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let files = files(dir);
        let meta: Meta = serde_json::from_str(&std::fs::read_to_string(&files.meta)?)?;
        let (cert_pem, key_pem) = if files.credentials.exists() {
            split_bundle(&std::fs::read_to_string(&files.credentials)?)?
        } else {
            (
                std::fs::read_to_string(&files.legacy_cert)?,
                std::fs::read_to_string(&files.legacy_key)?,
            )
        };
        Ok(Identity {
            name: meta.name,
            endpoint: meta.endpoint,
            ca_pem: std::fs::read_to_string(&files.ca)?,
            cert_pem,
            key_pem: SecretString::from(key_pem),
            issued_at_unix: meta.issued_at_unix,
            not_after_unix: meta.not_after_unix,
        })
    }

    /// Writes the identity: the certificate and its key as one unit first (see
    /// [`Files::credentials`]), then the CA and the metadata. A crash between them leaves
    /// the old validity times, which only makes the agent renew again sooner.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let files = files(dir);
        let mut bundle = self.cert_pem.trim_end().to_string();
        bundle.push('\n');
        bundle.push_str(self.key_pem.expose_secret());
        let bundle = SecretString::from(bundle);
        write_atomic(&files.credentials, bundle.expose_secret())?;
        write_atomic(&files.ca, &self.ca_pem)?;
        let m = Meta {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            issued_at_unix: self.issued_at_unix,
            not_after_unix: self.not_after_unix,
        };
        write_atomic(&files.meta, &serde_json::to_string_pretty(&m)?)?;
        for legacy in [&files.legacy_cert, &files.legacy_key] {
            match std::fs::remove_file(legacy) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Renewal is due once two thirds of the certificate's lifetime have passed.
    pub fn renewal_due_at_unix(&self) -> i64 {
        let lifetime = (self.not_after_unix - self.issued_at_unix).max(0);
        self.issued_at_unix + lifetime * 2 / 3
    }
}

/// Replaces `path` with `contents` so that a crash leaves either the old file or the new
/// one: a temporary file of a unique name in the same directory, created 0600 (so a key is
/// never readable by others, not even for a moment), synced, renamed over `path`, and the
/// directory synced so the rename itself survives a power loss.
pub(crate) fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".berth-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(contents.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes the temporary files a crash in [`write_atomic`] left in `dir` (never the files
/// they were meant to replace).
pub(crate) fn remove_stale_temporaries(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".berth-") && name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The certificate and the private key of a bundle written by [`Identity::save`].
fn split_bundle(bundle: &str) -> anyhow::Result<(String, String)> {
    let at = bundle
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| bundle.find("-----BEGIN EC PRIVATE KEY-----"))
        .ok_or_else(|| anyhow::anyhow!("agent.pem holds no private key"))?;
    let (cert, key) = bundle.split_at(at);
    if !cert.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("agent.pem holds no certificate");
    }
    Ok((cert.to_string(), key.to_string()))
}

/// A new P-256 key and a CSR for it. The CSR's subject is ignored by the control plane,
/// which names the certificate after the enrollment token.
pub fn new_key_and_csr() -> anyhow::Result<(SecretString, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((SecretString::from(key.serialize_pem()), csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cert: &str, key: &str, issued_at_unix: i64) -> Identity {
        Identity {
            name: "a1".into(),
            endpoint: "127.0.0.1:7444".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".into(),
            cert_pem: format!("-----BEGIN CERTIFICATE-----\n{cert}\n-----END CERTIFICATE-----\n"),
            key_pem: SecretString::from(format!(
                "-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"
            )),
            issued_at_unix,
            not_after_unix: issued_at_unix + 300,
        }
    }

    fn pair(identity: &Identity) -> (String, String) {
        (
            identity.cert_pem.clone(),
            identity.key_pem.expose_secret().to_string(),
        )
    }

    #[test]
    fn the_certificate_and_its_key_are_one_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let saved = identity("cert-1", "key-1", 1000);
        saved.save(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("agent.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(pair(&loaded), pair(&saved));
        assert_eq!(loaded.not_after_unix, 1300);
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_renewal_cut_short_after_the_key_and_certificate_still_loads_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        identity("cert-1", "key-1", 1000).save(dir.path()).unwrap();
        // The renewal's save died after the bundle and before the metadata: the new pair
        // loads together, with the old validity times (renewal is simply due again).
        let renewed = identity("cert-2", "key-2", 2000);
        let mut bundle = renewed.cert_pem.clone();
        bundle.push_str(renewed.key_pem.expose_secret());
        write_atomic(&dir.path().join("agent.pem"), &bundle).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(pair(&loaded), pair(&renewed));
        assert_eq!(loaded.issued_at_unix, 1000);
        // A temporary file a crash left mid-write is ignored, then cleaned up.
        let stale = dir.path().join(".berth-crash.tmp");
        std::fs::write(&stale, "-----BEGIN PRIVATE KEY-----\npartial").unwrap();
        assert_eq!(pair(&Identity::load(dir.path()).unwrap()), pair(&renewed));
        remove_stale_temporaries(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(dir.path().join("agent.pem").exists());
    }

    #[test]
    fn an_identity_saved_as_two_files_by_an_older_agent_still_loads_and_is_rewritten_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = identity("cert-1", "key-1", 1000);
        let meta = Meta {
            name: old.name.clone(),
            endpoint: old.endpoint.clone(),
            issued_at_unix: old.issued_at_unix,
            not_after_unix: old.not_after_unix,
        };
        std::fs::write(
            dir.path().join("agent.json"),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.crt"), &old.ca_pem).unwrap();
        std::fs::write(dir.path().join("agent.crt"), &old.cert_pem).unwrap();
        std::fs::write(dir.path().join("agent.key"), old.key_pem.expose_secret()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(pair(&loaded), pair(&old));
        loaded.save(dir.path()).unwrap();
        assert!(!dir.path().join("agent.key").exists());
        assert!(!dir.path().join("agent.crt").exists());
        assert_eq!(pair(&Identity::load(dir.path()).unwrap()), pair(&old));
    }
}
