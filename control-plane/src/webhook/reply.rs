//! The shim's HTTP answers: a status, a JSON body in the seed's shape (`success`, and `error`
//! on failure), and extra headers. gRPC codes from the control plane become HTTP statuses in
//! exactly one place, [`Reply::from_status`].

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::grpc::CALLER_REFUSED_METADATA;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// `{ "success": false, "error": message }`, the seed's error body.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, json!({ "success": false, "error": message.into() }))
    }

    /// 429 with `Retry-After` in whole seconds (at least one).
    pub fn too_many_attempts(retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentication attempts from this address; retry later",
        )
        .header(axum::http::header::RETRY_AFTER, &secs.max(1).to_string())
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// Whether the control plane refused the CI caller's credential (not the shim's own).
    pub fn is_refused_token(status: &tonic::Status) -> bool {
        status.code() == tonic::Code::Unauthenticated && !caller_refused(status)
    }

    /// A control-plane error as the CI caller sees it: the seed's statuses for its outcomes,
    /// 502 when the shim's own credential is refused, 503/504 when the control plane is away.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        if caller_refused(status) {
            tracing::error!(message = %status.message(), "the control plane refused the shim's api key (role webhook needed)");
            return Self::error(
                StatusCode::BAD_GATEWAY,
                "the webhook shim cannot authenticate to the control plane",
            );
        }
        let (code, message) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, status.message()),
            Code::NotFound => (StatusCode::NOT_FOUND, status.message()),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, status.message()),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, status.message()),
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                (StatusCode::CONFLICT, status.message())
            }
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, status.message()),
            Code::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the control plane is unavailable; retry later",
            ),
            Code::DeadlineExceeded | Code::Cancelled => (
                StatusCode::GATEWAY_TIMEOUT,
                "the control plane did not answer in time",
            ),
            _ => {
                tracing::error!(code = ?status.code(), message = %status.message(), "control plane error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the control plane log",
                )
            }
        };
        Self::error(code, message)
    }
}

fn caller_refused(status: &tonic::Status) -> bool {
    status.metadata().get(CALLER_REFUSED_METADATA).is_some()
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_codes_become_the_seed_statuses() {
        let cases = [
            (tonic::Status::invalid_argument("x"), 400),
            (tonic::Status::not_found("x"), 404),
            (tonic::Status::permission_denied("x"), 403),
            (tonic::Status::unauthenticated("x"), 401),
            (tonic::Status::unavailable("x"), 503),
            (tonic::Status::internal("secret detail"), 500),
        ];
        for (status, http) in cases {
            let reply = Reply::from_status(&status);
            assert_eq!(reply.status.as_u16(), http);
            assert_eq!(reply.body["success"], false);
            assert!(!reply.body.to_string().contains("secret detail"));
        }
        let mut refused = tonic::Status::unauthenticated("invalid or revoked api key");
        refused
            .metadata_mut()
            .insert(CALLER_REFUSED_METADATA, "1".parse().unwrap());
        assert_eq!(Reply::from_status(&refused).status, StatusCode::BAD_GATEWAY);
        assert!(!Reply::is_refused_token(&refused));
        assert!(Reply::is_refused_token(&tonic::Status::unauthenticated(
            "Invalid webhook token"
        )));
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let reply = Reply::too_many_attempts(Duration::from_millis(2100));
        assert_eq!(reply.headers[0].1, "3");
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    }
}
