//! `berth.v1.KeyService`: key rotation, status and retirement.

use berth_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::service::Service;

pub struct KeyApi {
    service: Service,
}

impl KeyApi {
    pub fn new(service: Service) -> Self {
        KeyApi { service }
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeyApi {
    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let started = self
            .service
            .rotate_key(&actor, request.get_ref().resume)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateKeyResponse {
            key_id: started.key_id,
            resumed: started.resumed,
        }))
    }

    async fn key_status(
        &self,
        request: Request<pb::KeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let s = self.service.key_status(&actor).await.map_err(status)?;
        Ok(Response::new(pb::KeyStatusResponse {
            keys: s
                .keys
                .into_iter()
                .map(|k| pb::KeyInfo {
                    id: k.id,
                    state: k.state.to_string(),
                    encryptions: k.encryptions,
                    rows: k
                        .rows
                        .into_iter()
                        .map(|(column, rows)| pb::KeyColumnRows { column, rows })
                        .collect(),
                    created_at: k.created_at,
                    warning: k.warning,
                })
                .collect(),
            rotation: s.rotation.map(|r| pb::RotationProgress {
                target_key_id: r.target,
                remaining_rows: r.remaining,
                running: r.running,
                last_error: r.last_error,
            }),
        }))
    }

    async fn retire_key(
        &self,
        request: Request<pb::RetireKeyRequest>,
    ) -> Result<Response<pb::RetireKeyResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .retire_key(&actor, &request.get_ref().key_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RetireKeyResponse {}))
    }
}
