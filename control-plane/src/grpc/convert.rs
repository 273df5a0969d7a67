//! Domain -> proto conversions for responses.

use berth_proto::v1 as pb;

use crate::{model, service};

pub fn group(g: model::SecretGroup) -> pb::SecretGroup {
    pb::SecretGroup {
        id: g.id,
        name: g.name,
        description: g.description,
        provider_id: g.provider_id,
        auto_sync: g.auto_sync,
        secret_count: g.secret_count,
        created_at: g.created_at,
        updated_at: g.updated_at,
        provider: g.provider_name,
    }
}

pub fn secret(s: model::Secret) -> pb::SecretSummary {
    pb::SecretSummary {
        id: s.id,
        name: s.name,
        group_id: s.group_id,
        group_name: s.group_name,
        has_value: !s.value.is_empty(),
        value_preview: s.value_preview,
        description: s.description,
        source: s.source,
        last_synced_at: s.last_synced_at,
        created_at: s.created_at,
        updated_at: s.updated_at,
        provider: s.provider_name,
        stale_since: s.stale_since,
    }
}

pub fn env_var(v: model::EnvVar) -> pb::EnvVar {
    pb::EnvVar {
        id: v.id,
        scope: v.scope,
        app: v.app_name,
        key: v.key,
        value: v.value,
        value_type: v.value_type,
        secret_id: v.secret_id,
        secret_path: v.secret_path,
        description: v.description,
        created_at: v.created_at,
        updated_at: v.updated_at,
    }
}

pub fn env_origin(o: service::EnvOrigin) -> pb::EnvOrigin {
    let scope = if o.app.is_some() { "app" } else { "global" }.to_string();
    let mut origin = pb::EnvOrigin {
        scope,
        ..Default::default()
    };
    match o.source {
        service::EnvSource::Plain => origin.kind = "plain".into(),
        service::EnvSource::Secret { path } => {
            origin.kind = "secret".into();
            origin.secret = path;
        }
        service::EnvSource::Group { group, via } => {
            origin.kind = "group".into();
            origin.group = Some(group);
            origin.via = Some(via);
        }
    }
    origin
}

pub fn effective_env_var(v: service::EffectiveVar) -> pb::EffectiveEnvVar {
    pb::EffectiveEnvVar {
        key: v.key,
        origin: Some(env_origin(v.origin)),
        value_type: v.value_type.to_string(),
        value: v.shown,
        overrides: v.overrides.into_iter().map(env_origin).collect(),
        problem: v.problem,
    }
}

pub fn port_to_proto(p: model::PortMapping) -> pb::PortMapping {
    pb::PortMapping {
        host: p.host.into(),
        container: p.container.into(),
        protocol: p.protocol,
    }
}

pub fn port_from_proto(p: pb::PortMapping) -> Result<model::PortMapping, crate::error::Error> {
    let port = |n: u32, which: &str| {
        u16::try_from(n)
            .map_err(|_| crate::error::Error::invalid(format!("{which} port {n} is out of range")))
    };
    Ok(model::PortMapping {
        host: port(p.host, "host")?,
        container: port(p.container, "container")?,
        protocol: if p.protocol.is_empty() {
            "tcp".to_string()
        } else {
            p.protocol
        },
    })
}

pub fn target_to_proto(t: model::Target) -> pb::Target {
    pb::Target {
        target: Some(match t {
            model::Target::Agent(name) => pb::target::Target::Agent(name),
            model::Target::Label { key, value } => {
                pb::target::Target::Label(format!("{key}={value}"))
            }
        }),
    }
}

pub fn target_from_proto(t: pb::Target) -> Result<model::Target, crate::error::Error> {
    match t.target {
        Some(pb::target::Target::Agent(name)) => Ok(model::Target::Agent(name)),
        Some(pb::target::Target::Label(selector)) => match selector.split_once('=') {
            Some((k, v)) => Ok(model::Target::Label {
                key: k.to_string(),
                value: v.to_string(),
            }),
            None => Err(crate::error::Error::invalid(format!(
                "label target {selector:?} must be key=value"
            ))),
        },
        None => Err(crate::error::Error::invalid("empty target")),
    }
}

pub fn application(a: model::Application) -> pb::Application {
    pb::Application {
        id: a.id,
        name: a.name,
        image: a.image,
        version: a.version,
        repository: a.repository,
        ports: a.ports.into_iter().map(port_to_proto).collect(),
        status: a.status,
        webhook_enabled: a.webhook_enabled,
        webhook_token_preview: a.webhook_token_prefix.unwrap_or_default(),
        auto_deploy: a.auto_deploy,
        last_deployed_at: a.last_deployed_at,
        targets: a.targets.into_iter().map(target_to_proto).collect(),
        created_at: a.created_at,
        updated_at: a.updated_at,
        deploy_batch_size: a.deploy_batch_size.try_into().unwrap_or(1),
        health_check: a.health_check.map(health_check_to_proto),
        restart_policy: a.restart_policy,
        drain_timeout_seconds: a.stop.drain_timeout_s,
        stop_timeout_seconds: a.stop.stop_timeout_s,
        stop_signal: a.stop.stop_signal,
        cancel_in_progress: a.cancel_in_progress,
    }
}

/// A domain as clients see it: never its key.
pub fn domain(d: model::Domain) -> pb::Domain {
    pb::Domain {
        host: d.host,
        app: d.app_name,
        container_port: d.container_port.into(),
        tls_mode: d.tls_mode.as_str().to_string(),
        not_after: d.not_after,
        created_at: d.created_at,
        acme_status: d.acme.as_ref().map(|a| a.status.as_str().to_string()),
        acme_error: d.acme.as_ref().and_then(|a| a.error.clone()),
        acme_next_attempt_at: d.acme.and_then(|a| a.next_attempt_at),
    }
}

pub fn health_check_to_proto(h: model::HealthCheckConfig) -> pb::HealthCheckConfig {
    pb::HealthCheckConfig {
        r#type: h.kind,
        port: h.port.into(),
        path: h.path.unwrap_or_default(),
        timeout_seconds: h.timeout_s.unwrap_or(0),
    }
}

pub fn health_check_from_proto(
    h: pb::HealthCheckConfig,
) -> Result<model::HealthCheckConfig, crate::error::Error> {
    Ok(model::HealthCheckConfig {
        kind: h.r#type,
        port: u16::try_from(h.port)
            .map_err(|_| crate::error::Error::invalid("health check port is out of range"))?,
        path: (!h.path.is_empty()).then_some(h.path),
        timeout_s: (h.timeout_seconds != 0).then_some(h.timeout_seconds),
    })
}

pub fn deployment(d: model::DeploymentLog) -> pb::DeploymentSummary {
    pb::DeploymentSummary {
        deployment_id: d.deployment_id,
        version: d.version,
        status: d.status.to_string(),
        trigger_type: d.trigger_type,
        trigger_source: d.trigger_source,
        error_message: d.error_message,
        started_at: d.started_at,
        completed_at: d.completed_at,
        duration_ms: d.duration_ms,
        superseded_by: d.superseded_by,
    }
}

pub fn api_key(k: model::ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id,
        name: k.name,
        role: k.role,
        prefix: k.prefix,
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

pub fn repository(r: model::Repository) -> pb::Repository {
    pb::Repository {
        id: r.id,
        name: r.name,
        url: r.url,
        username: r.username,
        has_password: r.password.is_some(),
        created_at: r.created_at,
    }
}

pub fn image_pattern(p: model::ImagePattern) -> pb::ImagePattern {
    pb::ImagePattern {
        id: p.id,
        pattern: p.pattern,
        description: p.description,
        created_at: p.created_at,
    }
}
