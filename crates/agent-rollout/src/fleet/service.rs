//! Services as targets: a `{host, service}` target of a rollout is a service on a cluster manager (Swarm),
//! counted as one unit per task (replicated) or per node (global), so canary and rolling steps take a share
//! of its tasks like a share of containers.
//!
//! A step is the manager's own updater, held after the step's tasks
//! ([`ServiceChange::Step`](agent_core::ServiceChange)): agentctl does not place, stop or start tasks
//! itself. The new tasks are then verified by the same gate as containers (state, HEALTHCHECK, logs, HTTP,
//! heartbeat of the new container id, the agent's metrics) where their containers are on the manager's
//! engine, and by their task state and the logs the manager serves for the others. When the last step
//! passes, the service gets its own update settings back. A revert puts back the whole spec of the
//! revision the service ran before, which agentctl keeps for every revision (the manager keeps one).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{ContainerRuntime, ServiceChange, ServiceInfo, ServiceMode, TaskInfo, Version};
use agent_health::{LogScanProbe, ProbeContext, VerdictOutcome};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::batch::target_event;
use super::state::RolloutState;
use super::Fleet;
use crate::error::Error;
use crate::request::VerifyConfig;
use crate::target::TargetStatus;

/// The kind of the documents holding each service's revisions.
const REVISIONS_KIND: &str = "service-revisions";

/// One revision of a service: its whole spec as the manager held it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRevision {
    /// 1, 2, … per service.
    pub number: u64,
    /// The image its tasks ran.
    pub image: String,
    /// The spec, exactly as the manager returned it.
    pub spec: serde_json::Value,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why (`adopted`, `rollout NAME to IMAGE`, `rollback of …`, `undo to revision N`).
    pub cause: String,
}

fn revisions_key(host: &str, service: &str) -> String {
    format!("{host}|{service}")
}

/// How many units a service counts for: its replicas, or the nodes that run a task of a global service.
pub(super) async fn units(rt: &dyn ContainerRuntime, service: &ServiceInfo) -> Result<u64, String> {
    match service.mode {
        ServiceMode::Replicated(n) => Ok(n),
        ServiceMode::Global => {
            let tasks = rt.service_tasks(&service.name).await.map_err(|e| e.to_string())?;
            let nodes: HashSet<&str> = tasks
                .iter()
                .filter(|t| t.desired_state == "running")
                .map(|t| t.node.as_str())
                .collect();
            Ok(nodes.len() as u64)
        }
    }
}

/// The units of a rollout's state that belong to one service, by `(host, service)`.
fn by_service(state: &RolloutState, indices: &[usize]) -> BTreeMap<(String, String), Vec<usize>> {
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &i in indices {
        if let Some(s) = &state.targets[i].service {
            groups
                .entry((state.targets[i].host.clone(), s.clone()))
                .or_default()
                .push(i);
        }
    }
    groups
}

impl Fleet {
    /// A service's revisions, oldest first.
    pub async fn service_revisions(&self, host: &str, service: &str) -> Result<Vec<ServiceRevision>, Error> {
        Ok(
            match self
                .store
                .document(REVISIONS_KIND, &revisions_key(host, service))
                .await?
            {
                Some(v) => serde_json::from_value(v).map_err(|e| Error::InvalidInput {
                    what: format!("saved revisions of service {service}"),
                    message: e.to_string(),
                })?,
                None => Vec::new(),
            },
        )
    }

    /// Records `service` as it stands now, unless its last revision has the same spec; its number.
    async fn record_service(&self, host: &str, service: &ServiceInfo, cause: &str, limit: usize) -> Result<u64, Error> {
        let mut revisions = self.service_revisions(host, &service.name).await?;
        if let Some(last) = revisions.last().filter(|r| r.spec == service.spec) {
            return Ok(last.number);
        }
        let number = revisions.last().map_or(1, |r| r.number + 1);
        revisions.push(ServiceRevision {
            number,
            image: service.image.clone(),
            spec: service.spec.clone(),
            at: OffsetDateTime::now_utc(),
            cause: cause.to_owned(),
        });
        let keep = limit.max(2);
        if revisions.len() > keep {
            revisions.drain(..revisions.len() - keep);
        }
        let v = serde_json::to_value(&revisions).map_err(|e| Error::InvalidInput {
            what: "service revisions".into(),
            message: e.to_string(),
        })?;
        self.store
            .put_document(REVISIONS_KIND, &revisions_key(host, &service.name), &v)
            .await?;
        Ok(number)
    }

    /// Runs one step over the service units among `indices`: each service's held updater replaces as many
    /// tasks as the step has units of it, then the new tasks are verified. A unit that fails is `failed`.
    pub(super) async fn update_service_units(
        &self,
        state: &mut RolloutState,
        indices: &[usize],
        verify: &VerifyConfig,
    ) -> Result<(), Error> {
        for ((host, service), group) in by_service(state, indices) {
            let pending: Vec<usize> = group
                .into_iter()
                .filter(|&i| state.targets[i].status == TargetStatus::Pending)
                .collect();
            if pending.is_empty() {
                continue;
            }
            let all: Vec<usize> = (0..state.targets.len())
                .filter(|&i| state.targets[i].host == host && state.targets[i].service.as_deref() == Some(&service))
                .collect();
            let done = all
                .iter()
                .filter(|&&i| state.targets[i].status == TargetStatus::Updated)
                .count();
            let outcome = self
                .step_service(state, &host, &service, &all, done, pending.len(), verify)
                .await;
            let finished = done + pending.len() == all.len();
            for &i in &pending {
                let t = &mut state.targets[i];
                match &outcome {
                    Ok((revision, evidence)) => {
                        t.status = TargetStatus::Updated;
                        t.revision = *revision;
                        t.message = Some(format!(
                            "{} of {} tasks run the new version",
                            done + pending.len(),
                            all.len()
                        ));
                        // One task's evidence per unit, in the order the manager listed them.
                        let j = pending.iter().position(|&p| p == i).unwrap_or(0);
                        t.evidence = evidence.get(j).or(evidence.last()).cloned();
                    }
                    Err(e) => {
                        t.status = TargetStatus::Failed;
                        t.message = Some(e.clone());
                    }
                }
            }
            if outcome.is_ok() && finished {
                for &i in &all {
                    state.targets[i].revision = outcome.as_ref().ok().and_then(|(r, _)| *r);
                }
            }
            for &i in &pending {
                self.emit(target_event(&state.spec.name, &state.targets[i]));
            }
            self.save(state).await?;
        }
        Ok(())
    }

    /// One step of one service; the revision recorded when it was the last step, and each new task's
    /// evidence.
    #[allow(clippy::too_many_arguments)]
    async fn step_service(
        &self,
        state: &mut RolloutState,
        host: &str,
        service: &str,
        all: &[usize],
        done: usize,
        tasks: usize,
        verify: &VerifyConfig,
    ) -> Result<(Option<u64>, Vec<String>), String> {
        let rt = self
            .runtime(host)
            .await
            .map_err(|e| format!("engine {host} unreachable: {e}"))?;
        let current = rt.service(service).await.map_err(|e| e.to_string())?;
        let pinned = state.pinned.to_string();
        // The revision it ran before the rollout, recorded when the rollout first touches it.
        let previous = match state.targets[all[0]].previous {
            Some(p) => p,
            None => {
                let p = self
                    .record_service(host, &current, "adopted", state.spec.history.limit)
                    .await
                    .map_err(|e| e.to_string())?;
                for &i in all {
                    state.targets[i].previous = Some(p);
                }
                self.save(state).await.map_err(|e| e.to_string())?;
                p
            }
        };
        let before: HashSet<String> = rt
            .service_tasks(service)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| t.id)
            .collect();
        let started = OffsetDateTime::now_utc();
        rt.change_service(
            service,
            ServiceChange::Step {
                image: &pinned,
                tasks: tasks as u64,
                reached: (done + tasks) as u64,
            },
        )
        .await
        .map_err(|e| format!("the manager refused the update: {e}"))?;
        let expected = state.pinned.tag().and_then(|t| Version::parse(t.as_str()));
        let evidence = verify_tasks(&rt, service, &pinned, done + tasks, &before, verify, started, expected).await?;
        if done + tasks < all.len() {
            return Ok((None, evidence));
        }
        // The service's own update settings come from the revision it ran before; without it they are not
        // known (the spec held now has the step's), so nothing is guessed.
        let original = self
            .service_revisions(host, service)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| r.number == previous)
            .map(|r| r.spec)
            .ok_or_else(|| {
                format!("every task runs the new version, but revision {previous} (its update settings) is no longer kept; set them again with `docker service update`")
            })?;
        let after = rt
            .change_service(
                service,
                ServiceChange::Finish {
                    image: &pinned,
                    original: &original,
                },
            )
            .await
            .map_err(|e| {
                format!("every task runs the new version, but its update settings could not be put back: {e}")
            })?;
        let cause = super::state::rollout_cause(state);
        let n = self
            .record_service(host, &after, &cause, state.spec.history.limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok((Some(n), evidence))
    }

    /// Reverts every service this rollout touched to the revision it ran before; the number of services
    /// that could not be reverted.
    pub(super) async fn revert_services(&self, state: &mut RolloutState, reason: &str) -> Result<usize, Error> {
        let every: Vec<usize> = (0..state.targets.len()).collect();
        let mut broken = 0;
        for ((host, service), group) in by_service(state, &every) {
            // `previous` is saved before the service's first change: a process killed in the middle of a step
            // leaves its units pending, but the manager may already run the new version.
            let Some(previous) = state.targets[group[0]].previous else {
                continue;
            };
            let cause = format!("rollback of rollout {}: {reason}", state.spec.name);
            let outcome = self
                .restore_service(
                    &host,
                    &service,
                    group.len(),
                    previous,
                    &cause,
                    &state.spec.verify()?,
                    state.spec.history.limit,
                )
                .await;
            for &i in &group {
                let t = &mut state.targets[i];
                match &outcome {
                    Ok(n) => {
                        let back = format!("the service runs revision {previous} again (recorded as {n})");
                        match t.status {
                            TargetStatus::Updated => {
                                t.status = TargetStatus::Reverted;
                                t.message = Some(format!("reverted: {back}"));
                            }
                            // The cause stays first: what failed, then what was done about it.
                            TargetStatus::Failed => {
                                t.message = Some(format!("{}; {back}", t.message.clone().unwrap_or_default()));
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        t.status = TargetStatus::Broken;
                        t.message = Some(e.clone());
                    }
                }
            }
            if outcome.is_err() {
                broken += 1;
            }
            for &i in &group {
                self.emit(target_event(&state.spec.name, &state.targets[i]));
            }
            self.save(state).await?;
        }
        Ok(broken)
    }

    /// Puts back the whole spec of `service`'s revision `to` and waits until `tasks` tasks run its image
    /// and no other; the number of the revision recorded for it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn restore_service(
        &self,
        host: &str,
        service: &str,
        tasks: usize,
        to: u64,
        cause: &str,
        verify: &VerifyConfig,
        limit: usize,
    ) -> Result<u64, String> {
        let rt = self
            .runtime(host)
            .await
            .map_err(|e| format!("engine {host} unreachable: {e}"))?;
        let revisions = self.service_revisions(host, service).await.map_err(|e| e.to_string())?;
        let Some(revision) = revisions.into_iter().find(|r| r.number == to) else {
            return Err(format!(
                "service {service} has no revision {to}; `agentctl rollout history` lists the ones kept"
            ));
        };
        let current = rt.service(service).await.map_err(|e| e.to_string())?;
        let restored = if current.spec == revision.spec {
            current
        } else {
            rt.change_service(service, ServiceChange::Restore { spec: &revision.spec })
                .await
                .map_err(|e| format!("the manager refused revision {to}: {e}"))?
        };
        let deadline = tokio::time::Instant::now() + verify.timing.deadline;
        loop {
            let now = rt.service_tasks(service).await.map_err(|e| e.to_string())?;
            let live: Vec<&TaskInfo> = now.iter().filter(|t| t.desired_state == "running").collect();
            let others = live.iter().filter(|t| t.image != revision.image).count();
            let running = live.iter().filter(|t| t.state == "running").count();
            if others == 0 && running == live.len() && running >= tasks {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "revision {to} was sent, but after {} {running} of {tasks} tasks run and {others} still run another image",
                    agent_core::format_duration(verify.timing.deadline),
                ));
            }
            tokio::time::sleep(verify.timing.period).await;
        }
        self.record_service(host, &restored, cause, limit)
            .await
            .map_err(|e| e.to_string())
    }

    /// Puts back revision `to` of every service target of the rollout `name` (its whole spec, with the
    /// manager's current version index), recording it as a new revision.
    pub async fn undo_services_to(&self, name: &str, to: u64) -> Result<Vec<(String, String, u64)>, Error> {
        let lease = self.lease(name, "undo").await?;
        let result = async {
            // Read under the lease, and the audit entry written under it: no other command of this rollout
            // can save its state in between.
            let mut state = self.existing(name).await?;
            let every: Vec<usize> = (0..state.targets.len()).collect();
            let groups = by_service(&state, &every);
            if groups.is_empty() {
                return Err(Error::InvalidInput {
                    what: format!("rollout {name}"),
                    message: "it has no service targets; `--to-revision` reverts services (containers: `agentctl undo CONTAINER --to-revision N`)".into(),
                });
            }
            let verify = state.spec.verify()?;
            let mut out = Vec::new();
            for ((host, service), units) in groups {
                let n = self
                    .restore_service(
                        &host,
                        &service,
                        units.len(),
                        to,
                        &format!("undo to revision {to}"),
                        &verify,
                        state.spec.history.limit,
                    )
                    .await
                    .map_err(|message| Error::InvalidInput {
                        what: format!("service {service} on {host}"),
                        message,
                    })?;
                out.push((host, service, n));
            }
            state.record(format!("undo services to revision {to}"));
            self.save(&mut state).await?;
            Ok(out)
        }
        .await;
        lease.release().await?;
        result
    }
}

/// Waits until `expected` tasks of `service` run `image`, then verifies every one of them (those this step
/// started first): the whole gate on a container the manager's engine runs, task state and the manager's
/// logs elsewhere.
#[allow(clippy::too_many_arguments)]
async fn verify_tasks(
    rt: &Arc<dyn ContainerRuntime>,
    service: &str,
    image: &str,
    expected: usize,
    before: &HashSet<String>,
    verify: &VerifyConfig,
    started: OffsetDateTime,
    version: Option<Version>,
) -> Result<Vec<String>, String> {
    let timing = &verify.timing;
    let deadline = tokio::time::Instant::now() + timing.deadline;
    let fresh = loop {
        let tasks = rt.service_tasks(service).await.map_err(|e| e.to_string())?;
        let new: Vec<&TaskInfo> = tasks.iter().filter(|t| t.image == image).collect();
        if let Some(f) = new.iter().find(|t| t.failed() && !before.contains(&t.id)) {
            return Err(task_failure(f));
        }
        // A task stays `starting` until its HEALTHCHECK passes: one that reports unhealthy has failed, whether
        // or not the manager has acted on it yet.
        for t in new.iter().filter(|t| t.state == "starting" && !before.contains(&t.id)) {
            let Some(id) = &t.container else { continue };
            if let Ok(info) = rt.inspect_container(id).await {
                if let Some(h) = info
                    .state
                    .health
                    .filter(|h| h.status == agent_core::HealthStatus::Unhealthy)
                {
                    let last = h.log.last().map(|l| l.output.trim().to_owned()).unwrap_or_default();
                    return Err(format!(
                        "task {} on node {}: its HEALTHCHECK reports unhealthy after {} failures ({last})",
                        short(&t.id),
                        short(&t.node),
                        h.failing_streak
                    ));
                }
            }
        }
        let running: Vec<&TaskInfo> = new
            .iter()
            .copied()
            .filter(|t| t.desired_state == "running" && t.state == "running")
            .collect();
        if running.len() >= expected {
            // Every task on the new version is verified, the step's own first (newest first): a step run
            // again after a killed process finds its tasks already started and must not take them on trust.
            let mut all: Vec<TaskInfo> = running.into_iter().cloned().collect();
            all.sort_by_key(|t| before.contains(&t.id));
            break all;
        }
        if tokio::time::Instant::now() >= deadline {
            let states: Vec<String> = new
                .iter()
                .filter(|t| t.desired_state == "running")
                .map(|t| format!("{} {} ({})", short(&t.id), t.state, t.message))
                .collect();
            return Err(format!(
                "{} of {expected} tasks ran the new version within {}: {}",
                running.len(),
                agent_core::format_duration(timing.deadline),
                if states.is_empty() {
                    "no task was started".to_owned()
                } else {
                    states.join(", ")
                }
            ));
        }
        tokio::time::sleep(timing.period).await;
    };
    let gate = verify.gate().map_err(|e| e.to_string())?;
    let logs = LogScanProbe::new(verify.fatal_patterns.clone()).map_err(|e| e.to_string())?;
    let checks = fresh.iter().map(|task| {
        let (gate, logs, version) = (&gate, &logs, version.clone());
        async move {
            let id = task.container.clone().unwrap_or_default();
            match rt.inspect_container(&id).await {
                Ok(info) => {
                    let ctx = ProbeContext {
                        runtime: rt.clone(),
                        container: id.clone(),
                        started_at: started - Duration::from_secs(1),
                        baseline_restarts: info.state.restart_count,
                        expected_version: version.map(|v| v.to_string()),
                        container_id: Some(info.id.clone()),
                    };
                    let verdict = gate.run(&ctx, &|_| {}).await;
                    match verdict.outcome {
                        VerdictOutcome::Healthy => Ok(format!(
                            "task {} on node {}: {verdict}",
                            short(&task.id),
                            short(&task.node)
                        )),
                        _ => Err(format!(
                            "task {} (container {}): {}",
                            short(&task.id),
                            short(&id),
                            verdict.reason
                        )),
                    }
                }
                // Its container is on another node's engine: the manager's view only.
                Err(_) => hold_task(rt, service, task, logs, timing, started).await,
            }
        }
    });
    futures_util::future::join_all(checks).await.into_iter().collect()
}

/// Watches a task whose container agentctl cannot reach for the minimum healthy time: it must stay running
/// (its HEALTHCHECK, when the image has one, keeps it so) and its logs must have no fatal line.
async fn hold_task(
    rt: &Arc<dyn ContainerRuntime>,
    service: &str,
    task: &TaskInfo,
    logs: &LogScanProbe,
    timing: &agent_health::Timing,
    started: OffsetDateTime,
) -> Result<String, String> {
    let until = tokio::time::Instant::now() + timing.min_healthy_time;
    loop {
        let now = rt.service_tasks(service).await.map_err(|e| e.to_string())?;
        let Some(t) = now.iter().find(|t| t.id == task.id) else {
            return Err(format!("task {} is gone", short(&task.id)));
        };
        if t.state != "running" {
            return Err(task_failure(t));
        }
        let lines = rt
            .task_logs(&t.id, Some(started - Duration::from_secs(1)))
            .await
            .map_err(|e| e.to_string())?;
        if let Some((pattern, line)) = logs.matches(&lines).next() {
            return Err(format!("task {} logged {line:?} (pattern {pattern})", short(&t.id)));
        }
        if tokio::time::Instant::now() >= until {
            return Ok(format!(
                "task {} on node {}: running for {} with clean logs (task state and logs through the manager: its engine is not reachable)",
                short(&t.id),
                short(&t.node),
                agent_core::format_duration(timing.min_healthy_time)
            ));
        }
        tokio::time::sleep(timing.period).await;
    }
}

fn task_failure(t: &TaskInfo) -> String {
    format!(
        "task {} on node {} {}: {}",
        short(&t.id),
        short(&t.node),
        t.state,
        t.error.clone().unwrap_or_else(|| t.message.clone())
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
