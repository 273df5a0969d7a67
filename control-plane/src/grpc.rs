//! The admin gRPC API: thin tonic handlers that authenticate the caller, convert proto to
//! domain, call [`Service`], and convert back.
//!
//! Architecture invariant: only this module (and `node.rs`, which serves it) knows tonic.
//! Errors become `tonic::Status` in exactly one place, [`status`].

mod agent;
mod api_keys;
mod applications;
mod audit;
mod backup;
mod convert;
mod deploy;
mod domains;
mod env;
mod import;
mod keys;
mod notify;
mod providers;
mod registry;
mod secrets;
mod webhook;

use berth_proto::v1 as pb;
use secrecy::SecretString;
use tonic::{Request, Status};

use crate::error::{Error, ErrorCode};
use crate::service::{Actor, Service};

pub use agent::{AgentApi, AgentEnrollmentApi};
pub use api_keys::ApiKeyApi;
pub use applications::ApplicationApi;
pub use audit::AuditApi;
pub use backup::BackupApi;
pub use deploy::{AgentAdminApi, DeployApi};
pub use domains::DomainApi;
pub use env::EnvApi;
pub use import::{ImportApi, MAX_IMPORT_REQUEST_BYTES};
pub use keys::KeyApi;
pub use notify::NotifyApi;
pub use providers::ProviderApi;
pub use registry::{AllowlistApi, RepositoryApi};
pub use secrets::SecretApi;
pub use webhook::{WebhookApi, CALLER_REFUSED_METADATA};

/// Maps a domain error to a gRPC status: the one place this happens.
pub fn status(error: Error) -> Status {
    let message = error.to_string();
    match error.code() {
        ErrorCode::NotFound => Status::not_found(message),
        ErrorCode::AlreadyExists => Status::already_exists(message),
        ErrorCode::InvalidArgument => Status::invalid_argument(message),
        ErrorCode::FailedPrecondition => Status::failed_precondition(message),
        ErrorCode::PermissionDenied => Status::permission_denied(message),
        ErrorCode::Unauthenticated => Status::unauthenticated(message),
        ErrorCode::Unavailable => Status::unavailable(message),
        ErrorCode::ResourceExhausted => Status::resource_exhausted(message),
        ErrorCode::Internal => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error; see the control plane log")
        }
    }
}

/// Reads `authorization: Bearer bk_…` and resolves it to an actor.
pub(crate) async fn authenticate<T>(
    service: &Service,
    request: &Request<T>,
) -> Result<Actor, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing api key: set authorization: Bearer bk_… (BERTH_TOKEN)")
    })?;
    let value = header
        .to_str()
        .map_err(|_| Status::unauthenticated("invalid or revoked api key"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <api key>\""))?;
    service
        .authenticate(&SecretString::from(token.trim().to_string()))
        .await
        .map_err(status)
}

/// Every admin service, wired for a tonic router.
pub struct AdminServices {
    pub secrets: pb::secret_service_server::SecretServiceServer<SecretApi>,
    pub env: pb::env_service_server::EnvServiceServer<EnvApi>,
    pub applications: pb::application_service_server::ApplicationServiceServer<ApplicationApi>,
    pub api_keys: pb::api_key_service_server::ApiKeyServiceServer<ApiKeyApi>,
    pub repositories: pb::repository_service_server::RepositoryServiceServer<RepositoryApi>,
    pub allowlist: pb::allowlist_service_server::AllowlistServiceServer<AllowlistApi>,
    pub providers: pb::provider_service_server::ProviderServiceServer<ProviderApi>,
    pub keys: pb::key_service_server::KeyServiceServer<KeyApi>,
}

impl AdminServices {
    pub fn new(service: Service) -> Self {
        AdminServices {
            secrets: pb::secret_service_server::SecretServiceServer::new(SecretApi::new(
                service.clone(),
            )),
            env: pb::env_service_server::EnvServiceServer::new(EnvApi::new(service.clone())),
            applications: pb::application_service_server::ApplicationServiceServer::new(
                ApplicationApi::new(service.clone()),
            ),
            api_keys: pb::api_key_service_server::ApiKeyServiceServer::new(ApiKeyApi::new(
                service.clone(),
            )),
            repositories: pb::repository_service_server::RepositoryServiceServer::new(
                RepositoryApi::new(service.clone()),
            ),
            allowlist: pb::allowlist_service_server::AllowlistServiceServer::new(
                AllowlistApi::new(service.clone()),
            ),
            providers: pb::provider_service_server::ProviderServiceServer::new(ProviderApi::new(
                service.clone(),
            )),
            keys: pb::key_service_server::KeyServiceServer::new(KeyApi::new(service)),
        }
    }
}
