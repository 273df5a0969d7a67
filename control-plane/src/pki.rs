//! The berth CA: ECDSA P-256, created on first start under `<data-dir>/pki`, reused on
//! every start after. It signs the control plane's server certificate (and, with the agents
//! issue, agents' client certificates).
//!
//! Architecture invariant: private keys are written 0600 and never leave this module's files;
//! an existing key file is never replaced by a new CA (half a CA refuses to start).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

const CA_COMMON_NAME: &str = "berth CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const SERVER_VALIDITY_DAYS: i64 = 365;

/// Paths of the PKI files in a data directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl PkiPaths {
    pub fn in_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("pki");
        PkiPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// The loaded CA and the PEMs the servers need.
pub struct Pki {
    pub paths: PkiPaths,
    pub ca_cert_pem: String,
    /// `sha256:<hex>` of the CA certificate's DER: what agents pin.
    pub ca_fingerprint: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    ca_signer: Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// The CA's parameters. Deterministic, so the signer rebuilt from the stored key at each start
/// has the same subject and key identifier as the stored certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "berth");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Pki {
    /// Loads the PKI from `data_dir`, creating what is missing. The server certificate is
    /// reissued when `server_names` are not all covered or it expires within 30 days.
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Self> {
        let paths = PkiPaths::in_dir(data_dir);
        std::fs::create_dir_all(paths.ca_cert.parent().expect("pki dir has a parent"))
            .map_err(io("create pki dir"))?;

        let (ca_key, ca_cert_pem) = match (paths.ca_key.exists(), paths.ca_cert.exists()) {
            (true, true) => {
                let key =
                    KeyPair::from_pem(&read(&paths.ca_key)?).map_err(pki_err("read ca key"))?;
                (key, read(&paths.ca_cert)?)
            }
            // Half a CA is damage, not a first start: a new CA would replace the key every
            // agent certificate chains to, and the whole fleet would have to re-enroll.
            (true, false) | (false, true) => {
                let (present, missing) = if paths.ca_key.exists() {
                    (&paths.ca_key, &paths.ca_cert)
                } else {
                    (&paths.ca_cert, &paths.ca_key)
                };
                return Err(Error::FailedPrecondition(format!(
                    "{} exists but {} is missing: restore it from a backup (or remove both to \
                     create a new CA, after which every agent must enroll again)",
                    present.display(),
                    missing.display()
                )));
            }
            (false, false) => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(pki_err("generate ca key"))?;
                let mut params = ca_params();
                let now = OffsetDateTime::now_utc();
                params.not_before = now - Duration::hours(1);
                params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
                let cert = params.self_signed(&key).map_err(pki_err("create ca"))?;
                write_new_private(&paths.ca_key, &key.serialize_pem())?;
                write_public(&paths.ca_cert, &cert.pem())?;
                (key, cert.pem())
            }
        };
        let ca_signer = ca_params()
            .self_signed(&ca_key)
            .map_err(pki_err("load ca"))?;
        let ca_fingerprint = fingerprint_pem(&ca_cert_pem)?;

        let names_file = paths.server_cert.with_extension("names");
        let wanted = server_names.join(",");
        let covered = std::fs::read_to_string(&names_file)
            .map(|n| n == wanted)
            .unwrap_or(false);
        let fresh = std::fs::metadata(&paths.server_cert)
            .and_then(|m| m.modified())
            .map(|t| {
                t.elapsed()
                    .map(|e| e.as_secs() < ((SERVER_VALIDITY_DAYS - 30) * 86400) as u64)
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if !(covered && fresh && paths.server_key.exists()) {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(pki_err("generate server key"))?;
            let mut params =
                CertificateParams::new(server_names.to_vec()).map_err(pki_err("server names"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, "berth control plane");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(SERVER_VALIDITY_DAYS);
            let cert = params
                .signed_by(&key, &ca_signer, &ca_key)
                .map_err(pki_err("sign server certificate"))?;
            write_private(&paths.server_key, &key.serialize_pem())?;
            write_public(&paths.server_cert, &cert.pem())?;
            write_public(&names_file, &wanted)?;
        }
        Ok(Pki {
            server_cert_pem: read(&paths.server_cert)?,
            server_key_pem: read(&paths.server_key)?,
            paths,
            ca_cert_pem,
            ca_fingerprint,
            ca_signer,
            ca_key,
        })
    }

    /// The signer, for issuing client certificates.
    pub fn ca(&self) -> (&Certificate, &KeyPair) {
        (&self.ca_signer, &self.ca_key)
    }
}

/// `sha256:<hex>` of the first certificate in a PEM document.
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    let der = pem_to_der(pem)?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(der))))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Error::FailedPrecondition("certificate pem is not valid base64".to_string()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::FailedPrecondition(format!("cannot read {}: {e}", path.display())))
}

/// Writes a private file with mode 0600 from its creation (no window where it is readable).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io("write private file"))?;
    file.write_all(contents.as_bytes())
        .map_err(io("write private file"))?;
    file.sync_all().map_err(io("sync private file"))
}

/// Writes a new private file (0600 from its creation), refusing when the path exists: a key
/// is never replaced by accident.
pub fn write_new_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::FailedPrecondition(format!(
                "{} already exists; refusing to replace a key",
                path.display()
            ))
        } else {
            Error::FailedPrecondition(format!("write private file {}: {e}", path.display()))
        }
    })?;
    file.write_all(contents.as_bytes())
        .map_err(io("write private file"))?;
    file.sync_all().map_err(io("sync private file"))
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(io("write certificate"))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::FailedPrecondition(format!("{what}: {e}"))
}

fn pki_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Internal(format!("pki: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = Pki::load_or_create(dir.path(), &names).unwrap();
        let second = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_fingerprint, second.ca_fingerprint);
        assert_eq!(first.server_cert_pem, second.server_cert_pem);
        assert!(
            first.ca_fingerprint.starts_with("sha256:") && first.ca_fingerprint.len() == 7 + 64
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [&first.paths.ca_key, &first.paths.server_key] {
                assert_eq!(
                    std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        // New names reissue the server certificate under the same CA.
        let third = Pki::load_or_create(dir.path(), &["berth.example".to_string()]).unwrap();
        assert_eq!(first.ca_fingerprint, third.ca_fingerprint);
        assert_ne!(first.server_cert_pem, third.server_cert_pem);
    }

    /// A CA key without its certificate (or the reverse) is a damaged data directory: a new
    /// CA would lock out every enrolled agent, so the node refuses to start and touches
    /// neither file.
    #[test]
    fn half_a_ca_refuses_to_start_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let pki = Pki::load_or_create(dir.path(), &names).unwrap();
        let key = std::fs::read(&pki.paths.ca_key).unwrap();
        let cert = std::fs::read(&pki.paths.ca_cert).unwrap();

        std::fs::remove_file(&pki.paths.ca_cert).unwrap();
        let e = Pki::load_or_create(dir.path(), &names).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::FailedPrecondition);
        let message = e.to_string();
        assert!(
            message.contains("ca.key") && message.contains("ca.crt") && message.contains("missing"),
            "{message}"
        );
        assert_eq!(
            std::fs::read(&pki.paths.ca_key).unwrap(),
            key,
            "ca.key kept"
        );
        assert!(!pki.paths.ca_cert.exists());

        std::fs::write(&pki.paths.ca_cert, &cert).unwrap();
        std::fs::remove_file(&pki.paths.ca_key).unwrap();
        let e = Pki::load_or_create(dir.path(), &names).unwrap_err();
        assert!(e.to_string().contains("ca.key"), "{e}");
        assert_eq!(
            std::fs::read(&pki.paths.ca_cert).unwrap(),
            cert,
            "ca.crt kept"
        );
        assert!(!pki.paths.ca_key.exists());

        // Both back: the same CA as before.
        std::fs::write(&pki.paths.ca_key, &key).unwrap();
        let again = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(again.ca_fingerprint, pki.ca_fingerprint);
    }

    #[test]
    fn a_new_key_file_never_replaces_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        write_new_private(&path, "first").unwrap();
        let e = write_new_private(&path, "second").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
