//! Where one target of a rollout stands: the fleet's state and its events share it.

use serde::{Deserialize, Serialize};

/// Where one target stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStatus {
    /// Not touched yet.
    Pending,
    /// Runs the new revision.
    Updated,
    /// Its update failed and it rolled itself back.
    Failed,
    /// Updated, then reverted by the rollout's rollback.
    Reverted,
    /// Could not be reverted, or its engine was unreachable: needs attention.
    Broken,
    /// Blue-green: its verified preview runs beside the old container, waiting for promotion.
    Staged,
}

impl std::fmt::Display for TargetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Updated => "updated",
            TargetStatus::Failed => "failed",
            TargetStatus::Reverted => "reverted",
            TargetStatus::Broken => "broken",
            TargetStatus::Staged => "staged",
        })
    }
}

/// One target's record in a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetState {
    /// Engine.
    pub host: String,
    /// Container; for a service's unit, `SERVICE.N` (its N-th task or node).
    pub container: String,
    /// The service this unit belongs to (a service target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Status.
    pub status: TargetStatus,
    /// The revision it ran before this rollout.
    pub previous: Option<u64>,
    /// The revision this rollout made.
    pub revision: Option<u64>,
    /// It did not exist: this rollout created it from the template (a rollback removes it).
    #[serde(default)]
    pub installed: bool,
    /// The last message about it.
    pub message: Option<String>,
    /// The verdict of its last verification with each probe's evidence, as `agentctl update` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}
