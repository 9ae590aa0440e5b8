//! Fleet rollouts: a rollout spec (YAML or JSON) over targets on one or more engines, executed step by step
//! from the planner's [`RolloutPlan`](agent_core::RolloutPlan): recreate, rolling (stop-first batches, or start-first with
//! `maxSurge`), blue-green (verified previews, then a switch) and canary (weights, pauses, analysis). The
//! tag is resolved to a digest once and that digest is deployed everywhere. When the failed fraction crosses
//! `maxFailureRatio`, or an analysis fails, every target the rollout touched goes back to its previous
//! revision (walking further back when that one fails too); targets it created from the `template` go. State is saved after every step, so `rollout promote|resume|abort|status` work from any
//! process and a second `apply` resumes an interrupted rollout.

mod batch;
mod metrics;
mod requests;
mod rollback;
mod route;
mod run;
mod service;
mod spec;
mod state;
mod web;

pub use metrics::metrics_text;
pub use route::TrafficState;
pub use service::ServiceRevision;
pub use spec::{
    HealthSpec, HeartbeatSpec, HistorySpec, RollbackSpec, RolloutSpec, TargetSpec, MAX_SPEC_BYTES, MAX_SPEC_NODES,
    MAX_TARGETS,
};
pub use state::{AuditEntry, RolloutState, TargetState, TargetStatus};
pub use web::WebActions;

use std::collections::HashMap;
use std::sync::Arc;

use agent_core::{Connector, ContainerRuntime, Input, Phase, StateMachine, StateStore};
use time::OffsetDateTime;

use crate::error::Error;
use crate::events::{Event, FleetEvent, FleetReporter, Reporter};
use crate::lease::{holder_for_this_process, LeaseGuard};
use crate::notify::{Notifier, Outbox, Webhook};

const DOC_KIND: &str = "rollout";
/// Pause requests for running rollouts, by name (checked before each step).
const PAUSE_KIND: &str = "rollout-pause-request";

/// Runs rollouts.
pub struct Fleet {
    store: Arc<dyn StateStore>,
    connect: Connector,
    events: FleetReporter,
    progress: Arc<dyn Reporter>,
    runtimes: tokio::sync::Mutex<HashMap<String, Arc<dyn ContainerRuntime>>>,
    extra_notifiers: Vec<Arc<dyn Notifier>>,
    outbox: std::sync::Mutex<Arc<Outbox>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// Moves `state`'s machine by `input`, or says why it may not.
fn transition(state: &mut RolloutState, input: Input) -> Result<(), Error> {
    state
        .machine
        .apply(input)
        .map(|_| ())
        .map_err(|source| Error::IllegalTransition {
            rollout: state.spec.name.to_string(),
            source,
        })
}

fn key(name: &str) -> String {
    format!("rollout:{name}")
}

impl Fleet {
    /// A fleet runner storing in `store`, connecting with `connect`, reporting fleet events to `events` and
    /// per-target progress to `progress`.
    pub fn new(
        store: Arc<dyn StateStore>,
        connect: Connector,
        events: FleetReporter,
        progress: Arc<dyn Reporter>,
    ) -> Fleet {
        Fleet {
            store,
            connect,
            events,
            progress,
            runtimes: tokio::sync::Mutex::new(HashMap::new()),
            extra_notifiers: Vec::new(),
            outbox: std::sync::Mutex::new(Arc::new(Outbox::default())),
        }
    }

    /// Also sends every event to `notifier` (beside the spec's webhooks).
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Fleet {
        self.extra_notifiers.push(notifier);
        self
    }

    fn outbox(&self) -> Arc<Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn runtime(&self, host: &str) -> Result<Arc<dyn ContainerRuntime>, String> {
        let mut map = self.runtimes.lock().await;
        if let Some(r) = map.get(host) {
            return Ok(r.clone());
        }
        let r = (self.connect)(host.to_owned()).await.map_err(|e| e.to_string())?;
        map.insert(host.to_owned(), r.clone());
        Ok(r)
    }

    /// The saved state of the rollout `name`, or an error saying there is none and how to start one.
    async fn existing(&self, name: &str) -> Result<RolloutState, Error> {
        self.state(name).await?.ok_or_else(|| Error::InvalidInput {
            what: "rollout".into(),
            message: format!("no rollout named {name}; start one with `agentctl apply -f SPEC`"),
        })
    }

    /// The saved state of a rollout.
    pub async fn state(&self, name: &str) -> Result<Option<RolloutState>, Error> {
        match self.store.document(DOC_KIND, name).await? {
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| Error::InvalidInput {
                what: format!("saved rollout {name}"),
                message: e.to_string(),
            }),
            None => Ok(None),
        }
    }

    async fn save(&self, state: &mut RolloutState) -> Result<(), Error> {
        state.updated_at = OffsetDateTime::now_utc();
        let v = serde_json::to_value(&*state).map_err(|e| Error::InvalidInput {
            what: "rollout state".into(),
            message: e.to_string(),
        })?;
        self.store.put_document(DOC_KIND, state.spec.name.as_str(), &v).await?;
        Ok(())
    }

    async fn lease(&self, name: &str, purpose: &str) -> Result<LeaseGuard, Error> {
        let holder = holder_for_this_process(&format!("{purpose} rollout {name}"));
        LeaseGuard::acquire(self.store.clone(), &key(name), &holder)
            .await
            .map_err(Error::from)
    }

    /// Applies a spec: starts a new rollout, or resumes one of the same name and the same spec that did not
    /// finish. A rollout of that name that did not finish with another spec is refused
    /// ([`Error::RolloutConflict`], naming the differences; nothing is changed): [`Fleet::replace`] reverts it
    /// first.
    pub async fn apply(&self, spec: RolloutSpec) -> Result<RolloutState, Error> {
        self.apply_as(spec, false).await
    }

    /// Applies a spec in place of a rollout of the same name that did not finish: that rollout is reverted
    /// (every target it touched back to its previous revision), then this spec starts. Without such a
    /// rollout, the same as [`Fleet::apply`].
    pub async fn replace(&self, spec: RolloutSpec) -> Result<RolloutState, Error> {
        self.apply_as(spec, true).await
    }

    async fn apply_as(&self, spec: RolloutSpec, replace: bool) -> Result<RolloutState, Error> {
        let lease = self.lease(spec.name.as_str(), "apply").await?;
        let result = async {
            if let Some(mut s) = self.state(spec.name.as_str()).await? {
                let unfinished = !s.phase().is_terminal();
                let differences = spec::differences(&s.spec, &spec);
                if unfinished && (replace || !differences.is_empty()) && s.phase() != Phase::RollingBack {
                    if !replace {
                        return Err(Error::RolloutConflict {
                            rollout: spec.name.to_string(),
                            phase: s.phase().to_string(),
                            differences,
                        });
                    }
                    // The stored rollout goes back first: nothing of it may stay half done under the name.
                    s.record("apply --replace: reverted for a new spec");
                    self.open_outbox(&s.spec);
                    let r = self.rollback(&mut s, "replaced by a new spec (`apply --replace`)".into()).await;
                    self.outbox().drain().await;
                    r?;
                    if s.phase() != Phase::RolledBack {
                        return Err(Error::InvalidInput {
                            what: format!("rollout {}", spec.name),
                            message: format!(
                                "`--replace` could not revert it ({}): the new spec was not started; see `agentctl rollout status {}`",
                                s.reason.clone().unwrap_or_default(),
                                spec.name
                            ),
                        });
                    }
                }
            }
            let mut state = match self.state(spec.name.as_str()).await? {
                // A process died while rolling back: finish that first, whatever the new spec says.
                Some(mut s) if s.phase() == Phase::RollingBack => {
                    self.finish_rollback(&mut s).await?;
                    return Ok(s);
                }
                Some(mut s) if !s.phase().is_terminal() && s.phase() != Phase::Paused => {
                    // Resuming after a process that stopped: find out what it left half done.
                    s.record("apply (resumed an interrupted run)");
                    self.settle(&mut s).await?;
                    s
                }
                Some(s) if s.phase() == Phase::Paused => {
                    return Err(Error::InvalidInput {
                        what: format!("rollout {}", spec.name),
                        message: format!(
                            "it is paused ({}); run `agentctl rollout promote {0}` to continue or `agentctl rollout abort {0}` to revert",
                            s.reason.clone().unwrap_or_default()
                        )
                        .replace("{0}", spec.name.as_str()),
                    })
                }
                _ => self.start(spec).await?,
            };
            self.run(&mut state).await?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    async fn start(&self, spec: RolloutSpec) -> Result<RolloutState, Error> {
        let targets = self.units(&spec).await?;
        let plan = spec.plan_for(
            &targets
                .iter()
                .map(|t| agent_core::Target {
                    host: t.host.clone(),
                    // Units are named `SERVICE.N`, a valid name when the service's is.
                    container: t.container.parse().unwrap_or_else(|_| spec.name.clone()),
                })
                .collect::<Vec<_>>(),
        )?;
        // Resolve the tag to a digest once, on the first engine that answers, and pin it everywhere. An
        // unreachable engine fails only its own targets later (counting toward the failure ratio).
        let mut hosts: Vec<&str> = spec.targets.iter().map(|t| t.host.as_str()).collect();
        hosts.dedup();
        let mut reached = None;
        let mut errors = Vec::new();
        for h in hosts {
            match self.runtime(h).await {
                Ok(rt) => {
                    reached = Some(rt);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        let rt = reached.ok_or_else(|| Error::InvalidInput {
            what: "engines".into(),
            message: format!("no target's engine could be reached: {}", errors.join("; ")),
        })?;
        let local = rt.inspect_image(&spec.image.pull_ref()).await.ok();
        let info = match local {
            Some(i) if spec.image.digest().is_some() || i.repo_digests.is_empty() => i,
            _ => {
                let progress = self.progress.clone();
                rt.pull_image(&spec.image, &move |p| progress.report(&Event::Pull(p)))
                    .await
                    .map_err(|source| Error::ResolveImage {
                        image: spec.image.to_string(),
                        source,
                    })?
            }
        };
        let pinned = match info.digest_for(&spec.image) {
            Some(d) => spec.image.with_digest(d),
            None => spec.image.clone(),
        };
        let mut machine = StateMachine::default();
        machine.apply(Input::Start).map_err(|source| Error::IllegalTransition {
            rollout: spec.name.to_string(),
            source,
        })?;
        let mut state = RolloutState {
            pinned,
            plan,
            next_step: 0,
            machine,
            targets,
            reason: None,
            analyses: Vec::new(),
            started_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
            traffic: spec.traffic.as_ref().map(|_| TrafficState::default()),
            spec,
            audit: Vec::new(),
        };
        state.record("apply");
        self.save(&mut state).await?;
        Ok(state)
    }

    /// The rollout's units: each container target, and each service target once per task (replicated) or
    /// node (global), as its manager reports it now.
    async fn units(&self, spec: &RolloutSpec) -> Result<Vec<TargetState>, Error> {
        let mut units = Vec::new();
        for t in &spec.targets {
            let unit = |container: String, service: Option<String>| TargetState {
                host: t.host.clone(),
                container,
                service,
                status: TargetStatus::Pending,
                previous: None,
                revision: None,
                message: None,
                installed: false,
                evidence: None,
            };
            let Some(service) = &t.service else {
                units.push(unit(t.name().to_string(), None));
                continue;
            };
            let invalid = |message: String| Error::InvalidInput {
                what: format!("service {service} on {}", t.host),
                message,
            };
            let rt = self.runtime(&t.host).await.map_err(invalid)?;
            let info = rt.service(service.as_str()).await.map_err(|e| invalid(e.to_string()))?;
            let n = service::units(rt.as_ref(), &info).await.map_err(invalid)?;
            if n == 0 {
                return Err(invalid(
                    "it runs no task (0 replicas, or no node for a global service); nothing to roll out".into(),
                ));
            }
            if units.len() as u64 + n > MAX_TARGETS as u64 {
                return Err(invalid(format!(
                    "with its {n} tasks the rollout has more than the {MAX_TARGETS} units one rollout may have; split it"
                )));
            }
            for k in 1..=n {
                units.push(unit(format!("{service}.{k}"), Some(service.to_string())));
            }
        }
        Ok(units)
    }

    /// Continues a paused rollout (a pause until promotion, an inconclusive analysis). A rollout another
    /// process is running (in a timed pause, an analysis) is handed the promotion through the store: that
    /// process ends its wait and goes on; the state returned is as it stands then.
    pub async fn promote(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = match self.lease(name, "promote").await {
            Ok(lease) => lease,
            Err(Error::Busy { .. }) => return self.hand_over(name, requests::Ask::Promote).await,
            Err(e) => return Err(e),
        };
        let result = self.promote_locked(name).await;
        lease.release().await?;
        result
    }

    /// [`Fleet::promote`] under the rollout's lease.
    async fn promote_locked(&self, name: &str) -> Result<RolloutState, Error> {
        let mut state = self.existing(name).await?;
        state.machine.apply(Input::Promote).map_err(|e| Error::InvalidInput {
            what: format!("rollout {name}"),
            message: e.to_string(),
        })?;
        state.reason = None;
        state.record("promote");
        self.save(&mut state).await?;
        self.run(&mut state).await?;
        Ok(state)
    }

    /// Stops a rollout and reverts every target it touched. A rollout another process is running is handed
    /// the abort through the store: that process reverts at once while it waits in a pause or an analysis
    /// (within a fraction of a second), else at its next step, and this call follows the rollback to its
    /// end.
    pub async fn abort(&self, name: &str, reason: &str) -> Result<RolloutState, Error> {
        let lease = match self.lease(name, "abort").await {
            Ok(lease) => lease,
            Err(Error::Busy { .. }) => {
                let ask = requests::Ask::Abort {
                    reason: reason.to_owned(),
                };
                return self.hand_over(name, ask).await;
            }
            Err(e) => return Err(e),
        };
        let result = self.abort_locked(name, reason).await;
        lease.release().await?;
        result
    }

    /// [`Fleet::abort`] under the rollout's lease.
    async fn abort_locked(&self, name: &str, reason: &str) -> Result<RolloutState, Error> {
        let mut state = self.existing(name).await?;
        if state.phase() == Phase::RollingBack {
            self.finish_rollback(&mut state).await?;
            return Ok(state);
        }
        state
            .machine
            .apply(Input::Abort {
                reason: reason.to_owned(),
            })
            .map_err(|e| Error::InvalidInput {
                what: format!("rollout {name}"),
                message: e.to_string(),
            })?;
        state.record(format!("abort: {reason}"));
        self.open_outbox(&state.spec);
        let r = self.rollback(&mut state, reason.to_owned()).await;
        self.outbox().drain().await;
        r?;
        Ok(state)
    }

    /// Pauses a rollout: when a process is running it, that process is handed the request through the store
    /// and pauses at once while it waits (a timed pause, an analysis) or at its next step; when none is (a
    /// rollout whose process died), now. Resume with [`Fleet::promote`].
    pub async fn pause(&self, name: &str, reason: &str) -> Result<RolloutState, Error> {
        let state = self.existing(name).await?;
        if state.phase().is_terminal() || state.phase() == Phase::Paused {
            return Err(Error::InvalidInput {
                what: format!("rollout {name}"),
                message: format!("it is {}; only a running rollout can be paused", state.phase()),
            });
        }
        match self.lease(name, "pause").await {
            Ok(lease) => {
                let result = async {
                    let mut state = state;
                    state.record(format!("pause: {reason}"));
                    self.pause_state(&mut state, reason.to_owned()).await?;
                    Ok(state)
                }
                .await;
                lease.release().await?;
                result
            }
            Err(Error::Busy { .. }) => {
                // The running process pauses at once while it waits, else before its next step.
                self.request(
                    name,
                    requests::Ask::Pause {
                        reason: reason.to_owned(),
                    },
                )
                .await?;
                Ok(state)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a rollout that ended aborted, rolled back or failed again from its first step, with the same
    /// spec and pinned image; targets already on it are left as they are.
    pub async fn retry(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "retry").await?;
        let result = async {
            let mut state = self.existing(name).await?;
            state.machine.apply(Input::Retry).map_err(|e| Error::InvalidInput {
                what: format!("rollout {name}"),
                message: format!("{e}; only an aborted, rolled-back or failed rollout can be retried"),
            })?;
            for t in &mut state.targets {
                t.status = TargetStatus::Pending;
                t.message = None;
            }
            state.next_step = 0;
            state.reason = None;
            state.analyses.clear();
            state.record("retry");
            self.save(&mut state).await?;
            self.run(&mut state).await?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Takes a finished (or paused) rollout back: every target it updated returns to the revision it ran
    /// before (for blue-green after promotion: the kept old container starts again).
    pub async fn undo(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "undo").await?;
        let result = async {
            let mut state = self.existing(name).await?;
            if !matches!(state.phase(), Phase::Succeeded | Phase::Paused) {
                return Err(Error::InvalidInput {
                    what: format!("rollout {name}"),
                    message: format!(
                        "it is {}; undo takes back a succeeded or paused rollout (a running one: `rollout abort`)",
                        state.phase()
                    ),
                });
            }
            state.record("undo");
            self.open_outbox(&state.spec);
            let r = self.rollback(&mut state, "undo requested".into()).await;
            self.outbox().drain().await;
            r?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Every target's revision history (newest last), as recorded by its updates.
    pub async fn history(&self, name: &str) -> Result<Vec<(TargetState, Vec<agent_core::Revision>)>, Error> {
        let state = self.existing(name).await?;
        let mut out = Vec::new();
        for t in state.targets.into_iter().filter(|t| t.service.is_none()) {
            let mut revs = self
                .store
                .revisions(&crate::updater::subject_key(&t.host, &t.container))
                .await?;
            revs.sort_by_key(|r| r.number);
            out.push((t, revs));
        }
        Ok(out)
    }

    /// Every service target's revisions (oldest first): `(host, service, revisions)`.
    pub async fn service_history(&self, name: &str) -> Result<Vec<(String, String, Vec<ServiceRevision>)>, Error> {
        let state = self.existing(name).await?;
        let mut services: Vec<(String, String)> = state
            .targets
            .iter()
            .filter_map(|t| Some((t.host.clone(), t.service.clone()?)))
            .collect();
        services.dedup();
        let mut out = Vec::new();
        for (host, service) in services {
            let revs = self.service_revisions(&host, &service).await?;
            out.push((host, service, revs));
        }
        Ok(out)
    }

    /// Every saved rollout.
    pub async fn all(&self) -> Result<Vec<RolloutState>, Error> {
        Ok(self
            .store
            .documents(DOC_KIND)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect())
    }

    /// Routes this rollout's events to the spec's webhooks and the extra notifiers.
    fn open_outbox(&self, spec: &RolloutSpec) {
        let mut notifiers = self.extra_notifiers.clone();
        for n in &spec.notify {
            match n.url() {
                Ok(url) => notifiers.push(Arc::new(Webhook::new(&url))),
                // Validated when the rollout started; a webhook file removed since costs only its events.
                Err(e) => tracing::warn!(error = %e, "a webhook of the rollout is skipped"),
            }
        }
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Outbox::new(notifiers));
    }

    fn emit(&self, e: FleetEvent) {
        (self.events)(&e);
        self.outbox().send(&e);
    }
}
