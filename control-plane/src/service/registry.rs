//! Image registries (`repositories`, password encrypted at rest) and the image allowlist.

use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, Permission, Service};
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{ImagePattern, Repository};
use crate::validate;

impl Service {
    pub async fn add_repository(
        &self,
        actor: &Actor,
        name: &str,
        url: &str,
        username: Option<&str>,
        password: Option<&SecretString>,
    ) -> Result<Repository> {
        actor.require(Permission::Write)?;
        validate::name("repository", name)?;
        if url.is_empty()
            || url.len() > 255
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(
                "repository url must be a host[:port] or URL without spaces",
            ));
        }
        if password.is_some() && username.is_none() {
            return Err(Error::invalid("a repository password needs a username"));
        }
        let ciphertext = password.map(|p| {
            self.key.encrypt(
                p.expose_secret().as_bytes(),
                &Aad::repository_password(name),
            )
        });
        let repo = self
            .store
            .insert_repository(name, url, username, ciphertext.as_deref())
            .await?;
        self.audit(actor, "repository.add", name, None).await?;
        Ok(repo)
    }

    pub async fn list_repositories(&self, actor: &Actor) -> Result<Vec<Repository>> {
        actor.require(Permission::Read)?;
        self.store.list_repositories().await
    }

    pub async fn remove_repository(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require(Permission::Write)?;
        self.store.delete_repository(name).await?;
        self.audit(actor, "repository.remove", name, None).await
    }

    pub async fn add_image_pattern(
        &self,
        actor: &Actor,
        pattern: &str,
        description: Option<&str>,
    ) -> Result<ImagePattern> {
        actor.require(Permission::Write)?;
        let base = pattern
            .strip_suffix('*')
            .unwrap_or(pattern)
            .trim_end_matches('/');
        if base.is_empty() {
            return Err(Error::invalid(
                "image pattern must name at least a registry or repository prefix",
            ));
        }
        validate::image(base)?;
        validate::description(description)?;
        let row = self
            .store
            .insert_image_pattern(pattern, description)
            .await?;
        self.audit(actor, "allowlist.add", pattern, None).await?;
        Ok(row)
    }

    pub async fn list_image_patterns(&self, actor: &Actor) -> Result<Vec<ImagePattern>> {
        actor.require(Permission::Read)?;
        self.store.list_image_patterns().await
    }

    pub async fn remove_image_pattern(&self, actor: &Actor, pattern: &str) -> Result<()> {
        actor.require(Permission::Write)?;
        self.store.delete_image_pattern(pattern).await?;
        self.audit(actor, "allowlist.remove", pattern, None).await
    }

    /// Whether an image may be deployed: yes when the allowlist is empty, else when some
    /// pattern equals the image or is a `prefix*` of it.
    pub async fn image_allowed(&self, image: &str) -> Result<bool> {
        let patterns = self.store.list_image_patterns().await?;
        Ok(patterns.is_empty()
            || patterns.iter().any(|p| match p.pattern.strip_suffix('*') {
                Some(prefix) => image.starts_with(prefix),
                None => image == p.pattern,
            }))
    }
}

#[cfg(test)]
mod tests {
    use crate::service::testing::{admin, service};

    #[tokio::test]
    async fn allowlist_matches_exact_names_and_prefixes() {
        let svc = service().await;
        assert!(svc.image_allowed("anything").await.unwrap());
        svc.add_image_pattern(&admin(), "registry.local:5000/team/*", None)
            .await
            .unwrap();
        svc.add_image_pattern(&admin(), "busybox", None)
            .await
            .unwrap();
        assert!(svc
            .image_allowed("registry.local:5000/team/app")
            .await
            .unwrap());
        assert!(svc.image_allowed("busybox").await.unwrap());
        assert!(!svc.image_allowed("busybox2").await.unwrap());
        assert!(!svc.image_allowed("evil.io/team/app").await.unwrap());
    }
}
