//! The HTTP client the ACME client speaks through: berth's own outbound HTTP/1.1
//! (`outbound.rs`: hyper and rustls with ring — so instant-acme brings no second TLS stack)
//! with the system's roots plus an optional extra root (`--acme-ca-file`, for a test CA such
//! as Pebble), one connection per request, a time limit and an answer size limit.
//!
//! Architecture invariant: `https://` is always verified; errors name the server's host and
//! the step, never a request body (the JWS bodies are signed by the account key).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::Full;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use tokio::net::TcpStream;

use crate::error::Result;
use crate::outbound;

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
        let mut roots = outbound::system_roots();
        if let Some(pem) = extra_root_pem {
            outbound::add_pem_roots(&mut roots, pem, "--acme-ca-file")?;
        }
        Ok(AcmeHttp {
            tls: outbound::tls_connector(roots)?,
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
        let tls = https.then_some((&self.tls, host.as_str()));
        let answer = outbound::request(tcp, tls, request, MAX_BODY)
            .await
            .map_err(|(at, e)| step(&at.to_string(), e))?;
        Ok(BytesResponse::from(Response::from_parts(
            answer.head,
            Full::new(answer.body),
        )))
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
