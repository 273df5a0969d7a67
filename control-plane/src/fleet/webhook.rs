//! What the webhook RPC does: every check the seed's
//! `POST /webhook/deploy` made, in the seed's order, done here and not in the shim, so
//! nobody can skip a check by calling the RPC directly.
//!
//! The caller (the shim) authenticates with an API key of role `webhook`; the CI caller
//! behind it authenticates with one application's token, compared as a digest in constant
//! time. A token only ever deploys its own application, and only the version is chosen by
//! the caller: image, ports and environment are the registered application's.
//!
//! Registry notifications authenticate the same way: the shim forwards the secret the
//! registry presented, and the control plane compares it with its own
//! [`RegistrySecret`] (configured on the control plane, off by default, at least
//! [`RegistrySecret::MIN_CHARS`] characters). The shim holds no registry secret, so a
//! webhook-role key calling `RegistryPush` directly needs the same secret as the HTTP route.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use super::{DeployTrigger, Fleet};
use crate::crypto::token_matches;
use crate::error::{Error, Result};
use crate::model::DeploymentLog;
use crate::service::{Actor, Permission};
use crate::store::WebhookGate;
use crate::validate;

/// The seed's 400 message, word for word.
pub const MISSING_FIELDS: &str =
    "Missing required fields: (applicationId or applicationName), version, token";
/// The seed's 404 message, word for word.
pub const APPLICATION_NOT_FOUND: &str =
    "Application not found. Please register the application first.";
/// The seed's 401 message, word for word.
pub const INVALID_TOKEN: &str = "Invalid webhook token";
pub const DEPLOYMENT_NOT_FOUND: &str = "Deployment not found";
/// The admin port cancels calls after 60 s; a waiting deploy answers before that.
pub const MAX_WAIT: Duration = Duration::from_secs(50);
/// Events one registry notification may carry (distribution sends a handful at most).
pub const MAX_REGISTRY_EVENTS: usize = 100;
/// Characters of a refused token that may reach the log: "whk_" and four more.
const LOGGED_TOKEN_CHARS: usize = 8;

/// `POST /webhook/registry` while the control plane has no registry secret.
pub const REGISTRY_NOT_ENABLED: &str = "registry notifications are not enabled: start the control plane with --registry-secret-file (BERTH_REGISTRY_NOTIFY_SECRET_FILE)";
pub const INVALID_REGISTRY_SECRET: &str = "Invalid registry notification secret";

/// The shared secret registries present as `Authorization: Bearer <secret>`. Held
/// as a digest only; compared in constant time; never printed.
#[derive(Clone)]
pub struct RegistrySecret {
    digest: String,
}

impl RegistrySecret {
    /// Shortest secret accepted: an empty or guessable one would open the route to anyone.
    pub const MIN_CHARS: usize = 16;

    /// The secret as configured (surrounding whitespace, such as a file's final newline, is
    /// not part of it). Refuses an empty, whitespace-only or short secret, and characters a
    /// registry cannot send in a header.
    pub fn new(secret: &SecretString) -> Result<Self> {
        let text = secret.expose_secret().trim();
        if text.is_empty() {
            return Err(Error::invalid(
                "the registry notification secret is empty; it would let anyone deploy: set one of at least 16 characters (e.g. openssl rand -hex 32)",
            ));
        }
        if !text.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::invalid(
                "the registry notification secret must be printable ASCII without spaces (it travels in an Authorization header)",
            ));
        }
        if text.len() < Self::MIN_CHARS {
            return Err(Error::invalid(format!(
                "the registry notification secret is {} characters long; at least {} are required (e.g. openssl rand -hex 32)",
                text.len(),
                Self::MIN_CHARS
            )));
        }
        Ok(RegistrySecret {
            digest: crate::crypto::token_digest(text),
        })
    }

    /// Whether a registry presented this secret (constant time; an empty one never matches).
    pub fn matches(&self, presented: &SecretString) -> bool {
        !presented.expose_secret().is_empty() && token_matches(presented, &self.digest)
    }
}

impl std::fmt::Debug for RegistrySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistrySecret(<redacted>)")
    }
}

/// The seed's 403 message, word for word.
pub fn webhook_disabled(app: &str) -> String {
    format!("Webhook deployment is disabled for application \"{app}\"")
}

/// How the CI caller names the application (the seed's `applicationId` / `applicationName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplicationRef {
    Id(i64),
    Name(String),
}

/// One `POST /webhook/deploy`, as the shim forwards it.
pub struct WebhookDeploy {
    pub application: Option<ApplicationRef>,
    pub version: String,
    pub token: SecretString,
    /// The CI caller, after the shim's trusted-proxy rules: the deployment's trigger source.
    pub client_ip: IpAddr,
    /// Wait (at most this long, capped at [`MAX_WAIT`]) for the deployment to finish.
    pub wait: Option<Duration>,
}

/// A deployment as the webhook reports it.
#[derive(Debug, Clone)]
pub struct WebhookDeployment {
    pub log: DeploymentLog,
    pub application_id: i64,
    pub application_name: String,
}

impl WebhookDeployment {
    pub fn finished(&self) -> bool {
        self.log.status.is_finished()
    }
}

/// One pushed tag from a registry notification.
#[derive(Debug, Clone)]
pub struct RegistryPush {
    /// The registry's host[:port] as the pusher addressed it.
    pub host: String,
    pub repository: String,
    pub tag: String,
}

/// What a registry notification started.
#[derive(Debug, Default)]
pub struct RegistryOutcome {
    pub started: Vec<WebhookDeployment>,
    pub ignored: u32,
}

impl Fleet {
    /// The seed's webhook deploy: 400 missing fields, 404 unknown application, 403 webhook
    /// disabled, 401 wrong token, then a deployment with `trigger_type = webhook`.
    pub async fn webhook_deploy(
        &self,
        actor: &Actor,
        request: WebhookDeploy,
    ) -> Result<WebhookDeployment> {
        actor.require(Permission::WebhookDeploy)?;
        let named = match &request.application {
            Some(ApplicationRef::Id(id)) => *id > 0,
            Some(ApplicationRef::Name(name)) => !name.is_empty(),
            None => false,
        };
        if !named || request.version.is_empty() || request.token.expose_secret().is_empty() {
            return Err(Error::invalid(MISSING_FIELDS));
        }
        validate::version(&request.version)?;
        // One read decides 404, 403 and 401; the application itself is read only for a
        // caller that holds its token (a flood of wrong tokens costs one read each).
        let gate = self
            .webhook_gate(request.application.as_ref().expect("checked above"))
            .await?;
        self.check_webhook_token(&gate, &request.token, request.client_ip)
            .await?;
        let app = self.service().store().application_by_id(gate.id).await?;
        let trigger = DeployTrigger {
            trigger_type: "webhook",
            source: Some(request.client_ip.to_string()),
            cancel_in_progress: false,
        };
        let actor_name = format!("webhook:{}", request.client_ip);
        let admitted = self
            .start_deployment(&actor_name, app.clone(), &request.version, trigger)
            .await?;
        // Without `wait`, the answer is the row as admitted: nothing is read back.
        let log = match request.wait {
            Some(wait) if !admitted.status.is_finished() => {
                self.wait_finished(&admitted.deployment_id, wait.min(MAX_WAIT))
                    .await?
            }
            _ => admitted,
        };
        Ok(WebhookDeployment {
            log,
            application_id: app.id,
            application_name: app.name,
        })
    }

    /// `GET /webhook/deployments/{id}`: readable with the token of the deployment's
    /// application only.
    pub async fn webhook_status(
        &self,
        actor: &Actor,
        deployment_id: &str,
        token: &SecretString,
        client_ip: IpAddr,
    ) -> Result<WebhookDeployment> {
        actor.require(Permission::WebhookDeploy)?;
        if deployment_id.is_empty() || token.expose_secret().is_empty() {
            return Err(Error::invalid(
                "Missing required fields: deploymentId, token",
            ));
        }
        let store = self.service().store();
        let log = match store.deployment(deployment_id).await {
            Ok((log, _)) => log,
            Err(Error::NotFound(_)) => return Err(Error::not_found(DEPLOYMENT_NOT_FOUND)),
            Err(e) => return Err(e),
        };
        let gate = store
            .webhook_gate_by_id(log.application_id)
            .await?
            .ok_or_else(|| Error::not_found(DEPLOYMENT_NOT_FOUND))?;
        self.check_webhook_token(&gate, token, client_ip).await?;
        Ok(WebhookDeployment {
            log,
            application_id: gate.id,
            application_name: gate.name,
        })
    }

    /// deploys each pushed tag to the `auto_deploy` applications whose image is the
    /// pushed repository. Tags that are not valid versions, repositories nothing uses, and
    /// repeats of a deployment still in progress are counted as ignored. Nothing is read
    /// before `secret` (what the registry presented) is checked: refused when this control
    /// plane has no registry secret (not found) or it differs (unauthenticated, audited).
    pub async fn registry_push(
        &self,
        actor: &Actor,
        secret: &SecretString,
        pushes: &[RegistryPush],
        client_ip: IpAddr,
    ) -> Result<RegistryOutcome> {
        actor.require(Permission::WebhookDeploy)?;
        self.check_registry_secret(secret, client_ip).await?;
        // A registry may deliver the same push in several notifications at once: the check
        // "already deploying this tag" and the start of the deployment must not interleave.
        static REGISTRY_PUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _serialized = REGISTRY_PUSHES.lock().await;
        if pushes.len() > MAX_REGISTRY_EVENTS {
            return Err(Error::invalid(format!(
                "a notification may carry at most {MAX_REGISTRY_EVENTS} push events"
            )));
        }
        let store = self.service().store();
        let mut candidates = Vec::new();
        for app in store
            .list_applications()
            .await?
            .into_iter()
            .filter(|a| a.auto_deploy)
        {
            let registry = match &app.repository {
                Some(name) => Some(registry_host(&store.repository(name).await?.url)),
                None => None,
            };
            candidates.push((app, registry));
        }
        let mut outcome = RegistryOutcome::default();
        let mut seen = HashSet::new();
        for push in pushes {
            if validate::version(&push.tag).is_err() {
                tracing::info!(repository = %push.repository, "registry push of a tag that is not a valid version; ignored");
                outcome.ignored += 1;
                continue;
            }
            let mut matched = false;
            for (app, registry) in &candidates {
                if !image_matches(
                    &app.image,
                    registry.as_deref(),
                    &push.host,
                    &push.repository,
                ) {
                    continue;
                }
                matched = true;
                if !seen.insert((app.id, push.tag.clone()))
                    || self.deploying(app.id, &push.tag).await?
                {
                    outcome.ignored += 1;
                    continue;
                }
                let trigger = DeployTrigger {
                    trigger_type: "registry",
                    source: Some(format!("{}/{}:{}", push.host, push.repository, push.tag)),
                    cancel_in_progress: false,
                };
                let log = self
                    .start_deployment(
                        &format!("registry:{client_ip}"),
                        app.clone(),
                        &push.tag,
                        trigger,
                    )
                    .await?;
                outcome.started.push(WebhookDeployment {
                    log,
                    application_id: app.id,
                    application_name: app.name.clone(),
                });
            }
            if !matched {
                outcome.ignored += 1;
            }
        }
        Ok(outcome)
    }

    /// Looks the application up by id or name. Anything that cannot be a registered
    /// application (a unicode or overlong name) is simply not found.
    /// The named application's webhook gate: 404 unknown, 403 webhook disabled.
    async fn webhook_gate(&self, reference: &ApplicationRef) -> Result<WebhookGate> {
        let store = self.service().store();
        let found = match reference {
            ApplicationRef::Id(id) => store.webhook_gate_by_id(*id).await?,
            ApplicationRef::Name(name) if validate::name("application", name).is_ok() => {
                store.webhook_gate_by_name(name).await?
            }
            ApplicationRef::Name(_) => None,
        };
        let gate = found.ok_or_else(|| Error::not_found(APPLICATION_NOT_FOUND))?;
        if !gate.webhook_enabled {
            return Err(Error::PermissionDenied(webhook_disabled(&gate.name)));
        }
        Ok(gate)
    }

    /// Compares the presented token with the application's stored digest in constant time.
    /// A refusal is audited with the client IP and logged with at most the token's first
    /// eight characters.
    async fn check_webhook_token(
        &self,
        app: &WebhookGate,
        token: &SecretString,
        client_ip: IpAddr,
    ) -> Result<()> {
        if app
            .webhook_token
            .as_deref()
            .is_some_and(|d| token_matches(token, d))
        {
            return Ok(());
        }
        let prefix: String = token
            .expose_secret()
            .chars()
            .take(LOGGED_TOKEN_CHARS)
            .collect();
        let first = self
            .audit_refusal(
                &format!("webhook:{client_ip}"),
                "webhook.token_refused",
                &app.name,
                &format!("client {client_ip}"),
            )
            .await?;
        if first {
            tracing::warn!(app = %app.name, %client_ip, token_prefix = %prefix, "webhook token refused (more from this client within 10 s are counted in the audit log)");
        }
        Err(Error::Unauthenticated(INVALID_TOKEN.to_string()))
    }

    /// The registry notification secret, checked like a webhook token: a refusal is logged
    /// and audited with the client IP, never with what was presented.
    async fn check_registry_secret(&self, secret: &SecretString, client_ip: IpAddr) -> Result<()> {
        let Some(expected) = &self.inner.config.registry_secret else {
            return Err(Error::not_found(REGISTRY_NOT_ENABLED));
        };
        if expected.matches(secret) {
            return Ok(());
        }
        let first = self
            .audit_refusal(
                &format!("registry:{client_ip}"),
                "registry.secret_refused",
                "registry",
                &format!("client {client_ip}"),
            )
            .await?;
        if first {
            tracing::warn!(%client_ip, "registry notification secret refused (more from this client within 10 s are counted in the audit log)");
        }
        Err(Error::Unauthenticated(INVALID_REGISTRY_SECRET.to_string()))
    }

    /// Whether the application's latest deployment is this version and still in progress
    /// (a registry re-sending the same notification).
    async fn deploying(&self, app_id: i64, version: &str) -> Result<bool> {
        let latest = self.service().store().recent_deployments(app_id, 1).await?;
        Ok(latest
            .first()
            .is_some_and(|d| d.version == version && !d.status.is_finished()))
    }
}

/// `https://reg.example.com:5000/` -> `reg.example.com:5000`.
fn registry_host(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Whether an application's image is the pushed repository: its image is `repository` in a
/// registry at `host`, or its image is the full `host/repository`.
fn image_matches(image: &str, registry: Option<&str>, host: &str, repository: &str) -> bool {
    if registry.is_some_and(|r| r.eq_ignore_ascii_case(host)) && image == repository {
        return true;
    }
    image
        .split_once('/')
        .is_some_and(|(h, rest)| h.eq_ignore_ascii_case(host) && rest == repository)
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::fleet::FleetConfig;
    use crate::pki::Pki;
    use crate::service::applications::tests::new_app;
    use crate::service::testing::{admin, service, viewer};
    use crate::service::Role;
    use std::sync::Arc;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

    const REGISTRY_SECRET: &str = "0123456789abcdef-registry";

    async fn fleet() -> (Fleet, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let config = FleetConfig {
            registry_secret: Some(RegistrySecret::new(&secret(REGISTRY_SECRET)).unwrap()),
            ..FleetConfig::default()
        };
        (Fleet::new(service().await, Arc::new(pki), config), dir)
    }

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    fn shim() -> Actor {
        Actor {
            name: "apikey:shim".into(),
            role: Role::Webhook,
        }
    }

    fn request(app: ApplicationRef, version: &str, token: &str) -> WebhookDeploy {
        WebhookDeploy {
            application: Some(app),
            version: version.into(),
            token: SecretString::from(token.to_string()),
            client_ip: IP,
            wait: None,
        }
    }

    fn code(r: Result<WebhookDeployment>) -> (ErrorCode, String) {
        let e = r.unwrap_err();
        (e.code(), e.to_string())
    }

    #[tokio::test]
    async fn the_seed_checks_come_in_the_seed_order_with_the_seed_messages() {
        let (fleet, _dir) = fleet().await;
        let svc = fleet.service().clone();
        let a = svc
            .create_application(&admin(), new_app("app-a"))
            .await
            .unwrap();
        // Two apps cannot publish the same host port.
        let mut app_b = new_app("app-b");
        app_b.ports.clear();
        let b = svc.create_application(&admin(), app_b).await.unwrap();
        let token_a = a.webhook_token.expose_secret().to_string();
        let token_b = b.webhook_token.expose_secret().to_string();

        let mut missing = request(ApplicationRef::Name("app-a".into()), "v1", &token_a);
        missing.application = None;
        assert_eq!(
            code(fleet.webhook_deploy(&shim(), missing).await),
            (ErrorCode::InvalidArgument, MISSING_FIELDS.into())
        );
        let empty = request(ApplicationRef::Name("app-a".into()), "", &token_a);
        assert_eq!(
            code(fleet.webhook_deploy(&shim(), empty).await).0,
            ErrorCode::InvalidArgument
        );
        for bad in ["v1;rm -rf /", "../etc", "v1\n", "-v1"] {
            let r = fleet
                .webhook_deploy(
                    &shim(),
                    request(ApplicationRef::Name("app-a".into()), bad, &token_a),
                )
                .await;
            assert_eq!(code(r).0, ErrorCode::InvalidArgument, "{bad:?}");
        }
        for unknown in [
            ApplicationRef::Name("nope".into()),
            ApplicationRef::Name("приложение".into()),
            ApplicationRef::Id(999),
        ] {
            let r = fleet
                .webhook_deploy(&shim(), request(unknown, "v1", &token_a))
                .await;
            assert_eq!(code(r), (ErrorCode::NotFound, APPLICATION_NOT_FOUND.into()));
        }
        // App A's token does not open app B.
        let r = fleet
            .webhook_deploy(
                &shim(),
                request(ApplicationRef::Id(b.application.id), "v1", &token_a),
            )
            .await;
        assert_eq!(code(r), (ErrorCode::Unauthenticated, INVALID_TOKEN.into()));
        let audit = svc.store().list_audit(10).await.unwrap();
        let refusal = audit
            .iter()
            .find(|e| e.action == "webhook.token_refused")
            .expect("refusal audited");
        assert_eq!(refusal.actor, format!("webhook:{IP}"));
        assert!(
            !format!("{audit:?}").contains(&token_a[4..]),
            "no token in the audit log"
        );

        let update = crate::service::applications::ApplicationUpdate {
            webhook_enabled: Some(false),
            ..Default::default()
        };
        svc.update_application(&admin(), "app-b", update)
            .await
            .unwrap();
        let r = fleet
            .webhook_deploy(
                &shim(),
                request(ApplicationRef::Name("app-b".into()), "v1", &token_b),
            )
            .await;
        assert_eq!(
            code(r),
            (
                ErrorCode::PermissionDenied,
                "Webhook deployment is disabled for application \"app-b\"".into()
            )
        );

        // Only the shim's role (or an admin) may call it.
        let r = fleet
            .webhook_deploy(
                &viewer(),
                request(ApplicationRef::Name("app-a".into()), "v1", &token_a),
            )
            .await;
        assert_eq!(code(r).0, ErrorCode::PermissionDenied);
        assert!(
            svc.store()
                .recent_deployments(a.application.id, 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing written"
        );
    }

    /// The gate is answered from memory (issue 11); every change to who may deploy is in
    /// force for the very next request, by name and by id: a new application, a rotated
    /// token, a disabled webhook, a deleted application.
    #[tokio::test]
    async fn a_remembered_gate_follows_every_change_at_once() {
        let (fleet, _dir) = fleet().await;
        let svc = fleet.service().clone();
        let wrong = "bwt_not-the-token-of-any-application";
        let by_name = || ApplicationRef::Name("late".into());
        let shim = shim();
        let try_deploy = |app: ApplicationRef, token: &str| {
            let mut r = request(app, "v1", token);
            r.wait = Some(Duration::from_secs(5));
            fleet.webhook_deploy(&shim, r)
        };
        // Unknown, twice (the second answer comes from memory).
        for _ in 0..2 {
            assert_eq!(
                code(try_deploy(by_name(), wrong).await).0,
                ErrorCode::NotFound
            );
        }
        let created = svc
            .create_application(&admin(), new_app("late"))
            .await
            .unwrap();
        let by_id = || ApplicationRef::Id(created.application.id);
        let first = created.webhook_token.expose_secret().to_string();
        for app in [by_name(), by_id(), by_name(), by_id()] {
            assert_eq!(
                code(try_deploy(app, wrong).await).0,
                ErrorCode::Unauthenticated
            );
        }
        try_deploy(by_name(), &first).await.unwrap();

        let rotated = svc.rotate_webhook_token(&admin(), "late").await.unwrap();
        let second = rotated.webhook_token.expose_secret().to_string();
        for app in [by_name(), by_id()] {
            assert_eq!(
                code(try_deploy(app, &first).await).0,
                ErrorCode::Unauthenticated
            );
        }
        try_deploy(by_id(), &second).await.unwrap();

        let disable = crate::service::applications::ApplicationUpdate {
            webhook_enabled: Some(false),
            ..Default::default()
        };
        svc.update_application(&admin(), "late", disable)
            .await
            .unwrap();
        for app in [by_name(), by_id()] {
            assert_eq!(
                code(try_deploy(app, &second).await).0,
                ErrorCode::PermissionDenied
            );
        }

        svc.delete_application(&admin(), "late").await.unwrap();
        for app in [by_name(), by_id()] {
            assert_eq!(code(try_deploy(app, &second).await).0, ErrorCode::NotFound);
        }
    }

    #[tokio::test]
    async fn a_valid_token_starts_a_webhook_deployment_from_the_client_ip() {
        let (fleet, _dir) = fleet().await;
        let a = fleet
            .service()
            .create_application(&admin(), new_app("app-a"))
            .await
            .unwrap();
        let token = a.webhook_token.expose_secret().to_string();
        // No agent is enrolled: the deployment is recorded and fails before dispatch.
        let mut r = request(ApplicationRef::Name("app-a".into()), "v1.2.3", &token);
        r.wait = Some(Duration::from_secs(5));
        let done = fleet.webhook_deploy(&shim(), r).await.unwrap();
        assert!(done.finished());
        assert_eq!(done.log.status, "failed");
        assert_eq!(done.log.trigger_type, "webhook");
        assert_eq!(done.log.trigger_source.as_deref(), Some("203.0.113.7"));
        assert_eq!(
            (done.application_id, done.application_name.as_str()),
            (a.application.id, "app-a")
        );

        let id = done.log.deployment_id.clone();
        let status = fleet
            .webhook_status(&shim(), &id, &SecretString::from(token.clone()), IP)
            .await
            .unwrap();
        assert_eq!(status.log.deployment_id, id);
        let mut app_b = new_app("app-b");
        app_b.ports.clear();
        let other = fleet
            .service()
            .create_application(&admin(), app_b)
            .await
            .unwrap();
        let wrong = fleet
            .webhook_status(&shim(), &id, &other.webhook_token, IP)
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), ErrorCode::Unauthenticated);
        let missing = fleet
            .webhook_status(&shim(), "nope", &other.webhook_token, IP)
            .await
            .unwrap_err();
        assert_eq!(missing.code(), ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn registry_pushes_deploy_auto_deploy_applications_of_that_image_only() {
        let (fleet, _dir) = fleet().await;
        let svc = fleet.service().clone();
        svc.add_repository(&admin(), "reg", "http://127.0.0.1:5000", None, None)
            .await
            .unwrap();
        let mut auto = new_app("auto");
        auto.image = "web".into();
        auto.repository = Some("reg".into());
        auto.auto_deploy = true;
        svc.create_application(&admin(), auto).await.unwrap();
        let mut manual = new_app("manual");
        manual.image = "web".into();
        manual.repository = Some("reg".into());
        manual.ports[0].host = 8081;
        svc.create_application(&admin(), manual).await.unwrap();
        let mut full = new_app("full");
        full.image = "127.0.0.1:5000/web".into();
        full.auto_deploy = true;
        full.ports[0].host = 8082;
        svc.create_application(&admin(), full).await.unwrap();

        let push = |repository: &str, tag: &str| RegistryPush {
            host: "127.0.0.1:5000".into(),
            repository: repository.into(),
            tag: tag.into(),
        };
        let outcome = fleet
            .registry_push(
                &shim(),
                &secret(REGISTRY_SECRET),
                &[
                    push("web", "v7"),
                    push("web", "v7"),
                    push("other", "v1"),
                    push("web", "bad;tag"),
                ],
                IP,
            )
            .await
            .unwrap();
        let mut names: Vec<&str> = outcome
            .started
            .iter()
            .map(|d| d.application_name.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["auto", "full"]);
        assert!(outcome
            .started
            .iter()
            .all(|d| d.log.trigger_type == "registry" && d.log.version == "v7"));
        assert_eq!(outcome.ignored, 4);
        let manual_id = svc.store().application("manual").await.unwrap().id;
        assert!(svc
            .store()
            .recent_deployments(manual_id, 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_registry_push_needs_the_control_planes_own_secret() {
        let (fleet, _dir) = fleet().await;
        let svc = fleet.service().clone();
        let mut auto = new_app("auto");
        auto.image = "127.0.0.1:5000/web".into();
        auto.auto_deploy = true;
        let app = svc.create_application(&admin(), auto).await.unwrap();
        let push = [RegistryPush {
            host: "127.0.0.1:5000".into(),
            repository: "web".into(),
            tag: "v7".into(),
        }];
        for presented in ["", "wrong-but-long-enough-secret", &REGISTRY_SECRET[..16]] {
            let e = fleet
                .registry_push(&shim(), &secret(presented), &push, IP)
                .await
                .unwrap_err();
            assert_eq!(
                (e.code(), e.to_string()),
                (ErrorCode::Unauthenticated, INVALID_REGISTRY_SECRET.into()),
                "{presented:?}"
            );
        }
        // One row at the first refusal; the two after it in the same window become one
        // counted row when the window closes (here: the node stops).
        let refused = |audit: &[crate::store::AuditEntry]| -> Vec<crate::store::AuditEntry> {
            audit
                .iter()
                .filter(|e| e.action == "registry.secret_refused")
                .cloned()
                .collect()
        };
        let audit = svc.store().list_audit(10).await.unwrap();
        assert_eq!(refused(&audit).len(), 1);
        fleet.flush_refusals(true).await;
        let audit = svc.store().list_audit(10).await.unwrap();
        let refusals = refused(&audit);
        assert_eq!(refusals.len(), 2);
        assert_eq!(refusals[0].actor, format!("registry:{IP}"));
        assert!(
            refusals[0]
                .details
                .as_deref()
                .unwrap()
                .starts_with("2 more refusals"),
            "{refusals:?}"
        );
        assert!(!format!("{audit:?}").contains("wrong-but-long"));

        // A control plane without a secret refuses every notification, an empty one too.
        let (unconfigured, _dir2) = {
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
            let fleet = Fleet::new(svc.clone(), Arc::new(pki), FleetConfig::default());
            (fleet, dir)
        };
        for presented in ["", REGISTRY_SECRET] {
            let e = unconfigured
                .registry_push(&shim(), &secret(presented), &push, IP)
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::NotFound, "{presented:?}");
        }
        assert!(svc
            .store()
            .recent_deployments(app.application.id, 10)
            .await
            .unwrap()
            .is_empty());

        // The right secret (whitespace around it is not part of it) deploys.
        let outcome = fleet
            .registry_push(&shim(), &secret(REGISTRY_SECRET), &push, IP)
            .await
            .unwrap();
        assert_eq!(outcome.started.len(), 1);
    }

    #[test]
    fn an_empty_blank_or_short_registry_secret_is_refused() {
        for bad in [
            "",
            "   ",
            "\n\t \n",
            "short-secret",
            "fifteen-chars-x",
            "has a space in it ok",
        ] {
            let e = RegistrySecret::new(&secret(bad)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
        let padded = RegistrySecret::new(&secret(&format!("  {REGISTRY_SECRET}\n"))).unwrap();
        assert!(padded.matches(&secret(REGISTRY_SECRET)));
        assert!(!padded.matches(&secret("")));
        assert!(!format!("{padded:?}").contains(REGISTRY_SECRET));
        assert!(RegistrySecret::new(&secret("sixteen-chars-xx")).is_ok());
    }

    #[test]
    fn images_match_by_registry_and_repository() {
        assert!(image_matches(
            "web",
            Some("127.0.0.1:5000"),
            "127.0.0.1:5000",
            "web"
        ));
        assert!(image_matches(
            "127.0.0.1:5000/team/web",
            None,
            "127.0.0.1:5000",
            "team/web"
        ));
        assert!(!image_matches("web", None, "127.0.0.1:5000", "web"));
        assert!(!image_matches(
            "web",
            Some("127.0.0.1:5001"),
            "127.0.0.1:5000",
            "web"
        ));
        assert!(!image_matches(
            "webx",
            Some("127.0.0.1:5000"),
            "127.0.0.1:5000",
            "web"
        ));
        assert_eq!(
            registry_host("https://Reg.example.com:5000/"),
            "Reg.example.com:5000"
        );
    }
}
