//! `berth.v1.SecretService`.

use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::service::{ImportFormat, Service};

pub struct SecretApi {
    service: Service,
}

impl SecretApi {
    pub fn new(service: Service) -> Self {
        SecretApi { service }
    }
}

#[tonic::async_trait]
impl pb::secret_service_server::SecretService for SecretApi {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::SecretGroup>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let group = self
            .service
            .create_group_linked(
                &actor,
                &r.name,
                r.description.as_deref(),
                r.provider.as_deref(),
                r.auto_sync,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::group(group)))
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::SecretGroup>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let group = self
            .service
            .update_group(
                &actor,
                &r.name,
                r.description.as_deref(),
                r.provider.as_deref(),
                r.auto_sync,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::group(group)))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let groups = self.service.list_groups(&actor).await.map_err(status)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().map(convert::group).collect(),
        }))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GetGroupResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let (group, secrets) = self
            .service
            .get_group(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetGroupResponse {
            group: Some(convert::group(group)),
            secrets: secrets.into_iter().map(convert::secret).collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        self.service
            .delete_group(&actor, &r.name, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretSummary>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let value = SecretString::from(r.value);
        let secret = self
            .service
            .set_secret(&actor, &r.group, &r.name, &value, r.description.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::secret(secret)))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let secrets = self
            .service
            .list_secrets(&actor, request.get_ref().group.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: secrets.into_iter().map(convert::secret).collect(),
        }))
    }

    async fn reveal_secret(
        &self,
        request: Request<pb::RevealSecretRequest>,
    ) -> Result<Response<pb::RevealSecretResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let (secret, value) = self
            .service
            .reveal_secret(&actor, &r.group, &r.name, r.confirm)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevealSecretResponse {
            secret: Some(convert::secret(secret)),
            value: value.expose_secret().to_string(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let removed = self
            .service
            .delete_secret(&actor, &r.group, &r.name, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteSecretResponse {
            removed_references: removed,
        }))
    }

    async fn import_secrets(
        &self,
        request: Request<pb::ImportSecretsRequest>,
    ) -> Result<Response<pb::ImportSecretsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let format = match pb::ImportFormat::try_from(r.format) {
            Ok(pb::ImportFormat::Dotenv) => ImportFormat::Dotenv,
            Ok(pb::ImportFormat::Json) => ImportFormat::Json,
            _ => {
                return Err(Status::invalid_argument(
                    "import format must be dotenv or json",
                ))
            }
        };
        let document = SecretString::from(r.document);
        let counts = self
            .service
            .import_secrets(&actor, &r.group, format, &document, r.overwrite)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ImportSecretsResponse {
            created: counts.created,
            updated: counts.updated,
            skipped: counts.skipped,
        }))
    }
}
