//! What a receiver gets: the event body and its signature.
//!
//! ```json
//! {"id": "<delivery uuid>", "event": "deployment.failed",
//!  "deployment": {"deploymentId": "…", "application": "web", "version": "v2", "status": "failed",
//!                 "triggerType": "api", "triggerSource": "apikey:admin",
//!                 "errorMessage": "…", "startedAt": "2025-10-23T10:30:00Z",
//!                 "completedAt": "2025-10-23T10:30:02Z", "durationMs": 2013},
//!  "sentAt": "2025-10-23T10:30:02.120Z"}
//! ```
//!
//! The `deployment` object is copied from the `deployment_logs` row, which holds no secret
//! value; `errorMessage` is the failure's public reason ("image not allowed", "deploy failed
//! on 1 of 2 hosts", see `fleet::failure`), never its detail, which names stored rows, agents
//! and allowlist patterns and stays in the admin API (`berth deploy show`).
//! `X-Berth-Signature-256: sha256=<hex>` is HMAC-SHA256 of the exact body bytes under the
//! webhook's secret (GitHub's convention).

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::error::{Error, Result};
use crate::fleet::public_error;
use crate::model::DeploymentLog;

/// The `deployment` object of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPayload {
    pub deployment_id: String,
    pub application: String,
    pub version: String,
    /// `success`, `failed` or `rolled_back`, as in `deployment_logs`.
    pub status: String,
    pub trigger_type: String,
    pub trigger_source: Option<String>,
    /// The public reason of a failure, never its detail.
    pub error_message: Option<String>,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub duration_ms: Option<i64>,
}

impl DeploymentPayload {
    pub fn new(log: &DeploymentLog, application: &str) -> Self {
        DeploymentPayload {
            deployment_id: log.deployment_id.clone(),
            application: application.to_string(),
            version: log.version.clone(),
            status: log.status.to_string(),
            trigger_type: log.trigger_type.clone(),
            trigger_source: log.trigger_source.clone(),
            error_message: public_error(log),
            started_at: rfc3339(&log.started_at),
            completed_at: log.completed_at.as_deref().map(rfc3339),
            duration_ms: log.duration_ms,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBody<'a> {
    id: &'a str,
    event: &'a str,
    deployment: DeploymentPayload,
    sent_at: String,
}

/// The body of one attempt: the stored `deployment` object wrapped with the delivery id, the
/// event and the time of sending.
pub fn event_body(
    delivery_id: &str,
    event: &str,
    deployment_json: &str,
    sent_at: OffsetDateTime,
) -> Result<Vec<u8>> {
    let deployment: DeploymentPayload = serde_json::from_str(deployment_json).map_err(|e| {
        Error::Internal(format!(
            "stored payload of delivery {delivery_id} is not valid: {e}"
        ))
    })?;
    let sent_at = sent_at
        .replace_nanosecond(sent_at.millisecond() as u32 * 1_000_000)
        .unwrap_or(sent_at)
        .format(&Rfc3339)
        .map_err(|e| Error::Internal(format!("cannot format time: {e}")))?;
    serde_json::to_vec(&EventBody {
        id: delivery_id,
        event,
        deployment,
        sent_at,
    })
    .map_err(|e| Error::Internal(format!("cannot encode event: {e}")))
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the `X-Berth-Signature-256` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// SQLite's `datetime('now')` (`2025-10-23 10:30:00`, UTC) as RFC 3339; other text unchanged.
fn rfc3339(timestamp: &str) -> String {
    let sqlite = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    PrimitiveDateTime::parse(timestamp, &sqlite)
        .ok()
        .and_then(|t| t.assume_utc().format(&Rfc3339).ok())
        .unwrap_or_else(|| timestamp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_known_vectors() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // GitHub's documented example for X-Hub-Signature-256.
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn the_body_carries_the_deployment_in_camel_case_with_rfc3339_times() {
        let log = DeploymentLog {
            id: 1,
            application_id: 7,
            version: "v2".into(),
            deployment_id: "dep-1".into(),
            trigger_type: "api".into(),
            trigger_source: Some("apikey:admin".into()),
            status: crate::model::DeploymentStatus::Failed,
            error_message: Some("image busybox is not on the image allowlist".into()),
            started_at: "2025-10-23 10:30:00".into(),
            completed_at: Some("2025-10-23 10:30:02".into()),
            duration_ms: Some(2013),
            superseded_by: None,
            public_reason: Some("image not allowed".into()),
        };
        let stored = serde_json::to_string(&DeploymentPayload::new(&log, "web")).unwrap();
        let sent_at = OffsetDateTime::from_unix_timestamp_nanos(1_761_215_402_120_999_999).unwrap();
        let body = event_body(
            "11111111-2222-3333-4444-555555555555",
            "deployment.failed",
            &stored,
            sent_at,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "11111111-2222-3333-4444-555555555555",
                "event": "deployment.failed",
                "deployment": {
                    "deploymentId": "dep-1",
                    "application": "web",
                    "version": "v2",
                    "status": "failed",
                    "triggerType": "api",
                    "triggerSource": "apikey:admin",
                    "errorMessage": "image not allowed",
                    "startedAt": "2025-10-23T10:30:00Z",
                    "completedAt": "2025-10-23T10:30:02Z",
                    "durationMs": 2013
                },
                "sentAt": "2025-10-23T10:30:02.12Z"
            })
        );

        // A failed row from before public reasons says only that it failed.
        let old = DeploymentLog {
            public_reason: None,
            ..log
        };
        assert_eq!(
            DeploymentPayload::new(&old, "web").error_message.as_deref(),
            Some("deployment failed")
        );
    }
}
