//! Progress events: libraries never print; they report, and the CLI renders.

use agent_core::PullProgress;
use agent_health::{GateProgress, Verdict};

use crate::update::Recovery;

/// Something that happened during an update, undo or repair.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An interrupted operation was repaired.
    Recovered(Recovery),
    /// Preflight passed.
    Preflight {
        /// The container.
        container: String,
        /// The image it runs.
        from: String,
        /// The image it gets.
        to: String,
        /// The new image's registry digest, when known.
        digest: Option<String>,
    },
    /// Pull progress of one layer.
    Pull(PullProgress),
    /// A pull finished.
    Pulled {
        /// The image.
        image: String,
        /// Its digest.
        digest: Option<String>,
    },
    /// Mounts were backed up.
    BackedUp {
        /// The backup folder.
        path: String,
        /// How many mounts.
        mounts: usize,
    },
    /// A step began.
    Step {
        /// The journal step.
        step: &'static str,
        /// What it does.
        detail: String,
    },
    /// Verification began.
    Verifying {
        /// The container.
        container: String,
        /// The probes.
        probes: Vec<String>,
        /// The timing, in words.
        timing: String,
    },
    /// Verification is waiting on probes.
    Waiting(GateProgress),
    /// Verification ended.
    Verdict(Verdict),
    /// The update failed and is being rolled back.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// The probation watch began.
    Watching {
        /// The container.
        container: String,
        /// How long.
        window: String,
        /// The alert rules.
        rules: Vec<String>,
    },
    /// An alert rule is pending.
    AlertPending(String),
    /// A revision was pruned from the history.
    Pruned {
        /// Its number.
        revision: u64,
    },
}

/// Receives events. Implementations must be quick (they run inline).
pub trait Reporter: Send + Sync {
    /// One event.
    fn report(&self, event: &Event);
}

/// A reporter that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: &Event) {}
}

impl<F: Fn(&Event) + Send + Sync> Reporter for F {
    fn report(&self, event: &Event) {
        self(event)
    }
}
