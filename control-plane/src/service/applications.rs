//! Registered applications (the seed's §4): only these can be deployed, each with its own
//! webhook token, shown once and stored as a digest.

use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, Permission, Service};
use crate::crypto::{generate_token, token_digest, token_preview};
use crate::error::{Error, Result};
use crate::model::{
    Application, ApplicationPatch, DeploymentLog, Domain, EnvScope, EnvVar, HealthCheckConfig,
    NewApplication, PortMapping, StopSettings, Target,
};
use crate::validate;

pub const WEBHOOK_TOKEN_PREFIX: &str = "whk_";
/// Characters of a token kept for display: "whk_" and six random characters.
pub(crate) const TOKEN_PREVIEW_CHARS: usize = 10;
/// `system_settings` key of the public base URL of the webhook shim.
pub const WEBHOOK_URL_SETTING: &str = "webhook_public_url";
const DEFAULT_WEBHOOK_URL: &str = "http://127.0.0.1:7480";

/// What an admin asks for; validated by [`Service::create_application`].
#[derive(Debug, Clone)]
pub struct ApplicationSpec {
    pub name: String,
    pub image: String,
    pub version: Option<String>,
    pub repository: Option<String>,
    pub ports: Vec<PortMapping>,
    pub webhook_enabled: bool,
    pub auto_deploy: bool,
    pub targets: Vec<Target>,
    /// Targets updated at once by a rolling deploy (default 1).
    pub deploy_batch_size: Option<u32>,
    pub health_check: Option<HealthCheckConfig>,
    pub restart_policy: Option<String>,
    /// Drain and stop of the previous container (default 30 s, 10 s, the image's signal).
    pub drain_timeout_s: Option<u32>,
    pub stop_timeout_s: Option<u32>,
    pub stop_signal: Option<String>,
    /// Every deploy cancels the running one (issue 14).
    pub cancel_in_progress: bool,
}

/// A partial update, by names (the service turns them into ids).
#[derive(Debug, Clone, Default)]
pub struct ApplicationUpdate {
    pub image: Option<String>,
    pub version: Option<String>,
    /// `Some(None)` detaches the repository.
    pub repository: Option<Option<String>>,
    pub ports: Option<Vec<PortMapping>>,
    pub webhook_enabled: Option<bool>,
    pub auto_deploy: Option<bool>,
    pub targets: Option<Vec<Target>>,
    pub deploy_batch_size: Option<u32>,
    /// `Some(None)` removes the health check.
    pub health_check: Option<Option<HealthCheckConfig>>,
    pub restart_policy: Option<String>,
    pub drain_timeout_s: Option<u32>,
    pub stop_timeout_s: Option<u32>,
    /// `Some("")`: back to the image's STOPSIGNAL.
    pub stop_signal: Option<String>,
    pub cancel_in_progress: Option<bool>,
}

pub struct CreatedApplication {
    pub application: Application,
    /// Shown once; only its digest is stored.
    pub webhook_token: SecretString,
}

/// The seed's application detail view.
pub struct ApplicationDetail {
    pub application: Application,
    pub webhook_url: String,
    pub env: Vec<EnvVar>,
    pub deployments: Vec<DeploymentLog>,
    /// By host.
    pub domains: Vec<Domain>,
    /// Per agent, the container serving the app (where its ports and domains point).
    pub serving: Vec<crate::store::ServingRow>,
    /// Every key its containers get, as a deployment resolves it (masked).
    pub effective_env: Vec<super::EffectiveVar>,
}

impl Service {
    pub async fn create_application(
        &self,
        actor: &Actor,
        spec: ApplicationSpec,
    ) -> Result<CreatedApplication> {
        actor.require(Permission::Write)?;
        validate::name("application", &spec.name)?;
        validate::image(&spec.image)?;
        if let Some(v) = &spec.version {
            validate::version(v)?;
        }
        validate_ports(&spec.ports)?;
        validate_targets(&spec.targets)?;
        validate_rollout(
            spec.deploy_batch_size,
            spec.health_check.as_ref(),
            spec.restart_policy.as_deref(),
        )?;
        let defaults = StopSettings::default();
        let stop = StopSettings {
            drain_timeout_s: spec.drain_timeout_s.unwrap_or(defaults.drain_timeout_s),
            stop_timeout_s: spec.stop_timeout_s.unwrap_or(defaults.stop_timeout_s),
            stop_signal: match &spec.stop_signal {
                Some(signal) => validate::stop_signal(signal)?,
                None => defaults.stop_signal,
            },
        };
        validate::stop_seconds("drain timeout", stop.drain_timeout_s)?;
        validate::stop_seconds("stop timeout", stop.stop_timeout_s)?;
        self.check_host_ports_free(&spec.name, &spec.ports).await?;
        let repository_id = match &spec.repository {
            Some(name) => Some(self.store.repository_id(name).await?),
            None => None,
        };
        let token = generate_token(WEBHOOK_TOKEN_PREFIX);
        let application = self
            .store
            .insert_application(&NewApplication {
                name: spec.name.clone(),
                image: spec.image,
                version: spec.version,
                repository_id,
                ports: spec.ports,
                webhook_enabled: spec.webhook_enabled,
                webhook_token_digest: token_digest(token.expose_secret()),
                webhook_token_prefix: token_preview(token.expose_secret(), TOKEN_PREVIEW_CHARS),
                auto_deploy: spec.auto_deploy,
                targets: spec.targets,
                deploy_batch_size: spec.deploy_batch_size.unwrap_or(1).into(),
                health_check: spec.health_check,
                restart_policy: spec
                    .restart_policy
                    .unwrap_or_else(|| "unless-stopped".to_string()),
                stop,
                cancel_in_progress: spec.cancel_in_progress,
            })
            .await?;
        self.audit(actor, "app.create", &spec.name, None).await?;
        Ok(CreatedApplication {
            application,
            webhook_token: token,
        })
    }

    pub async fn list_applications(&self, actor: &Actor) -> Result<Vec<Application>> {
        actor.require(Permission::Read)?;
        self.store.list_applications().await
    }

    pub async fn application_detail(&self, actor: &Actor, name: &str) -> Result<ApplicationDetail> {
        actor.require(Permission::Read)?;
        let application = self.store.application(name).await?;
        let mut env = self.store.list_env(EnvScope::Global).await?;
        let project = self
            .store
            .list_env(EnvScope::Project(application.id))
            .await?;
        env.retain(|g| !project.iter().any(|p| p.key == g.key));
        env.extend(project);
        env.sort_by(|a, b| a.key.cmp(&b.key));
        let deployments = self.store.recent_deployments(application.id, 10).await?;
        let domains = self.store.list_domains(Some(application.id)).await?;
        let serving = self.store.serving_containers(application.id).await?;
        let webhook_url = self
            .store
            .setting(WEBHOOK_URL_SETTING)
            .await?
            .unwrap_or_else(|| DEFAULT_WEBHOOK_URL.to_string());
        let effective_env = self.describe_environment(actor, name).await?;
        Ok(ApplicationDetail {
            application,
            webhook_url,
            env,
            deployments,
            domains,
            serving,
            effective_env,
        })
    }

    pub async fn update_application(
        &self,
        actor: &Actor,
        name: &str,
        update: ApplicationUpdate,
    ) -> Result<Application> {
        actor.require(Permission::Write)?;
        let app = self.store.application(name).await?;
        if let Some(image) = &update.image {
            validate::image(image)?;
        }
        if let Some(v) = &update.version {
            validate::version(v)?;
        }
        if let Some(ports) = &update.ports {
            validate_ports(ports)?;
            self.check_host_ports_free(&app.name, ports).await?;
        }
        if let Some(targets) = &update.targets {
            validate_targets(targets)?;
        }
        validate_rollout(
            update.deploy_batch_size,
            update.health_check.clone().flatten().as_ref(),
            update.restart_policy.as_deref(),
        )?;
        if let Some(s) = update.drain_timeout_s {
            validate::stop_seconds("drain timeout", s)?;
        }
        if let Some(s) = update.stop_timeout_s {
            validate::stop_seconds("stop timeout", s)?;
        }
        let stop_signal = update
            .stop_signal
            .as_deref()
            .map(validate::stop_signal)
            .transpose()?;
        let repository_id = match &update.repository {
            Some(Some(repo)) => Some(Some(self.store.repository_id(repo).await?)),
            Some(None) => Some(None),
            None => None,
        };
        let patch = ApplicationPatch {
            image: update.image,
            version: update.version,
            repository_id,
            ports: update.ports,
            webhook_enabled: update.webhook_enabled,
            auto_deploy: update.auto_deploy,
            targets: update.targets,
            deploy_batch_size: update.deploy_batch_size.map(i64::from),
            health_check: update.health_check,
            restart_policy: update.restart_policy,
            drain_timeout_s: update.drain_timeout_s,
            stop_timeout_s: update.stop_timeout_s,
            stop_signal,
            cancel_in_progress: update.cancel_in_progress,
        };
        let updated = self.store.update_application(app.id, &patch).await?;
        self.audit(actor, "app.update", name, None).await?;
        Ok(updated)
    }

    pub async fn delete_application(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require(Permission::Write)?;
        let app = self.store.application(name).await?;
        self.store.delete_application(app.id).await?;
        self.audit(actor, "app.delete", name, None).await
    }

    /// Issues a new webhook token; the old one stops working at once.
    pub async fn rotate_webhook_token(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<CreatedApplication> {
        actor.require(Permission::Write)?;
        let app = self.store.application(name).await?;
        let token = generate_token(WEBHOOK_TOKEN_PREFIX);
        self.store
            .set_webhook_token(
                app.id,
                &token_digest(token.expose_secret()),
                &token_preview(token.expose_secret(), TOKEN_PREVIEW_CHARS),
            )
            .await?;
        self.audit(actor, "app.rotate_token", name, None).await?;
        Ok(CreatedApplication {
            application: self.store.application_by_id(app.id).await?,
            webhook_token: token,
        })
    }
}

impl Service {
    /// Refuses host ports another application already publishes: the host proxy owns each
    /// published port for one application, and would refuse the second at deploy time.
    async fn check_host_ports_free(&self, app: &str, ports: &[PortMapping]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        for other in self.store.list_applications().await? {
            if other.name == app {
                continue;
            }
            if let Some(p) = ports.iter().find(|p| {
                other
                    .ports
                    .iter()
                    .any(|o| o.host == p.host && o.protocol == p.protocol)
            }) {
                return Err(Error::AlreadyExists(format!(
                    "host port {} is already published by app {}; two apps cannot share a host port (use a domain to share 80/443)",
                    p.host, other.name
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn validate_ports(ports: &[PortMapping]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for p in ports {
        if p.host == 0 || p.container == 0 {
            return Err(Error::invalid("ports must be between 1 and 65535"));
        }
        if p.protocol != "tcp" && p.protocol != "udp" {
            return Err(Error::invalid(format!(
                "port protocol must be tcp or udp, got {:?}",
                p.protocol
            )));
        }
        if !seen.insert((p.host, p.protocol.clone())) {
            return Err(Error::invalid(format!(
                "host port {}/{} is mapped twice",
                p.host, p.protocol
            )));
        }
    }
    Ok(())
}

fn validate_rollout(
    batch: Option<u32>,
    health: Option<&HealthCheckConfig>,
    restart: Option<&str>,
) -> Result<()> {
    if let Some(b) = batch {
        if !(1..=10_000).contains(&b) {
            return Err(Error::invalid(
                "deploy batch size must be between 1 and 10000",
            ));
        }
    }
    if let Some(h) = health {
        if h.kind != "http" && h.kind != "tcp" {
            return Err(Error::invalid(format!(
                "health check type must be http or tcp, got {:?}",
                h.kind
            )));
        }
        if h.port == 0 {
            return Err(Error::invalid(
                "health check port must be between 1 and 65535",
            ));
        }
        if let Some(path) = &h.path {
            if !path.starts_with('/')
                || path.len() > 512
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid(
                    "health check path must start with / and contain no spaces",
                ));
            }
        }
        if matches!(h.timeout_s, Some(t) if t == 0 || t > 3600) {
            return Err(Error::invalid(
                "health check timeout must be between 1 and 3600 seconds",
            ));
        }
    }
    if let Some(r) = restart {
        if !matches!(r, "no" | "always" | "unless-stopped" | "on-failure") {
            return Err(Error::invalid(format!(
                "restart policy must be no, always, unless-stopped or on-failure, got {r:?}"
            )));
        }
    }
    Ok(())
}

fn validate_targets(targets: &[Target]) -> Result<()> {
    for t in targets {
        match t {
            Target::Agent(name) => validate::name("agent", name)?,
            Target::Label { key, value } => {
                validate::name("label key", key)?;
                validate::name("label value", value)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::token_matches;
    use crate::service::testing::{admin, service, viewer};

    pub fn new_app(name: &str) -> ApplicationSpec {
        ApplicationSpec {
            name: name.to_string(),
            image: "mycompany/myapp".to_string(),
            version: Some("v1.0.0".to_string()),
            repository: None,
            ports: vec![PortMapping {
                host: 8080,
                container: 80,
                protocol: "tcp".into(),
            }],
            webhook_enabled: true,
            auto_deploy: false,
            targets: vec![],
            deploy_batch_size: None,
            health_check: None,
            restart_policy: None,
            drain_timeout_s: None,
            stop_timeout_s: None,
            stop_signal: None,
            cancel_in_progress: false,
        }
    }

    #[tokio::test]
    async fn the_webhook_token_is_shown_once_and_stored_as_a_digest() {
        let svc = service().await;
        let created = svc
            .create_application(&admin(), new_app("myapp"))
            .await
            .unwrap();
        let token = created.webhook_token.expose_secret().to_string();
        assert!(token.starts_with("whk_"));
        let stored = svc
            .store()
            .webhook_token_digest(created.application.id)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.contains(&token[4..]));
        assert!(token_matches(&created.webhook_token, &stored));
        let preview = created.application.webhook_token_prefix.unwrap();
        assert!(token.starts_with(preview.trim_end_matches('…')));

        let rotated = svc.rotate_webhook_token(&admin(), "myapp").await.unwrap();
        let stored = svc
            .store()
            .webhook_token_digest(created.application.id)
            .await
            .unwrap()
            .unwrap();
        assert!(!token_matches(&created.webhook_token, &stored));
        assert!(token_matches(&rotated.webhook_token, &stored));
    }

    #[tokio::test]
    async fn invalid_applications_are_refused() {
        let svc = service().await;
        let mut bad = new_app("myapp");
        bad.image = "Bad Image".into();
        assert!(svc.create_application(&admin(), bad).await.is_err());
        let mut bad = new_app("myapp");
        bad.ports.push(PortMapping {
            host: 8080,
            container: 81,
            protocol: "tcp".into(),
        });
        assert!(svc.create_application(&admin(), bad).await.is_err());
        let mut bad = new_app("myapp");
        bad.repository = Some("nope".into());
        assert!(svc.create_application(&admin(), bad).await.is_err());
        assert!(svc
            .create_application(&viewer(), new_app("myapp"))
            .await
            .is_err());
        assert!(svc.list_applications(&admin()).await.unwrap().is_empty());
        svc.create_application(&admin(), new_app("myapp"))
            .await
            .unwrap();
        assert!(svc
            .create_application(&admin(), new_app("myapp"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_host_port_published_by_another_app_is_refused() {
        let svc = service().await;
        svc.create_application(&admin(), new_app("web"))
            .await
            .unwrap();
        let e = svc
            .create_application(&admin(), new_app("api"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), crate::error::ErrorCode::AlreadyExists);
        assert!(
            e.to_string()
                .contains("host port 8080 is already published by app web"),
            "{e}"
        );
        assert!(e.to_string().contains("use a domain"), "{e}");
        let mut api = new_app("api");
        api.ports[0].host = 8081;
        svc.create_application(&admin(), api).await.unwrap();
        let taken = vec![PortMapping {
            host: 8080,
            container: 80,
            protocol: "tcp".into(),
        }];
        let update = |ports| ApplicationUpdate {
            ports: Some(ports),
            ..Default::default()
        };
        assert!(svc
            .update_application(&admin(), "api", update(taken.clone()))
            .await
            .is_err());
        assert_eq!(
            svc.store().application("api").await.unwrap().ports[0].host,
            8081
        );
        // Its own port, and the same number over udp, are not a conflict.
        svc.update_application(&admin(), "web", update(taken))
            .await
            .unwrap();
        let udp = vec![PortMapping {
            host: 8080,
            container: 53,
            protocol: "udp".into(),
        }];
        svc.update_application(&admin(), "api", update(udp))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stop_settings_are_validated_and_kept() {
        let svc = service().await;
        let created = svc
            .create_application(&admin(), new_app("web"))
            .await
            .unwrap();
        assert_eq!(created.application.stop, StopSettings::default());
        assert!(!created.application.cancel_in_progress);
        let mut bad = new_app("api");
        bad.ports.clear();
        bad.stop_signal = Some("TERM".into());
        assert!(svc.create_application(&admin(), bad).await.is_err());
        let mut bad = new_app("api");
        bad.ports.clear();
        bad.drain_timeout_s = Some(3601);
        assert!(svc.create_application(&admin(), bad).await.is_err());
        assert!(svc
            .update_application(
                &admin(),
                "web",
                ApplicationUpdate {
                    stop_timeout_s: Some(4000),
                    ..Default::default()
                }
            )
            .await
            .is_err());
        let updated = svc
            .update_application(
                &admin(),
                "web",
                ApplicationUpdate {
                    drain_timeout_s: Some(0),
                    stop_signal: Some("sigquit".into()),
                    cancel_in_progress: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            updated.stop,
            StopSettings {
                drain_timeout_s: 0,
                stop_timeout_s: 10,
                stop_signal: "SIGQUIT".into(),
            }
        );
        assert!(updated.cancel_in_progress);
        let reset = svc
            .update_application(
                &admin(),
                "web",
                ApplicationUpdate {
                    stop_signal: Some(String::new()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(reset.stop.stop_signal, "");
        assert!(reset.cancel_in_progress, "unchanged");
    }

    #[tokio::test]
    async fn update_changes_only_what_is_given() {
        let svc = service().await;
        svc.create_application(&admin(), new_app("myapp"))
            .await
            .unwrap();
        let updated = svc
            .update_application(
                &admin(),
                "myapp",
                ApplicationUpdate {
                    webhook_enabled: Some(false),
                    targets: Some(vec![Target::Label {
                        key: "env".into(),
                        value: "prod".into(),
                    }]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!updated.webhook_enabled);
        assert_eq!(updated.image, "mycompany/myapp");
        assert_eq!(updated.ports.len(), 1);
        assert_eq!(
            updated.targets,
            vec![Target::Label {
                key: "env".into(),
                value: "prod".into()
            }]
        );
    }
}
