//! Domain logic of the control plane. Every entry point (gRPC handlers, the webhook RPC, the
//! CLI's `berth dev`) goes through [`Service`], which validates input, checks the caller's
//! role, encrypts and decrypts, and calls the store.
//!
//! Architecture invariant: this module knows nothing of tonic or HTTP. Authorization is
//! decided here (each method takes the [`Actor`]), so no transport can skip it.

mod api_keys;
pub mod applications;
mod audit;
pub mod domains;
mod env;
pub mod import;
pub mod keys;
pub mod providers;
mod registry;
mod secrets;

use std::sync::Arc;

use crate::crypto::columns::{ENCRYPTED_COLUMNS, KEY_CHECK_SETTING};
use crate::crypto::{Aad, KeyRing, MasterKey};
use crate::error::{Error, Result};
use crate::store::Store;

pub use api_keys::{CreatedApiKey, API_KEY_PREFIX};
pub use applications::{ApplicationDetail, CreatedApplication, WEBHOOK_TOKEN_PREFIX};
pub use audit::{AuditPage, AuditQuery};
pub use env::{EffectiveVar, EnvOrigin, EnvSource, ResolvedEnvironment, SetEnvValue};
pub use secrets::{mask_value, parse_dotenv, ImportFormat};

/// `system_settings` key of a value encrypted at first start, used to check the master key.
const KEY_CHECK_PLAINTEXT: &[u8] = b"berth master key check";

/// Roles of API keys (R-6.2). `Webhook` is the webhook shim's narrow credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Deployer,
    Viewer,
    Webhook,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "deployer" => Ok(Role::Deployer),
            "viewer" => Ok(Role::Viewer),
            "webhook" => Ok(Role::Webhook),
            other => Err(Error::invalid(format!(
                "unknown role {other:?}: expected admin, deployer or viewer"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
            Role::Webhook => "webhook",
        }
    }

    fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Deployer => matches!(permission, Read | Deploy),
            Role::Viewer => matches!(permission, Read),
            Role::Webhook => matches!(permission, WebhookDeploy),
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Metadata and masked summaries.
    Read,
    /// Create, change or delete configuration.
    Write,
    /// See plaintext secret values.
    Reveal,
    /// Start deployments.
    Deploy,
    /// Create and revoke API keys.
    ManageKeys,
    /// Forward CI webhooks (the shim only).
    WebhookDeploy,
    /// Rotate and retire encryption keys, take backups.
    ManageEncryption,
    /// Read the audit trail (who did what, when).
    ReadAudit,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read configuration",
            Permission::Write => "change configuration",
            Permission::Reveal => "reveal secret values",
            Permission::Deploy => "deploy",
            Permission::ManageKeys => "manage api keys",
            Permission::WebhookDeploy => "forward webhooks",
            Permission::ManageEncryption => "manage encryption keys and backups",
            Permission::ReadAudit => "read the audit trail: it is for admins only",
        }
    }
}

/// Who is calling: recorded in audit rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `apikey:<name>`, `system`, …
    pub name: String,
    pub role: Role,
}

impl Actor {
    /// The node itself (first-start bootstrap, tests).
    pub fn system() -> Self {
        Actor {
            name: "system".to_string(),
            role: Role::Admin,
        }
    }

    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "role {} cannot {}",
                self.role.as_str(),
                permission.describe()
            )))
        }
    }
}

/// The control plane's domain API. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    store: Store,
    key: Arc<KeyRing>,
    /// The running rewrap of a key rotation, if any: one at a time.
    rotation: Arc<tokio::sync::Mutex<keys::RotationState>>,
    /// Providers with a sync in progress: syncs of one provider never overlap (R-8.3).
    syncing: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

impl Service {
    /// Binds the store to the root (master) key, refusing a key that does not decrypt what the
    /// database already holds (R-3.4), then loads the key ring (R-3.5), creating its first
    /// data key if it has none. Nothing is written unless the check passes.
    pub async fn new(store: Store, key: MasterKey) -> Result<Self> {
        let wrong_key = |detail: String| {
            Error::FailedPrecondition(format!(
                "the master key (id {}) does not match this database: {detail}; \
                 start with the key this data was encrypted with (BERTH_MASTER_KEY, BERTH_MASTER_KEY_FILE \
                 or master.key in the data directory)",
                key.id()
            ))
        };
        let check_aad = Aad::key_check();
        let stored_check = store.setting(KEY_CHECK_SETTING).await?;
        if let Some(stored) = &stored_check {
            key.decrypt(stored, &check_aad)
                .map_err(|e| wrong_key(e.to_string()))?;
        }
        let ring = KeyRing::load(key, store.clone()).await?;
        if stored_check.is_none() {
            // A database from before the check existed, or a fresh one: verify one existing
            // ciphertext of every encrypted column before recording the check.
            for column in ENCRYPTED_COLUMNS {
                for (aad, ciphertext) in store.encrypted_values(column, Some(1)).await? {
                    ring.decrypt(&ciphertext, &aad).map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "the master key (id {}) does not match this database: {e}; \
                             start with the key this data was encrypted with (BERTH_MASTER_KEY, \
                             BERTH_MASTER_KEY_FILE or master.key in the data directory)",
                            ring.root_id()
                        ))
                    })?;
                }
            }
            store
                .put_setting(
                    KEY_CHECK_SETTING,
                    &ring.encrypt_under_root(KEY_CHECK_PLAINTEXT, &check_aad),
                )
                .await?;
        }
        ring.ensure_active().await?;
        Ok(Service {
            store,
            key: Arc::new(ring),
            syncing: Arc::default(),
            rotation: Arc::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn key(&self) -> &KeyRing {
        &self.key
    }

    pub(crate) fn key_arc(&self) -> Arc<KeyRing> {
        self.key.clone()
    }

    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        details: Option<&str>,
    ) -> Result<()> {
        self.store.audit(&actor.name, action, target, details).await
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub async fn service() -> Service {
        let store = Store::open_in_memory().await.unwrap();
        Service::new(store, MasterKey::from_bytes(&[42u8; 32]).unwrap())
            .await
            .unwrap()
    }

    pub fn admin() -> Actor {
        Actor::system()
    }

    pub fn viewer() -> Actor {
        Actor {
            name: "apikey:v".into(),
            role: Role::Viewer,
        }
    }
}

#[cfg(test)]
pub(crate) mod key_check_tests {
    use secrecy::SecretString;

    use super::testing::{admin, service};
    use super::*;

    /// One row in every registered ciphertext column, written through the services.
    async fn one_of_each() -> Service {
        let store = Store::open_in_memory().await.unwrap();
        one_of_each_in(store, MasterKey::from_bytes(&[42u8; 32]).unwrap()).await
    }

    /// [`one_of_each`] in a given store.
    pub(crate) async fn one_of_each_in(store: Store, root: MasterKey) -> Service {
        let svc = Service::new(store, root).await.unwrap();
        let a = admin();
        svc.create_group(&a, "prod", None).await.unwrap();
        svc.set_secret(
            &a,
            "prod",
            "DB_PASSWORD",
            &SecretString::from("s3cret-value"),
            None,
        )
        .await
        .unwrap();
        svc.add_repository(
            &a,
            "registry",
            "https://registry.example:5000",
            Some("ci"),
            Some(&SecretString::from("registry-password")),
        )
        .await
        .unwrap();
        svc.add_webhook(
            &a,
            "https://hooks.example/berth",
            &["deployment.finished".into()],
            None,
        )
        .await
        .unwrap();
        svc.add_provider(
            &a,
            "vault",
            providers::ProviderSettings {
                provider_type: crate::provider::ProviderType::HashicorpVault,
                settings: [(
                    "address".to_string(),
                    "https://vault.example:8200".to_string(),
                )]
                .into(),
                sync_interval: None,
            },
            &SecretString::from("vault-token"),
        )
        .await
        .unwrap();
        svc.create_application(&a, applications::tests::new_app("web"))
            .await
            .unwrap();
        let (chain, key) = domains::certificate::tests::valid_for(&["shop.example.com"]);
        svc.add_domain(
            &a,
            domains::DomainSpec {
                app: "web".into(),
                host: "shop.example.com".into(),
                container_port: 0,
                tls: domains::DomainTls::Files(domains::TlsFiles {
                    certificate_pem: chain,
                    private_key_pem: key,
                }),
            },
        )
        .await
        .unwrap();
        svc.save_acme_account(
            "https://acme.example/directory",
            None,
            &SecretString::from(r#"{"id":"acct"}"#),
        )
        .await
        .unwrap();
        svc
    }

    #[tokio::test]
    async fn every_registered_column_decrypts_with_the_aad_the_registry_rebuilds() {
        let svc = one_of_each().await;
        for column in ENCRYPTED_COLUMNS {
            let values = svc.store().encrypted_values(column, None).await.unwrap();
            assert_eq!(values.len(), 1, "{column:?}");
            for (aad, ciphertext) in values {
                let plain = svc.key().decrypt(&ciphertext, &aad).unwrap();
                assert!(!plain.is_empty(), "{column:?}");
            }
        }
        assert_eq!(
            svc.store().count_encrypted_rows().await.unwrap(),
            ENCRYPTED_COLUMNS.len() as i64
        );
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_by_any_encrypted_column_when_the_check_row_is_missing() {
        // Each column alone must be enough to refuse a wrong key.
        for keep in ["secret", "repository", "webhook", "domain", "acme"] {
            let svc = service().await;
            let a = admin();
            match keep {
                "secret" => {
                    svc.create_group(&a, "g", None).await.unwrap();
                    svc.set_secret(&a, "g", "K", &SecretString::from("value-1"), None)
                        .await
                        .unwrap();
                }
                "repository" => {
                    svc.add_repository(
                        &a,
                        "r",
                        "https://r.example",
                        Some("u"),
                        Some(&SecretString::from("pw-1")),
                    )
                    .await
                    .unwrap();
                }
                "domain" => {
                    svc.create_application(&a, applications::tests::new_app("web"))
                        .await
                        .unwrap();
                    let (chain, key) = domains::certificate::tests::valid_for(&["a.example"]);
                    svc.add_domain(
                        &a,
                        domains::DomainSpec {
                            app: "web".into(),
                            host: "a.example".into(),
                            container_port: 0,
                            tls: domains::DomainTls::Files(domains::TlsFiles {
                                certificate_pem: chain,
                                private_key_pem: key,
                            }),
                        },
                    )
                    .await
                    .unwrap();
                }
                "acme" => {
                    svc.save_acme_account(
                        "https://acme.example/directory",
                        None,
                        &SecretString::from(r#"{"id":"acct"}"#),
                    )
                    .await
                    .unwrap();
                }
                _ => {
                    svc.add_webhook(
                        &a,
                        "https://hooks.example/x",
                        &["deployment.finished".into()],
                        None,
                    )
                    .await
                    .unwrap();
                }
            }
            let store = svc.store().clone();
            store.delete_setting(KEY_CHECK_SETTING).await.unwrap();
            let wrong = MasterKey::from_bytes(&[7u8; 32]).unwrap();
            let refused = Service::new(store.clone(), wrong).await.err().expect(keep);
            assert!(
                refused.to_string().contains("does not match this database"),
                "{keep}: {refused}"
            );
            // Nothing was written by the refused start.
            assert!(
                store.setting(KEY_CHECK_SETTING).await.unwrap().is_none(),
                "{keep}"
            );
            // The right key passes and records the check.
            let right = MasterKey::from_bytes(&[42u8; 32]).unwrap();
            Service::new(store.clone(), right).await.unwrap();
            assert!(store.setting(KEY_CHECK_SETTING).await.unwrap().is_some());
        }
    }
}
