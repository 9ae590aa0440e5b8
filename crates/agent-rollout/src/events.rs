//! Everything that can be observed, in one place: the progress of single-target operations ([`Event`],
//! rendered by the CLI) and the rollout event stream ([`FleetEvent`], rendered by the CLI as JSON lines and
//! serialized by webhooks). Libraries never print; they report.

use std::sync::Arc;

use agent_core::{Phase, PullProgress};
use agent_health::{AnalysisRun, GateProgress, Verdict};
use serde::Serialize;

use crate::report::Recovery;
use crate::target::{TargetState, TargetStatus};

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

/// One line of the rollout's event stream (`-o json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum FleetEvent {
    /// The rollout started or resumed.
    Started {
        /// Rollout name.
        rollout: String,
        /// The pinned image.
        image: String,
        /// Targets.
        targets: usize,
        /// Steps.
        steps: usize,
        /// Resumed from step.
        from_step: usize,
    },
    /// A step began.
    StepStarted {
        /// Rollout name.
        rollout: String,
        /// Step index.
        step: usize,
        /// The step.
        detail: String,
    },
    /// A target was updated (or failed).
    TargetUpdated {
        /// Rollout name.
        rollout: String,
        /// Engine.
        host: String,
        /// Container.
        container: String,
        /// Outcome.
        status: TargetStatus,
        /// The revision made.
        revision: Option<u64>,
        /// Why, when it failed.
        reason: Option<String>,
    },
    /// An analysis finished.
    Analysis {
        /// Rollout name.
        rollout: String,
        /// Analysis name.
        name: String,
        /// Its run.
        run: AnalysisRun,
    },
    /// The rollout set its load balancer's servers (a `traffic` rollout).
    Traffic {
        /// Rollout name.
        rollout: String,
        /// The backend.
        backend: String,
        /// The new versions' share of the requests, in percent.
        weight: u8,
        /// Each server the backend now has for the targets: `addr:port weight`.
        servers: Vec<String>,
    },
    /// The weights read back from the load balancer differed from what the rollout set (changed by hand
    /// or by another tool, or servers lost to a reload); they are set again.
    TrafficCorrected {
        /// Rollout name.
        rollout: String,
        /// What was found.
        found: String,
        /// The share set again, in percent.
        weight: u8,
    },
    /// The rollout paused.
    Paused {
        /// Rollout name.
        rollout: String,
        /// Why.
        reason: String,
        /// Until when, for a timed pause.
        until: Option<String>,
    },
    /// The rollout is reverting every touched target.
    RollingBack {
        /// Rollout name.
        rollout: String,
        /// Why.
        reason: String,
        /// What had been attempted: the targets updated so far.
        touched: Vec<String>,
    },
    /// The rollout ended.
    Finished {
        /// Rollout name.
        rollout: String,
        /// Final phase.
        phase: Phase,
        /// Exit code.
        exit_code: i32,
        /// Every target's state.
        targets: Vec<TargetState>,
        /// Why, when not succeeded.
        reason: Option<String>,
    },
}

/// Receives fleet events.
pub type FleetReporter = Arc<dyn Fn(&FleetEvent) + Send + Sync>;
