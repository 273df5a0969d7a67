//! `berth.v1.NotificationService`: outgoing deployment notifications.

use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::service::Service;
use crate::store::{DeliveryRow, WebhookRow};

pub struct NotifyApi {
    service: Service,
}

impl NotifyApi {
    pub fn new(service: Service) -> Self {
        NotifyApi { service }
    }
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotifyApi {
    async fn add_webhook(
        &self,
        request: Request<pb::AddWebhookRequest>,
    ) -> Result<Response<pb::AddWebhookResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let secret = r.secret.map(SecretString::from);
        let created = self
            .service
            .add_webhook(&actor, &r.url, &r.events, secret)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AddWebhookResponse {
            webhook: Some(webhook(created.webhook)),
            secret: created.secret.expose_secret().to_string(),
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let webhooks = self.service.list_webhooks(&actor).await.map_err(status)?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: webhooks.into_iter().map(webhook).collect(),
        }))
    }

    async fn remove_webhook(
        &self,
        request: Request<pb::RemoveWebhookRequest>,
    ) -> Result<Response<pb::RemoveWebhookResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .remove_webhook(&actor, request.get_ref().id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveWebhookResponse {}))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let rows = self
            .service
            .list_webhook_deliveries(&actor, r.webhook_id, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: rows.into_iter().map(delivery).collect(),
        }))
    }
}

fn webhook(row: WebhookRow) -> pb::NotificationWebhook {
    pb::NotificationWebhook {
        events: row.events(),
        id: row.id,
        url: row.url,
        enabled: row.enabled,
        created_at: row.created_at,
        last_delivery_status: row.last_delivery_status,
        last_delivery_at: row.last_delivery_at,
    }
}

fn delivery(row: DeliveryRow) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: row.id,
        webhook_id: row.webhook_id,
        url: row.url,
        event: row.event,
        deployment_id: row.deployment_id,
        attempt: u32::try_from(row.attempt).unwrap_or(0),
        status: row.status,
        response_code: row.response_code.and_then(|c| u32::try_from(c).ok()),
        error: row.error,
        next_attempt_at: row.next_attempt_at,
        created_at: row.created_at,
        delivered_at: row.delivered_at,
    }
}
