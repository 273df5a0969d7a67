//! Reading hostile request bodies: JSON only, a size limit enforced before parsing
//! (axum's body limit), a nesting limit (serde_json's), and typed fields with a clear message
//! for each wrong type. Nothing here talks to the control plane.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::reply::Reply;
use crate::fleet::webhook::ApplicationRef;

/// The body limit of every route.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// 415 unless the body is declared JSON (`application/json` or any `application/*+json`,
/// such as Docker distribution's `application/vnd.docker.distribution.events.v1+json`).
pub fn require_json(headers: &HeaderMap) -> Result<(), Reply> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(Reply::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON: send Content-Type: application/json",
        ))
    }
}

/// The body as a JSON object: 413 over the limit, 400 for anything that is not one object.
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, Reply> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Reply::error(StatusCode::BAD_REQUEST, "cannot read the request body")
        }
    })?;
    // serde_json refuses nesting deeper than 128 levels with an error, never a stack overflow.
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        let why = if e.to_string().contains("recursion limit") {
            "it is nested too deeply".to_string()
        } else {
            format!("{e}")
        };
        Reply::error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {why}"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        )),
    }
}

/// An optional string field; `null` counts as absent.
pub fn string_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>, Reply> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("{name} must be a string"),
        )),
    }
}

/// The seed's `applicationId` (a number; a string of digits is accepted) or
/// `applicationName`. The id wins when both are given, as in the seed.
pub fn application(body: &Map<String, Value>) -> Result<Option<ApplicationRef>, Reply> {
    let bad_id = || {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "applicationId must be a positive integer",
        )
    };
    let id = match body.get("applicationId") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().filter(|i| *i >= 0).ok_or_else(bad_id)?),
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|i| *i >= 0)
                .ok_or_else(bad_id)?,
        ),
        Some(_) => return Err(bad_id()),
    };
    if let Some(id) = id.filter(|i| *i > 0) {
        return Ok(Some(ApplicationRef::Id(id)));
    }
    Ok(string_field(body, "applicationName")?
        .filter(|n| !n.is_empty())
        .map(ApplicationRef::Name))
}

/// An `Authorization` header that carries no readable bearer token: not visible ASCII (a
/// pasted `whk_…` placeholder), another scheme, or an empty token. It is answered like a
/// wrong token, never as a missing field.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable;

/// `Authorization: Bearer <token>`: `None` without the header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<SecretString>, Unreadable> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Unreadable)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Unreadable)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
        Ok(Some(SecretString::from(token.to_string())))
    } else {
        Err(Unreadable)
    }
}

/// `?wait=false` (or `0`); waiting is the default, as in the seed.
pub fn wait(query: &std::collections::HashMap<String, String>) -> Result<bool, Reply> {
    match query.get("wait").map(String::as_str) {
        None | Some("true") | Some("1") | Some("") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "query parameter wait must be true or false",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn only_json_is_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(
            require_json(&h).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.docker.distribution.events.v1+json",
        ] {
            h.insert(header::CONTENT_TYPE, ok.parse().unwrap());
            assert!(require_json(&h).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            h.insert(header::CONTENT_TYPE, bad.parse().unwrap());
            assert_eq!(
                require_json(&h).unwrap_err().status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{bad}"
            );
        }
    }

    #[test]
    fn hostile_bodies_get_a_clear_400() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let reply = json_object(Ok(Bytes::from(deep))).unwrap_err();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(
            reply.body["error"]
                .as_str()
                .unwrap()
                .contains("nested too deeply"),
            "{:?}",
            reply.body
        );
        for bad in ["", "[1]", "\"x\"", "{", "{\"a\":1}x"] {
            assert_eq!(
                json_object(Ok(Bytes::from(bad))).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let body = object(json!({"version": 1, "applicationName": ["x"], "applicationId": "12a"}));
        assert_eq!(
            string_field(&body, "version").unwrap_err().body["error"],
            "version must be a string"
        );
        assert_eq!(
            application(&body).unwrap_err().body["error"],
            "applicationId must be a positive integer"
        );
    }

    #[test]
    fn the_application_is_named_by_id_or_name() {
        assert_eq!(
            application(&object(json!({"applicationId": 7, "applicationName": "x"}))).unwrap(),
            Some(ApplicationRef::Id(7))
        );
        assert_eq!(
            application(&object(json!({"applicationId": "7"}))).unwrap(),
            Some(ApplicationRef::Id(7))
        );
        assert_eq!(
            application(&object(json!({"applicationName": "web"}))).unwrap(),
            Some(ApplicationRef::Name("web".into()))
        );
        assert_eq!(
            application(&object(json!({"applicationId": 0, "applicationName": ""}))).unwrap(),
            None
        );
        assert_eq!(application(&object(json!({}))).unwrap(), None);
        assert!(application(&object(json!({"applicationId": 1.5}))).is_err());
    }

    #[test]
    fn bearer_tokens_and_wait() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).unwrap().is_none());
        h.insert(header::AUTHORIZATION, "Bearer whk_abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap().unwrap().expose_secret(), "whk_abc");
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err(), Unreadable);
        // The README's placeholder pasted as is: not ASCII.
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_bytes("Bearer whk_…".as_bytes()).unwrap(),
        );
        assert_eq!(bearer(&h).unwrap_err(), Unreadable);
        let q = |v: &str| [("wait".to_string(), v.to_string())].into_iter().collect();
        assert!(wait(&q("true")).unwrap());
        assert!(!wait(&q("false")).unwrap());
        assert!(wait(&q("maybe")).is_err());
        assert!(wait(&Default::default()).unwrap());
    }
}
