//! `berth.v1.ImportService`: `berth import-v1`. The handler goes through the fleet, which
//! pushes the routes of applications that got a domain.

use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};
use tonic::{Request, Response, Status};

use super::{authenticate, convert, status};
use crate::fleet::Fleet;
use crate::service::import::{
    ImportPlan, ImportReport, ItemKind, Outcome, PlanApplication, PlanDomain, PlanImagePattern,
    PlanProvider, PlanRepository, PlanSecret, PlanValue, PlanVariable,
};

/// The most one import request may weigh: a V1 database of 10,000 secrets, 500 applications
/// and 20,000 variables is about 3 MiB; secret values of up to 64 KiB each can make it more.
pub const MAX_IMPORT_REQUEST_BYTES: usize = 64 * 1024 * 1024;

pub struct ImportApi {
    fleet: Fleet,
}

impl ImportApi {
    pub fn new(fleet: Fleet) -> Self {
        ImportApi { fleet }
    }
}

#[tonic::async_trait]
impl pb::import_service_server::ImportService for ImportApi {
    async fn import_v1(
        &self,
        request: Request<pb::ImportV1Request>,
    ) -> Result<Response<pb::ImportV1Response>, Status> {
        let actor = authenticate(self.fleet.service(), &request).await?;
        let r = request.into_inner();
        let dry_run = r.dry_run;
        let plan = plan(r).map_err(status)?;
        let report = self
            .fleet
            .import_v1(&actor, &plan, dry_run)
            .await
            .map_err(status)?;
        Ok(Response::new(response(report)))
    }
}

fn plan(r: pb::ImportV1Request) -> Result<ImportPlan, crate::error::Error> {
    let applications = r
        .applications
        .into_iter()
        .map(|a| {
            Ok(PlanApplication {
                v1_id: a.v1_id,
                name: a.name,
                image: a.image,
                version: a.version,
                repository: a.repository,
                ports: a
                    .ports
                    .into_iter()
                    .map(convert::port_from_proto)
                    .collect::<Result<_, _>>()?,
                status: a.status,
                last_deployed_at: a.last_deployed_at,
                created_at: a.created_at,
                updated_at: a.updated_at,
            })
        })
        .collect::<Result<_, crate::error::Error>>()?;
    Ok(ImportPlan {
        group: r.group,
        secrets: r
            .secrets
            .into_iter()
            .map(|s| PlanSecret {
                v1_id: s.v1_id,
                name: s.name,
                value: SecretString::from(s.value),
                description: s.description,
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect(),
        repositories: r
            .repositories
            .into_iter()
            .map(|r| PlanRepository {
                v1_id: r.v1_id,
                name: r.name,
                url: r.url,
                username: r.username,
                password: r.password.map(SecretString::from),
            })
            .collect(),
        applications,
        variables: r
            .variables
            .into_iter()
            .map(|v| PlanVariable {
                source: v.source,
                application: v.application,
                key: v.key,
                value: match v.secret {
                    Some(secret) => PlanValue::Secret(secret),
                    None => PlanValue::Plain(SecretString::from(v.value)),
                },
            })
            .collect(),
        image_patterns: r
            .image_patterns
            .into_iter()
            .map(|p| PlanImagePattern {
                v1_id: p.v1_id,
                pattern: p.pattern,
            })
            .collect(),
        domains: r
            .domains
            .into_iter()
            .map(|d| PlanDomain {
                v1_id: d.v1_id,
                application: d.application,
                host: d.host,
            })
            .collect(),
        providers: r
            .providers
            .into_iter()
            .map(|p| PlanProvider {
                v1_id: p.v1_id,
                name: p.name,
                provider_type: p.r#type,
                config: SecretString::from(p.config),
            })
            .collect(),
    })
}

fn kind(kind: ItemKind) -> String {
    kind.as_str().to_string()
}

fn outcome(outcome: Outcome) -> pb::ImportOutcome {
    match outcome {
        Outcome::Created => pb::ImportOutcome::Created,
        Outcome::AlreadyImported => pb::ImportOutcome::AlreadyImported,
        Outcome::Conflict => pb::ImportOutcome::Conflict,
        Outcome::Skipped => pb::ImportOutcome::Skipped,
    }
}

fn response(report: ImportReport) -> pb::ImportV1Response {
    pb::ImportV1Response {
        dry_run: report.dry_run,
        applied: report.applied,
        items: report
            .items
            .into_iter()
            .map(|i| pb::ImportItem {
                kind: kind(i.kind),
                name: i.name,
                source: i.source,
                outcome: outcome(i.outcome).into(),
                detail: i.detail,
            })
            .collect(),
        tokens: report
            .tokens
            .into_iter()
            .map(|(application, token)| pb::ImportedToken {
                application,
                webhook_token: token.expose_secret().to_string(),
            })
            .collect(),
    }
}
