//! API keys: `bk_…`, shown once, stored as digests, compared in constant time.

use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, Permission, Role, Service};
use crate::crypto::{generate_token, token_digest, token_matches};
use crate::error::{Error, Result};
use crate::model::ApiKey;
use crate::validate;

pub const API_KEY_PREFIX: &str = "bk_";
/// Characters of a key used to find candidate rows (public, like a key id).
const LOOKUP_PREFIX_CHARS: usize = 11;

pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// Shown once; only its digest is stored.
    pub key: SecretString,
}

impl Service {
    /// Resolves a presented bearer key to its actor. Unknown, malformed and revoked keys get
    /// the same answer.
    pub async fn authenticate(&self, presented: &SecretString) -> Result<Actor> {
        let key = presented.expose_secret();
        let refused = || Error::Unauthenticated("invalid or revoked api key".to_string());
        if !key.starts_with(API_KEY_PREFIX) || key.len() < LOOKUP_PREFIX_CHARS || !key.is_ascii() {
            return Err(refused());
        }
        let candidates = self
            .store
            .api_keys_by_prefix(&key[..LOOKUP_PREFIX_CHARS])
            .await?;
        // Compare against every candidate, so the time does not depend on which one matches.
        let mut found = None;
        for candidate in candidates.iter() {
            if token_matches(presented, &candidate.key_hash) {
                found = Some(candidate);
            }
        }
        let row = found.ok_or_else(refused)?;
        // `last_used_at` is kept to the minute: most calls need no write at all (a write per
        // call took SQLite's write lock on every request).
        if used_over_a_minute_ago(row.last_used_at.as_deref(), time::OffsetDateTime::now_utc()) {
            self.store.touch_api_key(row.id).await?;
        }
        Ok(Actor {
            name: format!("apikey:{}", row.name),
            role: Role::parse(&row.role)?,
        })
    }

    pub async fn create_api_key(
        &self,
        actor: &Actor,
        name: &str,
        role: &str,
    ) -> Result<CreatedApiKey> {
        actor.require(Permission::ManageKeys)?;
        self.insert_api_key(actor, name, Role::parse(role)?).await
    }

    /// Creates the first admin key of a fresh node; `None` when keys already exist.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<CreatedApiKey>> {
        if self.store.count_api_keys().await? > 0 {
            return Ok(None);
        }
        self.insert_api_key(&Actor::system(), "admin", Role::Admin)
            .await
            .map(Some)
    }

    /// The webhook shim's narrow credential (role `webhook`), created by the node command.
    pub async fn create_webhook_key(&self, name: &str) -> Result<CreatedApiKey> {
        self.insert_api_key(&Actor::system(), name, Role::Webhook)
            .await
    }

    async fn insert_api_key(&self, actor: &Actor, name: &str, role: Role) -> Result<CreatedApiKey> {
        validate::name("api key", name)?;
        let key = generate_token(API_KEY_PREFIX);
        let api_key = self
            .store
            .insert_api_key(
                name,
                role.as_str(),
                &token_digest(key.expose_secret()),
                &key.expose_secret()[..LOOKUP_PREFIX_CHARS],
            )
            .await?;
        self.audit(actor, "apikey.create", name, Some(role.as_str()))
            .await?;
        Ok(CreatedApiKey { api_key, key })
    }

    pub async fn list_api_keys(&self, actor: &Actor) -> Result<Vec<ApiKey>> {
        actor.require(Permission::ManageKeys)?;
        self.store.list_api_keys().await
    }

    pub async fn revoke_api_key(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require(Permission::ManageKeys)?;
        self.store.revoke_api_key(name).await?;
        self.audit(actor, "apikey.revoke", name, None).await
    }
}

/// Whether a key last used at `last_used` (SQLite's `datetime('now')`, UTC
/// `YYYY-MM-DD HH:MM:SS`) should be recorded as used again at `now`: never used, used over a
/// minute ago, or a value that does not read as such a time.
fn used_over_a_minute_ago(last_used: Option<&str>, now: time::OffsetDateTime) -> bool {
    let Some(last_used) = last_used else {
        return true;
    };
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    match time::PrimitiveDateTime::parse(last_used, format) {
        Ok(at) => now - at.assume_utc() > time::Duration::seconds(60),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_is_recorded_as_used_at_most_once_a_minute() {
        let now = time::macros::datetime!(2026-11-30 10:00:00 UTC);
        assert!(super::used_over_a_minute_ago(None, now));
        assert!(!super::used_over_a_minute_ago(
            Some("2026-11-30 09:59:30"),
            now
        ));
        assert!(super::used_over_a_minute_ago(
            Some("2026-11-30 09:58:59"),
            now
        ));
        assert!(super::used_over_a_minute_ago(Some("not a time"), now));
    }

    use super::*;
    use crate::error::ErrorCode;
    use crate::service::testing::{admin, service};

    #[tokio::test]
    async fn keys_authenticate_until_revoked_and_are_stored_as_digests() {
        let svc = service().await;
        let created = svc
            .create_api_key(&admin(), "ci", "deployer")
            .await
            .unwrap();
        assert!(!created
            .api_key
            .key_hash
            .contains(&created.key.expose_secret()[3..]));
        let actor = svc.authenticate(&created.key).await.unwrap();
        assert_eq!(
            actor,
            Actor {
                name: "apikey:ci".into(),
                role: Role::Deployer
            }
        );
        assert_eq!(
            actor.require(Permission::ManageKeys).unwrap_err().code(),
            ErrorCode::PermissionDenied
        );
        assert!(svc.create_api_key(&actor, "x", "admin").await.is_err());
        svc.revoke_api_key(&admin(), "ci").await.unwrap();
        assert_eq!(
            svc.authenticate(&created.key).await.unwrap_err().code(),
            ErrorCode::Unauthenticated
        );
        for bad in [
            "",
            "bk_",
            "nope",
            "bk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "bk_ünïcödé-ünïcödé",
        ] {
            let err = svc
                .authenticate(&SecretString::from(bad.to_string()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Unauthenticated);
        }
    }

    #[tokio::test]
    async fn bootstrap_happens_once() {
        let svc = service().await;
        assert!(svc.bootstrap_admin_key().await.unwrap().is_some());
        assert!(svc.bootstrap_admin_key().await.unwrap().is_none());
    }
}
