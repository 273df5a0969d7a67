//! `berth.v1.ApplicationService`.

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::service::applications::{ApplicationSpec, ApplicationUpdate};
use crate::service::Service;

pub struct ApplicationApi {
    service: Service,
}

impl ApplicationApi {
    pub fn new(service: Service) -> Self {
        ApplicationApi { service }
    }
}

fn ports(ports: Vec<pb::PortMapping>) -> Result<Vec<crate::model::PortMapping>, Status> {
    ports
        .into_iter()
        .map(convert::port_from_proto)
        .collect::<Result<_, _>>()
        .map_err(status)
}

fn targets(targets: Vec<pb::Target>) -> Result<Vec<crate::model::Target>, Status> {
    targets
        .into_iter()
        .map(convert::target_from_proto)
        .collect::<Result<_, _>>()
        .map_err(status)
}

#[tonic::async_trait]
impl pb::application_service_server::ApplicationService for ApplicationApi {
    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::CreateApplicationResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let spec = ApplicationSpec {
            name: r.name,
            image: r.image,
            version: r.version,
            repository: r.repository,
            ports: ports(r.ports)?,
            webhook_enabled: r.webhook_enabled.unwrap_or(true),
            auto_deploy: r.auto_deploy,
            targets: targets(r.targets)?,
            deploy_batch_size: r.deploy_batch_size,
            health_check: r
                .health_check
                .map(convert::health_check_from_proto)
                .transpose()
                .map_err(status)?,
            restart_policy: r.restart_policy,
            drain_timeout_s: r.drain_timeout_seconds,
            stop_timeout_s: r.stop_timeout_seconds,
            stop_signal: r.stop_signal,
            cancel_in_progress: r.cancel_in_progress,
        };
        let created = self
            .service
            .create_application(&actor, spec)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApplicationResponse {
            application: Some(convert::application(created.application)),
            webhook_token: created.webhook_token.expose_secret().to_string(),
        }))
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let apps = self
            .service
            .list_applications(&actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListApplicationsResponse {
            applications: apps.into_iter().map(convert::application).collect(),
        }))
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::ApplicationDetail>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let detail = self
            .service
            .application_detail(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplicationDetail {
            application: Some(convert::application(detail.application)),
            webhook_url: detail.webhook_url,
            env: detail.env.into_iter().map(convert::env_var).collect(),
            deployments: detail
                .deployments
                .into_iter()
                .map(convert::deployment)
                .collect(),
            domains: detail.domains.into_iter().map(convert::domain).collect(),
            effective_env: detail
                .effective_env
                .into_iter()
                .map(convert::effective_env_var)
                .collect(),
            serving: detail
                .serving
                .into_iter()
                .map(|s| pb::ServingContainer {
                    agent: s.agent_name,
                    container_id: s.container_id,
                    status: s.status.to_string(),
                    deployment_id: s.deployment_id,
                    version: s.version,
                })
                .collect(),
        }))
    }

    async fn update_application(
        &self,
        request: Request<pb::UpdateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let update = ApplicationUpdate {
            image: r.image,
            version: r.version,
            repository: if r.clear_repository {
                Some(None)
            } else {
                r.repository.map(Some)
            },
            ports: if r.set_ports {
                Some(ports(r.ports)?)
            } else {
                None
            },
            webhook_enabled: r.webhook_enabled,
            auto_deploy: r.auto_deploy,
            targets: if r.set_targets {
                Some(targets(r.targets)?)
            } else {
                None
            },
            deploy_batch_size: r.deploy_batch_size,
            health_check: if r.clear_health_check {
                Some(None)
            } else {
                r.health_check
                    .map(convert::health_check_from_proto)
                    .transpose()
                    .map_err(status)?
                    .map(Some)
            },
            restart_policy: r.restart_policy,
            drain_timeout_s: r.drain_timeout_seconds,
            stop_timeout_s: r.stop_timeout_seconds,
            stop_signal: r.stop_signal,
            cancel_in_progress: r.cancel_in_progress,
        };
        let app = self
            .service
            .update_application(&actor, &r.name, update)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::application(app)))
    }

    async fn delete_application(
        &self,
        request: Request<pb::DeleteApplicationRequest>,
    ) -> Result<Response<pb::DeleteApplicationResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .delete_application(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteApplicationResponse {}))
    }

    async fn rotate_webhook_token(
        &self,
        request: Request<pb::RotateWebhookTokenRequest>,
    ) -> Result<Response<pb::RotateWebhookTokenResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let rotated = self
            .service
            .rotate_webhook_token(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateWebhookTokenResponse {
            application: Some(convert::application(rotated.application)),
            webhook_token: rotated.webhook_token.expose_secret().to_string(),
        }))
    }
}
