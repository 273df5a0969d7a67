//! `berth.v1.RepositoryService` and `berth.v1.AllowlistService`.

use berth_proto::v1 as pb;
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::service::Service;

pub struct RepositoryApi {
    service: Service,
}

impl RepositoryApi {
    pub fn new(service: Service) -> Self {
        RepositoryApi { service }
    }
}

#[tonic::async_trait]
impl pb::repository_service_server::RepositoryService for RepositoryApi {
    async fn add_repository(
        &self,
        request: Request<pb::AddRepositoryRequest>,
    ) -> Result<Response<pb::Repository>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let password = r.password.map(SecretString::from);
        let repo = self
            .service
            .add_repository(
                &actor,
                &r.name,
                &r.url,
                r.username.as_deref(),
                password.as_ref(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::repository(repo)))
    }

    async fn list_repositories(
        &self,
        request: Request<pb::ListRepositoriesRequest>,
    ) -> Result<Response<pb::ListRepositoriesResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let repos = self
            .service
            .list_repositories(&actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRepositoriesResponse {
            repositories: repos.into_iter().map(convert::repository).collect(),
        }))
    }

    async fn remove_repository(
        &self,
        request: Request<pb::RemoveRepositoryRequest>,
    ) -> Result<Response<pb::RemoveRepositoryResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .remove_repository(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveRepositoryResponse {}))
    }
}

pub struct AllowlistApi {
    service: Service,
}

impl AllowlistApi {
    pub fn new(service: Service) -> Self {
        AllowlistApi { service }
    }
}

#[tonic::async_trait]
impl pb::allowlist_service_server::AllowlistService for AllowlistApi {
    async fn add_image_pattern(
        &self,
        request: Request<pb::AddImagePatternRequest>,
    ) -> Result<Response<pb::ImagePattern>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let row = self
            .service
            .add_image_pattern(&actor, &r.pattern, r.description.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::image_pattern(row)))
    }

    async fn list_image_patterns(
        &self,
        request: Request<pb::ListImagePatternsRequest>,
    ) -> Result<Response<pb::ListImagePatternsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let rows = self
            .service
            .list_image_patterns(&actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListImagePatternsResponse {
            patterns: rows.into_iter().map(convert::image_pattern).collect(),
        }))
    }

    async fn remove_image_pattern(
        &self,
        request: Request<pb::RemoveImagePatternRequest>,
    ) -> Result<Response<pb::RemoveImagePatternResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .remove_image_pattern(&actor, &request.get_ref().pattern)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveImagePatternResponse {}))
    }
}
