//! The rollout state machine: phases, the inputs that move between them, and the events each move emits.
//!
//! ```text
//!  Pending --start--> Progressing <--resume/promote-- Paused
//!                      |  ^   |  \--pause/inconclusive--^
//!                verify|  |ok |complete
//!                      v  |   v
//!                   Verifying  Succeeded --rollback (probation)--+
//!                      |                                         |
//!   failed/abort ------+-----> RollingBack --done--> RolledBack  |
//!                                  |  ^----------------------------+
//!                                  +--could not--> Failed
//!   abort (no automatic rollback) -> Aborted --rollback--> RollingBack
//!   retry: Aborted | RolledBack | Failed -> Progressing
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Created, not started.
    Pending,
    /// Updating targets.
    Progressing,
    /// Waiting for time to pass or for promotion.
    Paused,
    /// Running health gates or analysis.
    Verifying,
    /// Done; every target runs the new revision.
    Succeeded,
    /// Putting every touched target back.
    RollingBack,
    /// Every touched target is back on its previous revision.
    RolledBack,
    /// Stopped with at least one target in a state that needs attention.
    Failed,
    /// Stopped by the operator, targets left as they are until a rollback or retry.
    Aborted,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::Verifying,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
        Phase::Aborted,
    ];

    /// Whether the rollout has ended (only retry or a probation rollback can move it again).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::RolledBack | Phase::Failed | Phase::Aborted
        )
    }

    /// The exit code a command reports when a rollout stops in this phase (`None` while it is still moving).
    pub fn exit_code(self) -> Option<i32> {
        match self {
            Phase::Succeeded => Some(0),
            Phase::RolledBack => Some(3),
            Phase::Paused => Some(4),
            Phase::Failed | Phase::Aborted => Some(5),
            _ => None,
        }
    }

    /// Applies `input`; returns the next phase or why the move is not allowed.
    pub fn apply(self, input: &Input) -> Result<Phase, InvalidTransition> {
        use Input as I;
        use Phase as P;
        let next = match (self, input) {
            (P::Pending, I::Start) => P::Progressing,
            (P::Progressing, I::Pause { .. }) => P::Paused,
            (P::Paused, I::Resume) | (P::Paused, I::Promote) => P::Progressing,
            (P::Progressing, I::Verify) => P::Verifying,
            (P::Verifying, I::VerifyPassed) => P::Progressing,
            (P::Verifying, I::Inconclusive { .. }) => P::Paused,
            (P::Progressing, I::Complete) => P::Succeeded,
            (P::Progressing | P::Paused | P::Verifying, I::Abort { .. }) => P::Aborted,
            (P::Progressing | P::Paused | P::Verifying | P::Aborted | P::Succeeded, I::StartRollback { .. }) => {
                P::RollingBack
            }
            (P::RollingBack, I::RollbackComplete) => P::RolledBack,
            (P::RollingBack | P::Progressing | P::Verifying, I::Fail { .. }) => P::Failed,
            (P::Aborted | P::RolledBack | P::Failed, I::Retry) => P::Progressing,
            (from, input) => {
                return Err(InvalidTransition {
                    from,
                    input: input.name(),
                })
            }
        };
        Ok(next)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// What moves a rollout from one phase to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum Input {
    /// Begin.
    Start,
    /// Pause (a pause step, or the operator).
    Pause {
        /// Why.
        reason: String,
    },
    /// Continue after a pause.
    Resume,
    /// Continue past a pause that waits for promotion (or promote a blue-green preview).
    Promote,
    /// Start verifying.
    Verify,
    /// Verification passed.
    VerifyPassed,
    /// Verification could not decide (no data, a signal source down): pause, never roll back.
    Inconclusive {
        /// Why.
        reason: String,
    },
    /// Every step done.
    Complete,
    /// Stop where it is.
    Abort {
        /// Why.
        reason: String,
    },
    /// Revert every touched target.
    StartRollback {
        /// Why.
        reason: String,
    },
    /// Every touched target was reverted.
    RollbackComplete,
    /// An error left targets in a state that needs attention.
    Fail {
        /// Why.
        reason: String,
    },
    /// Start again after it ended without success.
    Retry,
}

impl Input {
    /// The input's name.
    pub fn name(&self) -> &'static str {
        match self {
            Input::Start => "start",
            Input::Pause { .. } => "pause",
            Input::Resume => "resume",
            Input::Promote => "promote",
            Input::Verify => "verify",
            Input::VerifyPassed => "verify-passed",
            Input::Inconclusive { .. } => "inconclusive",
            Input::Complete => "complete",
            Input::Abort { .. } => "abort",
            Input::StartRollback { .. } => "start-rollback",
            Input::RollbackComplete => "rollback-complete",
            Input::Fail { .. } => "fail",
            Input::Retry => "retry",
        }
    }
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a rollout that is {from} cannot {input}")]
pub struct InvalidTransition {
    /// The phase it was in.
    pub from: Phase,
    /// The input's name.
    pub input: &'static str,
}

/// The event a transition emits; the journal and the JSON event stream carry these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseChanged {
    /// Before.
    pub from: Phase,
    /// After.
    pub to: Phase,
    /// What caused it.
    pub input: Input,
}

/// A rollout's phase with the record of how it got there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    phase: Phase,
    events: Vec<PhaseChanged>,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine {
            phase: Phase::Pending,
            events: Vec::new(),
        }
    }
}

impl StateMachine {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The transitions so far.
    pub fn events(&self) -> &[PhaseChanged] {
        &self.events
    }

    /// Applies `input`, recording and returning the event; the phase is unchanged on error.
    pub fn apply(&mut self, input: Input) -> Result<PhaseChanged, InvalidTransition> {
        let to = self.phase.apply(&input)?;
        let event = PhaseChanged {
            from: self.phase,
            to,
            input,
        };
        self.phase = to;
        self.events.push(event.clone());
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Start),
            Just(Input::Pause { reason: "p".into() }),
            Just(Input::Resume),
            Just(Input::Promote),
            Just(Input::Verify),
            Just(Input::VerifyPassed),
            Just(Input::Inconclusive {
                reason: "no data".into()
            }),
            Just(Input::Complete),
            Just(Input::Abort { reason: "op".into() }),
            Just(Input::StartRollback { reason: "bad".into() }),
            Just(Input::RollbackComplete),
            Just(Input::Fail { reason: "err".into() }),
            Just(Input::Retry),
        ]
    }

    /// The documented transitions, written independently of `Phase::apply`.
    fn documented(from: Phase, to: Phase, input: &str) -> bool {
        use Phase::*;
        let table: &[(Phase, &str, Phase)] = &[
            (Pending, "start", Progressing),
            (Progressing, "pause", Paused),
            (Paused, "resume", Progressing),
            (Paused, "promote", Progressing),
            (Progressing, "verify", Verifying),
            (Verifying, "verify-passed", Progressing),
            (Verifying, "inconclusive", Paused),
            (Progressing, "complete", Succeeded),
            (Progressing, "abort", Aborted),
            (Paused, "abort", Aborted),
            (Verifying, "abort", Aborted),
            (Progressing, "start-rollback", RollingBack),
            (Paused, "start-rollback", RollingBack),
            (Verifying, "start-rollback", RollingBack),
            (Aborted, "start-rollback", RollingBack),
            (Succeeded, "start-rollback", RollingBack),
            (RollingBack, "rollback-complete", RolledBack),
            (RollingBack, "fail", Failed),
            (Progressing, "fail", Failed),
            (Verifying, "fail", Failed),
            (Aborted, "retry", Progressing),
            (RolledBack, "retry", Progressing),
            (Failed, "retry", Progressing),
        ];
        table.contains(&(from, input, to))
    }

    #[test]
    fn inconclusive_pauses_and_never_rolls_back() {
        let mut m = StateMachine::default();
        m.apply(Input::Start).unwrap();
        m.apply(Input::Verify).unwrap();
        let e = m
            .apply(Input::Inconclusive {
                reason: "prometheus down".into(),
            })
            .unwrap();
        assert_eq!(e.to, Phase::Paused);
        assert_eq!(Phase::Paused.exit_code(), Some(4));
        let err = Phase::Succeeded.apply(&Input::Resume).unwrap_err();
        assert_eq!(err.to_string(), "a rollout that is succeeded cannot resume");
    }

    proptest! {
        #[test]
        fn no_input_sequence_makes_an_undocumented_move(inputs in prop::collection::vec(input(), 0..60)) {
            let mut m = StateMachine::default();
            for i in inputs {
                let before = m.phase();
                match m.apply(i.clone()) {
                    Ok(e) => {
                        prop_assert!(documented(e.from, e.to, i.name()), "{:?} -{}-> {:?}", e.from, i.name(), e.to);
                        prop_assert_eq!(e.from, before);
                    }
                    Err(_) => {
                        prop_assert_eq!(m.phase(), before);
                        prop_assert!(Phase::ALL.iter().all(|to| !documented(before, *to, i.name())));
                    }
                }
            }
            // The events chain: each starts where the previous ended.
            for w in m.events().windows(2) {
                prop_assert_eq!(w[0].to, w[1].from);
            }
        }
    }
}
