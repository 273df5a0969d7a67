//! What AWS Secrets Manager answers, read: the values of `GetSecretValue` and
//! `BatchGetSecretValue` (with the batch's per-secret `Errors`), and error answers.
//!
//! Architecture invariant: an error built here names secrets, actions and AWS's error codes and
//! messages, never a value (AWS's messages carry none).

use std::collections::BTreeMap;

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::provider::http::Answer;

/// A listed secret.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) arn: String,
    pub(super) name: String,
}

/// Takes the values and the per-secret errors of one batch answer into `values` (by ARN).
/// `ResourceNotFoundException` means nothing to sync (`None`); any other error fails.
pub(super) fn collect_batch(
    page: &Value,
    requested: &[Listed],
    values: &mut BTreeMap<String, Option<SecretString>>,
) -> Result<()> {
    const ACTION: &str = "BatchGetSecretValue";
    let by_arn: BTreeMap<&str, &Listed> = requested.iter().map(|s| (s.arn.as_str(), s)).collect();
    let entries = match &page["SecretValues"] {
        Value::Null => &Vec::new(),
        Value::Array(entries) => entries,
        _ => return Err(malformed(ACTION, "SecretValues is not a list")),
    };
    for entry in entries {
        let arn = entry["ARN"]
            .as_str()
            .ok_or_else(|| malformed(ACTION, "a value without ARN"))?;
        let Some(secret) = by_arn.get(arn) else {
            return Err(malformed(
                ACTION,
                "a value for a secret that was not asked for",
            ));
        };
        values.insert(
            arn.to_string(),
            Some(secret_text(ACTION, &secret.name, entry)?),
        );
    }
    let errors = match &page["Errors"] {
        Value::Null => &Vec::new(),
        Value::Array(errors) => errors,
        _ => return Err(malformed(ACTION, "Errors is not a list")),
    };
    for error in errors {
        let id = error["SecretId"].as_str().unwrap_or_default();
        // The id is what was sent (the ARN); a name is matched too, in case it comes back so.
        let Some(secret) = by_arn
            .get(id)
            .copied()
            .or_else(|| requested.iter().find(|s| s.name == id))
        else {
            return Err(malformed(
                ACTION,
                "an error for a secret that was not asked for",
            ));
        };
        let code = error["ErrorCode"].as_str().unwrap_or("unknown error");
        if code == "ResourceNotFoundException" {
            values.insert(secret.arn.clone(), None);
            continue;
        }
        let message = error["Message"].as_str().unwrap_or_default();
        let failure = AwsError {
            status: 400,
            code: code.to_string(),
            message: message.to_string(),
        };
        return Err(failure.into_error(&format!("{ACTION} of {:?}", secret.name)));
    }
    Ok(())
}

/// The value of one `GetSecretValue` answer or batch entry, as text.
pub(super) fn secret_text(action: &str, name: &str, entry: &Value) -> Result<SecretString> {
    if let Some(text) = entry["SecretString"].as_str() {
        return Ok(SecretString::from(text.to_string()));
    }
    let Some(encoded) = entry["SecretBinary"].as_str() else {
        return Err(malformed(
            action,
            &format!("neither SecretString nor SecretBinary for the secret {name:?}"),
        ));
    };
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                malformed(
                    action,
                    &format!("the SecretBinary of {name:?} is not base64"),
                )
            })?,
    );
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(SecretString::from(text.to_string())),
        Err(_) => Err(Error::FailedPrecondition(format!(
            "the AWS secret {name:?} holds binary data that is not UTF-8 text; berth's values \
             are text: store it base64-encoded in SecretString instead"
        ))),
    }
}

pub(super) fn malformed(action: &str, what: &str) -> Error {
    Error::Unavailable(format!("malformed {action} answer from AWS: {what}"))
}

/// An error answer: the JSON protocol's `{"__type", "message"}`, or the XML `<Code>` and
/// `<Message>` some emulators and proxies answer with.
#[derive(Debug)]
pub(super) struct AwsError {
    pub(super) status: u16,
    pub(super) code: String,
    pub(super) message: String,
}

impl AwsError {
    pub(super) fn parse(answer: &Answer) -> AwsError {
        let (mut code, mut message) = (String::new(), String::new());
        if let Ok(json) = serde_json::from_slice::<Value>(&answer.body) {
            let kind = json["__type"]
                .as_str()
                .or_else(|| json["code"].as_str())
                .unwrap_or_default();
            // `com.amazonaws.secretsmanager#AccessDeniedException` -> the part after `#`;
            // `…:http://internal.amazon.com/…` suffixes are dropped too.
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            code = kind.split(':').next().unwrap_or(kind).to_string();
            message = json["message"]
                .as_str()
                .or_else(|| json["Message"].as_str())
                .unwrap_or_default()
                .to_string();
        } else if let Ok(text) = std::str::from_utf8(&answer.body) {
            code = between(text, "<Code>", "</Code>")
                .unwrap_or_default()
                .into();
            message = between(text, "<Message>", "</Message>")
                .unwrap_or_default()
                .into();
        }
        if code.is_empty() {
            code = format!("HTTP {}", answer.status);
        }
        AwsError {
            status: answer.status,
            code,
            message: message.chars().take(200).collect(),
        }
    }

    /// The batch call is not allowed to this key, or not known to this endpoint.
    pub(super) fn means_no_batch_call(&self) -> bool {
        self.code.starts_with("AccessDenied")
            || matches!(
                self.code.as_str(),
                "UnknownOperationException" | "InvalidAction"
            )
    }

    pub(super) fn into_error(self, what: &str) -> Error {
        let AwsError {
            status,
            code,
            message,
        } = self;
        let detail = if message.is_empty() {
            code.clone()
        } else {
            format!("{code}: {message}")
        };
        let refused = matches!(status, 401 | 403)
            || code.starts_with("AccessDenied")
            || matches!(
                code.as_str(),
                "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "SignatureDoesNotMatch"
                    | "IncompleteSignature"
                    | "IncompleteSignatureException"
                    | "MissingAuthenticationToken"
                    | "MissingAuthenticationTokenException"
                    | "InvalidClientTokenId"
                    | "ExpiredToken"
                    | "ExpiredTokenException"
                    | "AuthFailure"
            );
        if refused {
            Error::PermissionDenied(format!("AWS refused {what}: {detail}"))
        } else if status >= 500
            || matches!(
                code.as_str(),
                "ThrottlingException" | "InternalServiceError" | "ServiceUnavailable"
            )
        {
            Error::Unavailable(format!("AWS {what} failed ({status}): {detail}"))
        } else {
            Error::FailedPrecondition(format!("AWS {what} failed ({status}): {detail}"))
        }
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// A 2xx answer, or the AWS error it carries.
pub(super) fn ok(answer: Answer, action: &str) -> Result<Answer> {
    if (200..300).contains(&answer.status) {
        Ok(answer)
    } else {
        Err(AwsError::parse(&answer).into_error(action))
    }
}
