//! A rollout's saved state: per target and for the whole rollout.

use agent_core::{ImageRef, Phase, RolloutPlan, StateMachine};
use agent_health::AnalysisRun;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::spec::RolloutSpec;
pub use crate::target::{TargetState, TargetStatus};

/// A rollout's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The spec.
    pub spec: RolloutSpec,
    /// The image actually deployed (pinned to the digest when the registry gave one).
    pub pinned: ImageRef,
    /// The plan.
    pub plan: RolloutPlan,
    /// Index of the next step to run.
    pub next_step: usize,
    /// The state machine.
    pub machine: StateMachine,
    /// Per target.
    pub targets: Vec<TargetState>,
    /// Why it paused, failed or rolled back.
    pub reason: Option<String>,
    /// Analyses run so far.
    pub analyses: Vec<(String, AnalysisRun)>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The traffic it set through its load balancer (a spec with `traffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<super::route::TrafficState>,
    /// Who acted on it and how, oldest first: `apply`, `promote`, `pause: …`, `abort: …`, `retry`, `undo`.
    #[serde(default)]
    pub audit: Vec<AuditEntry>,
}

/// One action on a rollout: what, who (`AGENTCTL_ACTOR` or `user@host`) and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub by: String,
    /// What.
    pub action: String,
}

impl RolloutState {
    /// Records `action` by this process's actor, now.
    pub(crate) fn record(&mut self, action: impl Into<String>) {
        self.audit.push(AuditEntry {
            at: OffsetDateTime::now_utc(),
            by: crate::actor(),
            action: action.into(),
        });
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.machine.phase()
    }

    /// The exit code for where it stands (0, 3, 4, 5).
    pub fn exit_code(&self) -> i32 {
        self.phase().exit_code().unwrap_or(1)
    }
}
/// Targets that failed or could not be reverted.
pub(super) fn failed_targets(state: &RolloutState) -> usize {
    state
        .targets
        .iter()
        .filter(|t| matches!(t.status, TargetStatus::Failed | TargetStatus::Broken))
        .count()
}

/// How many targets may fail before the rollout stops: the largest count whose fraction of the targets is
/// not above `rollback.maxFailureRatio`.
pub(super) fn failures_allowed(state: &RolloutState) -> usize {
    (state.spec.rollback.max_failure_ratio * state.targets.len() as f64).floor() as usize
}

/// The cause a rollout's updates record in each target's history.
pub(super) fn rollout_cause(state: &RolloutState) -> String {
    format!("rollout {} to {}", state.spec.name, state.spec.image.familiar())
}
