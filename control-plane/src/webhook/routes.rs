//! The shim's routes. Each handler reads and checks the request locally (cheap refusals
//! first: content type, size, JSON shape, field types, version format), applies the
//! failed-auth limit, then forwards to `berth.v1.WebhookService`, which repeats every check
//! that matters and does the rest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{json, Value};

use super::reply::Reply;
use super::request::{self, application, bearer, json_object, require_json, string_field};
use super::Shim;
use crate::fleet::webhook::{
    ApplicationRef, DEPLOYMENT_NOT_FOUND, INVALID_REGISTRY_SECRET, INVALID_TOKEN,
    MAX_REGISTRY_EVENTS, MISSING_FIELDS,
};
use crate::model::DeploymentStatus;
use crate::validate;

/// When legacy `POST /deploy` goes away (R-7.5), announced in its `Sunset` header.
pub const LEGACY_SUNSET: &str = "Wed, 30 Jun 2027 23:59:59 GMT";

/// Early refusals and final answers travel the same way.
type Outcome = Result<Reply, Reply>;

/// What every deploy route forwards.
struct DeployAsk {
    application: Option<ApplicationRef>,
    version: Option<String>,
    token: Option<SecretString>,
    wait: bool,
}

pub(super) async fn deploy(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let ip = shim.proxies.client_ip(peer.ip(), &headers);
    let outcome = async {
        let Query(query) = query
            .map_err(|_| Reply::error(StatusCode::BAD_REQUEST, "the query string is malformed"))?;
        let wait = request::wait(&query)?;
        require_json(&headers)?;
        let body = json_object(body)?;
        let ask = DeployAsk {
            application: application(&body)?,
            version: string_field(&body, "version")?,
            token: shim
                .presented(&headers, ip, INVALID_TOKEN)?
                .or(non_empty(string_field(&body, "token")?)),
            wait,
        };
        shim.forward_deploy(ip, ask).await
    }
    .await;
    finish("deploy", ip, outcome)
}

pub(super) async fn status(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let ip = shim.proxies.client_ip(peer.ip(), &headers);
    let outcome = async {
        let Some(token) = shim.presented(&headers, ip, INVALID_TOKEN)? else {
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "missing webhook token: send Authorization: Bearer whk_…",
            ));
        };
        let id = match id {
            Ok(Path(id)) if id.len() <= 64 => id,
            _ => return Err(Reply::error(StatusCode::NOT_FOUND, DEPLOYMENT_NOT_FOUND)),
        };
        let mut call = tonic::Request::new(pb::WebhookStatusRequest {
            deployment_id: id,
            token: token.expose_secret().to_string(),
            client_ip: ip.to_string(),
        });
        shim.authorize(&mut call, Duration::from_secs(10));
        let response = shim
            .limited(ip, shim.client.clone().get_status(call))
            .await?;
        Ok(shim.deployment_reply(response, "Deployment in progress"))
    }
    .await;
    finish("status", ip, outcome)
}

pub(super) async fn registry(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let ip = shim.proxies.client_ip(peer.ip(), &headers);
    let outcome = async {
        // The control plane checks the secret (the shim holds none); without one there is
        // nothing to check, and the attempt counts against the client.
        let Some(secret) = shim.presented(&headers, ip, INVALID_REGISTRY_SECRET)? else {
            shim.limiter
                .acquire(ip, Instant::now())
                .map_err(Reply::too_many_attempts)?;
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "missing registry notification secret: send Authorization: Bearer <secret>",
            ));
        };
        require_json(&headers)?;
        let body = json_object(body)?;
        let (events, mut ignored) = push_events(&body)?;
        // Forwarded even without a push event, so that no answer is given before the
        // control plane has checked the secret.
        let mut call = tonic::Request::new(pb::RegistryPushRequest {
            events,
            client_ip: ip.to_string(),
            secret: secret.expose_secret().to_string(),
        });
        shim.authorize(&mut call, Duration::from_secs(30));
        let response = shim
            .limited(ip, shim.client.clone().registry_push(call))
            .await?;
        ignored += response.ignored;
        let deployments: Vec<Value> = response
            .started
            .into_iter()
            .map(|d| {
                let app = d.application.clone().unwrap_or_default();
                json!({
                    "deploymentId": d.deployment_id,
                    "application": { "id": app.id, "name": app.name, "version": d.version },
                    "statusUrl": shim.status_url(&d.deployment_id),
                })
            })
            .collect();
        Ok(Reply::new(
            StatusCode::OK,
            json!({ "success": true, "deployments": deployments, "ignored": ignored }),
        ))
    }
    .await;
    finish("registry", ip, outcome)
}

/// The seed's old `POST /deploy` (R-7.5): off unless enabled; when on, it deploys registered
/// applications by `name` with their token, and never applies the caller's `image`, `port`
/// or `containerPort` (they are reported back as ignored).
pub(super) async fn legacy_deploy(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let ip = shim.proxies.client_ip(peer.ip(), &headers);
    if !shim.legacy_deploy {
        return finish(
            "legacy",
            ip,
            Err(Reply::error(
                StatusCode::NOT_FOUND,
                "legacy POST /deploy is disabled; use POST /webhook/deploy",
            )),
        );
    }
    let outcome = async {
        require_json(&headers)?;
        let body = json_object(body)?;
        let name = non_empty(string_field(&body, "name")?);
        let version = non_empty(string_field(&body, "version")?);
        if name.is_none() || version.is_none() {
            return Err(Reply::error(StatusCode::BAD_REQUEST, "Missing required fields: name, version"));
        }
        let token = shim
            .presented(&headers, ip, INVALID_TOKEN)?
            .or(non_empty(string_field(&body, "secret")?))
            .or(non_empty(string_field(&body, "token")?));
        if token.is_none() {
            shim.limiter.acquire(ip, Instant::now()).map_err(Reply::too_many_attempts)?;
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "missing webhook token: send the application's token as Authorization: Bearer whk_… or \"secret\"",
            ));
        }
        let ignored: Vec<&str> = ["image", "port", "containerPort"].into_iter().filter(|f| body.contains_key(*f)).collect();
        let ask = DeployAsk { application: name.map(ApplicationRef::Name), version, token, wait: true };
        let mut reply = shim.forward_deploy(ip, ask).await?;
        if !ignored.is_empty() {
            reply.body["ignored"] = json!(ignored);
        }
        Ok(reply)
    }
    .await;
    let deprecated = |r: Reply| {
        r.header(HeaderName::from_static("deprecation"), "true")
            .header(HeaderName::from_static("sunset"), LEGACY_SUNSET)
            .header(
                axum::http::header::LINK,
                "</webhook/deploy>; rel=\"successor-version\"",
            )
    };
    finish("legacy", ip, outcome.map(deprecated).map_err(deprecated))
}

pub(super) async fn healthz() -> Reply {
    Reply::new(StatusCode::OK, json!({ "status": "ok" }))
}

pub(super) async fn not_found() -> Reply {
    Reply::error(StatusCode::NOT_FOUND, "no such route")
}

/// Answers 408 when a request (a slow body included) outlives `limit`.
pub(super) async fn with_timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            Reply::error(StatusCode::REQUEST_TIMEOUT, "the request took too long").into_response()
        }
    }
}

impl Shim {
    /// The bearer token of a request, `None` without an `Authorization` header. One that
    /// cannot be read is refused like a wrong token (401 with `refusal`), and the attempt
    /// counts against the client.
    fn presented(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
        refusal: &'static str,
    ) -> Result<Option<SecretString>, Reply> {
        bearer(headers).map_err(|_| match self.limiter.acquire(ip, Instant::now()) {
            Ok(()) => Reply::error(StatusCode::UNAUTHORIZED, refusal),
            Err(retry_after) => Reply::too_many_attempts(retry_after),
        })
    }

    async fn forward_deploy(&self, ip: IpAddr, ask: DeployAsk) -> Outcome {
        let (Some(application), Some(version), Some(token)) =
            (ask.application, non_empty::<String>(ask.version), ask.token)
        else {
            return Err(Reply::error(StatusCode::BAD_REQUEST, MISSING_FIELDS));
        };
        validate::version(&version)
            .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let (application_id, application_name) = match application {
            ApplicationRef::Id(id) => (Some(id), None),
            ApplicationRef::Name(name) => (None, Some(name)),
        };
        let mut call = tonic::Request::new(pb::WebhookDeployRequest {
            application_id,
            application_name,
            version,
            token: token.expose_secret().to_string(),
            client_ip: ip.to_string(),
            wait: ask.wait,
            wait_timeout_ms: u32::try_from(self.wait_timeout.as_millis()).unwrap_or(u32::MAX),
        });
        self.authorize(&mut call, self.wait_timeout + Duration::from_secs(10));
        let response = self.limited(ip, self.client.clone().deploy(call)).await?;
        let pending = if ask.wait {
            "Deployment is still running; poll statusUrl"
        } else {
            "Deployment started"
        };
        Ok(self.deployment_reply(response, pending))
    }

    /// Adds the shim's API key and a deadline to a control-plane call.
    fn authorize<T>(&self, call: &mut tonic::Request<T>, timeout: Duration) {
        if let Ok(value) = format!("Bearer {}", self.api_key.expose_secret()).parse() {
            call.metadata_mut().insert("authorization", value);
        }
        call.set_timeout(timeout);
    }

    /// Runs a call that presents the CI caller's token under the failed-auth limit: it takes
    /// one attempt, given back unless the control plane refused the token.
    async fn limited<T>(
        &self,
        ip: IpAddr,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Reply> {
        self.limiter
            .acquire(ip, Instant::now())
            .map_err(Reply::too_many_attempts)?;
        let result = call.await;
        if !matches!(&result, Err(s) if Reply::is_refused_token(s)) {
            self.limiter.refund(ip, Instant::now());
        }
        result
            .map(tonic::Response::into_inner)
            .map_err(|s| Reply::from_status(&s))
    }

    fn deployment_reply(
        &self,
        response: pb::WebhookDeployResponse,
        pending_message: &str,
    ) -> Reply {
        let status_url = response
            .deployment
            .as_ref()
            .map(|d| self.status_url(&d.deployment_id))
            .unwrap_or_default();
        deployment_reply(response, pending_message, status_url)
    }

    fn status_url(&self, deployment_id: &str) -> String {
        let base = self
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        format!("{base}/webhook/deployments/{deployment_id}")
    }
}

/// The push events of a distribution notification envelope
/// (`{"events":[{"action":"push","target":{"repository","tag"},"request":{"host"}}]}`);
/// events that are not tag pushes are counted as ignored.
pub(super) fn push_events(
    body: &serde_json::Map<String, Value>,
) -> Result<(Vec<pb::RegistryPushEvent>, u32), Reply> {
    let Some(Value::Array(events)) = body.get("events") else {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "events must be an array of registry events",
        ));
    };
    if events.len() > MAX_REGISTRY_EVENTS {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_REGISTRY_EVENTS} events per notification"),
        ));
    }
    let mut pushes = Vec::new();
    let mut ignored = 0;
    for event in events {
        let text = |path: &[&str]| {
            path.iter()
                .try_fold(event, |v, k| v.get(*k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        match (
            text(&["action"]).as_deref(),
            text(&["target", "repository"]),
            text(&["target", "tag"]),
            text(&["request", "host"]),
        ) {
            (Some("push"), Some(repository), Some(tag), Some(host)) => {
                pushes.push(pb::RegistryPushEvent {
                    host,
                    repository,
                    tag,
                })
            }
            _ => ignored += 1,
        }
    }
    Ok((pushes, ignored))
}

fn non_empty<T: From<String>>(value: Option<String>) -> Option<T> {
    value.filter(|v| !v.is_empty()).map(T::from)
}

/// One log line per request: route, client, status. Never a token.
fn finish(route: &'static str, ip: IpAddr, outcome: Outcome) -> Reply {
    let reply = match outcome {
        Ok(reply) | Err(reply) => reply,
    };
    let status = reply.status.as_u16();
    match status {
        // The shim or the control plane is in trouble, not the caller.
        502..=504 => tracing::warn!(route, client_ip = %ip, status, "webhook request"),
        // A limited client: a line per refusal would let it flood the log.
        429 => tracing::debug!(route, client_ip = %ip, status, "webhook request"),
        _ => tracing::info!(route, client_ip = %ip, status, "webhook request"),
    }
    reply
}

/// The seed's success body; 500 with `success: false` for a failed deployment, 409 with
/// `success: false` and the newer deployment's id for a superseded one (a retry is not
/// needed: a newer deployment of the application replaced it), 202 with the status URL
/// for one still queued or in progress.
fn deployment_reply(
    response: pb::WebhookDeployResponse,
    pending_message: &str,
    status_url: String,
) -> Reply {
    let Some(d) = response.deployment else {
        return Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the control plane sent no deployment",
        );
    };
    let app = d.application.clone().unwrap_or_default();
    let mut body = json!({
        "deploymentId": d.deployment_id,
        "application": { "id": app.id, "name": app.name, "version": d.version },
        "status": d.status,
        "statusUrl": status_url,
    });
    let status = if !response.finished {
        body["success"] = json!(true);
        body["message"] = json!(pending_message);
        StatusCode::ACCEPTED
    } else if d.status == DeploymentStatus::Success.as_str() {
        body["success"] = json!(true);
        body["message"] = json!("Deployment completed successfully");
        StatusCode::OK
    } else if d.status == DeploymentStatus::Superseded.as_str() {
        body["success"] = json!(false);
        body["message"] = json!("Deployment superseded by a newer deployment of this application");
        body["supersededBy"] = json!(d.superseded_by);
        StatusCode::CONFLICT
    } else {
        body["success"] = json!(false);
        body["message"] = json!("Deployment failed");
        body["error"] = json!(d.error_message);
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Reply::new(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A shim in front of a control plane that is not there: whatever it answers without
    /// asking the control plane, it decided alone.
    async fn lone_shim() -> SocketAddr {
        let config = crate::webhook::ShimConfig::new(
            "http://127.0.0.1:1",
            None,
            SecretString::from("bk_shim".to_string()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::webhook::serve(
            config,
            listener,
            std::future::pending(),
        ));
        addr
    }

    async fn post_status(addr: SocketAddr, path: &str, headers: &str) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = r#"{"events":[]}"#;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer[9..12].parse().unwrap()
    }

    #[tokio::test]
    async fn an_unreadable_authorization_header_is_an_invalid_token_not_a_missing_field() {
        let addr = lone_shim().await;
        let body = r#"{"applicationName":"web","version":"v1"}"#;
        let mut request = format!(
            "POST /webhook/deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        )
        .into_bytes();
        // The README's placeholder pasted as is: `…` is not ASCII.
        request.extend_from_slice("Authorization: Bearer whk_…\r\n\r\n".as_bytes());
        request.extend_from_slice(body.as_bytes());
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains(INVALID_TOKEN), "{answer}");
        assert!(!answer.contains("Missing required fields"), "{answer}");
    }

    #[tokio::test]
    async fn a_registry_notification_without_a_secret_is_401_and_one_with_is_forwarded() {
        let addr = lone_shim().await;
        assert_eq!(post_status(addr, "/webhook/registry", "").await, 401);
        assert_eq!(
            post_status(addr, "/webhook/registry", "Authorization: Bearer \r\n").await,
            401
        );
        // The shim has no secret to compare with: the control plane decides (here: 503, it
        // cannot be reached), even for a notification without a push event.
        assert_eq!(
            post_status(
                addr,
                "/webhook/registry",
                "Authorization: Bearer some-secret\r\n"
            )
            .await,
            503
        );
    }

    #[test]
    fn only_tag_pushes_are_forwarded() {
        let body = json!({"events": [
            {"action": "push", "target": {"repository": "web", "tag": "v3", "mediaType": "application/vnd.oci.image.manifest.v1+json"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "push", "target": {"repository": "web", "digest": "sha256:00"}, "request": {"host": "127.0.0.1:5000"}},
            {"action": "pull", "target": {"repository": "web", "tag": "v3"}, "request": {"host": "127.0.0.1:5000"}},
            "junk"
        ]});
        let (events, ignored) = push_events(body.as_object().unwrap()).unwrap();
        assert_eq!(
            events,
            vec![pb::RegistryPushEvent {
                host: "127.0.0.1:5000".into(),
                repository: "web".into(),
                tag: "v3".into()
            }]
        );
        assert_eq!(ignored, 3);
        assert!(push_events(json!({"events": {}}).as_object().unwrap()).is_err());
    }

    #[test]
    fn a_superseded_deployment_answers_409_with_the_newer_id() {
        let answer = |status: &str, finished: bool| {
            deployment_reply(
                pb::WebhookDeployResponse {
                    deployment: Some(pb::WebhookDeployment {
                        deployment_id: "d1".into(),
                        status: status.into(),
                        superseded_by: (status == "superseded").then(|| "d2".to_string()),
                        ..Default::default()
                    }),
                    finished,
                },
                "Deployment in progress",
                "/webhook/deployments/d1".into(),
            )
        };
        let r = answer("superseded", true);
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.body["success"], false);
        assert_eq!(r.body["status"], "superseded");
        assert_eq!(r.body["supersededBy"], "d2");
        assert_eq!(answer("success", true).status, StatusCode::OK);
        assert_eq!(
            answer("failed", true).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let queued = answer("queued", false);
        assert_eq!(queued.status, StatusCode::ACCEPTED);
        assert_eq!(queued.body["statusUrl"], "/webhook/deployments/d1");
    }
}
