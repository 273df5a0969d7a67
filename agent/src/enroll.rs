//! Enrollment, `kubeadm join` style: the agent trusts the control plane only through
//! the CA fingerprint given on its command line. The admin port presents its certificate
//! chain with the CA; the connection is accepted only if that CA hashes to the pinned
//! fingerprint and the server certificate verifies against it.

use std::sync::Arc;

use berth_proto::v1 as pb;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Endpoint, Uri};

use crate::identity::{new_key_and_csr, Identity};

/// Verifies the server against the one CA whose SHA-256 fingerprint was pinned.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the control plane's CA does not match the pinned fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Enrolls with the control plane at `control_plane` (its admin URL, `https://host:port`).
pub async fn enroll(
    control_plane: &str,
    token: &SecretString,
    ca_fingerprint: &str,
    version: &str,
) -> anyhow::Result<Identity> {
    let ca_fingerprint = ca_fingerprint.trim().to_ascii_lowercase();
    if !ca_fingerprint.starts_with("sha256:") || ca_fingerprint.len() != 7 + 64 {
        anyhow::bail!("--ca-fingerprint must be sha256:<64 hex characters>, as `berth agent token create` prints it");
    }
    let uri: Uri = control_plane
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid control plane url {control_plane:?}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("control plane url has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(443);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: ca_fingerprint.clone(),
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(host.clone())?;
    let channel = Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = format!("{host}:{port}");
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the control plane at {control_plane}: {}",
                error_chain(&e)
            )
        })?;

    let (key_pem, csr_pem) = new_key_and_csr()?;
    let mut client = pb::agent_enrollment_client::AgentEnrollmentClient::new(channel);
    let response = client
        .enroll(pb::EnrollRequest {
            token: token.expose_secret().to_string(),
            csr_pem,
            agent_version: version.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("enrollment refused: {}", s.message()))?
        .into_inner();
    // The CA we will trust from now on must be the one we pinned.
    let ca_der = pem_der(&response.ca_pem)?;
    if fingerprint(&ca_der) != ca_fingerprint {
        anyhow::bail!("the control plane returned a CA that does not match the pinned fingerprint");
    }
    Ok(Identity {
        name: response.agent_name,
        endpoint: response.agent_endpoint,
        ca_pem: response.ca_pem,
        cert_pem: response.certificate_pem,
        key_pem,
        issued_at_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        not_after_unix: response.not_after_unix,
    })
}

pub(crate) fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// The whole cause chain of an error on one line (tonic's transport errors hide the reason).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
