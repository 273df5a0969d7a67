//! `webhooks` (outgoing notification receivers, signing secret encrypted) and
//! `webhook_deliveries` (one row per event and webhook, written before the first attempt).

use super::{internal, Store, NOW_MS};
use crate::error::{Error, Result};

/// A webhook as listed: never its secret. `last_delivery_*` describe its newest delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: i64,
    pub url: String,
    /// JSON array of event names.
    pub events: String,
    pub enabled: bool,
    pub created_at: String,
    pub last_delivery_status: Option<String>,
    pub last_delivery_at: Option<String>,
}

impl WebhookRow {
    pub fn events(&self) -> Vec<String> {
        parse_events(&self.events)
    }
}

fn parse_events(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// A delivery to write: the event of one finished deployment for one webhook.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub webhook_id: i64,
    pub event: &'static str,
    pub deployment_id: String,
    /// The event's `deployment` object as JSON.
    pub payload: String,
}

/// A delivery as `berth webhook deliveries` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: i64,
    pub url: String,
    pub event: String,
    pub deployment_id: String,
    pub attempt: i64,
    pub status: String,
    pub response_code: Option<i64>,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

/// A pending delivery whose time has come, with what sending it needs.
#[derive(Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: String,
    pub webhook_id: i64,
    pub url: String,
    /// Ciphertext of the webhook's signing secret.
    pub secret: Option<String>,
    pub event: String,
    pub deployment_id: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempt: i64,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("id", &self.id)
            .field("webhook_id", &self.webhook_id)
            .field("event", &self.event)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The outcome of one attempt, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The attempt's number (1 for the first).
    pub attempt: i64,
    /// `pending` (retry after `retry_in_seconds`), `delivered` or `failed`.
    pub status: &'static str,
    pub response_code: Option<u16>,
    pub error: Option<String>,
    pub retry_in_seconds: Option<f64>,
}

const WEBHOOK_COLUMNS: &str = "w.id, w.url, w.events, w.enabled, w.created_at, \
     (SELECT d.status FROM webhook_deliveries d WHERE d.webhook_id = w.id ORDER BY d.created_at DESC, d.rowid DESC LIMIT 1) \
       AS last_delivery_status, \
     (SELECT COALESCE(d.delivered_at, d.created_at) FROM webhook_deliveries d WHERE d.webhook_id = w.id \
       ORDER BY d.created_at DESC, d.rowid DESC LIMIT 1) AS last_delivery_at";

impl Store {
    /// Inserts a webhook and its encrypted secret in one transaction. `seal` encrypts the secret
    /// for the new row's id (the AAD binds the ciphertext to that row).
    pub async fn insert_webhook(
        &self,
        url: &str,
        events_json: &str,
        seal: impl FnOnce(i64) -> String,
    ) -> Result<WebhookRow> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO webhooks (url, events, enabled) VALUES (?, ?, 1) RETURNING id",
        )
        .bind(url)
        .bind(events_json)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        sqlx::query("UPDATE webhooks SET secret = ? WHERE id = ?")
            .bind(seal(id))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.webhook(id).await
    }

    pub async fn webhook(&self, id: i64) -> Result<WebhookRow> {
        sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("webhook {id} not found")))
    }

    /// The ciphertext of a webhook's signing secret.
    pub async fn webhook_secret(&self, id: i64) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?
            .ok_or_else(|| Error::not_found(format!("webhook {id} not found")))
    }

    /// The id of a webhook with exactly this URL, if any.
    pub async fn webhook_id_by_url(&self, url: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT id FROM webhooks WHERE url = ? ORDER BY id LIMIT 1")
            .bind(url)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRow>> {
        sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Deletes a webhook; its deliveries go with it (ON DELETE CASCADE).
    pub async fn delete_webhook(&self, id: i64) -> Result<()> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("webhook {id} not found")));
        }
        Ok(())
    }

    /// Enabled webhooks with their subscribed events.
    pub async fn enabled_webhooks(&self) -> Result<Vec<(i64, Vec<String>)>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, events FROM webhooks WHERE enabled = 1 ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|(id, events)| (id, parse_events(&events)))
            .collect())
    }

    /// Writes pending deliveries, due now, in one transaction.
    pub async fn insert_deliveries(&self, deliveries: &[NewDelivery]) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(internal)?;
        for d in deliveries {
            sqlx::query(&format!(
                "INSERT INTO webhook_deliveries (id, webhook_id, event, deployment_id, payload, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, {NOW_MS})"
            ))
            .bind(&d.id)
            .bind(d.webhook_id)
            .bind(d.event)
            .bind(&d.deployment_id)
            .bind(&d.payload)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        tx.commit().await.map_err(internal)
    }

    /// Pending deliveries of enabled webhooks whose next attempt is due, oldest due first.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<DueDelivery>> {
        sqlx::query_as(&format!(
            "SELECT d.id, d.webhook_id, w.url, w.secret, d.event, d.deployment_id, d.payload, d.attempt \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.status = 'pending' AND w.enabled = 1 AND d.next_attempt_at <= {NOW_MS} \
             ORDER BY d.next_attempt_at, d.rowid LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    /// Claims a due delivery for one attempt: its next attempt moves `seconds` ahead, so it is
    /// not claimed again while the attempt runs (and is retried after a crash). False when it
    /// is no longer pending.
    pub async fn lease_delivery(&self, id: &str, seconds: f64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(format!("+{:.3} seconds", seconds.max(0.0)))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }

    /// Seconds until the next pending delivery is due (0 when one is due now), or `None` when
    /// nothing is pending.
    pub async fn seconds_until_next_delivery(&self) -> Result<Option<f64>> {
        sqlx::query_scalar(&format!(
            "SELECT MAX(0.0, (julianday(MIN(d.next_attempt_at)) - julianday({NOW_MS})) * 86400.0) \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.status = 'pending' AND w.enabled = 1"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(internal)
    }

    /// Records one attempt of a pending delivery. False when the row is gone (its webhook was
    /// removed meanwhile) or no longer pending.
    pub async fn record_delivery_attempt(&self, id: &str, record: &AttemptRecord) -> Result<bool> {
        let next = record
            .retry_in_seconds
            .map(|s| format!("+{:.3} seconds", s.max(0.0)));
        let done = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET attempt = ?, status = ?, response_code = ?, error = ?, \
             next_attempt_at = CASE WHEN ? IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) END, \
             delivered_at = CASE WHEN ? = 'delivered' THEN {NOW_MS} ELSE NULL END \
             WHERE id = ? AND status = 'pending'"
        ))
        .bind(record.attempt)
        .bind(record.status)
        .bind(record.response_code.map(i64::from))
        .bind(record.error.as_deref())
        .bind(next.as_deref())
        .bind(next.as_deref())
        .bind(record.status)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }

    /// Delivery history, newest first, of one webhook or of all.
    pub async fn list_deliveries(
        &self,
        webhook_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        sqlx::query_as(
            "SELECT d.id, d.webhook_id, w.url, d.event, d.deployment_id, d.attempt, d.status, d.response_code, \
             d.error, d.next_attempt_at, d.created_at, d.delivered_at \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE ? IS NULL OR d.webhook_id = ? \
             ORDER BY d.created_at DESC, d.rowid DESC LIMIT ?",
        )
        .bind(webhook_id)
        .bind(webhook_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, webhook_id: i64) -> NewDelivery {
        NewDelivery {
            id: id.into(),
            webhook_id,
            event: "deployment.failed",
            deployment_id: "dep-1".into(),
            payload: "{}".into(),
        }
    }

    #[tokio::test]
    async fn deliveries_are_due_at_once_then_retried_later_and_removed_with_their_webhook() {
        let store = Store::open_in_memory().await.unwrap();
        let hook = store
            .insert_webhook(
                "http://127.0.0.1:1/hook",
                r#"["deployment.finished"]"#,
                |id| format!("sealed-{id}"),
            )
            .await
            .unwrap();
        assert_eq!(hook.events(), vec!["deployment.finished".to_string()]);
        assert_eq!(hook.last_delivery_status, None);
        store
            .insert_deliveries(&[delivery("a", hook.id)])
            .await
            .unwrap();

        let due = store.due_deliveries(10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].secret.as_deref(),
            Some(format!("sealed-{}", hook.id).as_str())
        );
        assert_eq!(
            store.seconds_until_next_delivery().await.unwrap(),
            Some(0.0)
        );
        assert!(store.lease_delivery("a", 30.0).await.unwrap());
        assert!(
            store.due_deliveries(10).await.unwrap().is_empty(),
            "a leased delivery is due again"
        );

        let retry = AttemptRecord {
            attempt: 1,
            status: "pending",
            response_code: Some(500),
            error: Some("receiver answered 500".into()),
            retry_in_seconds: Some(60.0),
        };
        assert!(store.record_delivery_attempt("a", &retry).await.unwrap());
        assert!(
            store.due_deliveries(10).await.unwrap().is_empty(),
            "retried before its time"
        );
        let wait = store.seconds_until_next_delivery().await.unwrap().unwrap();
        assert!((58.0..=60.5).contains(&wait), "{wait}");

        let done = AttemptRecord {
            attempt: 2,
            status: "delivered",
            response_code: Some(204),
            error: None,
            retry_in_seconds: None,
        };
        assert!(store.record_delivery_attempt("a", &done).await.unwrap());
        assert!(
            !store.record_delivery_attempt("a", &done).await.unwrap(),
            "a finished delivery changed again"
        );
        let rows = store.list_deliveries(Some(hook.id), 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].attempt,
                rows[0].status.as_str(),
                rows[0].response_code
            ),
            (2, "delivered", Some(204))
        );
        assert!(rows[0].delivered_at.is_some() && rows[0].next_attempt_at.is_none());
        assert_eq!(
            store
                .webhook(hook.id)
                .await
                .unwrap()
                .last_delivery_status
                .as_deref(),
            Some("delivered")
        );
        assert_eq!(store.seconds_until_next_delivery().await.unwrap(), None);

        store.delete_webhook(hook.id).await.unwrap();
        assert!(store.list_deliveries(None, 10).await.unwrap().is_empty());
        assert_eq!(
            store.delete_webhook(hook.id).await.unwrap_err().code(),
            crate::ErrorCode::NotFound
        );
    }
}
