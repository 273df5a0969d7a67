//! Layer 7: the HTTP and HTTPS listeners. Each request is routed by its Host header to the
//! backend its domain's app has at that moment, through a pooled keep-alive client; ACME
//! HTTP-01 challenges are answered here; `Upgrade` requests (WebSocket) are spliced once the
//! backend answers 101.
//!
//! Architecture invariant: the backend is chosen per request, not per client connection, so
//! a keep-alive client follows a switch at its next request; every request and every upgraded
//! connection holds a connection guard of its backend until it ends (what Drain waits for).

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::challenge;
use super::connections::ConnectionGuard;
use super::tcp::CONNECT_TIMEOUT;
use super::DataPath;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;
type BackendClient = Client<HttpConnector, Incoming>;

/// A client that sends no complete request header in this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections to backends are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that belong to one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Which listener a request came in on.
#[derive(Clone)]
pub enum Scheme {
    Http {
        /// Where plain requests for a domain with a certificate are redirected (`None`: no
        /// HTTPS listener, they are served over HTTP).
        https_port: Option<u16>,
    },
    Https(TlsAcceptor),
}

impl Scheme {
    fn name(&self) -> &'static str {
        match self {
            Scheme::Http { .. } => "http",
            Scheme::Https(_) => "https",
        }
    }
}

/// What every request handler of one listener shares.
struct Listener {
    data: Arc<DataPath>,
    client: BackendClient,
    scheme: Scheme,
}

/// The pooled client every request to a backend goes through.
pub fn backend_client() -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Accepts on `listener` until shutdown; each connection is served on a tracked task.
pub fn serve(
    listener: TcpListener,
    scheme: Scheme,
    data: Arc<DataPath>,
    client: BackendClient,
) -> JoinHandle<()> {
    let shared = Arc::new(Listener {
        data: data.clone(),
        client,
        scheme,
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = data.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(scheme = shared.scheme.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            data.tasks.spawn(async move {
                match &shared.scheme {
                    Scheme::Http { .. } => {
                        serve_connection(stream, peer, None, shared.clone()).await
                    }
                    Scheme::Https(acceptor) => {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                // The resolver refused any handshake without a known SNI.
                                let sni =
                                    tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                                serve_connection(tls, peer, sni, shared.clone()).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    })
}

/// Serves one client connection; `sni` is the TLS server name it was opened for.
async fn serve_connection<S>(io: S, peer: SocketAddr, sni: Option<String>, shared: Arc<Listener>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = shared.clone();
    let sni: Option<Arc<str>> = sni.map(Into::into);
    let service = service_fn(move |request| {
        let (handler, sni) = (handler.clone(), sni.clone());
        async move { Ok::<_, Infallible>(handle(&handler, peer, sni.as_deref(), request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shared.data.shutdown.cancelled() => {
            // Finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

async fn handle(
    listener: &Listener,
    peer: SocketAddr,
    sni: Option<&str>,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    if let (Scheme::Http { .. }, Some(token)) =
        (&listener.scheme, path.strip_prefix(challenge::PATH_PREFIX))
    {
        return match listener.data.challenges.answer(token) {
            Some(answer) if request.method() == http::Method::GET => {
                let mut response = text(StatusCode::OK, answer);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            _ => text(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
        };
    }
    let Some(host) = request_host(&request) else {
        return text(StatusCode::BAD_REQUEST, "the request names no host\n");
    };
    if let Some(sni) = sni.filter(|sni| *sni != host) {
        // A TLS connection serves the name it was opened (and certified) for, no other.
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this connection is for {sni}, not {host}: open one for {host}\n"),
        );
    }
    let Some(target) = listener.data.table.load().host_target(&host) else {
        return text(StatusCode::NOT_FOUND, format!("no app serves {host}\n"));
    };
    if let Scheme::Http {
        https_port: Some(https_port),
    } = listener.scheme
    {
        if target.entry.certs.contains_key(&host) {
            return redirect_to_https(&host, https_port, request.uri());
        }
    }

    let guard = listener
        .data
        .connections
        .open(target.app(), target.container_id());
    let upgrade = upgrade_protocol(request.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let original_host = request.headers().get(header::HOST).cloned();

    // The request as the backend sees it: origin-form to the backend's address, hop-by-hop
    // headers removed, the X-Forwarded-* set.
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("http://{}{path_and_query}", target.addr).parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "the request path is invalid\n"),
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    append_forwarded_for(headers, peer);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(listener.scheme.name()),
    );
    if let Some(original_host) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), original_host);
    }
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }

    let sent = tokio::select! {
        sent = listener.client.request(request) => sent,
        _ = guard.closed() => return text(StatusCode::BAD_GATEWAY, "the backend was drained\n"),
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(app = target.app(), backend = %target.addr, error = %e, "backend unreachable");
            return text(
                StatusCode::BAD_GATEWAY,
                format!("the backend of {host} is unreachable\n"),
            );
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let data = listener.data.clone();
            listener.data.tasks.spawn(async move {
                splice_upgrade(client_upgrade, backend_upgrade, guard, data, peer).await
            });
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, empty());
        }
    }
    strip_hop_by_hop(response.headers_mut());
    response.map(|body| {
        TrackedBody {
            inner: body.map_err(BoxError::from).boxed(),
            closed: Box::pin(guard.closed()),
            _guard: guard,
        }
        .boxed()
    })
}

/// The upgraded client and backend connections, spliced until one side ends, a drain closes
/// them or the proxy shuts down.
async fn splice_upgrade(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    guard: ConnectionGuard,
    data: Arc<DataPath>,
    peer: SocketAddr,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "upgraded connection ended with an error");
            }
        }
        _ = guard.closed() => tracing::debug!(%peer, "upgraded connection closed by a drain"),
        _ = data.shutdown.cancelled() => {}
    }
}

/// The Host header (or the URI's host), lower case, without port or trailing dot.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    let raw = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().host()?,
    };
    let host = match raw.rsplit_once(':') {
        // A port (not the inside of an IPv6 literal, which the route table never holds).
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The protocol of an `Upgrade` request (`Connection: upgrade` and `Upgrade: X`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let before: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let ip = peer.ip().to_string();
    let value = if before.is_empty() {
        ip
    } else {
        format!("{}, {ip}", before.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

fn redirect_to_https(host: &str, https_port: u16, uri: &Uri) -> Response<ProxyBody> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if https_port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{https_port}")
    };
    let location = format!("https://{authority}{path}");
    let mut response = text(StatusCode::PERMANENT_REDIRECT, format!("see {location}\n"));
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.into()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A response body that keeps its request counted until it is done, and fails when a drain
/// closes its backend's connections.
struct TrackedBody {
    inner: ProxyBody,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: ConnectionGuard,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the backend was drained".into())));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
