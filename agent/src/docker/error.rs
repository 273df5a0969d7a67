//! Typed engine errors. What the agent decides on an engine error (is it a refusal of the
//! credentials? is the container already gone?) is decided once, here, from bollard's error,
//! never later by reading a message the agent wrote; messages are built from these types only
//! at the edge, where they become a [`DeployOutcome`](crate::executor::DeployOutcome) error or
//! an event.
//!
//! Architecture invariant: the message of an error raised by one of a deployment's requests is
//! the engine's own words with every environment value and registry password of that
//! deployment replaced (`redact`); requests that carry none (list, stop, start again, remove)
//! keep the engine's words as they are. Nothing here formats a secret.

use std::fmt;

use bollard::errors::Error as DockerError;
use secrecy::ExposeSecret;

use super::health::HealthError;
use crate::executor::{DeploySpec, UnknownRestartPolicy};

/// Why a deployment failed: the one error its steps (create, start, health gate, cut-over)
/// pass around. Its `Display` is the outcome's error, word for word.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    RestartPolicy(#[from] UnknownRestartPolicy),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("health check failed: {0}")]
    Health(#[from] HealthError),
    /// The container runs but is on no network the host proxy could forward to.
    #[error("{0} has no address on a docker network: the host proxy cannot reach it")]
    NoAddress(String),
    /// The host proxy refused or could not be reached.
    #[error("host proxy: {0}")]
    Proxy(String),
}

/// An engine request the agent makes on a container, as its error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List {
        app: String,
    },
    Create {
        name: String,
    },
    Start {
        name: String,
    },
    /// Starting a superseded container again, when a cut-over is undone.
    StartAgain {
        name: String,
    },
    Stop {
        name: String,
    },
    Remove {
        name: String,
    },
    Inspect,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::List { app } => write!(f, "listing containers of {app}"),
            Request::Create { name } => write!(f, "creating {name}"),
            Request::Start { name } => write!(f, "starting {name}"),
            Request::StartAgain { name } => write!(f, "starting {name} again"),
            Request::Stop { name } => write!(f, "stopping {name}"),
            Request::Remove { name } => write!(f, "removing {name}"),
            Request::Inspect => f.write_str("inspect"),
        }
    }
}

/// A failed engine request on a container: `<request> failed: <the engine's words>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{request} failed: {message}")]
pub struct EngineError {
    request: Request,
    /// The engine answered 404: no such container (or image).
    not_found: bool,
    /// The engine's words, redacted when the request was a deployment's.
    message: String,
}

impl EngineError {
    /// An error of a request that carried no secret (list, stop, start again, remove).
    pub fn new(request: Request, error: &DockerError) -> Self {
        Self {
            request,
            not_found: status(error) == Some(404),
            message: engine_message(error),
        }
    }

    /// An error of one of `spec`'s requests: the engine could echo part of it.
    pub fn redacted(request: Request, error: &DockerError, spec: &DeploySpec) -> Self {
        Self {
            message: redact(spec, engine_message(error)),
            ..Self::new(request, error)
        }
    }

    /// The container (or image) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.not_found
    }

    /// The engine's words, without the request: for logs that name the container themselves.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why a pull failed, decided once from the engine's answer. Only [`PullError::Unauthorized`]
/// changes what the deploy does next (it never falls back to a local copy); the other kinds
/// say why, for the reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The registry refused the credentials, or their absence.
    #[error("pull {reference} failed: {message}")]
    Unauthorized { reference: String, message: String },
    /// The registry has no such repository, tag or digest.
    #[error("pull {reference} failed: {message}")]
    NotFound { reference: String, message: String },
    /// The engine could not reach the registry.
    #[error("pull {reference} failed: {message}")]
    Unreachable { reference: String, message: String },
    /// Anything else the engine reported.
    #[error("pull {reference} failed: {message}")]
    Engine { reference: String, message: String },
    /// The pull failed (not refused) and the host has no copy either: whatever the engine
    /// said about the registry (often a DNS error for a registry that is not there), the image
    /// is nowhere to be had.
    #[error(
        "image {reference} is neither pullable from its registry nor present on the host \
         (the pull said: {message})"
    )]
    Absent { reference: String, message: String },
}

/// What registries answer, in the words the engine passes on, when they refuse credentials.
/// The engine flattens a registry's answer into text and reports most of them as a 500 (Docker
/// 20.10 answers `unauthorized: authentication required` and `no basic auth credentials` so),
/// and `denied` comes as a 404 (`pull access denied …`): the words are the only signal.
const REFUSALS: [&str; 4] = [
    "unauthorized",
    "authentication required",
    "denied",
    "no basic auth credentials",
];

/// What the engine says when it cannot reach a registry at all.
const UNREACHABLE: [&str; 6] = [
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "tls handshake timeout",
];

impl PullError {
    /// Classifies the engine's answer to pulling `reference` for `spec`.
    pub fn new(reference: String, error: &DockerError, spec: &DeploySpec) -> Self {
        let words = engine_message(error);
        let lowercase = words.to_lowercase();
        let says = |markers: &[&str]| markers.iter().any(|m| lowercase.contains(m));
        let message = redact(spec, words);
        match status(error) {
            Some(401 | 403) => Self::Unauthorized { reference, message },
            _ if says(&REFUSALS) => Self::Unauthorized { reference, message },
            Some(404) => Self::NotFound { reference, message },
            _ if says(&UNREACHABLE) => Self::Unreachable { reference, message },
            _ => Self::Engine { reference, message },
        }
    }

    /// The registry refused the credentials (as opposed to being out of reach): they must be
    /// fixed, not bypassed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }

    /// This failure, once the host was found to have no copy of the image either.
    #[must_use]
    pub fn absent_here(self) -> Self {
        match self {
            Self::NotFound { reference, message }
            | Self::Unreachable { reference, message }
            | Self::Engine { reference, message } => Self::Absent { reference, message },
            other => other,
        }
    }
}

/// The HTTP status of the engine's answer, when there was one.
fn status(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words: bollard wraps them in a prefix that says nothing more.
pub fn engine_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        DockerError::DockerStreamError { error } => error.trim().to_owned(),
        other => other.to_string(),
    }
}

/// Replaces any environment value or registry password quoted in `message` (an engine error
/// could echo part of a request). Values shorter than 4 characters are left alone: they would
/// mangle every message and are no secret anyway.
pub fn redact(spec: &DeploySpec, mut message: String) -> String {
    let values = spec
        .env
        .values()
        .chain(spec.registry_auth.as_ref().map(|a| &a.password));
    for value in values {
        let value = value.expose_secret();
        if value.len() >= 4 && message.contains(value) {
            message = message.replace(value, "[redacted]");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::test_spec;

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    fn pull(error: DockerError) -> PullError {
        PullError::new("r/x:v1".to_owned(), &error, &test_spec("v1"))
    }

    #[test]
    fn redaction_hides_env_values_and_registry_password() {
        let message = "bad value postgres://u:hunter22@db and registry-pass, code 1".to_owned();
        assert_eq!(
            redact(&test_spec("v1"), message),
            "bad value [redacted] and [redacted], code 1"
        );
    }

    #[test]
    fn refused_credentials_are_told_apart_from_an_unreachable_registry() {
        // What Docker 20.10 answers, status codes included.
        let refused = pull(server(500, "unauthorized: authentication required"));
        assert!(refused.is_refusal(), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            "pull r/x:v1 failed: unauthorized: authentication required"
        );
        let anonymous = pull(server(
            500,
            "Head \"http://r/v2/x/manifests/v1\": no basic auth credentials",
        ));
        assert!(anonymous.is_refusal(), "{anonymous:?}");
        let unreachable = pull(server(
            500,
            "Get \"http://r/v2/\": dial tcp r: connect: connection refused",
        ));
        assert!(
            matches!(unreachable, PullError::Unreachable { .. }),
            "{unreachable:?}"
        );
        assert!(!unreachable.is_refusal());
    }

    #[test]
    fn pull_errors_are_classified_from_status_and_engine_words() {
        let missing = pull(server(
            404,
            "manifest for r/x:v1 not found: manifest unknown: manifest unknown",
        ));
        assert!(matches!(missing, PullError::NotFound { .. }), "{missing:?}");
        // `denied` comes as a 404, yet it is a refusal.
        let denied = pull(server(
            404,
            "pull access denied for r/x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
        ));
        assert!(denied.is_refusal(), "{denied:?}");
        assert!(pull(server(401, "who are you")).is_refusal());
        assert!(pull(server(403, "not you")).is_refusal());
        let mid_stream = pull(DockerError::DockerStreamError {
            error: " Unauthorized: authentication required ".to_owned(),
        });
        assert!(mid_stream.is_refusal(), "{mid_stream:?}");
        let disk = pull(server(
            500,
            "write /var/lib/docker: no space left on device",
        ));
        assert!(matches!(disk, PullError::Engine { .. }), "{disk:?}");
        // The image's own name is not the engine's answer.
        let named = PullError::new(
            "r/denied-app:v1".to_owned(),
            &server(500, "Get \"http://r/v2/\": dial tcp r: i/o timeout"),
            &test_spec("v1"),
        );
        assert!(!named.is_refusal(), "{named:?}");
    }

    #[test]
    fn a_failed_pull_of_an_image_the_host_lacks_says_so_not_only_the_dns_error() {
        let unreachable = pull(server(
            500,
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host",
        ));
        let absent = unreachable.absent_here().to_string();
        assert!(
            absent.starts_with(
                "image r/x:v1 is neither pullable from its registry nor present on the host"
            ),
            "{absent}"
        );
        // A refusal stays a refusal: the credentials must be fixed.
        let refused = pull(server(401, "unauthorized")).absent_here();
        assert!(refused.is_refusal());
    }

    #[test]
    fn pull_errors_never_carry_a_secret() {
        let echoed = pull(server(
            500,
            "unauthorized: registry-pass is wrong for postgres://u:hunter22@db",
        ));
        assert!(echoed.is_refusal());
        assert_eq!(
            echoed.to_string(),
            "pull r/x:v1 failed: unauthorized: [redacted] is wrong for [redacted]"
        );
    }

    #[test]
    fn engine_errors_name_the_request_and_keep_the_engine_words() {
        let gone = EngineError::new(
            Request::Remove {
                name: "berth-web-01234567".to_owned(),
            },
            &server(404, "No such container: abc\n"),
        );
        assert!(gone.is_not_found());
        assert_eq!(
            gone.to_string(),
            "removing berth-web-01234567 failed: No such container: abc"
        );
        assert_eq!(gone.message(), "No such container: abc");
        let busy = EngineError::redacted(
            Request::Start {
                name: "x".to_owned(),
            },
            &server(
                500,
                "port is already allocated; env postgres://u:hunter22@db",
            ),
            &test_spec("v1"),
        );
        assert!(!busy.is_not_found());
        assert_eq!(
            busy.to_string(),
            "starting x failed: port is already allocated; env [redacted]"
        );
        let requests = [
            (
                Request::List { app: "web".into() },
                "listing containers of web",
            ),
            (Request::Create { name: "n".into() }, "creating n"),
            (Request::StartAgain { name: "n".into() }, "starting n again"),
            (Request::Stop { name: "n".into() }, "stopping n"),
            (Request::Inspect, "inspect"),
        ];
        for (request, words) in requests {
            assert_eq!(request.to_string(), words);
        }
    }
}
