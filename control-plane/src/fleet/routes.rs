//! Domain routes on the agents: after a domain is added or removed, the application's
//! whole domain list goes as a `RoutesCommand` to every connected agent the app targets; an
//! agent that registers a stream gets one `RoutesCommand` per app that targets it and has a
//! domain, so a host that was offline catches up. Deploy commands carry the same list
//! ([`Fleet::proxy_domains`]).
//!
//! Architecture invariant: a routes command always carries the app's complete list (never a
//! delta), so a lost or repeated one is repaired by the next. Decrypted keys exist only in the
//! commands themselves, whose `Debug` redacts them; nothing here logs a domain's key.

use std::collections::BTreeMap;

use berth_proto::v1 as pb;
use secrecy::ExposeSecret as _;

use super::Fleet;
use crate::error::Result;
use crate::model::{Application, Domain, Target};
use crate::service::domains::DomainSpec;
use crate::service::import::{ImportPlan, ImportReport};
use crate::service::Actor;

impl Fleet {
    /// `berth domain add`: adds the domain, then sends the app's routes to its connected
    /// targets. Returns the domain and how many agents were sent the routes.
    /// An ACME domain is routed over plain HTTP at once, and its first order starts.
    pub async fn add_domain(&self, actor: &Actor, spec: DomainSpec) -> Result<(Domain, usize)> {
        let domain = self.service().add_domain(actor, spec).await?;
        let notified = self.push_routes(domain.application_id).await?;
        if domain.acme.is_some() {
            self.wake_acme();
        }
        Ok((domain, notified))
    }

    /// `berth domain remove`: removes the domain, then sends the app's remaining routes.
    pub async fn remove_domain(&self, actor: &Actor, host: &str) -> Result<(Domain, usize)> {
        let domain = self.service().remove_domain(actor, host).await?;
        let notified = self.push_routes(domain.application_id).await?;
        Ok((domain, notified))
    }

    /// `berth import-v1`: imports, then sends the routes of every application that existed
    /// before and got a domain (a created one has no target yet). The import is committed by
    /// then, and its webhook tokens are shown once: a failed push is logged, not returned;
    /// the agent gets the routes at its next change or reconnect.
    pub async fn import_v1(
        &self,
        actor: &Actor,
        plan: &ImportPlan,
        dry_run: bool,
    ) -> Result<ImportReport> {
        let report = self.service().import_v1(actor, plan, dry_run).await?;
        for app in &report.routed_applications {
            if let Err(e) = self.push_routes(*app).await {
                tracing::warn!(application_id = app, error = %e, "cannot send the routes of an imported domain");
            }
        }
        Ok(report)
    }

    /// An application's domains as the host proxy takes them, keys decrypted.
    pub(super) async fn proxy_domains(&self, app: &Application) -> Result<Vec<pb::ProxyDomain>> {
        Ok(self
            .service()
            .routed_domains(app)
            .await?
            .into_iter()
            .map(|d| pb::ProxyDomain {
                host: d.host,
                container_port: d.container_port.into(),
                tls_cert_pem: d.certificate_pem.unwrap_or_default(),
                tls_key_pem: d
                    .private_key_pem
                    .map(|k| k.expose_secret().to_string())
                    .unwrap_or_default(),
            })
            .collect())
    }

    async fn routes_command(&self, app: &Application) -> Result<pb::ControlMessage> {
        Ok(pb::ControlMessage {
            msg: Some(pb::control_message::Msg::Routes(pb::RoutesCommand {
                app: app.name.clone(),
                domains: self.proxy_domains(app).await?,
            })),
        })
    }

    /// Sends an application's routes to each of its connected targets; returns how many
    /// took them. An agent not connected now gets them when it registers.
    pub(crate) async fn push_routes(&self, application_id: i64) -> Result<usize> {
        let store = self.service().store();
        let app = store.application_by_id(application_id).await?;
        let targets = self.connected_targets(&app).await?;
        if targets.is_empty() {
            return Ok(0);
        }
        let command = self.routes_command(&app).await?;
        let mut sent = 0;
        for agent in &targets {
            if self.send(agent, command.clone()) {
                sent += 1;
            } else {
                tracing::warn!(agent = %agent, app = %app.name, "cannot queue routes; the agent gets them when it reconnects");
            }
        }
        tracing::info!(app = %app.name, agents = sent, "routes sent");
        Ok(sent)
    }

    /// The app's targets that are connected now.
    pub(super) async fn connected_targets(&self, app: &Application) -> Result<Vec<String>> {
        let only_agent = self.only_enrolled_agent(app).await?;
        Ok(self
            .connected_labels()
            .into_iter()
            .filter(|(name, labels)| targets_agent(app, name, labels, only_agent.as_deref()))
            .map(|(name, _)| name)
            .collect())
    }

    /// After an agent registered a stream: the routes of every app that targets it and has
    /// a domain. Failures are logged; the stream stays up (the next change or reconnect
    /// sends them again).
    pub(super) async fn send_routes_on_connect(
        &self,
        agent: &str,
        labels: &BTreeMap<String, String>,
    ) {
        if let Err(e) = self.try_send_routes_on_connect(agent, labels).await {
            tracing::error!(agent, error = %e, "cannot send routes to a connecting agent");
        }
    }

    async fn try_send_routes_on_connect(
        &self,
        agent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let store = self.service().store();
        for &application_id in store.applications_with_domains().await?.iter() {
            let app = store.application_by_id(application_id).await?;
            let only_agent = self.only_enrolled_agent(&app).await?;
            if targets_agent(&app, agent, labels, only_agent.as_deref()) {
                let command = self.routes_command(&app).await?;
                if !self.send(agent, command) {
                    tracing::warn!(agent, app = %app.name, "cannot queue routes for a connecting agent");
                }
            }
        }
        Ok(())
    }

    /// For an app without targets: the only enrolled agent, which then runs it (as
    /// `select_targets` decides for a deploy).
    async fn only_enrolled_agent(&self, app: &Application) -> Result<Option<String>> {
        if !app.targets.is_empty() {
            return Ok(None);
        }
        let agents = self.service().store().target_agents(None, None).await?;
        Ok(match <[String; 1]>::try_from(agents) {
            Ok([only]) => Some(only),
            Err(_) => None,
        })
    }
}

/// Whether an app runs on this agent: named, matched by a label, or, with no targets, the
/// only enrolled agent.
fn targets_agent(
    app: &Application,
    agent: &str,
    labels: &BTreeMap<String, String>,
    only_agent: Option<&str>,
) -> bool {
    if app.targets.is_empty() {
        return only_agent == Some(agent);
    }
    app.targets.iter().any(|t| match t {
        Target::Agent(name) => name == agent,
        Target::Label { key, value } => labels.get(key) == Some(value),
    })
}
