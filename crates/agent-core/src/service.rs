//! Services run by a cluster manager (a Swarm manager behind an engine endpoint): what a rollout needs to
//! know of them and to ask of them, in domain terms. The engine's own spec travels as an opaque JSON document
//! so that nothing the operator set is lost on the way back.

use serde::{Deserialize, Serialize};

/// How a service places its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceMode {
    /// This many tasks, wherever the manager places them.
    Replicated(u64),
    /// One task on every node that may run it.
    Global,
}

/// A service as its manager reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// The manager's id for it.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The version index an update must name (optimistic concurrency).
    pub version: u64,
    /// The image its tasks run, as written in its spec.
    pub image: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// The state of its last update (`updating`, `paused`, `completed`, `rollback_completed`…), if any.
    pub update_state: Option<String>,
    /// The whole spec, exactly as the manager returned it: what a revert puts back.
    pub spec: serde_json::Value,
}

/// One task of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// Its id.
    pub id: String,
    /// The replica slot (replicated services).
    pub slot: Option<u64>,
    /// The node it was placed on.
    pub node: String,
    /// The image of its spec.
    pub image: String,
    /// Its state (`new`, `pending`, `starting`, `running`, `failed`, `shutdown`, `rejected`…). A task whose
    /// image has a HEALTHCHECK stays `starting` until the check passes.
    pub state: String,
    /// The state the manager wants it in (`running`, `shutdown`).
    pub desired_state: String,
    /// The manager's message, and its error when it failed.
    pub message: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// The container's id, once it has one.
    pub container: Option<String>,
    /// When it was created (RFC 3339, as the manager wrote it).
    pub created_at: String,
}

impl TaskInfo {
    /// Whether it ended badly: failed, rejected, or its container exited with an error.
    pub fn failed(&self) -> bool {
        matches!(self.state.as_str(), "failed" | "rejected") || self.error.is_some()
    }
}

/// A change to a service, each starting from the spec the manager holds now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceChange<'a> {
    /// Run `image` in at most `tasks` more tasks, then hold: the other tasks keep their version until the next
    /// change. The service's own update settings are replaced for the hold (the manager's updater does the
    /// work, one batch of `tasks`).
    Step {
        /// The image, pinned by digest.
        image: &'a str,
        /// Tasks replaced in this step.
        tasks: u64,
        /// Tasks on `image` once this step is done (those of earlier steps and this one's). It makes each
        /// step's spec differ from the one before even when `tasks` is the same: a manager sent the very
        /// spec it holds starts no update, and its held updater would never take the next tasks.
        reached: u64,
    },
    /// Run `image` in every task, with the update settings of `original` (the spec before the rollout).
    Finish {
        /// The image.
        image: &'a str,
        /// The spec the rollout started from.
        original: &'a serde_json::Value,
    },
    /// Put back this whole spec (a revert to a revision).
    Restore {
        /// The spec.
        spec: &'a serde_json::Value,
    },
}
