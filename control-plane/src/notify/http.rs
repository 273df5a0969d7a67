//! One HTTP/1.1 POST per attempt, over a fresh connection (plain TCP for `http://`, rustls
//! with the system's root certificates for `https://`; `outbound.rs` sends it). Deliveries are rare, so there is no
//! pool; redirects are not followed (a 3xx is an unsuccessful answer). The host is resolved
//! here, each address checked against the [`DestinationPolicy`], and the connection made to a
//! checked address (see `destination`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::Full;
use tokio::net::TcpStream;

use super::destination::DestinationPolicy;
use crate::outbound;

/// Bounds the whole attempt: connect, TLS, request and response head.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an attempt got no HTTP answer. Messages name the step, never the URL (its path or
/// query may hold a credential of the receiver).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid webhook url")]
    InvalidUrl,
    /// Every address the host resolved to is refused by the policy; nothing was connected to.
    #[error("destination address is not allowed (private/loopback); start the control plane with --notify-allow-private to allow it")]
    DestinationNotAllowed,
    #[error("cannot resolve the host: {0}")]
    Resolve(std::io::Error),
    #[error("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())]
    Timeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(String),
}

/// Sends webhook requests. Cheap to clone.
#[derive(Clone, Default)]
pub struct HttpSender {
    /// Built on the first `https://` delivery (loads the system's root certificates).
    tls: Arc<OnceLock<tokio_rustls::TlsConnector>>,
    /// Which resolved addresses may be connected to.
    policy: DestinationPolicy,
}

impl HttpSender {
    pub fn new(policy: DestinationPolicy) -> Self {
        HttpSender {
            tls: Arc::default(),
            policy,
        }
    }

    /// POSTs `body` with `headers` to `url` and returns the response status code.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<u16, SendError> {
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.post_inner(url, headers, body))
            .await
            .unwrap_or(Err(SendError::Timeout))
    }

    async fn post_inner(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<u16, SendError> {
        let uri: Uri = url.parse().map_err(|_| SendError::InvalidUrl)?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(SendError::InvalidUrl),
        };
        let authority = uri.authority().ok_or(SendError::InvalidUrl)?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");

        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(
                header::USER_AGENT,
                concat!("berth-notify/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Http(e.to_string()))?;

        let tcp = self.connect(&host, port).await?;
        let tls = https.then(|| (self.tls(), host.as_str()));
        // The answer's body is not read: the status decides.
        match outbound::request(tcp, tls, request, 0).await {
            Ok(answer) => Ok(answer.head.status.as_u16()),
            Err((outbound::Step::Tls, e)) => Err(SendError::Tls(e)),
            Err((outbound::Step::Http, e)) => Err(SendError::Http(e)),
        }
    }

    /// Resolves `host` once, keeps the addresses the policy allows, and connects to the first
    /// of them that answers. A refusal happens before any connection is tried.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, SendError> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(SendError::Resolve)?
            .collect();
        if resolved.is_empty() {
            return Err(SendError::Resolve(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            )));
        }
        let allowed = self.policy.filter(resolved);
        if allowed.is_empty() {
            return Err(SendError::DestinationNotAllowed);
        }
        let mut last = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(SendError::Connect(
            last.expect("at least one address was tried"),
        ))
    }

    fn tls(&self) -> &tokio_rustls::TlsConnector {
        self.tls.get_or_init(|| {
            let roots = outbound::system_roots();
            if roots.is_empty() {
                tracing::warn!(
                    "no system root certificates found; https webhooks will fail verification"
                );
            }
            outbound::tls_connector(roots).expect("ring supports the default protocol versions")
        })
    }
}
