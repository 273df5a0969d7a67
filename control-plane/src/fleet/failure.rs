//! Why a deployment failed, said twice: the detail (which variable or stored row could not be
//! read, the image and the allowlist, the agents and what they answered) for readers of the
//! admin API, and a short stable category, its public reason, for everyone else: the CI caller
//! of the webhook shim (who holds one application's token, or a registry's secret) and
//! notification receivers (who hold nothing of berth's).
//!
//! | category | public reason |
//! |---|---|
//! | the image is not on the allowlist | `image not allowed` |
//! | a variable cannot be resolved (missing secret or group, unreadable value, two groups defining one name) | `environment could not be resolved` |
//! | the resolved environment is over the agents' limit | `environment too large` |
//! | the application's registry or its credentials cannot be read | `registry credentials could not be read` |
//! | no enrolled agent matches the application's targets | `no host to deploy to` |
//! | anything else refused before dispatch | `deployment refused before dispatch` |
//! | hosts failed (their answer, unreachable, no answer in time) | `deploy failed on 1 of 2 hosts` |
//! | the control plane restarted before every host was deployed | `interrupted by a control plane restart` |
//! | cancelled or replaced by a newer deployment | `cancelled by deployment ID` / `superseded by deployment ID` |
//!
//! Architecture invariant: a failure is classified where it happens (`prepare`, `rollout`,
//! `reconcile`) and its public reason is stored with it (`deployment_logs.public_reason`);
//! [`public_error`] is the only text about a failure that the webhook RPC and notifications
//! give out.

use crate::error::Error;
use crate::model::DeploymentLog;

/// What a CI caller or receiver reads for a failed deployment recorded before public
/// reasons were (or with none): nothing more than that it failed.
pub const GENERIC_REASON: &str = "deployment failed";

/// The category of a failure: what it may say in public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    ImageNotAllowed,
    Environment,
    EnvironmentTooLarge,
    Registry,
    NoTargets,
    /// Refused before dispatch for another reason.
    Refused,
    /// `failed` of the deployment's `total` hosts failed.
    Hosts {
        failed: usize,
        total: usize,
    },
    /// The control plane restarted before every host was deployed.
    Interrupted,
    /// Cancelled by the newer deployment `by` of the same application.
    Cancelled {
        by: String,
    },
}

impl FailureKind {
    /// The public reason: a short, stable text without names, patterns or rows.
    pub fn public_reason(&self) -> String {
        match self {
            FailureKind::ImageNotAllowed => "image not allowed".into(),
            FailureKind::Environment => "environment could not be resolved".into(),
            FailureKind::EnvironmentTooLarge => "environment too large".into(),
            FailureKind::Registry => "registry credentials could not be read".into(),
            FailureKind::NoTargets => "no host to deploy to".into(),
            FailureKind::Refused => "deployment refused before dispatch".into(),
            FailureKind::Hosts { failed, total } => format!(
                "deploy failed on {failed} of {total} host{}",
                if *total == 1 { "" } else { "s" }
            ),
            FailureKind::Interrupted => "interrupted by a control plane restart".into(),
            FailureKind::Cancelled { by } => format!("cancelled by deployment {by}"),
        }
    }
}

/// A failure as it is recorded: its category and the full detail.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// For authenticated readers (`berth deploy show`, the event log, the audit row).
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    /// Tags an error of one preparation step with its category.
    pub fn of(kind: FailureKind) -> impl FnOnce(Error) -> Failure {
        move |e| Failure::new(kind, e.to_string())
    }

    pub fn public_reason(&self) -> String {
        self.kind.public_reason()
    }
}

/// The failure text a deployment gives to callers outside the admin API: its stored public
/// reason, a generic one for a failed row without one, `None` when it did not fail.
pub fn public_error(log: &DeploymentLog) -> Option<String> {
    match (&log.public_reason, &log.error_message) {
        (Some(reason), _) => Some(reason.clone()),
        (None, Some(_)) => Some(GENERIC_REASON.to_string()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_reasons_are_short_stable_categories() {
        let cases = [
            (FailureKind::ImageNotAllowed, "image not allowed"),
            (
                FailureKind::Environment,
                "environment could not be resolved",
            ),
            (FailureKind::EnvironmentTooLarge, "environment too large"),
            (
                FailureKind::Registry,
                "registry credentials could not be read",
            ),
            (FailureKind::NoTargets, "no host to deploy to"),
            (FailureKind::Refused, "deployment refused before dispatch"),
            (
                FailureKind::Hosts {
                    failed: 1,
                    total: 2,
                },
                "deploy failed on 1 of 2 hosts",
            ),
            (
                FailureKind::Hosts {
                    failed: 1,
                    total: 1,
                },
                "deploy failed on 1 of 1 host",
            ),
            (
                FailureKind::Interrupted,
                "interrupted by a control plane restart",
            ),
            (
                FailureKind::Cancelled { by: "dep-2".into() },
                "cancelled by deployment dep-2",
            ),
        ];
        for (kind, reason) in cases {
            assert_eq!(kind.public_reason(), reason);
        }
        let failure = Failure::of(FailureKind::ImageNotAllowed)(Error::PermissionDenied(
            "image busybox is not on the image allowlist".into(),
        ));
        assert_eq!(
            (failure.detail.as_str(), failure.public_reason().as_str()),
            (
                "image busybox is not on the image allowlist",
                "image not allowed"
            )
        );
    }
}
