//! `berth.v1.DeployService` and `berth.v1.AgentAdminService` (admin port, API keys).

use std::pin::Pin;

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::fleet::{DeployTrigger, DeploymentView, Fleet, WatchUpdate};
use crate::store::AgentRow;

pub struct DeployApi {
    fleet: Fleet,
}

impl DeployApi {
    pub fn new(fleet: Fleet) -> Self {
        DeployApi { fleet }
    }
}

/// The full view of one deployment.
fn detail(view: DeploymentView) -> pb::DeploymentDetail {
    pb::DeploymentDetail {
        app: view.app,
        deployment: Some(convert::deployment(view.log)),
        targets: view
            .targets
            .into_iter()
            .map(|t| pb::DeploymentTarget {
                agent: t.agent_name,
                status: t.status.to_string(),
                container_id: t.container_id,
                error_message: t.error_message,
                started_at: t.started_at,
                completed_at: t.completed_at,
                duration_ms: t.duration_ms,
            })
            .collect(),
        events: view.events.into_iter().map(event).collect(),
    }
}

fn event(e: crate::store::DeploymentEventRow) -> pb::DeploymentEventRow {
    pb::DeploymentEventRow {
        id: e.id,
        agent: e.agent_name,
        phase: e.phase,
        message: e.message,
        at: e.at,
    }
}

fn update(u: crate::Result<WatchUpdate>) -> Result<pb::DeploymentUpdate, Status> {
    let update = match u.map_err(status)? {
        WatchUpdate::Event(e) => pb::deployment_update::Update::Event(event(e)),
        WatchUpdate::Finished(log) => {
            pb::deployment_update::Update::Finished(convert::deployment(log))
        }
    };
    Ok(pb::DeploymentUpdate {
        update: Some(update),
    })
}

type UpdateStream =
    Pin<Box<dyn Stream<Item = Result<pb::DeploymentUpdate, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::deploy_service_server::DeployService for DeployApi {
    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeploymentDetail>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let r = request.into_inner();
        let trigger = DeployTrigger {
            trigger_type: "manual",
            source: Some(actor.name.clone()),
            cancel_in_progress: r.cancel_in_progress,
        };
        let id = self
            .fleet
            .deploy(&actor, &r.app, &r.version, trigger)
            .await
            .map_err(status)?;
        let view = self.fleet.deployment_view(&id).await.map_err(status)?;
        Ok(Response::new(detail(view)))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentDetail>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let view = self
            .fleet
            .deployment(&actor, &request.get_ref().deployment_id)
            .await
            .map_err(status)?;
        Ok(Response::new(detail(view)))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let r = request.into_inner();
        let rows = self
            .fleet
            .list_deployments(&actor, &r.app, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: rows.into_iter().map(convert::deployment).collect(),
        }))
    }

    type WatchDeploymentStream = UpdateStream;

    async fn watch_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let updates = self
            .fleet
            .watch(&actor, &request.get_ref().deployment_id)
            .await
            .map_err(status)?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            ReceiverStream::new(updates),
            update,
        ))))
    }
}

pub struct AgentAdminApi {
    fleet: Fleet,
}

impl AgentAdminApi {
    pub fn new(fleet: Fleet) -> Self {
        AgentAdminApi { fleet }
    }
}

#[tonic::async_trait]
impl pb::agent_admin_service_server::AgentAdminService for AgentAdminApi {
    async fn create_enrollment_token(
        &self,
        request: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let ttl = (r.ttl_seconds != 0).then_some(r.ttl_seconds);
        let (token, expires_at) = self
            .fleet
            .create_enrollment_token(&actor, &r.agent_name, &labels, ttl)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateEnrollmentTokenResponse {
            token: token.expose_secret().to_string(),
            expires_at,
            ca_fingerprint: self.fleet.ca_fingerprint().to_string(),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        if request.get_ref().summary_only {
            let counts = self.fleet.agent_counts(&actor).await.map_err(status)?;
            return Ok(Response::new(pb::ListAgentsResponse {
                agents: Vec::new(),
                counts: Some(pb::AgentCounts {
                    total: counts.total,
                    connected: counts.connected,
                    revoked: counts.revoked,
                }),
            }));
        }
        let rows = self.fleet.list_agents(&actor).await.map_err(status)?;
        let count = |f: &dyn Fn(&(AgentRow, bool)) -> bool| {
            u32::try_from(rows.iter().filter(|r| f(r)).count()).unwrap_or(u32::MAX)
        };
        let counts = Some(pb::AgentCounts {
            total: count(&|_| true),
            connected: count(&|(_, connected)| *connected),
            revoked: count(&|(a, _)| a.revoked_at.is_some()),
        });
        Ok(Response::new(pb::ListAgentsResponse {
            counts,
            agents: rows
                .into_iter()
                .map(|(a, connected)| pb::Agent {
                    labels: a.labels().into_iter().collect(),
                    status: if a.revoked_at.is_some() {
                        "revoked".into()
                    } else if connected {
                        "connected".into()
                    } else {
                        "disconnected".into()
                    },
                    name: a.name,
                    version: a.version,
                    docker_version: a.docker_version,
                    last_seen_at: a.last_seen_at,
                    cert_not_after: a
                        .cert_not_after
                        .and_then(|t| t.parse::<i64>().ok())
                        .and_then(|t| {
                            time::OffsetDateTime::from_unix_timestamp(t)
                                .ok()
                                .and_then(|d| {
                                    d.format(&time::format_description::well_known::Rfc3339)
                                        .ok()
                                })
                        }),
                    created_at: a.created_at,
                })
                .collect(),
        }))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        self.fleet
            .revoke(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeAgentResponse {}))
    }
}
