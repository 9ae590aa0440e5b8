//! Taking a rollout back: previews discarded, every touched target to the revision it ran before.

use agent_core::Phase;

use super::batch::target_event;
use super::route::Routing;
use super::state::RolloutState;
use super::{transition, Fleet};
use crate::target::TargetStatus;
use agent_core::{Input, RevisionNumber};

use crate::error::Error;
use crate::events::FleetEvent;
use crate::report::UpdateStatus;
use crate::request::UndoRequest;
use crate::updater::Updater;

impl Fleet {
    /// Removes the staged previews of a blue-green rollout; their live containers were never touched.
    pub(super) async fn discard_previews(&self, state: &mut RolloutState) -> Result<usize, Error> {
        let mut broken = 0;
        for i in 0..state.targets.len() {
            if state.targets[i].status != TargetStatus::Staged {
                continue;
            }
            let t = state.targets[i].clone();
            let outcome = async {
                let (rt, name) = self.target(&t).await?;
                Updater::new(rt, self.store.clone(), self.progress.clone())
                    .discard(&name)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let t = &mut state.targets[i];
            match outcome {
                Ok(_) => {
                    t.status = TargetStatus::Reverted;
                    t.message = Some("preview removed; the running container was never touched".into());
                }
                Err(e) => {
                    t.status = TargetStatus::Broken;
                    t.message = Some(format!("its preview could not be removed: {e}"));
                    broken += 1;
                }
            }
            self.emit(target_event(&state.spec.name, t));
            self.save(state).await?;
        }
        Ok(broken)
    }

    /// Reverts every target this rollout updated to the revision it ran before.
    /// Finishes a rollback that a stopped process left half done: the targets it reverted stay reverted,
    /// the rest are reverted now.
    pub(super) async fn finish_rollback(&self, state: &mut RolloutState) -> Result<(), Error> {
        self.open_outbox(&state.spec);
        let reason = state.reason.clone().unwrap_or_else(|| "rollback".into());
        let r = self.rollback(state, reason).await;
        self.outbox().drain().await;
        r
    }

    pub(super) async fn rollback(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        // A rollback a stopped process left half done is finished, not started again.
        if state.phase() != Phase::RollingBack {
            transition(state, Input::StartRollback { reason: reason.clone() })?;
        }
        state.reason = Some(reason.clone());
        self.save(state).await?;
        // With traffic, every request goes back to the running containers first: before the work of finding
        // out what a stopped process left (which takes the engine locks), and before a preview is removed.
        self.route_back(state, Routing::Reverting).await?;
        self.settle(state).await?;
        let mut broken = self.discard_previews(state).await?;
        broken += self.revert_services(state, &reason).await?;
        let touched: Vec<usize> = (0..state.targets.len())
            .filter(|&i| state.targets[i].status == TargetStatus::Updated && state.targets[i].service.is_none())
            .collect();
        self.emit(FleetEvent::RollingBack {
            rollout: state.spec.name.to_string(),
            reason: reason.clone(),
            touched: touched
                .iter()
                .map(|&i| format!("{}@{}", state.targets[i].container, state.targets[i].host))
                .collect(),
        });
        let verify = state.spec.verify()?;
        for i in touched {
            let t = state.targets[i].clone();
            let to = t.previous.and_then(RevisionNumber::new);
            if t.installed {
                let outcome = async {
                    let (rt, name) = self.target(&t).await?;
                    Updater::new(rt, self.store.clone(), self.progress.clone())
                        .uninstall(
                            &name,
                            &format!("removed by the rollback of rollout {}: {reason}", state.spec.name),
                        )
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                let t = &mut state.targets[i];
                match outcome {
                    Ok(()) => {
                        t.status = TargetStatus::Reverted;
                        t.message = Some("removed: it did not exist before the rollout".into());
                    }
                    Err(e) => {
                        t.status = TargetStatus::Broken;
                        t.message = Some(format!("could not remove the container the rollout created: {e}"));
                        broken += 1;
                    }
                }
                self.emit(target_event(&state.spec.name, t));
                self.save(state).await?;
                continue;
            }
            // With traffic, the container to be replaced leaves the backend first (the others serve).
            if state.spec.traffic.is_some() {
                self.route_back(state, Routing::RevertingWithout(i)).await?;
            }
            let outcome = async {
                let (rt, name) = self.target(&t).await?;
                let mut req = UndoRequest::new(name.clone());
                req.verify = verify.clone();
                req.history_limit = state.spec.history.limit;
                req.cause = Some(format!("rollback of rollout {}: {reason}", state.spec.name));
                let updater = Updater::new(rt, self.store.clone(), self.progress.clone());
                // The revision it ran before; when that one fails too, walk back through older revisions
                // that once succeeded, newest first.
                let mut attempts = vec![to];
                let history = updater.history(&name, usize::MAX).await.map_err(|e| e.to_string())?;
                attempts.extend(
                    history
                        .revisions()
                        .iter()
                        .rev()
                        .filter(|r| r.outcome == agent_core::Outcome::Succeeded && to.is_none_or(|p| r.number < p))
                        .map(|r| Some(r.number)),
                );
                let mut failed = Vec::new();
                for attempt in attempts {
                    let which = attempt.map_or("the last known-good revision".to_owned(), |n| format!("revision {n}"));
                    req.to = attempt;
                    match updater.undo(&req).await {
                        Ok(report) if report.status != UpdateStatus::RolledBack => {
                            let walked = if failed.is_empty() {
                                String::new()
                            } else {
                                format!(" ({which}, after {})", failed.join("; "))
                            };
                            return Ok((report.revision.number.get(), walked));
                        }
                        Ok(report) => failed.push(format!("{which} failed: {}", report.reason.unwrap_or_default())),
                        Err(e) => failed.push(format!("{which} could not be restored: {e}")),
                    }
                }
                Err(format!("no earlier revision came back healthy: {}", failed.join("; ")))
            }
            .await;
            let t = &mut state.targets[i];
            match outcome {
                Ok((rev, walked)) => {
                    t.status = TargetStatus::Reverted;
                    t.message = Some(format!("reverted as revision {rev}{walked}"));
                }
                Err(e) => {
                    t.status = TargetStatus::Broken;
                    t.message = Some(e);
                    broken += 1;
                }
            }
            self.emit(target_event(&state.spec.name, t));
            self.save(state).await?;
        }
        // Containers brought back are routed to again; the servers of those that went are removed.
        self.route_back(state, Routing::Reverting).await?;
        let input = if broken == 0 {
            Input::RollbackComplete
        } else {
            Input::Fail {
                reason: format!("{broken} target(s) could not be reverted"),
            }
        };
        transition(state, input)?;
        self.save(state).await?;
        self.finished(state);
        Ok(())
    }
}
