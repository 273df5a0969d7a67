//! What Secret Manager and Google's token endpoint answer: list pages, secret payloads
//! (base64, CRC32C-checked) and errors. Pure functions, tested here without a server.
//!
//! Architecture invariant: an error names the secret and what is wrong with the answer, never
//! a payload, a token or a key.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::secret_id_char;
use crate::error::{Error, Result};
use crate::provider::http::Answer;

/// One page of `secrets.list`: the secret ids, and the next page's token.
pub(super) struct Page {
    pub ids: Vec<String>,
    pub next: Option<String>,
}

pub(super) fn parse_page(json: &serde_json::Value) -> Result<Page> {
    let malformed = |what: &str| Error::Unavailable(format!("malformed list answer: {what}"));
    if !json.is_object() {
        return Err(malformed("not a JSON object"));
    }
    let secrets = match &json["secrets"] {
        // An empty page (or project) leaves the field out.
        serde_json::Value::Null => &Vec::new(),
        serde_json::Value::Array(a) => a,
        _ => return Err(malformed("secrets is not a list")),
    };
    let ids = secrets
        .iter()
        .map(|s| {
            // `projects/{number}/secrets/{id}` (Google answers with the project number).
            let name = s["name"]
                .as_str()
                .ok_or_else(|| malformed("a secret has no name"))?;
            match name.rsplit_once("/secrets/") {
                Some((_, id)) if !id.is_empty() && id.chars().all(secret_id_char) => {
                    Ok(id.to_string())
                }
                _ => Err(malformed(&format!(
                    "{:?} is not a secret name",
                    name.chars().take(200).collect::<String>()
                ))),
            }
        })
        .collect::<Result<_>>()?;
    let next = match &json["nextPageToken"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(t) if t.is_empty() => None,
        serde_json::Value::String(t) => Some(t.clone()),
        _ => return Err(malformed("nextPageToken is not a string")),
    };
    Ok(Page { ids, next })
}

/// The text of an `AccessSecretVersionResponse`. Errors name the secret, never the data.
pub(super) fn payload(json: &serde_json::Value, id: &str) -> Result<SecretString> {
    let malformed =
        |what: &str| Error::Unavailable(format!("malformed answer for secret {id}: {what}"));
    let data = json["payload"]["data"]
        .as_str()
        .ok_or_else(|| malformed("no payload.data"))?;
    // proto3 JSON: bytes are base64, standard or URL-safe, padded or not.
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let bytes = GeneralPurpose::new(&alphabet::STANDARD, lenient)
        .decode(data)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, lenient).decode(data))
        .map(Zeroizing::new)
        .map_err(|_| malformed("payload.data is not base64"))?;
    let expected = match &json["payload"]["dataCrc32c"] {
        serde_json::Value::Null => None,
        // int64 is a string in proto3 JSON; accept a number too.
        serde_json::Value::String(s) => Some(s.parse::<u64>().ok()),
        serde_json::Value::Number(n) => Some(n.as_u64()),
        _ => Some(None),
    };
    match expected {
        None => {}
        Some(Some(sum)) if sum == u64::from(crc32c(&bytes)) => {}
        Some(Some(_)) => {
            return Err(malformed(
                "the payload does not match its dataCrc32c checksum (corrupted on the way)",
            ))
        }
        Some(None) => return Err(malformed("payload.dataCrc32c is not a number")),
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::FailedPrecondition(format!(
            "secret {id} holds binary data, not UTF-8 text: leave it out with --prefix or --filter"
        ))
    })?;
    Ok(SecretString::from(text.to_string()))
}

/// Google's error body `{"error": {"code", "message", "status"}}`: (status, message), the
/// message cut short. Both name resources, never values.
pub(super) fn google_error(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = &json["error"];
    let status = error["status"].as_str().unwrap_or("").to_string();
    let message = error["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    (status, message)
}

/// A 2xx answer, or the API's error named by what failed.
pub(super) fn ok(answer: Answer, what: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let (status, message) = google_error(&answer.body);
    let detail = match (status.is_empty(), message.is_empty()) {
        (false, false) => format!("{status}: {message}"),
        (false, true) => status,
        (true, false) => message,
        (true, true) => format!("HTTP {}", answer.status),
    };
    let text = format!("gcp secret manager {what} refused ({detail})");
    Err(match answer.status {
        401 | 403 => Error::PermissionDenied(text),
        400 | 404 | 409 => Error::FailedPrecondition(text),
        _ => Error::Unavailable(format!(
            "gcp secret manager {what} failed ({}): {detail}",
            answer.status
        )),
    })
}

/// A refused token request. Google answers a bad key, a deleted key or a disabled account
/// with 400 `invalid_grant` (RFC 6749 §5.2): that is a refused credential too.
pub(super) fn token_error(answer: &Answer, client_email: &str) -> Error {
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let code = json["error"].as_str().unwrap_or("");
    let description: String = json["error_description"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    let detail = match (code.is_empty(), description.is_empty()) {
        (true, _) => format!("HTTP {}", answer.status),
        (false, true) => code.to_string(),
        (false, false) => format!("{code}: {description}"),
    };
    let refused = matches!(answer.status, 401 | 403)
        || (answer.status == 400
            && matches!(
                code,
                "invalid_grant" | "invalid_client" | "unauthorized_client"
            ));
    if refused {
        Error::PermissionDenied(format!(
            "the token endpoint refused the service-account key of {client_email} ({detail})"
        ))
    } else {
        Error::Unavailable(format!(
            "the token endpoint failed for {client_email} ({}): {detail}",
            answer.status
        ))
    }
}

/// CRC-32C (Castagnoli), the checksum of `dataCrc32c`.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use secrecy::ExposeSecret as _;
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_page_gives_secret_ids_and_the_next_token() {
        let page = parse_page(&json!({
            "secrets": [
                {"name": "projects/123456789012/secrets/db-password", "replication": {}},
                {"name": "projects/123456789012/secrets/API_KEY"},
            ],
            "nextPageToken": "abc",
            "totalSize": 5,
        }))
        .unwrap();
        assert_eq!(page.ids, vec!["db-password", "API_KEY"]);
        assert_eq!(page.next.as_deref(), Some("abc"));
        let last = parse_page(&json!({"secrets": [], "nextPageToken": ""})).unwrap();
        assert!(last.ids.is_empty() && last.next.is_none());
        let empty = parse_page(&json!({})).unwrap();
        assert!(empty.ids.is_empty() && empty.next.is_none());
        for bad in [
            json!([]),
            json!({"secrets": {}}),
            json!({"secrets": [{"id": "x"}]}),
            json!({"secrets": [{"name": "projects/1/secrets/a b"}]}),
            json!({"secrets": [{"name": "projects/1/topics/x"}]}),
            json!({"secrets": [], "nextPageToken": 3}),
        ] {
            let e = parse_page(&bad).err().unwrap();
            assert_eq!(e.code(), crate::error::ErrorCode::Unavailable, "{bad}: {e}");
            assert!(e.to_string().contains("malformed list answer"), "{e}");
        }
    }

    #[test]
    fn a_payload_is_base64_text_checked_against_its_crc32c() {
        let value = "postgres://u:p@db/app?x=~~~";
        let std = base64::engine::general_purpose::STANDARD.encode(value);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        let sum = crc32c(value.as_bytes());
        for body in [
            json!({"payload": {"data": std, "dataCrc32c": sum.to_string()}}),
            json!({"payload": {"data": std, "dataCrc32c": sum}}),
            json!({"payload": {"data": url}}),
        ] {
            assert_eq!(payload(&body, "db").unwrap().expose_secret(), value);
        }
        let cases = [
            (json!({"payload": {}}), "no payload.data"),
            (json!({"payload": {"data": "*not base64*"}}), "not base64"),
            (
                json!({"payload": {"data": std, "dataCrc32c": (sum ^ 1).to_string()}}),
                "checksum",
            ),
            (
                json!({"payload": {"data": std, "dataCrc32c": "x"}}),
                "not a number",
            ),
            (
                json!({"payload": {"data": base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00])}}),
                "binary data",
            ),
        ];
        for (body, expected) in cases {
            let e = payload(&body, "db").err().unwrap().to_string();
            assert!(e.contains(expected) && e.contains("db"), "{body}: {e}");
            assert!(
                !e.contains("postgres") && !e.contains(&std),
                "no value in errors: {e}"
            );
        }
    }

    #[test]
    fn google_errors_keep_status_and_message_and_refusals_are_permission_denied() {
        let refused = ok(
            answer(
                403,
                json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                    "message": "Permission 'secretmanager.secrets.list' denied for resource 'projects/p'"}}),
            ),
            "list of secrets",
        )
        .err()
        .unwrap();
        assert_eq!(refused.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(
            refused
                .to_string()
                .contains("PERMISSION_DENIED: Permission 'secretmanager.secrets.list'"),
            "{refused}"
        );
        let e = ok(answer(401, json!({})), "list").err().unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(e.to_string().contains("HTTP 401"), "{e}");
        let e = ok(
            answer(503, json!({"error": {"status": "UNAVAILABLE"}})),
            "list",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::Unavailable, "{e}");
        let e = ok(
            answer(
                400,
                json!({"error": {"status": "INVALID_ARGUMENT", "message": "Invalid filter"}}),
            ),
            "list",
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::FailedPrecondition, "{e}");

        let bad_key = token_error(
            &answer(
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
            "berth@p.iam.gserviceaccount.com",
        );
        assert_eq!(bad_key.code(), crate::error::ErrorCode::PermissionDenied);
        assert!(
            bad_key.to_string().contains("Invalid JWT Signature."),
            "{bad_key}"
        );
        let down = token_error(&answer(502, json!({})), "a@b");
        assert_eq!(down.code(), crate::error::ErrorCode::Unavailable);
    }
}
