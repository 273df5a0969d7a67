//! The HTTP client every provider speaks through (over `outbound.rs`): one HTTP/1.1 request
//! per call on a fresh connection, `http://` or `https://` with the TLS certificate always verified (against the
//! system's roots, or a provider's own `--ca-cert`), a time limit, and a response body limit.
//!
//! Architecture invariant: errors name the provider's host and the step, never a URL's query,
//! a header or a body (they carry tokens and secret values).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::Full;
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::outbound;

/// A provider's answer bigger than this is refused (a page of secrets is far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Talks to one provider. Cheap to clone.
#[derive(Clone)]
pub struct ProviderHttp {
    base: Uri,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

/// An HTTP answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Unavailable(format!("malformed answer from the provider: {e}")))
    }
}

impl ProviderHttp {
    /// `base` is the provider's URL (`https://vault.example:8200`); `ca_pem` replaces the
    /// system roots for a self-hosted server.
    pub fn new(base: &str, ca_pem: Option<&str>, timeout: Duration) -> Result<Self> {
        let base: Uri = base
            .trim_end_matches('/')
            .parse()
            .map_err(|_| Error::invalid(format!("invalid provider address {base:?}")))?;
        let tls = match base.scheme_str() {
            Some("https") => Some(connector(ca_pem)?),
            Some("http") => None,
            _ => {
                return Err(Error::invalid(format!(
                    "provider address {base} must start with https:// or http://"
                )))
            }
        };
        if base.host().is_none() {
            return Err(Error::invalid(format!(
                "provider address {base} has no host"
            )));
        }
        Ok(ProviderHttp { base, tls, timeout })
    }

    fn host(&self) -> &str {
        self.base.host().unwrap_or("")
    }

    /// `method path` with a JSON body (or none) and extra headers.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.send_body(method, path, headers, body).await
    }

    /// `POST path` with an `application/x-www-form-urlencoded` body (what OAuth 2.0 token
    /// endpoints take).
    pub async fn call_form(
        &self,
        path: &str,
        headers: &[(&'static str, &str)],
        form: &[(&str, &str)],
    ) -> Result<Answer> {
        self.send_body(
            Method::POST,
            path,
            headers,
            Some(("application/x-www-form-urlencoded", form_encode(form))),
        )
        .await
    }

    /// A request with `Accept: application/json` and a typed body, under the time limit.
    async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<(&'static str, String)>,
    ) -> Result<Answer> {
        tokio::time::timeout(
            self.timeout,
            self.send_body_inner(method, path, headers, body),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "provider {} did not answer within {:?}",
                self.host(),
                self.timeout
            )))
        })
    }

    async fn send_body_inner(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<(&'static str, String)>,
    ) -> Result<Answer> {
        let authority = self.base.authority().expect("checked in new").clone();
        let base_path = self.base.path().trim_end_matches('/');
        let (content_type, body) = match body {
            Some((content_type, body)) => (Some(content_type), body),
            None => (None, String::new()),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base_path}{path}"))
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Error::invalid(format!("invalid request path for {}", self.host())))?;
        self.send(request).await
    }
}

/// A `--ca-cert` replaces the system's roots (a self-hosted server's own CA).
fn connector(ca_pem: Option<&str>) -> Result<tokio_rustls::TlsConnector> {
    let roots = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            outbound::add_pem_roots(&mut roots, pem, "--ca-cert")?;
            roots
        }
        None => outbound::system_roots(),
    };
    outbound::tls_connector(roots)
}

/// Percent-encodes one path segment (provider paths come from configuration and listings).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Requests whose bytes matter to the provider (AWS signs the body and its headers with
/// SigV4): the caller gives every header and the exact body.
impl ProviderHttp {
    /// The `Host` header every request carries: the base URL's authority.
    pub fn authority(&self) -> &str {
        self.base.authority().map(|a| a.as_str()).unwrap_or("")
    }

    /// The path a request for `path` is sent to: the base URL's path, then `path`.
    pub fn full_path(&self, path: &str) -> String {
        format!("{}{path}", self.base.path().trim_end_matches('/'))
    }

    /// `method path` with `body` as it is and exactly `headers` besides `Host`,
    /// `Content-Length` and `User-Agent` (no `Accept` nor `Content-Type` of its own).
    pub async fn call_exact(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(self.full_path(path))
            .header(header::HOST, self.authority())
            .header(header::CONTENT_LENGTH, body.len())
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| Error::invalid(format!("invalid request for {}", self.host())))?;
        tokio::time::timeout(self.timeout, self.send(request))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "provider {} did not answer within {:?}",
                    self.host(),
                    self.timeout
                )))
            })
    }

    /// One request on a fresh connection (TLS when the base URL is `https://`).
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer> {
        let authority = self.base.authority().expect("checked in new").clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let unavailable =
            |step: &str, e: String| Error::Unavailable(format!("provider {host}: {step}: {e}"));
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unavailable("connect", e.to_string()))?;
        let tls = self.tls.as_ref().map(|tls| (tls, host.as_str()));
        let answer = outbound::request(tcp, tls, request, MAX_BODY)
            .await
            .map_err(|(step, e)| unavailable(&step.to_string(), e))?;
        Ok(Answer {
            status: answer.head.status.as_u16(),
            body: answer.body,
        })
    }
}

/// Splits a full URL (`https://oauth2.googleapis.com/token`) into the origin that
/// [`ProviderHttp::new`] takes and the path with its query (`/token`). Errors name no part of
/// the URL but its host: an OAuth URL may come from a credential.
pub fn split_url(url: &str) -> Result<(String, String)> {
    let uri: Uri = url
        .parse()
        .map_err(|_| Error::invalid("invalid URL (not an absolute http(s) URL)"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Error::invalid("invalid URL (not an absolute http(s) URL)"));
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    Ok((format!("{scheme}://{authority}"), path.to_string()))
}

/// An `application/x-www-form-urlencoded` body (RFC 6749 §4.1.3, Appendix B).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", segment(k), segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl ProviderHttp {
    /// `method path` with a body of any media type (a form-encoded OAuth token request, …),
    /// under the same time limit, TLS rules and body limit as [`ProviderHttp::call`].
    pub async fn call_with_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer> {
        let mut all: Vec<(&str, &str)> = vec![
            ("accept", "application/json"),
            ("content-type", content_type),
        ];
        all.extend(headers.iter().map(|(k, v)| (*k, *v)));
        self.call_exact(method, path, &all, body).await
    }
}
