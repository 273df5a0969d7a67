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
        validate_repository(name, url, username, password.is_some())?;
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
        validate_pattern(pattern)?;
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
    /// pattern allows it ([`pattern_allows`]).
    pub async fn image_allowed(&self, image: &str) -> Result<bool> {
        let patterns = self.store.list_image_patterns().await?;
        Ok(patterns.is_empty() || patterns.iter().any(|p| pattern_allows(&p.pattern, image)))
    }
}

/// A registry's name, its address (`host[:port]` or a URL, no spaces), and a password only
/// with a username.
pub(crate) fn validate_repository(
    name: &str,
    url: &str,
    username: Option<&str>,
    has_password: bool,
) -> Result<()> {
    validate::name("repository", name)?;
    if url.is_empty() || url.len() > 255 || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            "repository url must be a host[:port] or URL without spaces",
        ));
    }
    if has_password && username.is_none() {
        return Err(Error::invalid("a repository password needs a username"));
    }
    Ok(())
}

/// Whether one allowlist pattern allows an image (`[registry[:port]/]path`, no tag). Patterns
/// match whole path components, never a prefix of one:
///
/// - `reg.io/team/app` allows exactly that image;
/// - `reg.io/team/*` allows every image under `reg.io/team/` (not `reg.io/team` itself);
/// - `reg.io/team*` allows `reg.io/team` and every image under `reg.io/team/`.
///
/// So `reg.io*` allows `reg.io/x` but neither `reg.io.evil.com/x` nor `reg.io:5000/x`, and
/// `reg.io/team*` does not allow `reg.io/teamx`.
pub fn pattern_allows(pattern: &str, image: &str) -> bool {
    let Some(prefix) = pattern.strip_suffix('*') else {
        return image == pattern;
    };
    let (base, itself) = match prefix.strip_suffix('/') {
        Some(base) => (base, false),
        None => (prefix, true),
    };
    match image.strip_prefix(base) {
        Some("") => itself && !base.is_empty(),
        Some(rest) => !base.is_empty() && rest.starts_with('/') && rest.len() > 1,
        None => false,
    }
}

/// The three forms [`pattern_allows`] knows: an image, `prefix/*` and `prefix*`, where the
/// prefix is an image or a registry `host[:port]`. A `*` anywhere else is refused.
pub(crate) fn validate_pattern(pattern: &str) -> Result<()> {
    let base = match pattern.strip_suffix('*') {
        Some(prefix) => prefix.strip_suffix('/').unwrap_or(prefix),
        None => pattern,
    };
    if base.is_empty() {
        return Err(Error::invalid(
            "image pattern must name at least a registry or repository prefix",
        ));
    }
    let registry_only = pattern.ends_with('*') && validate::image(&format!("{base}/x")).is_ok();
    if !registry_only {
        validate::image(base).map_err(|_| {
            Error::invalid(format!(
                "invalid image pattern {pattern:?}: expected an image, or a registry or repository prefix followed by /* or * (e.g. reg.example.com/team/*)"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::pattern_allows;
    use crate::service::testing::{admin, service};
    use crate::validate;

    /// Components chosen to collide: a host that is a prefix of another host (`reg.io`,
    /// `reg.io.evil.com`, `reg.io:5000`), a path component that is a prefix of another.
    const COMPONENTS: &[&str] = &[
        "reg.io",
        "reg.io.evil.com",
        "reg.io:5000",
        "team",
        "teamx",
        "team-evil",
        "app",
        "app2",
    ];

    /// Every image of one to three components over [`COMPONENTS`] (valid ones only).
    fn images() -> Vec<String> {
        let mut all: Vec<Vec<&str>> = COMPONENTS.iter().map(|c| vec![*c]).collect();
        for _ in 0..2 {
            let longer: Vec<Vec<&str>> = all
                .iter()
                .filter(|p| p.len() == all.last().unwrap().len())
                .flat_map(|p| {
                    COMPONENTS.iter().map(move |c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            all.extend(longer);
        }
        all.into_iter()
            .map(|p| p.join("/"))
            .filter(|i| validate::image(i).is_ok())
            .collect()
    }

    fn components(image: &str) -> Vec<&str> {
        image.split('/').collect()
    }

    /// The pattern language, stated on components: the matcher works on strings, this on
    /// lists, so a string-level slip (a prefix that is not a component) shows as a
    /// difference.
    fn expected(pattern: &str, image: &str) -> bool {
        let image = components(image);
        if let Some(base) = pattern.strip_suffix("/*") {
            let base = components(base);
            image.len() > base.len() && image.starts_with(&base)
        } else if let Some(base) = pattern.strip_suffix('*') {
            image.starts_with(&components(base))
        } else {
            image == components(pattern)
        }
    }

    #[test]
    fn patterns_match_whole_path_components_only() {
        let images = images();
        assert!(images.len() > 300, "{}", images.len());
        let mut allowed = 0;
        for base in &images {
            for pattern in [base.clone(), format!("{base}*"), format!("{base}/*")] {
                for image in &images {
                    let got = pattern_allows(&pattern, image);
                    assert_eq!(got, expected(&pattern, image), "{pattern} vs {image}");
                    if got {
                        allowed += 1;
                        // Never more than the pattern's own components, whatever follows.
                        let base = pattern.trim_end_matches('*').trim_end_matches('/');
                        assert!(
                            components(image).starts_with(&components(base)),
                            "{pattern} over-matches {image}"
                        );
                    }
                }
            }
        }
        assert!(allowed > images.len(), "the test exercises matches too");
    }

    #[test]
    fn a_prefix_that_is_not_a_path_component_matches_nothing() {
        for (pattern, image) in [
            ("reg.io*", "reg.io.evil.com/x"),
            ("reg.io*", "reg.io:5000/x"),
            ("reg.io/*", "reg.io.evil.com/x"),
            ("reg.io/team*", "reg.io/teamx/app"),
            ("reg.io/team*", "reg.io/team-evil"),
            ("reg.io/team/*", "reg.io/team"),
            ("reg.io/team/app", "reg.io/team/app2"),
            ("busybox", "busybox2"),
        ] {
            assert!(!pattern_allows(pattern, image), "{pattern} allows {image}");
        }
        for (pattern, image) in [
            ("reg.io*", "reg.io/x"),
            ("reg.io/*", "reg.io/team/app"),
            ("reg.io/team*", "reg.io/team"),
            ("reg.io/team*", "reg.io/team/app"),
            ("reg.io/team/*", "reg.io/team/app"),
            ("reg.io/team/*", "reg.io/team/sub/app"),
            ("busybox", "busybox"),
        ] {
            assert!(pattern_allows(pattern, image), "{pattern} refuses {image}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let alphabet: Vec<char> = "ab./:*-_\u{e9}\u{1f600}".chars().collect();
        let text = |rng: &mut rand::rngs::StdRng| -> String {
            let len = rng.gen_range(0..12);
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        };
        for _ in 0..20_000 {
            let (pattern, image) = (text(&mut rng), text(&mut rng));
            let _ = pattern_allows(&pattern, &image);
        }
    }

    #[tokio::test]
    async fn only_the_three_pattern_forms_can_be_added() {
        let svc = service().await;
        for good in [
            "reg.io/team/app",
            "reg.io/team/*",
            "reg.io/team*",
            "reg.io:5000/*",
        ] {
            svc.add_image_pattern(&admin(), good, None).await.unwrap();
        }
        for bad in [
            "*",
            "/*",
            "reg.io//*",
            "reg.io/*/app",
            "reg.io/**",
            "reg.io/t*m",
        ] {
            assert!(
                svc.add_image_pattern(&admin(), bad, None).await.is_err(),
                "{bad} accepted"
            );
        }
    }

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
