//! Properties of the shim's readers of hostile input over generated requests (proptest;
//! `PROPTEST_CASES` sets the number of cases): request bodies, the fields of a deploy call,
//! the bearer header, the `wait` query and registry notification envelopes. No input makes
//! them panic or answer anything but a 4xx; what a well-formed request says reads back as
//! it was said.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use secrecy::ExposeSecret as _;
use serde_json::{json, Map, Value};

use super::request::{application, bearer, json_object, string_field, wait};
use super::routes::push_events;
use crate::fleet::webhook::{ApplicationRef, MAX_REGISTRY_EVENTS};

/// JSON documents of every shape (numbers are integers: a float may not survive a text round
/// trip, which is serde_json's business, not the shim's).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

/// One event of a notification envelope: tag pushes, events that are not (a pull, a push
/// of a digest only, a push with an empty tag), and anything at all.
fn registry_event() -> impl Strategy<Value = Value> {
    let text = "[a-z0-9][a-z0-9._/-]{0,20}";
    prop_oneof![
        (text, text, text).prop_map(|(repository, tag, host)| json!({
            "action": "push",
            "target": {"repository": repository, "tag": tag, "mediaType": "application/vnd.oci.image.manifest.v1+json"},
            "request": {"host": host},
        })),
        (text, text).prop_map(|(repository, host)| json!({
            "action": "pull", "target": {"repository": repository, "tag": "v1"}, "request": {"host": host},
        })),
        (text, text).prop_map(|(repository, host)| json!({
            "action": "push", "target": {"repository": repository, "digest": "sha256:00"}, "request": {"host": host},
        })),
        (text, text).prop_map(|(repository, host)| json!({
            "action": "push", "target": {"repository": repository, "tag": ""}, "request": {"host": host},
        })),
        json_value(),
    ]
}

/// The distribution envelope's definition of a tag push: (host, repository, tag).
fn tag_push(event: &Value) -> Option<(String, String, String)> {
    let text = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if text("/action").as_deref() != Some("push") {
        return None;
    }
    Some((
        text("/request/host")?,
        text("/target/repository")?,
        text("/target/tag")?,
    ))
}

proptest! {
    #[test]
    fn no_body_makes_the_reader_panic(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[\\[\\]{}\":,0-9a-z ]{0,64}".prop_map(String::into_bytes),
    ]) {
        if let Err(reply) = json_object(Ok(Bytes::from(bytes))) {
            prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        }
    }

    /// A JSON object reads back as itself; any other document is a 400.
    #[test]
    fn json_bodies_read_back(value in json_value()) {
        let read = json_object(Ok(Bytes::from(serde_json::to_vec(&value).unwrap())));
        match (&value, read) {
            (Value::Object(_), Ok(map)) => prop_assert_eq!(Value::Object(map), value),
            (Value::Object(_), Err(reply)) => prop_assert!(false, "refused an object: {:?}", reply.body),
            (_, Ok(map)) => prop_assert!(false, "took {:?} for an object: {:?}", value, map),
            (_, Err(reply)) => prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST),
        }
    }

    /// The seed's fields: a positive `applicationId` (number or digits) wins over
    /// `applicationName`; a name alone names the app; `version` reads back as sent.
    #[test]
    fn deploy_fields_read_back(
        id in 1..=i64::MAX,
        as_text in any::<bool>(),
        name in "[^\u{0}]{1,64}",
        version in any::<String>(),
    ) {
        let id_value = if as_text { Value::from(id.to_string()) } else { Value::from(id) };
        let both = object(json!({"applicationId": id_value, "applicationName": name, "version": version}));
        prop_assert_eq!(application(&both).unwrap(), Some(ApplicationRef::Id(id)));
        prop_assert_eq!(string_field(&both, "version").unwrap(), Some(version));
        let by_name = object(json!({"applicationName": name, "applicationId": 0}));
        prop_assert_eq!(application(&by_name).unwrap(), Some(ApplicationRef::Name(name)));
    }

    /// Any value in those fields is read or refused with a 400, never more.
    #[test]
    fn deploy_fields_of_any_type_are_read_or_refused(value in json_value()) {
        for field in ["applicationId", "applicationName", "version", "token"] {
            let body = object(json!({ field: value.clone() }));
            if let Err(reply) = application(&body) {
                prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            }
            if let Err(reply) = string_field(&body, field) {
                prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            }
        }
    }

    /// `Authorization: Bearer <token>`, whatever the case of the scheme and the spaces
    /// around the token.
    #[test]
    fn bearer_tokens_read_back(
        token in "[!-~]{1,64}",
        scheme in "(?i)bearer",
        before in " {0,2}",
        after in " {0,2}",
    ) {
        let mut headers = HeaderMap::new();
        let value = format!("{before}{scheme} {token}{after}");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        prop_assert_eq!(
            bearer(&headers).map(|t| t.map(|t| t.expose_secret().to_owned())),
            Ok(Some(token))
        );
    }

    #[test]
    fn no_header_or_query_makes_them_panic(value in "[ -~\t]{0,64}", query in any::<String>()) {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::AUTHORIZATION, value);
        }
        let _ = bearer(&headers);
        let query = HashMap::from([("wait".to_owned(), query.clone())]);
        match wait(&query) {
            Ok(waits) => prop_assert_eq!(waits, !matches!(query["wait"].as_str(), "false" | "0")),
            Err(reply) => prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST),
        }
    }

    /// Every tag push of an envelope is read, in order, with its host, repository and tag;
    /// every other event is counted as ignored.
    #[test]
    fn registry_notifications_read_back(events in proptest::collection::vec(registry_event(), 0..12)) {
        let envelope = object(json!({ "events": events }));
        let (pushes, ignored) = push_events(&envelope).unwrap();
        let expected: Vec<(String, String, String)> = events.iter().filter_map(tag_push).collect();
        let read: Vec<(String, String, String)> =
            pushes.into_iter().map(|p| (p.host, p.repository, p.tag)).collect();
        prop_assert_eq!(ignored as usize, events.len() - expected.len());
        prop_assert_eq!(read, expected);
    }

    /// Any other envelope is read or refused with a 400; more than the limit is refused.
    #[test]
    fn any_envelope_is_read_or_refused(body in json_value(), many in (MAX_REGISTRY_EVENTS + 1)..(MAX_REGISTRY_EVENTS + 5)) {
        if let Value::Object(map) = &body {
            if let Err(reply) = push_events(map) {
                prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            }
        }
        let flood = object(json!({"events": vec![json!({}); many]}));
        prop_assert_eq!(push_events(&flood).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
