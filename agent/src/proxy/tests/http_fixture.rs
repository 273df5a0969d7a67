//! HTTP backends that answer with their name (and echo after `Upgrade: echo`), and
//! one-connection HTTP(S) clients.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{bounded, TcpBackend, LOCALHOST};

/// An HTTP backend answering `name|x-forwarded-for|x-forwarded-proto|x-forwarded-host|path`,
/// and `101` to `Upgrade: echo`, after which it echoes bytes.
pub async fn http_backend(name: &'static str) -> TcpBackend {
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |request| answer(name, request)),
                    )
                    .with_upgrades(),
            );
        }
    });
    TcpBackend { name, addr }
}

async fn answer(
    name: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.headers().get(header::UPGRADE) == Some(&HeaderValue::from_static("echo")) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.expect("backend upgrade"));
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                io.write_all(&buf[..n]).await?;
            }
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("echo"));
        return Ok(response);
    }
    let get = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = format!(
        "{name}|{}|{}|{}|{path}",
        get("x-forwarded-for"),
        get("x-forwarded-proto"),
        get("x-forwarded-host")
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// One client connection (kept alive across requests).
pub type HttpConn = SendRequest<Empty<Bytes>>;

pub async fn http_conn(addr: SocketAddr) -> HttpConn {
    let stream = bounded("connect", TcpStream::connect(addr))
        .await
        .expect("connect to the proxy");
    handshake(stream).await
}

pub async fn handshake<S>(io: S) -> HttpConn
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http handshake");
    tokio::spawn(connection.with_upgrades());
    sender
}

/// An HTTP answer, its body read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub fn request(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::HOST, host)
        .body(Empty::new())
        .expect("request")
}

pub async fn send(conn: &mut HttpConn, request: Request<Empty<Bytes>>) -> Answer {
    bounded("ready", conn.ready())
        .await
        .expect("connection ready");
    let response = bounded("response", conn.send_request(request))
        .await
        .expect("send request");
    let (parts, body) = response.into_parts();
    let body = bounded("body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(conn: &mut HttpConn, host: &str, path: &str) -> Answer {
    send(conn, request(host, path)).await
}

/// A TLS client connection to `addr` with SNI `server_name`, trusting only `cert_pem`,
/// offering h2 and http/1.1.
pub async fn tls_stream(
    addr: SocketAddr,
    server_name: &str,
    cert_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    bounded("tls handshake", connector.connect(name, stream)).await
}
