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
        let mut layers = PullProgress::new(std::time::Instant::now());
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    layers.update(&info);
                    if let Some(line) = layers.due(std::time::Instant::now()) {
                        emit(events, "progress", format!("pulling {reference}: {line}"));
                    }
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
        let may_use_local = spec.registry_auth.is_none() || is_digest(&spec.version);
        if !may_use_local || error.is_refusal() {
            return Err(error);
        }
        if self.docker.inspect_image(&reference).await.is_err() {
            return Err(error.absent_here());
        }
        let using = if spec.registry_auth.is_none() {
            "using the image present on this host"
        } else {
            "using the local copy of this digest"
        };
        emit(events, "pull", format!("{error}; {using}"));
        Ok(())
    }
}

/// How often a pull reports its progress (phase `progress`), at most: `--follow` shows it, and
/// each report is a stored event (a deployment keeps at most 1,000 per target).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The layers of a pull as the engine reports them (`Downloading` with bytes, `Pull
/// complete`, `Already exists`), summed into one line: `2/5 layers, 12.3 MB of 40.1 MB`. A
/// pull shorter than [`PROGRESS_EVERY`] reports nothing but its start and end.
struct PullProgress {
    /// Per layer id: bytes downloaded, bytes in all, and whether it is done.
    layers: std::collections::BTreeMap<String, (i64, i64, bool)>,
    /// The start of the pull, then the last report.
    last: std::time::Instant,
}

impl PullProgress {
    fn new(started: std::time::Instant) -> Self {
        PullProgress {
            layers: std::collections::BTreeMap::new(),
            last: started,
        }
    }

    fn update(&mut self, info: &bollard::models::CreateImageInfo) {
        let (Some(id), Some(status)) = (info.id.as_deref(), info.status.as_deref()) else {
            return;
        };
        // Lines about the tag or the image as a whole carry no layer id of 12 hex digits.
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        let layer = self.layers.entry(id.to_owned()).or_default();
        match status {
            "Downloading" => {
                if let Some(detail) = &info.progress_detail {
                    layer.0 = detail.current.unwrap_or(layer.0);
                    layer.1 = detail.total.unwrap_or(layer.1);
                }
            }
            "Download complete" => layer.0 = layer.1,
            "Pull complete" | "Already exists" => {
                layer.0 = layer.1;
                layer.2 = true;
            }
            _ => {}
        }
    }

    /// The progress line, when one is due ([`PROGRESS_EVERY`] after the start or the last
    /// one) and there is something to say.
    fn due(&mut self, now: std::time::Instant) -> Option<String> {
        if self.layers.is_empty() || now.saturating_duration_since(self.last) < PROGRESS_EVERY {
            return None;
        }
        self.last = now;
        Some(self.line())
    }

    fn line(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let current: i64 = self.layers.values().map(|l| l.0).sum();
        let total: i64 = self.layers.values().map(|l| l.1).sum();
        let mut line = format!("{done}/{} layers", self.layers.len());
        if total > 0 {
            line.push_str(&format!(", {} of {}", megabytes(current), megabytes(total)));
        }
        line
    }
}

/// `12.3 MB`.
fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::test_spec;
    use bollard::models::{CreateImageInfo, ProgressDetail};

    fn info(id: &str, status: &str, progress: Option<(i64, i64)>) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: progress.map(|(current, total)| ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_progress_sums_layers_and_bytes_at_most_once_a_second() {
        let start = std::time::Instant::now();
        let second = |n: u32| start + PROGRESS_EVERY * n;
        let mut progress = PullProgress::new(start);
        progress.update(&info("v1", "Pulling from team/web", None));
        assert_eq!(progress.due(second(1)), None, "nothing about layers yet");
        progress.update(&info("aaaaaaaaaaaa", "Already exists", None));
        progress.update(&info(
            "bbbbbbbbbbbb",
            "Downloading",
            Some((2_000_000, 10_000_000)),
        ));
        progress.update(&info("cccccccccccc", "Pulling fs layer", None));
        assert_eq!(progress.due(start), None, "a short pull says nothing more");
        assert_eq!(
            progress.due(second(1)).as_deref(),
            Some("1/3 layers, 2.0 MB of 10.0 MB")
        );
        progress.update(&info(
            "bbbbbbbbbbbb",
            "Downloading",
            Some((6_000_000, 10_000_000)),
        ));
        let soon = second(1) + std::time::Duration::from_millis(500);
        assert_eq!(progress.due(soon), None, "rate limited");
        progress.update(&info("bbbbbbbbbbbb", "Pull complete", None));
        let later = second(2);
        assert_eq!(
            progress.due(later).as_deref(),
            Some("2/3 layers, 10.0 MB of 10.0 MB")
        );
    }

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
