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
    /// The engine failed or refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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
    #[error("{container}: the update failed ({reason}) and restoring the previous container failed too: {error}; run `agentctl status {container}` to retry the repair")]
    RevertFailed {
        /// The container.
        container: String,
        /// Why the update failed.
        reason: String,
        /// Why the revert failed.
        error: String,
    },
    /// A rollout's state machine refused a move: a bug or a state changed by another tool; nothing was done.
    #[error("rollout {rollout}: {source}; see `agentctl rollout status {rollout}`")]
    IllegalTransition {
        /// The rollout.
        rollout: String,
        /// The refused move.
        source: InvalidTransition,
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
