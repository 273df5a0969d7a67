//! Outbound HTTP/1.1, the one way the control plane calls another server: secret providers
//! (`provider/http.rs`), the ACME server (`acme/http.rs`) and notification webhooks
//! (`notify/http.rs`). One request per fresh connection (these calls are rare; no pool),
//! plain TCP for `http://`, rustls (ring) for `https://` with the certificate always
//! verified, and an answer size limit.
//!
//! Each caller connects its TCP stream its own way (the notifier checks every resolved
//! address against its destination policy first) and names its own errors; this module
//! does the rest.
//!
//! Architecture invariants: the task that drives a connection ends with the request that
//! owns it — also when the caller gives up (a timeout drops the future) — so an abandoned
//! call never leaves a socket open. Errors carry the step ([`Step`]) and the library's
//! message, never a URL, a header or a body (they carry tokens and secret values).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Where a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Tls,
    Http,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Tls => "tls",
            Step::Http => "http",
        })
    }
}

/// An answer: its head, and its body when it was asked for.
pub struct Answer {
    pub head: http::response::Parts,
    pub body: Bytes,
}

/// The system's root certificates (none found is not an error here: every verification then
/// fails, and says why).
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// Adds the certificates of a PEM file given by the operator as `option` (named in errors);
/// a file without any certificate is refused.
pub fn add_pem_roots(roots: &mut rustls::RootCertStore, pem: &str, option: &str) -> Result<()> {
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::invalid(format!("invalid {option} PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::invalid(format!("invalid {option}: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::invalid(format!(
            "{option} holds no CERTIFICATE block: give the PEM root certificate of the server's TLS certificate"
        )));
    }
    Ok(())
}

/// A TLS client (ring, TLS 1.2 and 1.3) that trusts `roots`.
pub fn tls_connector(roots: rustls::RootCertStore) -> Result<tokio_rustls::TlsConnector> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("tls: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends one request on `tcp` — inside TLS for `host` when `tls` is given — and returns the
/// answer, its body read up to `max_body` bytes (more is an error; 0: the body is not read).
pub async fn request<B>(
    tcp: TcpStream,
    tls: Option<(&tokio_rustls::TlsConnector, &str)>,
    request: Request<B>,
    max_body: usize,
) -> std::result::Result<Answer, (Step, String)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tcp.set_nodelay(true);
    match tls {
        Some((tls, host)) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| (Step::Tls, "invalid server name".to_string()))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| (Step::Tls, e.to_string()))?;
            exchange(TokioIo::new(stream), request, max_body).await
        }
        None => exchange(TokioIo::new(tcp), request, max_body).await,
    }
    .map_err(|e| (Step::Http, e))
}

async fn exchange<I, B>(
    io: I,
    request: Request<B>,
    max_body: usize,
) -> std::result::Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.into_parts();
    let body = if max_body == 0 {
        Bytes::new()
    } else {
        Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes()
    };
    Ok(Answer { head, body })
}

/// Ends the task driving a connection when the request that owns it ends or is abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn a_pem_without_a_certificate_is_refused_naming_the_option() {
        let mut roots = rustls::RootCertStore::empty();
        let e = add_pem_roots(&mut roots, "not pem", "--ca-cert").unwrap_err();
        assert!(e.to_string().contains("--ca-cert"), "{e}");
    }

    /// A server that reads the request and then never answers: the caller gives up (its
    /// timeout drops the request), and the connection must close at once — the server sees
    /// its end — not linger in a task of its own.
    #[tokio::test]
    async fn an_abandoned_request_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = conn.read(&mut buf).await.unwrap();
            // Held open by the client until it goes away: read returns 0 then.
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
                .await
                .expect("the client closed the connection")
                .unwrap();
            let _ = conn.shutdown().await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let req = Request::get("/")
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let waited =
            tokio::time::timeout(Duration::from_millis(200), request(tcp, None, req, 1024)).await;
        assert!(waited.is_err(), "the server never answers");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_larger_than_the_limit_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = conn.read(&mut buf).await.unwrap();
            let body = "x".repeat(100);
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{body}");
            conn.write_all(answer.as_bytes()).await.unwrap();
        });
        let req = || {
            Request::get("/")
                .header(http::header::HOST, "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let Err((step, e)) = request(tcp, None, req(), 10).await else {
            panic!("a 100-byte answer passed a 10-byte limit");
        };
        assert_eq!(step, Step::Http);
        assert!(e.contains("reading the answer"), "{e}");
    }
}
