//! One batch of targets: updated in parallel within the engine slots, and the targets a stopped process left half done.

use super::run::Action;
use super::state::{failed_targets, failures_allowed, rollout_cause, RolloutState};
use super::Fleet;
use crate::target::{TargetState, TargetStatus};
use std::sync::Arc;

use futures_util::StreamExt;

use agent_core::{ContainerName, ContainerRuntime, ContainerSpec, RevisionNumber, StateStore, UpdateMode};

use crate::error::Error;
use crate::events::{FleetEvent, Reporter};
use crate::report::UpdateStatus;
use crate::request::{PullPolicy, UpdateRequest, VerifyConfig};
use crate::updater::Updater;

impl Fleet {
    pub(super) async fn update_batch(
        &self,
        state: &mut RolloutState,
        indices: &[usize],
        verify: &VerifyConfig,
        action: Action,
    ) -> Result<Vec<String>, Error> {
        // Engine slots bound the targets being stopped, created and started; flight slots bound those plus
        // the started ones still being verified. Both are taken right before a target's first change (see
        // `Slots`): its preparation (locks, inspection, history, the journal's begin facts) runs ahead while
        // earlier targets hold the slots, one engine slot's worth of targets ahead. A target's work is made
        // only when it may run, so memory grows with the flight, not with the batch.
        let slots = Arc::new(Slots {
            engine: Arc::new(tokio::sync::Semaphore::new(state.spec.parallelism)),
            flight: Arc::new(tokio::sync::Semaphore::new(
                state.spec.parallelism + state.spec.max_unverified,
            )),
            failures: std::sync::atomic::AtomicUsize::new(failed_targets(state)),
            budget: failures_allowed(state),
        });
        let ahead = 2 * state.spec.parallelism + state.spec.max_unverified;
        let mut tasks = Vec::new();
        for &i in indices {
            let ready = match action {
                Action::Update(_) => TargetStatus::Pending,
                Action::Promote => TargetStatus::Staged,
            };
            if state.targets[i].status != ready {
                continue;
            }
            let t = state.targets[i].clone();
            let mut req = UpdateRequest::new(
                t.container
                    .parse()
                    .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
                        what: "target".into(),
                        message: e.to_string(),
                    })?,
                state.pinned.clone(),
            );
            req.verify = verify.clone();
            req.history_limit = state.spec.history.limit;
            req.hooks = state.spec.hooks.clone();
            req.pull = PullPolicy::Missing;
            if let Action::Update(mode) = action {
                req.mode = mode;
            }
            req.cause = Some(rollout_cause(state));
            let template = state.spec.template_for(&req.container, &state.pinned)?;
            let rt = self.runtime(&t.host).await;
            tasks.push((i, t, req, template, rt));
        }
        let work = tasks.into_iter().map(|(i, t, mut req, template, rt)| {
            let pace = Arc::new(TargetPace::new(slots.clone(), self.progress.clone(), &t.container));
            req.pacer = Some(pace.clone());
            let (store, progress, slots) = (self.store.clone(), self.progress.clone(), slots.clone());
            async move {
                // No new target starts once more have failed than the rollout may lose.
                if slots.exhausted() {
                    return (i, None);
                }
                let result = Self::update_target(rt, store, progress, &t, &req, template.as_ref(), action).await;
                // Withheld: the failure budget ran out while it waited; it stays pending, untouched.
                if pace.withheld() {
                    return (i, None);
                }
                let failed = result
                    .as_ref()
                    .map_or(true, |(r, _)| r.status == UpdateStatus::RolledBack);
                pace.settle(failed);
                (i, Some(result))
            }
        });
        let mut results = futures_util::stream::iter(work).buffer_unordered(ahead);
        let mut unverified = Vec::new();
        while let Some((i, r)) = results.next().await {
            // Skipped or withheld: the failure budget ran out before this target's turn; it stays pending.
            let Some(r) = r else { continue };
            let t = &mut state.targets[i];
            match r {
                Ok((report, installed)) => {
                    t.installed = installed;
                    t.evidence = report.verdict.as_ref().map(ToString::to_string);
                    t.previous = report.previous.map(RevisionNumber::get);
                    t.revision = Some(report.revision.number.get());
                    match report.status {
                        UpdateStatus::Updated | UpdateStatus::Unchanged => {
                            t.status = TargetStatus::Updated;
                            t.message = None;
                        }
                        UpdateStatus::RolledBack => {
                            t.status = TargetStatus::Failed;
                            t.message = report.reason.clone();
                        }
                        UpdateStatus::Unverified => {
                            t.status = TargetStatus::Updated;
                            t.message = report.reason.clone();
                            unverified.push(format!(
                                "{}@{}: {}",
                                t.container,
                                t.host,
                                report.reason.clone().unwrap_or_default()
                            ));
                        }
                        UpdateStatus::Staged => {
                            t.status = TargetStatus::Staged;
                            t.message = Some(format!("preview verified beside {}", t.container));
                            // Staged, but its verification was inconclusive: the rollout pauses before any
                            // promotion, the preview kept, for a human to promote or abort.
                            if let Some(reason) = &report.reason {
                                t.message =
                                    Some(format!("preview staged beside {}, unverified: {reason}", t.container));
                                unverified.push(format!("{}@{}: {reason}", t.container, t.host));
                            }
                        }
                    }
                }
                Err(e) => {
                    t.status = TargetStatus::Failed;
                    t.message = Some(e);
                }
            }
            self.emit(target_event(&state.spec.name, t));
        }
        self.save(state).await?;
        Ok(unverified)
    }

    /// Finds out what happened to targets a killed process was working on. The rollout's state is saved
    /// after each batch, so a target whose update was under way when the process died still reads
    /// `pending` (or `staged`, for a promotion): its own journal is repaired first, then its history says
    /// whether this rollout's revision runs there (`updated`, to be rolled back with the rest) or not
    /// (`pending`: reverted or never started, tried again by a resumed rollout); a preview of this
    /// rollout's image that was staged makes it `staged`.
    pub(super) async fn settle(&self, state: &mut RolloutState) -> Result<(), Error> {
        let cause = rollout_cause(state);
        let mut changed = false;
        for i in 0..state.targets.len() {
            let t = state.targets[i].clone();
            // A service's units need no repair: a step run again asks the manager for the same tasks.
            if !matches!(t.status, TargetStatus::Pending | TargetStatus::Staged) || t.service.is_some() {
                continue;
            }
            let Ok((rt, name)) = self.target(&t).await else {
                continue;
            };
            let updater = Updater::new(rt, self.store.clone(), self.progress.clone());
            updater.recover(&name).await?;
            let history = updater.history(&name, usize::MAX).await?;
            let ours = |r: &&agent_core::Revision| {
                r.image == state.pinned && r.created_at >= state.started_at && r.cause == cause
            };
            let latest = history.revisions().iter().rev().find(ours);
            let staged = updater
                .preview(name.as_str())
                .await?
                .is_some_and(|p| p.image == state.pinned);
            let target = &mut state.targets[i];
            match latest {
                Some(latest) if history.current().is_some_and(|c| c.number == latest.number) => {
                    if target.status == TargetStatus::Updated {
                        continue;
                    }
                    let before = history
                        .revisions()
                        .iter()
                        .rev()
                        .filter(|r| r.number < latest.number)
                        .find(|r| {
                            matches!(
                                r.outcome,
                                agent_core::Outcome::Succeeded | agent_core::Outcome::Unverified { .. }
                            )
                        });
                    target.status = TargetStatus::Updated;
                    target.message = Some("its update finished after the rollout's process stopped".into());
                    target.revision = Some(latest.number.get());
                    target.previous = before.map(|r| r.number.get());
                    // Nothing was recorded before it (an update adopts what ran first): the rollout created it.
                    target.installed = history.revisions().first().is_some_and(|r| r.number == latest.number);
                }
                _ if staged => {
                    if target.status == TargetStatus::Staged {
                        continue;
                    }
                    target.status = TargetStatus::Staged;
                    target.message = Some("its preview was staged before the rollout's process stopped".into());
                }
                // Reverted (by its own verification or by the repair of the interrupted update) or never
                // started: nothing of this rollout runs there, and a resumed rollout tries it again.
                _ => continue,
            }
            changed = true;
        }
        if changed {
            self.save(state).await?;
        }
        Ok(())
    }

    /// Updates (or installs, stages or promotes) one target; the report and whether it was installed.
    pub(super) async fn update_target(
        rt: Result<Arc<dyn ContainerRuntime>, String>,
        store: Arc<dyn StateStore>,
        progress: Arc<dyn Reporter>,
        t: &TargetState,
        req: &UpdateRequest,
        template: Option<&ContainerSpec>,
        action: Action,
    ) -> Result<(crate::UpdateReport, bool), String> {
        let rt = rt.map_err(|e| format!("engine {} unreachable: {e}", t.host))?;
        let updater = Updater::new(rt.clone(), store, progress);
        if let Action::Update(_) = action {
            match rt.inspect_container(req.container.as_str()).await {
                Err(agent_core::RuntimeError::ContainerNotFound { .. }) => {
                    let Some(spec) = template else {
                        return Err(format!(
                            "container {} does not exist on {}; add a `template` to the spec to create missing targets",
                            req.container, t.host
                        ));
                    };
                    return updater
                        .install(spec, req)
                        .await
                        .map(|r| (r, true))
                        .map_err(|e| e.to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let report = match action {
            Action::Update(UpdateMode::BlueGreen) => updater.stage(req).await,
            Action::Update(_) => updater.update(req).await,
            Action::Promote => updater.promote(req).await,
        };
        report.map(|r| (r, false)).map_err(|e| e.to_string())
    }

    /// The engine of target `t` and its container name, or why not.
    pub(super) async fn target(&self, t: &TargetState) -> Result<(Arc<dyn ContainerRuntime>, ContainerName), String> {
        let rt = self
            .runtime(&t.host)
            .await
            .map_err(|e| format!("engine {} unreachable: {e}", t.host))?;
        let name = t
            .container
            .parse()
            .map_err(|e: agent_core::ContainerNameError| e.to_string())?;
        Ok((rt, name))
    }
}

pub(super) fn target_event(rollout: &ContainerName, t: &TargetState) -> FleetEvent {
    FleetEvent::TargetUpdated {
        rollout: rollout.to_string(),
        host: t.host.clone(),
        container: t.container.clone(),
        status: t.status,
        revision: t.revision,
        reason: t.message.clone(),
    }
}

/// A batch's slots and failure budget, shared by its targets' pacers.
struct Slots {
    engine: Arc<tokio::sync::Semaphore>,
    flight: Arc<tokio::sync::Semaphore>,
    failures: std::sync::atomic::AtomicUsize,
    budget: usize,
}

impl Slots {
    fn exhausted(&self) -> bool {
        self.failures.load(std::sync::atomic::Ordering::SeqCst) > self.budget
    }
}

/// One target's turn within a batch's [`Slots`]: admitted once both slots are taken and the budget allows;
/// the engine slot handed on when the new container started, the flight slot when the verdict was acted on
/// (its failure counted first, so the next target's admission sees it), both when the target's work ends.
struct TargetPace {
    slots: Arc<Slots>,
    held: std::sync::Mutex<Held>,
    progress: Arc<dyn Reporter>,
    container: String,
}

#[derive(Default)]
struct Held {
    admitted: Option<bool>,
    engine: Option<tokio::sync::OwnedSemaphorePermit>,
    flight: Option<tokio::sync::OwnedSemaphorePermit>,
    counted: bool,
}

impl TargetPace {
    fn new(slots: Arc<Slots>, progress: Arc<dyn Reporter>, container: &str) -> TargetPace {
        TargetPace {
            slots,
            held: std::sync::Mutex::default(),
            progress,
            container: container.to_owned(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn withheld(&self) -> bool {
        self.held().admitted == Some(false)
    }

    /// Counts a failure (once per target), and frees the slots.
    fn settle(&self, failed: bool) {
        let mut held = self.held();
        if failed && !held.counted {
            self.slots.failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.counted = true;
        }
        held.engine = None;
        held.flight = None;
    }
}

#[async_trait::async_trait]
impl crate::Pacer for TargetPace {
    async fn admit(&self) -> bool {
        if let Some(admitted) = self.held().admitted {
            return admitted;
        }
        let asked = std::time::Instant::now();
        // The semaphores are never closed.
        let flight = self.slots.flight.clone().acquire_owned().await.ok();
        let engine = self.slots.engine.clone().acquire_owned().await.ok();
        let admitted = !self.slots.exhausted();
        {
            let mut held = self.held();
            held.admitted = Some(admitted);
            if admitted {
                (held.engine, held.flight) = (engine, flight);
            }
        }
        if admitted {
            self.progress.report(&crate::events::Event::Step {
                step: "slot",
                detail: format!(
                    "{}: its turn, prepared and waiting for {} ms",
                    self.container,
                    asked.elapsed().as_millis()
                ),
            });
        }
        admitted
    }

    fn started(&self) {
        self.held().engine = None;
    }

    fn decided(&self, reverted: bool) {
        self.settle(reverted);
    }
}
