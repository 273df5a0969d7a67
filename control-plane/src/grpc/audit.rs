//! `berth.v1.AuditService`.

use std::pin::Pin;

use tokio::sync::watch;

use berth_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::service::{AuditQuery, Service};
use crate::store::AuditEntry;

pub struct AuditApi {
    service: Service,
    /// Turns true when the node stops: every follow stream ends then.
    stopping: watch::Receiver<bool>,
}

impl AuditApi {
    pub fn new(service: Service, stopping: watch::Receiver<bool>) -> Self {
        AuditApi { service, stopping }
    }
}

fn query(filter: Option<pb::AuditFilter>) -> AuditQuery {
    let f = filter.unwrap_or_default();
    let set = |s: String| (!s.is_empty()).then_some(s);
    AuditQuery {
        actor: set(f.actor),
        action: set(f.action),
        since: set(f.since),
        app: set(f.app),
    }
}

fn event(e: AuditEntry) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        actor: e.actor,
        action: e.action,
        target: e.target,
        details: e.details,
        at: e.at,
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let before = (r.before_id > 0).then_some(r.before_id);
        let page = self
            .service
            .list_audit(&actor, &query(r.filter), before, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.entries.into_iter().map(event).collect(),
            next_before_id: page.next_before_id,
            newest_id: page.newest_id,
        }))
    }

    type FollowAuditEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send + 'static>>;

    async fn follow_audit_events(
        &self,
        request: Request<pb::FollowAuditEventsRequest>,
    ) -> Result<Response<Self::FollowAuditEventsStream>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let after = (r.after_id > 0).then_some(r.after_id);
        let rows = self
            .service
            .follow_audit(&actor, &query(r.filter), after, {
                let mut stopping = self.stopping.clone();
                async move {
                    let _ = stopping.wait_for(|s| *s).await;
                }
            })
            .await
            .map_err(status)?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            ReceiverStream::new(rows),
            |row| row.map(event).map_err(status),
        ))))
    }
}
