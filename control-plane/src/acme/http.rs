//! The HTTP client the ACME client speaks through: berth's own hyper (HTTP/1.1) and rustls
//! (ring) — so instant-acme brings no second TLS stack — with the system's roots plus an
//! optional extra root (`--acme-ca-file`, for a test CA such as Pebble), one connection per
//! request, a time limit and an answer size limit.
//!
//! Architecture invariant: `https://` is always verified; errors name the server's host and
//! the step, never a request body (the JWS bodies are signed by the account key).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// An ACME server's answer larger than this is refused (a certificate chain is a few KiB).
const MAX_BODY: usize = 1024 * 1024;

/// Cheap to clone.
#[derive(Clone)]
pub struct AcmeHttp {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl AcmeHttp {
    /// `extra_root_pem`: PEM certificates trusted besides the system's roots.
    pub fn new(extra_root_pem: Option<&str>, timeout: Duration) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_root_pem {
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert =
                    cert.map_err(|e| Error::invalid(format!("invalid --acme-ca-file PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::invalid(format!("invalid --acme-ca-file: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::invalid(
                    "--acme-ca-file holds no CERTIFICATE block: give the PEM root of the ACME server's TLS certificate",
                ));
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(AcmeHttp {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    async fn send(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> std::result::Result<BytesResponse, String> {
        let uri = request.uri().clone();
        let (https, host, port) = target(&uri)?;
        let step = |what: &str, e: String| format!("ACME server {host}: {what}: {e}");
        let (mut parts, body) = request.into_parts();
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| step("request", "invalid path".into()))?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        parts.headers.insert(
            header::HOST,
            authority
                .parse()
                .map_err(|_| step("request", "invalid host".into()))?,
        );
        parts.headers.insert(
            header::USER_AGENT,
            header::HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"))),
        );
        let request = Request::from_parts(parts, body);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| step("connect", e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let response = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| step("tls", "invalid server name".into()))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| step("tls", e.to_string()))?;
            exchange(TokioIo::new(stream), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        };
        response.map_err(|e| step("http", e))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<BytesResponse, instant_acme::Error>> + Send>>
    {
        let client = self.clone();
        Box::pin(async move {
            let limit = client.timeout;
            match tokio::time::timeout(limit, client.send(req)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(instant_acme::Error::Other(e.into())),
                Err(_) => Err(instant_acme::Error::Other(
                    format!(
                        "the ACME server did not answer within {} s",
                        limit.as_secs()
                    )
                    .into(),
                )),
            }
        })
    }
}

/// (https, host, port) of an absolute `http(s)://` URI.
fn target(uri: &Uri) -> std::result::Result<(bool, String, u16), String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the ACME server sent a URL that is not http(s)".to_string()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the ACME server sent a URL without a host".to_string())?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host, port))
}

async fn exchange<I>(
    io: I,
    request: Request<BodyWrapper<Bytes>>,
) -> std::result::Result<BytesResponse, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let outcome = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(BytesResponse::from(Response::from_parts(
            parts,
            Full::new(body),
        )))
    }
    .await;
    driver.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_scheme_host_and_port() {
        let uri: Uri = "https://acme.example:14000/dir".parse().unwrap();
        assert_eq!(target(&uri).unwrap(), (true, "acme.example".into(), 14000));
        let uri: Uri = "http://[::1]/x".parse().unwrap();
        assert_eq!(target(&uri).unwrap(), (false, "::1".into(), 80));
        let uri: Uri = "https://acme.example/x".parse().unwrap();
        assert_eq!(target(&uri).unwrap().2, 443);
        let uri: Uri = "ftp://acme.example/x".parse().unwrap();
        assert!(target(&uri).is_err());
    }

    #[test]
    fn an_extra_root_must_hold_a_certificate() {
        let e = AcmeHttp::new(Some("not pem"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--acme-ca-file"), "{e}");
    }
}
