//! `berth.v1.ApiKeyService`.

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::service::Service;

pub struct ApiKeyApi {
    service: Service,
}

impl ApiKeyApi {
    pub fn new(service: Service) -> Self {
        ApiKeyApi { service }
    }
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let created = self
            .service
            .create_api_key(&actor, &r.name, &r.role)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(convert::api_key(created.api_key)),
            key: created.key.expose_secret().to_string(),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let keys = self.service.list_api_keys(&actor).await.map_err(status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(convert::api_key).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .revoke_api_key(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
