//! The error of agent-rollout.

use std::path::PathBuf;

use agent_core::{ImageRefError, InvalidTransition, PolicyViolation, RevisionNumber, RuntimeError, StoreError};

/// What went wrong in an update, undo or rollout. Unless the variant says otherwise, nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed image reference.
    #[error(transparent)]
    InvalidImage(#[from] ImageRefError),
    /// The tag policy refused the image.
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// Reading the engine's version and platform failed; nothing was changed.
    #[error("reading the engine's version and platform failed: {source}")]
    EngineInfo {
        /// The engine's error.
        source: RuntimeError,
    },
    /// Reading a container from the engine failed; nothing was changed by this read.
    #[error("inspecting container {container:?} failed: {source}")]
    Inspect {
        /// The container.
        container: String,
        /// The engine's error.
        source: RuntimeError,
    },
    /// Pulling or inspecting the new image failed; nothing was changed.
    #[error("resolving image {image} failed: {source}")]
    ResolveImage {
        /// The image.
        image: String,
        /// The engine's or registry's error.
        source: RuntimeError,
    },
    /// One engine step of an operation failed (`stop`, `start`, `remove` of a preview or of a pruned
    /// revision, …). The operation's own report says what was put back.
    #[error("{step} {container:?} failed: {source}")]
    Step {
        /// The step, as the journal names it (`stop-old`, `remove-preview`, …).
        step: &'static str,
        /// The container it acted on.
        container: String,
        /// The engine's error.
        source: RuntimeError,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(StoreError),
    /// Another live process holds the container or rollout.
    #[error("{message}")]
    Busy {
        /// Who holds it and since when.
        message: String,
    },
    /// The image is for another platform than the engine.
    #[error("image {image} is built for {image_platform} but the engine runs {engine_platform}; build or pull the {engine_platform} variant")]
    PlatformMismatch {
        /// The image.
        image: String,
        /// Its OS/arch.
        image_platform: String,
        /// The engine's OS/arch.
        engine_platform: String,
    },
    /// No such revision.
    #[error("container {container} has no revision {revision}; its revisions are {available:?} (see `agentctl history {container}`)")]
    NoSuchRevision {
        /// The container.
        container: String,
        /// The revision asked for.
        revision: RevisionNumber,
        /// The revisions there are.
        available: Vec<u64>,
    },
    /// A container that does not exist and of which agentctl knows no revision: nothing to bring back.
    #[error("container {container} does not exist on {endpoint}, and agentctl has no history of it: none in its state store and none on the engine (no {container}.agentctl-history.0 or .1 record; `docker container prune` removes them); nothing to bring back")]
    NoHistory {
        /// The container.
        container: String,
        /// The engine.
        endpoint: String,
    },
    /// No earlier good revision.
    #[error("container {container} has no earlier good revision to go back to (see `agentctl history {container}`)")]
    NothingToUndo {
        /// The container.
        container: String,
    },
    /// Secret values of a snapshot are unknown and the running container does not have them.
    #[error("revision {revision} of {container} needs the secret env values {names:?}, which are never stored and which the running container does not have; undo to a revision whose container is still retained, or update with the values set")]
    SecretsUnknown {
        /// The container.
        container: String,
        /// The revision.
        revision: RevisionNumber,
        /// The missing names.
        names: Vec<String>,
    },
    /// The backup could not be written (nothing was changed).
    #[error("backup to {path} failed: {message}; check the folder is writable and has space")]
    Backup {
        /// The backup folder.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An update failed and putting the old container back failed too. The container may need attention.
    #[error("{container}: the update failed ({reason}) and restoring the previous container failed too ({step}: {source}); run `agentctl status {container}` to retry the repair")]
    RevertFailed {
        /// The container.
        container: String,
        /// Why the update failed.
        reason: String,
        /// The inverse step that failed (`rename-back`, `restart-old`, …).
        step: &'static str,
        /// Why it failed.
        source: RuntimeError,
    },
    /// A rollout's state machine refused a move: a bug or a state changed by another tool; nothing was done.
    #[error("rollout {rollout}: {source}; see `agentctl rollout status {rollout}`")]
    IllegalTransition {
        /// The rollout.
        rollout: String,
        /// The refused move.
        source: InvalidTransition,
    },
    /// The caller's [`Pacer`](crate::Pacer) withheld the operation's turn (a fleet whose failure budget ran
    /// out while this target waited); nothing was changed.
    #[error("the update of {container} was not started: the rollout withheld its turn (too many targets failed); nothing was changed")]
    Withheld {
        /// The container.
        container: String,
    },
    /// A record agentctl keeps on the engine beside a container (its lock, the journal of an operation, its
    /// history) does not hold what agentctl writes there: damaged, written by hand, or by another tool.
    /// Nothing was changed because of it.
    #[error("the engine record {record} on {endpoint} is unreadable: {problem}; {fix}")]
    UnreadableRecord {
        /// The record's name (`NAME.agentctl-lock`, …).
        record: String,
        /// The engine.
        endpoint: String,
        /// What is wrong with it.
        problem: String,
        /// What the user can do.
        fix: String,
    },
    /// What the engine shows after an operation contradicts what the operation was to leave: a revision
    /// that should run again does not, or a rollout that should have succeeded does not run its version
    /// everywhere. Reported as the engine shows it; the container may need attention (exit 5).
    #[error("{container}: {expected}, but the engine shows {shows}; {fix}")]
    NotAsExpected {
        /// The container.
        container: String,
        /// What the operation was to leave (`revision 1 runs again`).
        expected: String,
        /// What the engine shows instead.
        shows: String,
        /// What the user can do.
        fix: String,
    },
    /// A rollout of the spec's name has not finished, and the spec differs from the one it runs; nothing was
    /// changed. `apply --replace` ([`Fleet::replace`](crate::Fleet::replace)) reverts it and starts the new
    /// spec.
    #[error("rollout {rollout} is {phase} with another spec, so this one was not applied and nothing was changed; it differs in: {}; finish that rollout first (`agentctl rollout promote|abort {rollout}`), or run `agentctl apply --replace -f SPEC` to revert it and start this spec", differences.join("; "))]
    RolloutConflict {
        /// The rollout.
        rollout: String,
        /// Its phase.
        phase: String,
        /// Where the specs differ, `path: stored → new`.
        differences: Vec<String>,
    },
    /// A bad argument or configuration value.
    #[error("invalid {what}: {message}")]
    InvalidInput {
        /// What was invalid.
        what: String,
        /// Why, and what to do.
        message: String,
    },
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseHeld { .. } => Error::Busy { message: e.to_string() },
            other => Error::Store(other),
        }
    }
}

/// One engine step that failed: which step, on which container, and the engine's error. Becomes
/// [`Error::Step`] (through `?`), or [`Error::RevertFailed`] when the step was part of putting things back.
#[derive(Debug)]
pub(crate) struct StepFailed {
    pub(crate) step: &'static str,
    pub(crate) container: String,
    pub(crate) source: RuntimeError,
}

impl StepFailed {
    /// A `map_err` for the engine call of `step` on `container`.
    pub(crate) fn at(step: &'static str, container: &str) -> impl FnOnce(RuntimeError) -> StepFailed {
        let container = container.to_owned();
        move |source| StepFailed {
            step,
            container,
            source,
        }
    }

    /// The failure of a revert of `container`, begun because of `reason`.
    pub(crate) fn reverting(self, container: &str, reason: &str) -> Error {
        Error::RevertFailed {
            container: container.to_owned(),
            reason: reason.to_owned(),
            step: self.step,
            source: self.source,
        }
    }
}

impl From<StepFailed> for Error {
    fn from(f: StepFailed) -> Self {
        Error::Step {
            step: f.step,
            container: f.container,
            source: f.source,
        }
    }
}

impl Error {
    /// A `map_err` for reading `container`.
    pub(crate) fn inspect(container: &str) -> impl FnOnce(RuntimeError) -> Error {
        let container = container.to_owned();
        move |source| Error::Inspect { container, source }
    }

    /// The engine's error underneath, when the engine failed.
    pub fn runtime(&self) -> Option<&RuntimeError> {
        match self {
            Error::EngineInfo { source }
            | Error::Inspect { source, .. }
            | Error::ResolveImage { source, .. }
            | Error::Step { source, .. }
            | Error::RevertFailed { source, .. } => Some(source),
            _ => None,
        }
    }
}
