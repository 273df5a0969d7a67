//! The plan as the one `ImportV1` request.

use berth_control_plane::service::import::{ImportPlan, PlanValue};
use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;

pub fn encode(plan: &ImportPlan, dry_run: bool) -> pb::ImportV1Request {
    pb::ImportV1Request {
        group: plan.group.clone(),
        dry_run,
        secrets: plan
            .secrets
            .iter()
            .map(|s| pb::V1Secret {
                v1_id: s.v1_id,
                name: s.name.clone(),
                value: s.value.expose_secret().to_string(),
                description: s.description.clone(),
                created_at: s.created_at.clone(),
                updated_at: s.updated_at.clone(),
            })
            .collect(),
        repositories: plan
            .repositories
            .iter()
            .map(|r| pb::V1Repository {
                v1_id: r.v1_id,
                name: r.name.clone(),
                url: r.url.clone(),
                username: r.username.clone(),
                password: r.password.as_ref().map(|p| p.expose_secret().to_string()),
            })
            .collect(),
        applications: plan
            .applications
            .iter()
            .map(|a| pb::V1Application {
                v1_id: a.v1_id,
                name: a.name.clone(),
                image: a.image.clone(),
                version: a.version.clone(),
                repository: a.repository.clone(),
                ports: a
                    .ports
                    .iter()
                    .map(|p| pb::PortMapping {
                        host: p.host.into(),
                        container: p.container.into(),
                        protocol: p.protocol.clone(),
                    })
                    .collect(),
                status: a.status.clone(),
                last_deployed_at: a.last_deployed_at.clone(),
                created_at: a.created_at.clone(),
                updated_at: a.updated_at.clone(),
            })
            .collect(),
        variables: plan
            .variables
            .iter()
            .map(|v| {
                let (value, secret) = match &v.value {
                    PlanValue::Plain(value) => (value.expose_secret().to_string(), None),
                    PlanValue::Secret(name) => (String::new(), Some(name.clone())),
                };
                pb::V1Variable {
                    source: v.source.clone(),
                    application: v.application.clone(),
                    key: v.key.clone(),
                    value,
                    secret,
                }
            })
            .collect(),
        image_patterns: plan
            .image_patterns
            .iter()
            .map(|p| pb::V1ImagePattern {
                v1_id: p.v1_id,
                pattern: p.pattern.clone(),
            })
            .collect(),
        domains: plan
            .domains
            .iter()
            .map(|d| pb::V1Domain {
                v1_id: d.v1_id,
                application: d.application.clone(),
                host: d.host.clone(),
            })
            .collect(),
        providers: plan
            .providers
            .iter()
            .map(|p| pb::V1Provider {
                v1_id: p.v1_id,
                name: p.name.clone(),
                r#type: p.provider_type.clone(),
                config: p.config.expose_secret().to_string(),
            })
            .collect(),
    }
}
