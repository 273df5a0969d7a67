//! `berth.v1.WebhookService` (admin port, API key of role `webhook`): what the `berth-webhook`
//! shim forwards. Thin: every check is in `fleet/webhook.rs`.

use std::net::IpAddr;
use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::fleet::webhook::{ApplicationRef, RegistryPush, WebhookDeploy, WebhookDeployment};
use crate::fleet::{public_error, Fleet};
use crate::service::{Actor, Permission};

/// Marks a status as "the caller's own API key was refused", so the shim answers its CI
/// caller 502 instead of blaming the webhook token.
pub const CALLER_REFUSED_METADATA: &str = "berth-caller-refused";

pub struct WebhookApi {
    fleet: Fleet,
}

impl WebhookApi {
    pub fn new(fleet: Fleet) -> Self {
        WebhookApi { fleet }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        let actor = authenticate(self.fleet.service(), request)
            .await
            .map_err(caller_refused)?;
        actor
            .require(Permission::WebhookDeploy)
            .map_err(|e| caller_refused(status(e)))?;
        Ok(actor)
    }
}

fn caller_refused(mut s: Status) -> Status {
    s.metadata_mut()
        .insert(CALLER_REFUSED_METADATA, "1".parse().expect("ascii"));
    s
}

fn client_ip(text: &str) -> Result<IpAddr, Status> {
    text.parse()
        .map_err(|_| Status::invalid_argument(format!("client_ip {text:?} is not an ip address")))
}

/// A deployment as the shim's CI caller reads it: a failure only as its public reason (the
/// caller holds one application's token, not an admin key).
fn deployment(d: WebhookDeployment) -> pb::WebhookDeployResponse {
    let finished = d.finished();
    let error_message = public_error(&d.log);
    let log = d.log;
    pb::WebhookDeployResponse {
        deployment: Some(pb::WebhookDeployment {
            deployment_id: log.deployment_id,
            application: Some(pb::WebhookApplication {
                id: d.application_id,
                name: d.application_name,
            }),
            version: log.version,
            status: log.status.to_string(),
            error_message,
            trigger_type: log.trigger_type,
            trigger_source: log.trigger_source,
            started_at: log.started_at,
            completed_at: log.completed_at,
            duration_ms: log.duration_ms,
            superseded_by: log.superseded_by,
        }),
        finished,
    }
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn deploy(
        &self,
        request: Request<pb::WebhookDeployRequest>,
    ) -> Result<Response<pb::WebhookDeployResponse>, Status> {
        let actor = self.caller(&request).await?;
        let r = request.into_inner();
        let application = match (r.application_id, r.application_name) {
            (Some(id), _) if id != 0 => Some(ApplicationRef::Id(id)),
            (_, Some(name)) if !name.is_empty() => Some(ApplicationRef::Name(name)),
            _ => None,
        };
        let deploy = WebhookDeploy {
            application,
            version: r.version,
            token: SecretString::from(r.token),
            client_ip: client_ip(&r.client_ip)?,
            wait: r
                .wait
                .then(|| Duration::from_millis(r.wait_timeout_ms.into())),
        };
        let done = self
            .fleet
            .webhook_deploy(&actor, deploy)
            .await
            .map_err(status)?;
        Ok(Response::new(deployment(done)))
    }

    async fn get_status(
        &self,
        request: Request<pb::WebhookStatusRequest>,
    ) -> Result<Response<pb::WebhookDeployResponse>, Status> {
        let actor = self.caller(&request).await?;
        let r = request.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let found = self
            .fleet
            .webhook_status(&actor, &r.deployment_id, &SecretString::from(r.token), ip)
            .await
            .map_err(status)?;
        Ok(Response::new(deployment(found)))
    }

    async fn registry_push(
        &self,
        request: Request<pb::RegistryPushRequest>,
    ) -> Result<Response<pb::RegistryPushResponse>, Status> {
        let actor = self.caller(&request).await?;
        let r = request.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let pushes: Vec<RegistryPush> = r
            .events
            .into_iter()
            .map(|e| RegistryPush {
                host: e.host,
                repository: e.repository,
                tag: e.tag,
            })
            .collect();
        let outcome = self
            .fleet
            .registry_push(&actor, &SecretString::from(r.secret), &pushes, ip)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegistryPushResponse {
            started: outcome
                .started
                .into_iter()
                .filter_map(|d| deployment(d).deployment)
                .collect(),
            ignored: outcome.ignored,
        }))
    }
}
