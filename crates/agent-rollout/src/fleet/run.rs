//! Running a rollout's plan step by step: batches, pauses, analyses, the failure budget.

use super::requests::Waited;
use super::route::Routing;
use super::state::{failed_targets, failures_allowed, RolloutState};
use super::{transition, Fleet};
use crate::target::TargetStatus;
use agent_core::{Input, Pause, Phase, PlanStep, UpdateMode};
use agent_health::{AnalysisOutcome, Prometheus};
use time::OffsetDateTime;

use crate::error::Error;
use crate::events::FleetEvent;

impl Fleet {
    pub(super) async fn run(&self, state: &mut RolloutState) -> Result<(), Error> {
        self.open_outbox(&state.spec);
        let result = self.run_steps(state).await;
        self.outbox().drain().await;
        result
    }

    pub(super) async fn run_steps(&self, state: &mut RolloutState) -> Result<(), Error> {
        let name = state.spec.name.to_string();
        self.emit(FleetEvent::Started {
            rollout: name.clone(),
            image: state.pinned.to_string(),
            targets: state.targets.len(),
            steps: state.plan.steps.len(),
            from_step: state.next_step,
        });
        let verify = state.spec.verify()?;
        // The shares saved with the state, applied again: this process may follow one that died, or HAProxy
        // may have been reloaded and forgotten the servers added at runtime.
        if let Some(t) = state.traffic.clone().filter(|_| state.next_step > 0) {
            self.route(state, Routing::Share(t.weight)).await?;
        }
        while state.next_step < state.plan.steps.len() {
            // An operator's abort, pause or promotion from another process, at the step boundary.
            if let Some(request) = self.take_request(&name).await? {
                if self.act_on(state, request, false).await? {
                    return Ok(());
                }
            }
            let step = state.plan.steps[state.next_step].clone();
            self.emit(FleetEvent::StepStarted {
                rollout: name.clone(),
                step: state.next_step,
                detail: step.to_string(),
            });
            match step {
                PlanStep::Update { targets, mode, .. } => {
                    let (services, containers): (Vec<usize>, Vec<usize>) =
                        targets.iter().partition(|&&i| state.targets[i].service.is_some());
                    let mut waves = vec![containers];
                    if !services.is_empty() {
                        self.update_service_units(state, &services, &verify).await?;
                    } else if mode != UpdateMode::BlueGreen {
                        waves.extend(self.chained_waves(state, mode));
                    }
                    let unverified = self.update_batch(state, &waves, &verify, Action::Update(mode)).await?;
                    if let Some(reason) = self.too_many_failures(state) {
                        return self.fail(state, reason).await;
                    }
                    // The previews join the backend with no traffic yet, where the operator sees them.
                    if mode == UpdateMode::BlueGreen {
                        self.route(state, Routing::Share(0)).await?;
                    }
                    if !unverified.is_empty() {
                        // A signal source could not be asked: wait for a human, never roll back on it. The one
                        // promotion answers this pause and a pause until promotion that comes next (blue-green).
                        state.next_step += 1;
                        if matches!(
                            state.plan.steps.get(state.next_step),
                            Some(PlanStep::Pause {
                                pause: Pause::UntilPromoted
                            })
                        ) {
                            state.next_step += 1;
                        }
                        return self
                            .pause_state(
                                state,
                                format!(
                                    "verification was inconclusive on {} (the new version runs there); `rollout promote` continues, `rollout abort` reverts",
                                    unverified.join("; ")
                                ),
                            )
                            .await;
                    }
                }
                PlanStep::Promote { .. } => {
                    let staged: Vec<usize> = (0..state.targets.len())
                        .filter(|&i| state.targets[i].status == TargetStatus::Staged)
                        .collect();
                    // With traffic, the containers the previews replace leave the backend (drained) first.
                    self.route(state, Routing::Promoting).await?;
                    self.update_batch(state, &[staged], &verify, Action::Promote).await?;
                    self.route(state, Routing::Share(100)).await?;
                    if let Some(reason) = self.too_many_failures(state) {
                        return self.fail(state, reason).await;
                    }
                }
                PlanStep::Traffic { weight } => self.route(state, Routing::Share(weight)).await?,
                PlanStep::Pause { pause: Pause::For(d) } => {
                    // Bounded where it is parsed (a year at most), so this cannot overflow.
                    let until = OffsetDateTime::now_utc() + d;
                    self.emit(FleetEvent::Paused {
                        rollout: name.clone(),
                        reason: format!("pause for {}", agent_core::format_duration(d)),
                        until: until.format(&time::format_description::well_known::Rfc3339).ok(),
                    });
                    // Operators act on the rollout during the pause from any process (abort, promote,
                    // pause), and the weights are read back meanwhile.
                    if let Waited::Asked(request) = self.wait_for(state, tokio::time::sleep(d)).await? {
                        if self.act_on(state, request, true).await? {
                            return Ok(());
                        }
                    }
                }
                PlanStep::Pause {
                    pause: Pause::UntilPromoted,
                } => {
                    state.next_step += 1;
                    return self
                        .pause_state(state, "waiting for `agentctl rollout promote`".into())
                        .await;
                }
                PlanStep::Analysis { name: analysis } => {
                    let spec = state
                        .spec
                        .analysis
                        .get(&analysis)
                        .cloned()
                        .ok_or_else(|| Error::InvalidInput {
                            what: "analysis".into(),
                            message: format!("{analysis} is not defined"),
                        })?;
                    let prometheus = Prometheus::new(&spec.prometheus);
                    let run = match self.wait_for(state, spec.run(&prometheus)).await? {
                        Waited::Done(run) => run,
                        Waited::Asked(request) => {
                            // A promotion skips the analysis (as Argo's promote skips the current step);
                            // a pause runs it again when promoted.
                            if self.act_on(state, request, false).await? {
                                return Ok(());
                            }
                            state.next_step += 1;
                            self.save(state).await?;
                            continue;
                        }
                    };
                    self.emit(FleetEvent::Analysis {
                        rollout: name.clone(),
                        name: analysis.clone(),
                        run: run.clone(),
                    });
                    state.analyses.push((analysis.clone(), run.clone()));
                    match run.outcome {
                        AnalysisOutcome::Successful => {}
                        AnalysisOutcome::Failed => {
                            let last = run.measurements.last().map(|m| m.message.clone()).unwrap_or_default();
                            return self.fail(state, format!("analysis {analysis} failed: {last}")).await;
                        }
                        AnalysisOutcome::Inconclusive => {
                            let last = run.measurements.last().map(|m| m.message.clone()).unwrap_or_default();
                            state.next_step += 1;
                            return self
                                .pause_state(state, format!("analysis {analysis} was inconclusive: {last}"))
                                .await;
                        }
                    }
                }
            }
            state.next_step += 1;
            self.save(state).await?;
        }
        // Claim only what the engines show: every target counted as updated runs the rollout's image.
        let problems = self.read_back(state).await;
        if !problems.is_empty() {
            let reason = format!(
                "the engines do not show the rollout's version where it should run: {}; nothing was reverted: check those targets with `agentctl status`, then `agentctl rollout retry {name}` or `agentctl rollout undo {name}`",
                problems.join("; ")
            );
            transition(state, Input::Fail { reason: reason.clone() })?;
            state.reason = Some(reason);
            self.save(state).await?;
            self.finished(state);
            return Ok(());
        }
        transition(state, Input::Complete)?;
        self.save(state).await?;
        self.finished(state);
        Ok(())
    }

    /// What contradicts a rollout's success, read from the engines: a container target that never got a
    /// verdict, or that is counted as updated but is gone, not running, or runs another image than the
    /// rollout's. Service units are read back by their own steps.
    pub(super) async fn read_back(&self, state: &RolloutState) -> Vec<String> {
        let mut problems = Vec::new();
        let mut pinned_ids = std::collections::HashMap::new();
        for t in state.targets.iter().filter(|t| t.service.is_none()) {
            let at = format!("{}@{}", t.container, t.host);
            match t.status {
                TargetStatus::Pending | TargetStatus::Staged => {
                    problems.push(format!("{at} is still {} (it never got a verdict)", t.status));
                    continue;
                }
                TargetStatus::Updated => {}
                _ => continue,
            }
            let (rt, name) = match self.target(t).await {
                Ok(found) => found,
                Err(e) => {
                    problems.push(format!("{at} could not be read back: {e}"));
                    continue;
                }
            };
            if !pinned_ids.contains_key(&t.host) {
                let id = rt.inspect_image(&state.pinned.pull_ref()).await.ok().map(|i| i.id);
                pinned_ids.insert(t.host.clone(), id);
            }
            let want = pinned_ids.get(&t.host).cloned().flatten();
            match rt.inspect_container(name.as_str()).await {
                Ok(info) if !info.state.is_running() => {
                    problems.push(format!("{at} is {}", crate::executor::describe(&info)))
                }
                Ok(info) if want.as_ref() != Some(&info.image_id) => problems.push(format!(
                    "{at} runs {} ({}), not the rollout's {}",
                    info.spec.image,
                    crate::updater::short_id(&info.image_id),
                    state.pinned
                )),
                Ok(_) => {}
                Err(agent_core::RuntimeError::ContainerNotFound { .. }) => problems.push(format!("{at} is gone")),
                Err(e) => problems.push(format!("{at} could not be read back: {e}")),
            }
        }
        problems
    }

    pub(super) fn finished(&self, state: &RolloutState) {
        self.emit(FleetEvent::Finished {
            rollout: state.spec.name.to_string(),
            phase: state.phase(),
            exit_code: state.exit_code(),
            targets: state.targets.clone(),
            reason: state.reason.clone(),
        });
    }

    pub(super) async fn pause_state(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        if state.phase() == Phase::Progressing {
            transition(state, Input::Pause { reason: reason.clone() })?;
        }
        state.reason = Some(reason.clone());
        self.save(state).await?;
        self.emit(FleetEvent::Paused {
            rollout: state.spec.name.to_string(),
            reason,
            until: None,
        });
        self.finished(state);
        Ok(())
    }

    pub(super) async fn fail(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        if !state.spec.rollback.automatic {
            transition(state, Input::Fail { reason: reason.clone() })?;
            state.reason = Some(format!("{reason}; automatic rollback is off"));
            self.save(state).await?;
            self.finished(state);
            return Ok(());
        }
        self.rollback(state, reason).await
    }

    /// The targets of the update steps that directly follow the current one with the same mode and only
    /// containers (a rolling update's later batches), one wave each: they run as one batch, each wave
    /// admitted once the one before has its verdicts (see `update_batch`).
    fn chained_waves(&self, state: &RolloutState, mode: UpdateMode) -> Vec<Vec<usize>> {
        state.plan.steps[state.next_step + 1..]
            .iter()
            .map_while(|step| match step {
                PlanStep::Update {
                    targets, mode: next, ..
                } if *next == mode && targets.iter().all(|&i| state.targets[i].service.is_none()) => {
                    Some(targets.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Why the rollout must stop, when more targets failed than `rollback.maxFailureRatio` allows.
    pub(super) fn too_many_failures(&self, state: &RolloutState) -> Option<String> {
        let failed = failed_targets(state);
        (failed > failures_allowed(state)).then(|| {
            format!(
                "{failed} of {} targets failed ({:.0} %), above maxFailureRatio {:.0} %",
                state.targets.len(),
                failed as f64 / state.targets.len() as f64 * 100.0,
                state.spec.rollback.max_failure_ratio * 100.0
            )
        })
    }
}

/// What a batch does to each of its targets.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    /// Update (stop-first or start-first) or, for blue-green, stage a preview.
    Update(UpdateMode),
    /// Let a staged preview take the name.
    Promote,
}
