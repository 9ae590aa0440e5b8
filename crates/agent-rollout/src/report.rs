//! What single-target operations report: how they ended, what they recovered, where a container stands.

use std::path::PathBuf;

use agent_core::{ContainerSpec, ContainerStatus, Digest, ImageDefaults, ImageRef, Revision, RevisionNumber, SpecDiff};
use agent_health::{ProbationOutcome, Verdict};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How an update or undo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStatus {
    /// The new revision runs and was verified.
    Updated,
    /// The new revision failed; the previous one runs again.
    RolledBack,
    /// The request asked for what already runs; nothing was changed.
    Unchanged,
    /// A verified preview runs beside the untouched old container, waiting for [`Updater::promote`](crate::Updater::promote).
    Staged,
    /// The new revision runs, but a signal source could not be asked (the control center or Prometheus
    /// down), so it was neither proven nor rolled back: paused for a decision (`undo` goes back).
    Unverified,
}

impl UpdateStatus {
    /// The process exit code for this status (0 updated, unchanged or staged, 3 rolled back, 4 unverified).
    pub fn exit_code(self) -> i32 {
        match self {
            UpdateStatus::Updated | UpdateStatus::Unchanged | UpdateStatus::Staged => 0,
            UpdateStatus::RolledBack => 3,
            UpdateStatus::Unverified => 4,
        }
    }
}

/// What an interrupted operation was and what recovery did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// The operation id.
    pub operation: String,
    /// The last step it journaled.
    pub interrupted_at: String,
    /// What recovery did.
    pub action: RecoveryAction,
}

/// What recovery did about an interrupted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryAction {
    /// It had not committed: the inverses of the steps it reached put the old container back.
    Reverted,
    /// It had committed: its records were finished.
    Completed,
}

impl std::fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecoveryAction::Reverted => "reverted",
            RecoveryAction::Completed => "completed",
        })
    }
}

/// The result of an update or undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateReport {
    /// The container.
    pub container: String,
    /// The engine.
    pub endpoint: String,
    /// How it ended.
    pub status: UpdateStatus,
    /// The revision this attempt recorded.
    pub revision: Revision,
    /// The revision that ran before.
    pub previous: Option<RevisionNumber>,
    /// The new container's verdict.
    pub verdict: Option<Verdict>,
    /// Fields of the new container that differ from the old one beyond the image (must be empty).
    pub unexpected_changes: SpecDiff,
    /// Why it rolled back.
    pub reason: Option<String>,
    /// The new container's last output lines, when it rolled back.
    pub last_logs: Vec<String>,
    /// Where the backup went.
    pub backup: Option<PathBuf>,
    /// Interrupted operations this command repaired first.
    pub recovered: Vec<Recovery>,
    /// How the probation watch ended, when there was one.
    pub probation: Option<ProbationOutcome>,
    /// The revision that restored the previous version after a probation alert.
    pub restored_by: Option<RevisionNumber>,
    /// How the previous revision came back after a rollback, when it had to be recreated from its recorded
    /// configuration (its retained container was gone); `None` when its retained container took the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// What the engine showed beside the change that the operator must know, in words: a volume the
    /// revision mounts was gone (pruned) and was created empty, so the data it held is not there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The current state of one container, for `agentctl status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The container.
    pub container: String,
    /// The engine.
    pub endpoint: String,
    /// The image it runs.
    pub image: Option<String>,
    /// Lifecycle status.
    pub state: Option<ContainerStatus>,
    /// HEALTHCHECK status.
    pub health: Option<String>,
    /// Restart count.
    pub restart_count: Option<u64>,
    /// The current revision.
    pub revision: Option<Revision>,
    /// Operations another process is running on it now.
    pub in_progress: Option<String>,
    /// Interrupted operations this command repaired.
    pub recovered: Vec<Recovery>,
    /// How what the engine runs differs from the current revision (another tool changed the container), with
    /// the fix; `None` when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// What else the engine shows that the recorded history does not expect, each with its fix: the
    /// container gone, retained containers pruned, the engine's copy of the history missing or different.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// The store document kind of staged previews.
pub(crate) const PREVIEW_KIND: &str = "preview";

/// A verified new container running beside the old one under `NAME.preview`, waiting to take the name
/// (blue-green: on promotion; start-first: at once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The preview container's name.
    pub container: String,
    /// Its id (a different container under the name is not ours).
    pub container_id: String,
    /// The image it runs.
    pub image: ImageRef,
    /// The image id.
    pub image_id: Option<String>,
    /// The digest.
    pub digest: Option<Digest>,
    /// Why (recorded in the history on promotion).
    pub cause: String,
    /// The spec it takes on with the name.
    pub spec: ContainerSpec,
    /// The new image's defaults (for the faithfulness check after the switch).
    pub new_defaults: ImageDefaults,
    /// Its verification.
    pub verdict: Verdict,
    /// Start-first: the switch follows at once, so a preview left by a crash is discarded, not kept.
    pub switch_at_once: bool,
    /// When it was verified.
    #[serde(with = "time::serde::rfc3339")]
    pub staged_at: OffsetDateTime,
}

/// The name of a container's preview.
pub fn preview_name(container: &str) -> String {
    format!("{container}.preview")
}
