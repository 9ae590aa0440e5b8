//! Every single-target change as a value: what it starts from ([`Begin`]), the ordered engine steps it takes
//! ([`Act`]), each with its [`Inverse`], and the one rule that decides after verification ([`judge`]).
//!
//! A plan is built from its begin facts alone, so the executor that runs it and the recovery that repairs it
//! after a kill read the same plan: recovery rebuilds it from the journaled [`Begin`], then either finishes
//! (the decision was to commit) or runs the inverses of the steps the journal shows as reached, in reverse,
//! exactly as a live revert does.
//!
//! | kind      | steps                                                              | verify                |
//! |-----------|--------------------------------------------------------------------|-----------------------|
//! | `update`  | stop-old, rename-old, disable-restart, create-new, start-new       | gate + faithfulness   |
//! | `undo`    | the same; create-new renames the retained revision back when kept  | gate (+ faithfulness) |
//! | `promote` | the same; create-new renames the verified preview to the name      | survived the switch   |
//! | `stage`   | create-new (as `NAME.preview`), start-new                          | gate + faithfulness   |
//! | `install` | create-new, start-new                                              | gate                  |
//! | `restore` | create-new (renames the retained revision back when kept), start-new | gate (+ faithfulness) |

use agent_core::{RestartPolicy, SpecDiff};
use agent_health::{Verdict, VerdictOutcome};
use serde::{Deserialize, Serialize};

/// What kind of change an operation is; it names the journal's operations (`KIND:STEP` in the test hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OpKind {
    /// A new image replaces the running container (stop-first).
    Update,
    /// An earlier revision replaces the running container.
    Undo,
    /// A verified preview takes the name (the switch of start-first and blue-green).
    Promote,
    /// A preview starts beside the untouched old container.
    Stage,
    /// A container that did not exist is created from a template.
    Install,
    /// An earlier revision comes back under a name no container holds (the agent was removed): from its
    /// retained container, or created from its recorded configuration.
    Restore,
}

impl OpKind {
    /// The kind as journaled and as the test hooks name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Update => "update",
            OpKind::Undo => "undo",
            OpKind::Promote => "promote",
            OpKind::Stage => "stage",
            OpKind::Install => "install",
            OpKind::Restore => "restore",
        }
    }

    /// Whether the old container gives up the name (it is stopped and retained).
    pub(crate) fn replaces(self) -> bool {
        matches!(self, OpKind::Update | OpKind::Undo | OpKind::Promote)
    }
}

/// The facts an operation starts from, journaled before anything is done: enough to rebuild its plan and to
/// revert it from whatever state the engine is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Begin {
    /// The kind.
    pub kind: OpKind,
    /// The container's name.
    pub container: String,
    /// The id of the container under the name before (empty for an install).
    pub old_id: String,
    /// Whether it ran.
    pub old_running: bool,
    /// Its restart policy.
    pub old_restart: RestartPolicy,
    /// Its revision (0 for an install).
    pub old_revision: u64,
    /// The revision this operation records (0 for a stage: promotion records it).
    pub new_revision: u64,
    /// Where the old container is retained (`NAME.revN`); for a stage, the preview's name; empty for an
    /// install.
    pub retained_name: String,
    /// The existing container that becomes the new one (a retained revision, a preview), or `None` when the
    /// new one is created.
    pub from_retained: Option<String>,
}

impl Begin {
    /// The name the new container runs under: the preview's for a stage, else the container's.
    pub(crate) fn target(&self) -> &str {
        match self.kind {
            OpKind::Stage => &self.retained_name,
            _ => &self.container,
        }
    }

    /// The plan these facts describe.
    pub(crate) fn plan(&self) -> Vec<Act> {
        let target = self.target().to_owned();
        let mut acts = Vec::new();
        if self.kind.replaces() {
            acts.extend([Act::StopOld, Act::RenameOld, Act::DisableRestart]);
        }
        acts.push(Act::CreateNew {
            target: target.clone(),
            from: self.from_retained.clone(),
        });
        acts.push(Act::StartNew { target });
        acts
    }
}

/// One engine step of a plan, journaled (under [`Act::step`]) before it is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Stop the old container (its stop timeout).
    StopOld,
    /// Rename it to the retained name.
    RenameOld,
    /// Switch its restart policy off (a daemon restart must never bring back a second instance).
    DisableRestart,
    /// Put the new container under `target`: create it from the spec, or rename the existing container
    /// `from` to it.
    CreateNew {
        /// The name it gets.
        target: String,
        /// The existing container, when it is not created.
        from: Option<String>,
    },
    /// Start it.
    StartNew {
        /// Its name.
        target: String,
    },
}

/// What takes an [`Act`] back. Every inverse is idempotent and acts only on the containers the begin facts
/// identify, so it is safe from any state: before its act ran, after, or halfway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inverse {
    /// Start the old container again, if it ran.
    RestartOld,
    /// The old container takes its name back from the retained name.
    RenameBack,
    /// Restore the old container's restart policy.
    RestoreRestart,
    /// Take away what runs under `target` unless it is the old container: remove it when it was created,
    /// or rename it back to `back_to` (restart policy off) when it was an existing container.
    TakeAway {
        /// The new container's name.
        target: String,
        /// Where it came from.
        back_to: Option<String>,
    },
    /// Stop what runs under `target` unless it is the old container.
    StopNew {
        /// The new container's name.
        target: String,
    },
}

impl Inverse {
    /// Its name in errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Inverse::RestartOld => "restart-old",
            Inverse::RenameBack => "rename-back",
            Inverse::RestoreRestart => "restore-restart",
            Inverse::TakeAway { .. } => "take-away-new",
            Inverse::StopNew { .. } => "stop-new",
        }
    }
}

impl Act {
    /// The journal step name.
    pub(crate) fn step(&self) -> Step {
        match self {
            Act::StopOld => Step::StopOld,
            Act::RenameOld => Step::RenameOld,
            Act::DisableRestart => Step::DisableRestart,
            Act::CreateNew { .. } => Step::CreateNew,
            Act::StartNew { .. } => Step::StartNew,
        }
    }

    /// Its inverse.
    pub(crate) fn inverse(&self) -> Inverse {
        match self {
            Act::StopOld => Inverse::RestartOld,
            Act::RenameOld => Inverse::RenameBack,
            Act::DisableRestart => Inverse::RestoreRestart,
            Act::CreateNew { target, from } => Inverse::TakeAway {
                target: target.clone(),
                back_to: from.clone(),
            },
            Act::StartNew { target } => Inverse::StopNew { target: target.clone() },
        }
    }
}

/// The inverses to run, in order, for a plan whose journal reached `reached` (its last journaled step): the
/// inverses of every act up to and including that step, last first. An act is journaled before it runs, so
/// the last one may not have happened; its inverse copes.
pub(crate) fn inverses(plan: &[Act], reached: &[Step]) -> Vec<Inverse> {
    let done = if reached
        .iter()
        .any(|s| matches!(s, Step::Verify | Step::Revert { .. } | Step::AfterBegin))
    {
        plan.len()
    } else {
        plan.iter()
            .rposition(|a| reached.contains(&a.step()))
            .map_or(0, |i| i + 1)
    };
    plan[..done].iter().rev().map(Act::inverse).collect()
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub(crate) enum Step {
    /// The facts the operation starts from.
    Begin(Begin),
    /// [`Act::StopOld`].
    StopOld,
    /// [`Act::RenameOld`].
    RenameOld,
    /// [`Act::DisableRestart`].
    DisableRestart,
    /// [`Act::CreateNew`].
    CreateNew,
    /// [`Act::StartNew`].
    StartNew,
    /// Verification began.
    Verify,
    /// The decision was to keep the new container; `unverified` says why it was not proven, when it was not.
    Commit {
        /// Why the verification was inconclusive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unverified: Option<String>,
    },
    /// The decision was to take it away.
    Revert {
        /// Why.
        reason: String,
    },
    /// Finished.
    Done {
        /// How.
        outcome: String,
    },
    /// Somewhere after [`Step::Begin`]: the journal came from an engine lock, which keeps only the begin
    /// facts (writing every step there would cost a slow archive write each), so every act is taken as
    /// reached; their inverses are safe from any state.
    AfterBegin,
}

impl Step {
    /// Its name in the journal and the test hooks.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Step::Begin(_) => "begin",
            Step::StopOld => "stop-old",
            Step::RenameOld => "rename-old",
            Step::DisableRestart => "disable-restart",
            Step::CreateNew => "create-new",
            Step::StartNew => "start-new",
            Step::Verify => "verify",
            Step::Commit { .. } => "commit",
            Step::Revert { .. } => "revert",
            Step::Done { .. } => "done",
            Step::AfterBegin => "after-begin",
        }
    }
}

/// The journal steps of an update, in order (for crash tests and documentation).
pub const UPDATE_STEPS: &[&str] = &[
    "begin",
    "stop-old",
    "rename-old",
    "disable-restart",
    "create-new",
    "start-new",
    "verify",
    "commit",
    "revert",
    "done",
];

/// What the verdict rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The new container stays; `unverified` says why it was not proven, when it was not.
    Commit {
        /// Why the verification was inconclusive.
        unverified: Option<String>,
    },
    /// It goes.
    Revert {
        /// Why.
        reason: String,
    },
}

/// The one verdict rule of every path (update, start-first and blue-green previews, install, undo, and the
/// fleet through them): healthy → commit; unhealthy or a configuration difference → revert; inconclusive (a
/// control center or Prometheus down) → commit, marked unverified, so a monitoring outage never causes a
/// rollback storm and the caller decides (exit 4, a fleet pauses).
pub(crate) fn judge(verdict: &Verdict, diff: &SpecDiff) -> Decision {
    match verdict.outcome {
        VerdictOutcome::Healthy | VerdictOutcome::Inconclusive if !diff.is_empty() => Decision::Revert {
            reason: format!("the new container's configuration differs from the old one beyond the image: {diff}"),
        },
        VerdictOutcome::Healthy => Decision::Commit { unverified: None },
        VerdictOutcome::Inconclusive => Decision::Commit {
            unverified: Some(format!("verification inconclusive: {}", verdict.reason)),
        },
        VerdictOutcome::Unhealthy => Decision::Revert {
            reason: format!("verification {}: {}", verdict.outcome, verdict.reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(kind: OpKind, from: Option<&str>) -> Begin {
        Begin {
            kind,
            container: "a".into(),
            old_id: "old".into(),
            old_running: true,
            old_restart: RestartPolicy::Always,
            old_revision: 1,
            new_revision: 2,
            retained_name: if kind == OpKind::Stage { "a.preview" } else { "a.rev1" }.into(),
            from_retained: from.map(str::to_owned),
        }
    }

    fn names(acts: &[Act]) -> Vec<&'static str> {
        acts.iter().map(|a| a.step().name()).collect()
    }

    #[test]
    fn each_kind_has_its_steps() {
        let replace = ["stop-old", "rename-old", "disable-restart", "create-new", "start-new"];
        assert_eq!(names(&begin(OpKind::Update, None).plan()), replace);
        assert_eq!(names(&begin(OpKind::Undo, Some("a.rev1")).plan()), replace);
        assert_eq!(names(&begin(OpKind::Promote, Some("a.preview")).plan()), replace);
        let stage = begin(OpKind::Stage, None).plan();
        assert_eq!(names(&stage), ["create-new", "start-new"]);
        assert_eq!(
            stage[0],
            Act::CreateNew {
                target: "a.preview".into(),
                from: None
            }
        );
        assert_eq!(names(&begin(OpKind::Install, None).plan()), ["create-new", "start-new"]);
        assert_eq!(
            names(&begin(OpKind::Restore, Some("a.rev1")).plan()),
            ["create-new", "start-new"]
        );
    }

    #[test]
    fn inverses_cover_the_reached_steps_last_first() {
        let plan = begin(OpKind::Update, None).plan();
        assert!(inverses(&plan, &[]).is_empty());
        assert_eq!(inverses(&plan, &[Step::StopOld]), [Inverse::RestartOld]);
        assert_eq!(
            inverses(&plan, &[Step::StopOld, Step::RenameOld]),
            [Inverse::RenameBack, Inverse::RestartOld]
        );
        let all = inverses(&plan, &[Step::Verify]);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], Inverse::StopNew { target: "a".into() });
        assert_eq!(
            all[1],
            Inverse::TakeAway {
                target: "a".into(),
                back_to: None
            }
        );
        assert_eq!(all[4], Inverse::RestartOld);
        assert_eq!(inverses(&plan, &[Step::Revert { reason: "x".into() }]), all);
        let undo = begin(OpKind::Undo, Some("a.rev1")).plan();
        assert_eq!(
            inverses(&undo, &[Step::CreateNew])[0],
            Inverse::TakeAway {
                target: "a".into(),
                back_to: Some("a.rev1".into())
            }
        );
    }

    #[test]
    fn begin_records_read_as_before() {
        // The journal format is what earlier versions wrote: an operation they left open is repaired.
        let old = serde_json::json!({"step": "begin", "kind": "update", "container": "a", "old_id": "x",
            "old_running": true, "old_restart": "always", "old_revision": 1, "new_revision": 2,
            "retained_name": "a.rev1", "from_retained": null});
        let Step::Begin(b) = serde_json::from_value::<Step>(old).unwrap() else {
            panic!("not a begin record")
        };
        assert_eq!(b.kind, OpKind::Update);
        let commit: Step = serde_json::from_value(serde_json::json!({"step": "commit"})).unwrap();
        assert_eq!(commit, Step::Commit { unverified: None });
    }

    fn verdict(outcome: VerdictOutcome) -> Verdict {
        Verdict {
            outcome,
            reason: "r".into(),
            elapsed: std::time::Duration::ZERO,
            evidence: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_rule() {
        let same = SpecDiff::default();
        assert_eq!(
            judge(&verdict(VerdictOutcome::Healthy), &same),
            Decision::Commit { unverified: None }
        );
        assert!(matches!(
            judge(&verdict(VerdictOutcome::Inconclusive), &same),
            Decision::Commit { unverified: Some(_) }
        ));
        assert!(matches!(
            judge(&verdict(VerdictOutcome::Unhealthy), &same),
            Decision::Revert { .. }
        ));
    }
}
