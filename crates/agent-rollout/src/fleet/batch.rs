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
        // Engine slots bound the targets being stopped, created and started; `in_flight` bounds those plus
        // the started ones still being verified. A target's work is made only when it may run, so memory
        // grows with `in_flight`, not with the batch.
        let engine = Arc::new(tokio::sync::Semaphore::new(state.spec.parallelism));
        let in_flight = state.spec.parallelism + state.spec.max_unverified;
        // No new target starts once more have failed than the rollout may lose.
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(failed_targets(state)));
        let budget = failures_allowed(state);
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
            let started = Arc::new(tokio::sync::Notify::new());
            req.started = Some(started.clone());
            let template = state.spec.template_for(&req.container, &state.pinned)?;
            let rt = self.runtime(&t.host).await;
            tasks.push((i, t, req, template, rt, started));
        }
        let work = tasks.into_iter().map(|(i, t, req, template, rt, started)| {
            let (engine, failures) = (engine.clone(), failures.clone());
            let (store, progress) = (self.store.clone(), self.progress.clone());
            async move {
                let engine_slot = engine.acquire().await;
                if failures.load(std::sync::atomic::Ordering::SeqCst) > budget {
                    return (i, None);
                }
                let work = Self::update_target(rt, store, progress, &t, &req, template.as_ref(), action);
                tokio::pin!(work);
                let result = tokio::select! {
                    r = &mut work => r,
                    _ = started.notified() => {
                        // Started: the engine work is over, the next target may begin while this one is proven.
                        drop(engine_slot);
                        work.await
                    }
                };
                if result
                    .as_ref()
                    .map_or(true, |(r, _)| r.status == UpdateStatus::RolledBack)
                {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (i, Some(result))
            }
        });
        let mut results = futures_util::stream::iter(work).buffer_unordered(in_flight);
        let mut unverified = Vec::new();
        while let Some((i, r)) = results.next().await {
            // Skipped: the failure budget ran out before this target's turn; it stays pending, untouched.
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
