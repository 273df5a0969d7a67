//! The states of a deployment (`deployment_logs.status`) and of one of its targets
//! (`deployment_targets.status`), as types.
//!
//! Architecture invariant: whether a deployment or a target is still in progress is decided
//! here, by `is_finished`, and nowhere else — the rollout, the watchers, the webhook and the
//! CLI all ask these types. SQL that filters on unfinished rows uses [`UNFINISHED_SQL`] and
//! [`TargetStatus::OPEN_SQL`], which a test keeps equal to `is_finished`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// `deployment_logs.status`: the seed's aggregate state of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeploymentStatus {
    /// Recorded; nothing dispatched yet.
    Pending,
    /// At least one command was sent to an agent.
    Running,
    Success,
    Failed,
    /// Allowed by the seed's schema; berth records a rolled-back deploy as `Failed` with the
    /// reason, and its targets as `rolled_back`.
    RolledBack,
    /// Waiting for the application's running deployment (one per application at a time).
    Queued,
    /// A newer deployment of the application replaced it before it ran: finished, never ran.
    Superseded,
}

/// SQL list of the unfinished deployment states, for `status IN {UNFINISHED_SQL}`.
pub const UNFINISHED_SQL: &str = "('pending', 'running', 'queued')";
/// SQL list of the states of the one deployment of an application that holds its slot.
pub const ACTIVE_SQL: &str = "('pending', 'running')";

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Success,
        Self::Failed,
        Self::RolledBack,
        Self::Queued,
        Self::Superseded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Queued => "queued",
            Self::Superseded => "superseded",
        }
    }

    /// True once the deployment reached a final state: watchers stop, the webhook answers.
    pub const fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running | Self::Queued)
    }

    /// True while it holds its application's one deployment slot (dispatching or running).
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Whether a status string sent by a control plane is final. An unknown state (a newer
    /// server) counts as final, so a client stops following and shows it instead of hanging.
    pub fn is_finished_str(status: &str) -> bool {
        status.parse::<Self>().map_or(true, Self::is_finished)
    }
}

/// `deployment_targets.status`: one host of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetStatus {
    /// Not dispatched yet (a later batch).
    Pending,
    /// The deploy command was sent; no result yet.
    Running,
    /// Deployed and healthy; may still be rolled back if another target fails.
    Success,
    Failed,
    /// Deployed, then undone because another target failed.
    RolledBack,
    /// Never dispatched: the deployment stopped before its batch.
    Skipped,
}

impl TargetStatus {
    pub const ALL: [TargetStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Success,
        Self::Failed,
        Self::RolledBack,
        Self::Skipped,
    ];

    /// SQL list of the states a result may still change (`success` can become
    /// `rolled_back`), for `status IN {OPEN_SQL}`.
    pub const OPEN_SQL: &'static str = "('pending', 'running', 'success')";

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Skipped => "skipped",
        }
    }

    /// True when no result will ever change this target again.
    pub const fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running | Self::Success)
    }

    /// True while a command is out and its result not in.
    pub const fn is_awaiting_result(self) -> bool {
        matches!(self, Self::Running)
    }
}

macro_rules! text_enum {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| Error::Internal(format!("unknown {} {s:?}", $what)))
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        // Stored as TEXT; a value outside the enum is a decode error, never a silent default.
        impl sqlx::Type<sqlx::Sqlite> for $ty {
            fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
                <str as sqlx::Type<sqlx::Sqlite>>::type_info()
            }

            fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for $ty {
            fn decode(
                value: sqlx::sqlite::SqliteValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Sqlite>>::decode(value)?;
                Ok(s.parse::<$ty>()?)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Sqlite as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Sqlite>>::encode(self.as_str(), buf)
            }
        }
    };
}

text_enum!(DeploymentStatus, "deployment status");
text_enum!(TargetStatus, "target status");

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_list<T: Copy>(all: &[T], name: fn(T) -> &'static str, pick: fn(T) -> bool) -> String {
        let names: Vec<String> = all
            .iter()
            .copied()
            .filter(|s| pick(*s))
            .map(|s| format!("'{}'", name(s)))
            .collect();
        format!("({})", names.join(", "))
    }

    #[test]
    fn the_sql_lists_agree_with_is_finished() {
        assert_eq!(
            sql_list(&DeploymentStatus::ALL, DeploymentStatus::as_str, |s| !s
                .is_finished()),
            UNFINISHED_SQL
        );
        assert_eq!(
            sql_list(&TargetStatus::ALL, TargetStatus::as_str, |s| !s
                .is_finished()),
            TargetStatus::OPEN_SQL
        );
        assert_eq!(
            sql_list(
                &DeploymentStatus::ALL,
                DeploymentStatus::as_str,
                DeploymentStatus::is_active
            ),
            ACTIVE_SQL
        );
    }

    #[test]
    fn every_state_round_trips_and_unknown_ones_are_refused() {
        for s in DeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<DeploymentStatus>().unwrap(), s);
        }
        for s in TargetStatus::ALL {
            assert_eq!(s.as_str().parse::<TargetStatus>().unwrap(), s);
        }
        assert!("done".parse::<DeploymentStatus>().is_err());
        assert!("".parse::<TargetStatus>().is_err());
    }

    #[test]
    fn only_pending_and_running_deployments_are_in_progress() {
        assert!(!DeploymentStatus::Pending.is_finished());
        assert!(!DeploymentStatus::Running.is_finished());
        assert!(DeploymentStatus::Success.is_finished());
        assert!(DeploymentStatus::Failed.is_finished());
        assert!(DeploymentStatus::is_finished_str("failed"));
        assert!(!DeploymentStatus::is_finished_str("running"));
        // A state this client does not know is shown, not followed forever.
        assert!(DeploymentStatus::is_finished_str("from-the-future"));
    }

    #[test]
    fn a_successful_target_can_still_be_rolled_back() {
        assert!(!TargetStatus::Success.is_finished());
        assert!(TargetStatus::RolledBack.is_finished());
        assert!(TargetStatus::Skipped.is_finished());
        assert!(TargetStatus::Running.is_awaiting_result());
        assert!(!TargetStatus::Pending.is_awaiting_result());
    }
}
