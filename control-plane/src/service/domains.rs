//! Domains: host names the host proxy routes to an application, on its 80/443, with
//! plain HTTP, TLS from a certificate and key given by an admin, or TLS from a certificate the
//! control plane obtains from an ACME CA ([`acme`]: its state and schedule; the protocol is
//! `crate::acme`). Adding one checks the host name, that no other application has it, the
//! container port, and the certificate (see [`certificate`]), before anything is written.
//!
//! Architecture invariant: the private key is encrypted before it reaches the store and is
//! decrypted only into a [`SecretString`] on its way to an agent ([`Service::routed_domains`]);
//! no error, audit row or log line carries it. Pushing the routes to agents is the fleet's
//! job (`fleet/routes.rs`), not this module's.

pub mod acme;
pub(crate) mod certificate;

use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, Permission, Service};
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{Application, Domain, NewDomain, TlsMode};
use crate::validate;

/// What an admin asks for.
#[derive(Debug)]
pub struct DomainSpec {
    pub app: String,
    pub host: String,
    /// 0: the app's first container port.
    pub container_port: u32,
    pub tls: DomainTls,
}

/// How a new domain gets its HTTPS.
#[derive(Debug)]
pub enum DomainTls {
    /// Plain HTTP only.
    None,
    /// A certificate and key given by an admin.
    Files(TlsFiles),
    /// A certificate the control plane obtains (and renews) from its ACME CA; plain HTTP until
    /// the first one is issued.
    Acme,
}

/// A certificate chain (PEM, leaf first) and its private key (PEM).
pub struct TlsFiles {
    pub certificate_pem: String,
    pub private_key_pem: SecretString,
}

impl TlsFiles {
    /// Both given: TLS from files; both empty: plain HTTP; one alone is refused.
    pub fn from_parts(
        certificate_pem: String,
        private_key_pem: SecretString,
    ) -> Result<Option<Self>> {
        match (certificate_pem.is_empty(), private_key_pem.expose_secret().is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(TlsFiles {
                certificate_pem,
                private_key_pem,
            })),
            (false, true) => Err(Error::invalid(
                "a certificate was given without its key: give both --tls-cert and --tls-key, or neither for plain http",
            )),
            (true, false) => Err(Error::invalid(
                "a key was given without its certificate: give both --tls-cert and --tls-key, or neither for plain http",
            )),
        }
    }
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").finish_non_exhaustive()
    }
}

/// A domain as the host proxy is told it: the container port resolved, the key decrypted.
pub struct RoutedDomain {
    pub host: String,
    /// The app's container port HTTP requests for this host go to (0 only when the app has
    /// no port at all).
    pub container_port: u16,
    pub certificate_pem: Option<String>,
    pub private_key_pem: Option<SecretString>,
}

impl Service {
    pub async fn add_domain(&self, actor: &Actor, spec: DomainSpec) -> Result<Domain> {
        actor.require(Permission::Write)?;
        let host = validate::host_name(&spec.host)?;
        let app = self.store.application(&spec.app).await?;
        if let Some(existing) = self.store.domain(&host).await? {
            return Err(Error::AlreadyExists(format!(
                "domain {host} is already routed to app {}: remove it first (`berth domain remove {host}`) or see `berth domain list`",
                existing.app_name
            )));
        }
        let container_port = container_port(&app, spec.container_port)?;
        let (tls_mode, certificate_pem, private_key, not_after) = match spec.tls {
            DomainTls::None => (TlsMode::None, None, None, None),
            DomainTls::Acme => (TlsMode::Acme, None, None, None),
            DomainTls::Files(files) => {
                let checked = certificate::check(
                    &host,
                    &files.certificate_pem,
                    &files.private_key_pem,
                    time::OffsetDateTime::now_utc(),
                )?;
                let ciphertext = self
                    .key
                    .encrypt(
                        files.private_key_pem.expose_secret().as_bytes(),
                        &Aad::domain_private_key(&host),
                    )
                    .await?;
                (
                    TlsMode::Files,
                    Some(files.certificate_pem),
                    Some(ciphertext),
                    Some(checked.not_after),
                )
            }
        };
        let domain = self
            .store
            .insert_domain(&NewDomain {
                application_id: app.id,
                host: host.clone(),
                container_port,
                tls_mode,
                certificate_pem,
                private_key,
                not_after,
            })
            .await?;
        let details = format!("app={} tls={}", app.name, tls_mode.as_str());
        self.audit(actor, "domain.add", &host, Some(&details))
            .await?;
        Ok(domain)
    }

    /// Every domain, or one application's.
    pub async fn list_domains(&self, actor: &Actor, app: Option<&str>) -> Result<Vec<Domain>> {
        actor.require(Permission::Read)?;
        let application_id = match app {
            Some(name) => Some(self.store.application(name).await?.id),
            None => None,
        };
        self.store.list_domains(application_id).await
    }

    /// Removes a domain and returns what it was (the fleet pushes its app's routes).
    pub async fn remove_domain(&self, actor: &Actor, host: &str) -> Result<Domain> {
        actor.require(Permission::Write)?;
        let host = validate::host_name(host)?;
        let domain = self.store.domain(&host).await?.ok_or_else(|| {
            Error::not_found(format!(
                "domain {host} is not routed to any app: see `berth domain list`"
            ))
        })?;
        if !self.store.delete_domain(&host).await? {
            return Err(Error::not_found(format!(
                "domain {host} is not routed to any app: see `berth domain list`"
            )));
        }
        let details = format!("app={}", domain.app_name);
        self.audit(actor, "domain.remove", &host, Some(&details))
            .await?;
        Ok(domain)
    }

    /// An application's domains as the host proxy needs them, keys decrypted (for a deploy
    /// command or a routes command; never stored, logged or returned to a client).
    pub(crate) async fn routed_domains(&self, app: &Application) -> Result<Vec<RoutedDomain>> {
        let first_port = app
            .ports
            .iter()
            .find(|p| p.protocol == "tcp")
            .or(app.ports.first())
            .map_or(0, |p| p.container);
        let domains = self.store.list_domains(Some(app.id)).await?;
        domains
            .into_iter()
            .map(|d| {
                let private_key_pem = match &d.private_key {
                    Some(ciphertext) => Some(
                        self.key
                            .decrypt_string(ciphertext, &Aad::domain_private_key(&d.host))?,
                    ),
                    None => None,
                };
                Ok(RoutedDomain {
                    container_port: match d.container_port {
                        0 => first_port,
                        port => port,
                    },
                    host: d.host,
                    certificate_pem: d.certificate_pem,
                    private_key_pem,
                })
            })
            .collect()
    }
}

/// 0 (the app's first container port) or one of the app's container ports.
fn container_port(app: &Application, requested: u32) -> Result<u16> {
    let ports: Vec<u16> = app.ports.iter().map(|p| p.container).collect();
    if ports.is_empty() {
        return Err(Error::invalid(format!(
            "app {} has no container port to route a domain to: add one with `berth app update {} --port HOST:CONTAINER`",
            app.name, app.name
        )));
    }
    if requested == 0 {
        return Ok(0);
    }
    match u16::try_from(requested) {
        Ok(port) if ports.contains(&port) => Ok(port),
        _ => {
            let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
            Err(Error::invalid(format!(
                "container port {requested} is not a port of app {}: its container ports are {}",
                app.name,
                listed.join(", ")
            )))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::certificate::tests::{certificate, valid_for};
    use super::*;
    use crate::service::applications::tests::new_app;
    use crate::service::testing::{admin, service, viewer};

    fn plain(app: &str, host: &str) -> DomainSpec {
        DomainSpec {
            app: app.into(),
            host: host.into(),
            container_port: 0,
            tls: DomainTls::None,
        }
    }

    fn with_tls(app: &str, host: &str, chain: String, key: SecretString) -> DomainSpec {
        DomainSpec {
            tls: DomainTls::Files(TlsFiles {
                certificate_pem: chain,
                private_key_pem: key,
            }),
            ..plain(app, host)
        }
    }

    pub(crate) async fn with_apps() -> Service {
        let svc = service().await;
        svc.create_application(&admin(), new_app("web"))
            .await
            .unwrap();
        let mut api = new_app("api");
        api.ports[0].host = 8081;
        svc.create_application(&admin(), api).await.unwrap();
        svc
    }

    async fn refused(svc: &Service, spec: DomainSpec, says: &str) -> Error {
        let e = svc.add_domain(&admin(), spec).await.unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
        e
    }

    #[tokio::test]
    async fn a_domain_is_added_listed_and_removed() {
        let svc = with_apps().await;
        let added = svc
            .add_domain(&admin(), plain("web", "Shop.Example.com"))
            .await
            .unwrap();
        assert_eq!(added.host, "shop.example.com");
        assert_eq!(added.tls_mode, TlsMode::None);
        let listed = svc.list_domains(&viewer(), Some("web")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(svc
            .list_domains(&viewer(), Some("api"))
            .await
            .unwrap()
            .is_empty());
        assert!(svc
            .add_domain(&viewer(), plain("web", "b.example.com"))
            .await
            .is_err());
        assert!(svc
            .remove_domain(&viewer(), "shop.example.com")
            .await
            .is_err());
        let removed = svc
            .remove_domain(&admin(), "shop.example.com")
            .await
            .unwrap();
        assert_eq!(removed.app_name, "web");
        let e = svc
            .remove_domain(&admin(), "shop.example.com")
            .await
            .unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::NotFound);
        let audit = svc.store().list_audit(10).await.unwrap();
        assert!(audit
            .iter()
            .any(|a| a.action == "domain.add" && a.target.as_deref() == Some("shop.example.com")));
        assert!(audit.iter().any(|a| a.action == "domain.remove"));
    }

    #[tokio::test]
    async fn invalid_domains_are_refused_with_nothing_written() {
        let svc = with_apps().await;
        svc.add_domain(&admin(), plain("web", "shop.example.com"))
            .await
            .unwrap();
        let encrypted_before = svc.store().count_encrypted_rows().await.unwrap();
        refused(&svc, plain("web", "10.0.0.1"), "ip address").await;
        refused(&svc, plain("web", "bad_host.example.com"), "contains '_'").await;
        let e = refused(
            &svc,
            plain("api", "SHOP.example.com"),
            "already routed to app web",
        )
        .await;
        assert_eq!(e.code(), crate::error::ErrorCode::AlreadyExists);
        assert!(e.to_string().contains("berth domain list"), "{e}");
        refused(
            &svc,
            DomainSpec {
                container_port: 81,
                ..plain("web", "a.example.com")
            },
            "its container ports are 80",
        )
        .await;
        refused(&svc, plain("nope", "b.example.com"), "not found").await;

        let (chain, key) = valid_for(&["c.example.com"]);
        let (_, other_key) = valid_for(&["c.example.com"]);
        refused(
            &svc,
            with_tls("web", "c.example.com", chain.clone(), other_key),
            "does not match",
        )
        .await;
        refused(
            &svc,
            with_tls("web", "d.example.com", chain, key),
            "does not cover d.example.com",
        )
        .await;
        let (chain, key) = certificate(
            &["e.example.com"],
            time::Duration::days(-30),
            time::Duration::days(-1),
        );
        refused(
            &svc,
            with_tls("web", "e.example.com", chain, key),
            "expired",
        )
        .await;

        let listed = svc.list_domains(&admin(), None).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            svc.store().count_encrypted_rows().await.unwrap(),
            encrypted_before
        );
    }

    #[test]
    fn a_certificate_and_a_key_go_together() {
        let key = || SecretString::from("k".to_string());
        let none = || SecretString::from(String::new());
        assert!(TlsFiles::from_parts(String::new(), none())
            .unwrap()
            .is_none());
        assert!(TlsFiles::from_parts("c".into(), key()).unwrap().is_some());
        let e = TlsFiles::from_parts("c".into(), none()).unwrap_err();
        assert!(e.to_string().contains("without its key"), "{e}");
        let e = TlsFiles::from_parts(String::new(), key()).unwrap_err();
        assert!(e.to_string().contains("without its certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_tls_key_is_stored_encrypted_and_routed_decrypted() {
        let svc = with_apps().await;
        let (chain, key) = valid_for(&["shop.example.com"]);
        let added = svc
            .add_domain(
                &admin(),
                with_tls("web", "shop.example.com", chain.clone(), key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(added.tls_mode, TlsMode::Files);
        assert!(added.not_after.is_some());
        let stored = added.private_key.clone().unwrap();
        assert!(stored.starts_with("v1:"), "ciphertext");
        assert!(!stored.contains("PRIVATE KEY"));
        assert!(!format!("{added:?}").contains(&stored));
        let app = svc.store().application("web").await.unwrap();
        let routed = svc.routed_domains(&app).await.unwrap();
        assert_eq!(routed.len(), 1);
        assert_eq!(routed[0].container_port, 80, "0 is the app's first port");
        assert_eq!(routed[0].certificate_pem.as_deref(), Some(chain.as_str()));
        assert_eq!(
            routed[0].private_key_pem.as_ref().unwrap().expose_secret(),
            key.expose_secret()
        );
    }
}
