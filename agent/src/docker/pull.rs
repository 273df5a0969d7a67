//! Pull: the image reference, the registry credentials, and the pull itself.
//!
//! Architecture invariant: a deployment touches no container before its image is here, so a
//! failed pull changes nothing; credentials the registry refused fail the deployment and are
//! never bypassed with a local copy; the registry password goes into the request's
//! credentials and nowhere else.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use secrecy::ExposeSecret;

use super::error::PullError;
use super::{emit, DockerExecutor};
use crate::executor::{DeploySpec, EventSink};

/// `image:tag`, or `image@sha256:…` when the version is a digest.
pub fn image_reference(spec: &DeploySpec) -> String {
    if is_digest(&spec.version) {
        format!("{}@{}", spec.image, spec.version)
    } else {
        format!("{}:{}", spec.image, spec.version)
    }
}

/// Tags cannot contain `:`; digests (`sha256:…`) always do.
fn is_digest(version: &str) -> bool {
    version.contains(':')
}

/// The deployment's registry login, as the engine takes it with a pull.
fn credentials(spec: &DeploySpec) -> Option<DockerCredentials> {
    spec.registry_auth.as_ref().map(|auth| DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.expose_secret().to_owned()),
        serveraddress: Some(auth.server.clone()),
        ..Default::default()
    })
}

impl DockerExecutor {
    /// Pulls `spec`'s image, or accepts the copy on this host when the registry is out of
    /// reach and that copy is the right one (see below).
    pub(super) async fn pull(
        &self,
        spec: &DeploySpec,
        events: &EventSink,
    ) -> Result<(), PullError> {
        let reference = image_reference(spec);
        let with = spec
            .registry_auth
            .as_ref()
            .map(|a| format!(" as {} on {}", a.username, a.server))
            .unwrap_or_default();
        emit(events, "pull", format!("pulling {reference}{with}"));

        let options = CreateImageOptionsBuilder::new()
            .from_image(&spec.image)
            .tag(&spec.version)
            .build();
        let mut progress = self
            .docker
            .create_image(Some(options), None, credentials(spec));
        let mut digest = None;
        let mut failure = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(d) = info
                        .status
                        .as_deref()
                        .and_then(|s| s.strip_prefix("Digest: "))
                    {
                        digest = Some(d.to_owned());
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else {
            emit(
                events,
                "pull",
                format!(
                    "pulled {reference}{}",
                    digest.map(|d| format!(" ({d})")).unwrap_or_default()
                ),
            );
            return Ok(());
        };
        let error = PullError::new(reference.clone(), &e, spec);
        // A tag may have moved on the registry, so a local copy of it is no answer; a digest
        // cannot have, so a local copy of it is exactly the image asked for when the registry
        // is out of reach. Refused credentials still fail: they must be fixed, not bypassed.
        // An application without a registry of its own (no credentials) may run an image
        // built on this host, as `docker run` would when the pull fails.
        if spec.registry_auth.is_none()
            && !error.is_refusal()
            && self.docker.inspect_image(&reference).await.is_ok()
        {
            emit(
                events,
                "pull",
                format!("{error}; using the image present on this host"),
            );
            return Ok(());
        }
        if is_digest(&spec.version)
            && !error.is_refusal()
            && self.docker.inspect_image(&reference).await.is_ok()
        {
            emit(
                events,
                "pull",
                format!("{error}; using the local copy of this digest"),
            );
            return Ok(());
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::test_spec;

    #[test]
    fn references() {
        assert_eq!(
            image_reference(&test_spec("v1")),
            "127.0.0.1:5000/team/web:v1"
        );
        assert_eq!(
            image_reference(&test_spec("sha256:abc")),
            "127.0.0.1:5000/team/web@sha256:abc"
        );
    }

    #[test]
    fn credentials_carry_the_registry_login() {
        let login = credentials(&test_spec("v1")).expect("credentials");
        assert_eq!(login.username.as_deref(), Some("ci"));
        assert_eq!(login.password.as_deref(), Some("registry-pass"));
        assert_eq!(login.serveraddress.as_deref(), Some("127.0.0.1:5000"));
        let anonymous = DeploySpec {
            registry_auth: None,
            ..test_spec("v1")
        };
        assert!(credentials(&anonymous).is_none());
    }
}
