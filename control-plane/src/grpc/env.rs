//! `berth.v1.EnvService`.

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::service::{Service, SetEnvValue};

pub struct EnvApi {
    service: Service,
}

impl EnvApi {
    pub fn new(service: Service) -> Self {
        EnvApi { service }
    }
}

/// `Some(app)` for a project scope, `None` for global.
fn scope(scope: Option<pb::EnvScope>) -> Result<Option<String>, Status> {
    match scope.and_then(|s| s.scope) {
        Some(pb::env_scope::Scope::App(app)) => Ok(Some(app)),
        Some(pb::env_scope::Scope::Global(true)) => Ok(None),
        _ => Err(Status::invalid_argument(
            "scope must be an application or global",
        )),
    }
}

#[tonic::async_trait]
impl pb::env_service_server::EnvService for EnvApi {
    async fn set_env(
        &self,
        request: Request<pb::SetEnvRequest>,
    ) -> Result<Response<pb::EnvVar>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let app = scope(r.scope)?;
        let value = match r.value {
            Some(pb::set_env_request::Value::Plain(v)) => SetEnvValue::Plain(v),
            Some(pb::set_env_request::Value::Secret(path)) => SetEnvValue::Secret(path),
            Some(pb::set_env_request::Value::Group(group)) => SetEnvValue::Group(group),
            None => {
                return Err(Status::invalid_argument(
                    "one of plain, secret or group is required",
                ))
            }
        };
        let var = self
            .service
            .set_env(
                &actor,
                app.as_deref(),
                &r.key,
                value,
                r.description.as_deref(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::env_var(var)))
    }

    async fn list_env(
        &self,
        request: Request<pb::ListEnvRequest>,
    ) -> Result<Response<pb::ListEnvResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let app = scope(request.into_inner().scope)?;
        let vars = self
            .service
            .list_env(&actor, app.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEnvResponse {
            vars: vars.into_iter().map(convert::env_var).collect(),
        }))
    }

    async fn unset_env(
        &self,
        request: Request<pb::UnsetEnvRequest>,
    ) -> Result<Response<pb::UnsetEnvResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let app = scope(r.scope)?;
        self.service
            .unset_env(&actor, app.as_deref(), &r.key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnsetEnvResponse {}))
    }

    async fn import_group(
        &self,
        request: Request<pb::ImportGroupRequest>,
    ) -> Result<Response<pb::ImportGroupResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let outcome = self
            .service
            .import_group(&actor, &r.group, &r.app)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ImportGroupResponse {
            imported: outcome.imported,
            skipped: outcome.skipped_keys.len() as u32,
            skipped_keys: outcome.skipped_keys,
        }))
    }

    async fn export_env(
        &self,
        request: Request<pb::ExportEnvRequest>,
    ) -> Result<Response<pb::ExportEnvResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let env = self
            .service
            .export_env(&actor, &r.app, r.confirm)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ExportEnvResponse {
            vars: env
                .into_iter()
                .map(|(key, value)| pb::EnvPair {
                    key,
                    value: value.expose_secret().to_string(),
                })
                .collect(),
        }))
    }

    async fn list_effective_env(
        &self,
        request: Request<pb::ListEffectiveEnvRequest>,
    ) -> Result<Response<pb::ListEffectiveEnvResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let vars = self
            .service
            .describe_environment(&actor, &request.get_ref().app)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListEffectiveEnvResponse {
            vars: vars.into_iter().map(convert::effective_env_var).collect(),
        }))
    }
}
