//! `berth.v1.ProviderService` (admin port, API keys).

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{authenticate, status};
use crate::provider::ProviderType;
use crate::service::providers::{provider_settings, ProviderPatch, ProviderSettings};
use crate::service::Service;
use crate::store::{ProviderRow, SyncRow};

pub struct ProviderApi {
    service: Service,
}

impl ProviderApi {
    pub fn new(service: Service) -> Self {
        ProviderApi { service }
    }
}

fn provider(row: ProviderRow) -> Result<pb::Provider, Status> {
    let mut settings = provider_settings(&row).map_err(status)?;
    // A PEM is long and not worth printing; whether one is set is.
    if let Some(ca) = settings.get_mut("ca_cert") {
        *ca = "(set)".to_string();
    }
    Ok(pb::Provider {
        id: row.id,
        has_credential: row.credentials.is_some(),
        auto_sync: false,
        sync_interval_seconds: u32::try_from(row.sync_interval_s).unwrap_or(u32::MAX),
        settings: settings.into_iter().collect(),
        name: row.name,
        r#type: row.provider_type,
        group: row.group_name,
        last_sync_at: row.last_sync_at,
        last_sync_status: row.last_sync_status,
        last_sync_error: row.last_sync_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn sync(row: SyncRow) -> pb::SecretSync {
    let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    pb::SecretSync {
        id: row.id,
        status: row.status,
        created: count(row.created_count),
        updated: count(row.updated_count),
        removed: count(row.removed_count),
        unchanged: count(row.unchanged_count),
        duration_ms: row.duration_ms,
        error: row.error_message,
        started_at: row.started_at,
        completed_at: row.completed_at,
    }
}

fn interval(seconds: u32) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds.into()))
}

#[tonic::async_trait]
impl pb::provider_service_server::ProviderService for ProviderApi {
    async fn add_provider(
        &self,
        request: Request<pb::AddProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let settings = ProviderSettings {
            provider_type: ProviderType::parse(&r.r#type).map_err(status)?,
            settings: r.settings.into_iter().collect::<BTreeMap<_, _>>(),
            sync_interval: interval(r.sync_interval_seconds),
        };
        let row = self
            .service
            .add_provider(&actor, &r.name, settings, &SecretString::from(r.credential))
            .await
            .map_err(status)?;
        Ok(Response::new(provider(row)?))
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let rows = self.service.list_providers(&actor).await.map_err(status)?;
        let mut providers = Vec::with_capacity(rows.len());
        for row in rows {
            providers.push(self.with_auto_sync(provider(row)?).await?);
        }
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    async fn get_provider(
        &self,
        request: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let row = self
            .service
            .get_provider(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(self.with_auto_sync(provider(row)?).await?))
    }

    async fn update_provider(
        &self,
        request: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let patch = ProviderPatch {
            settings: r.settings.into_iter().collect(),
            credential: r.credential.map(SecretString::from),
            sync_interval: r.sync_interval_seconds.and_then(interval),
        };
        let row = self
            .service
            .update_provider(&actor, &r.name, patch)
            .await
            .map_err(status)?;
        Ok(Response::new(self.with_auto_sync(provider(row)?).await?))
    }

    async fn remove_provider(
        &self,
        request: Request<pb::RemoveProviderRequest>,
    ) -> Result<Response<pb::RemoveProviderResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        self.service
            .remove_provider(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveProviderResponse {}))
    }

    async fn test_provider(
        &self,
        request: Request<pb::TestProviderRequest>,
    ) -> Result<Response<pb::TestProviderResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let found = self
            .service
            .test_provider(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TestProviderResponse {
            secrets: u32::try_from(found).unwrap_or(u32::MAX),
        }))
    }

    async fn sync_provider(
        &self,
        request: Request<pb::SyncProviderRequest>,
    ) -> Result<Response<pb::SyncProviderResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let r = request.into_inner();
        let outcome = self
            .service
            .sync_provider(&actor, &r.name, r.dry_run)
            .await
            .map_err(status)?;
        let s = outcome.summary;
        Ok(Response::new(pb::SyncProviderResponse {
            status: s.status().to_string(),
            provider: outcome.provider,
            group: outcome.group,
            dry_run: outcome.dry_run,
            created: s.created,
            updated: s.updated,
            removed: s.removed,
            unchanged: u32::try_from(s.unchanged).unwrap_or(u32::MAX),
            stale: s
                .stale
                .into_iter()
                .map(|(name, references)| pb::StaleSecret { name, references })
                .collect(),
        }))
    }

    async fn list_syncs(
        &self,
        request: Request<pb::ListSyncsRequest>,
    ) -> Result<Response<pb::ListSyncsResponse>, Status> {
        let actor = authenticate(&self.service, &request).await?;
        let rows = self
            .service
            .sync_history(&actor, &request.get_ref().name)
            .await
            .map_err(status)?;
        let limit = match request.get_ref().limit {
            0 => usize::MAX,
            n => n as usize,
        };
        Ok(Response::new(pb::ListSyncsResponse {
            syncs: rows.into_iter().take(limit).map(sync).collect(),
        }))
    }
}

impl ProviderApi {
    /// `auto_sync` lives on the linked group (the seed's `secret_groups.auto_sync`).
    async fn with_auto_sync(&self, mut p: pb::Provider) -> Result<pb::Provider, Status> {
        if let Some(group) = &p.group {
            p.auto_sync = self
                .service
                .store()
                .group(group)
                .await
                .map_err(status)?
                .auto_sync;
        }
        Ok(p)
    }
}
