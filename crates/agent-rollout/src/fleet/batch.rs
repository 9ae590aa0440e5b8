//! One batch of targets: updated in parallel within the engine slots, and the targets a stopped process left half done.

use super::run::Action;
use super::state::{failed_targets, failures_allowed, rollout_cause, RolloutState};
use super::{Fleet, PAUSE_KIND};
use crate::target::{TargetState, TargetStatus};
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};

use agent_core::{ContainerName, ContainerRuntime, ContainerSpec, RevisionNumber, StateStore, UpdateMode};

use crate::error::Error;
use crate::events::{FleetEvent, Reporter};
use crate::report::UpdateStatus;
use crate::request::{Decided, PullPolicy, UpdateRequest, VerifyConfig};
use crate::updater::Updater;

impl Fleet {
    /// Updates the targets of `waves` (one plan step each; a single wave for a step that stands alone): each
    /// wave's targets are admitted once every target of the wave before has its verdict and the rollout may
    /// go on (no more failures than it may lose, no inconclusive verification, no pause asked for), and
    /// `state.next_step` moves on to each wave as it opens. Later waves' targets prepare while the earlier
    /// ones are verified, so the waves follow each other with no bookkeeping in between. Returns the
    /// targets whose verification was inconclusive (the rollout pauses).
    pub(super) async fn update_batch(
        &self,
        state: &mut RolloutState,
        waves: &[Vec<usize>],
        verify: &VerifyConfig,
        action: Action,
    ) -> Result<Vec<String>, Error> {
        // Engine slots bound the targets being stopped, created and started; flight slots bound those plus
        // the started ones still being verified. Both are taken right before a target's first change (see
        // `Slots`): its preparation (locks, inspection, history, the journal's begin facts) runs ahead while
        // earlier targets hold the slots, one engine slot's worth of targets ahead. A target's work is made
        // only when it may run, so memory grows with the flight, not with the batch.
        // One gate per wave, the first open; a gate opens (or closes) for all its waiting targets at once, and
        // they then take their slots in the order they came to it.
        let gates: Vec<_> = (0..waves.len())
            .map(|w| {
                Arc::new(tokio::sync::Semaphore::new(if w == 0 {
                    tokio::sync::Semaphore::MAX_PERMITS
                } else {
                    0
                }))
            })
            .collect();
        let mut open = 1;
        let (verdicts, mut told) = tokio::sync::mpsc::unbounded_channel();
        let slots = Arc::new(Slots {
            engine: Arc::new(tokio::sync::Semaphore::new(state.spec.parallelism)),
            flight: Arc::new(tokio::sync::Semaphore::new(
                state.spec.parallelism + state.spec.max_unverified,
            )),
            failures: std::sync::atomic::AtomicUsize::new(failed_targets(state)),
            budget: failures_allowed(state),
            gates,
            verdicts,
        });
        let ahead = 2 * state.spec.parallelism + state.spec.max_unverified;
        let mut tasks = Vec::new();
        let mut tasks_given = Vec::new();
        let mut remaining = vec![0usize; waves.len()];
        for (wave, &i) in waves
            .iter()
            .enumerate()
            .flat_map(|(w, targets)| targets.iter().map(move |i| (w, i)))
        {
            let ready = match action {
                Action::Update(_) => TargetStatus::Pending,
                Action::Promote => TargetStatus::Staged,
            };
            if state.targets[i].status != ready {
                continue;
            }
            remaining[wave] += 1;
            tasks_given.push(i);
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
            tasks.push((wave, i, t, req, template, rt));
        }
        // The targets' work runs in a task of its own: the loop below awaits the store (the state saved and
        // the pause read at each wave's end) while targets are mid-call, and a target suspended there could
        // hold what the store's call waits for (PostgreSQL's one connection), so they must not depend on this
        // loop being polled. At most `ahead` run at once, in the order given; a target's work is made only
        // when it may run, so memory grows with the flight, not with the batch. Dropped with the batch (an
        // error returned), the task is aborted (a `JoinSet` aborts its tasks when dropped), as the targets'
        // futures were when they were driven here.
        let context = TargetContext {
            store: self.store.clone(),
            progress: self.progress.clone(),
            slots: slots.clone(),
            action,
        };
        let (sent, mut results) = tokio::sync::mpsc::unbounded_channel();
        let mut driver = tokio::task::JoinSet::new();
        driver.spawn(async move {
            let mut waiting = tasks.into_iter();
            let mut running = futures_util::stream::FuturesUnordered::new();
            loop {
                while running.len() < ahead {
                    let Some(prepared) = waiting.next() else { break };
                    // A panic in a target's work is that target's failure, never the batch's silence.
                    let (wave, i) = (prepared.0, prepared.1);
                    running.push(
                        std::panic::AssertUnwindSafe(context.work(prepared))
                            .catch_unwind()
                            .map(move |r| r.unwrap_or_else(|panic| (wave, i, false, Some(Err(panicked(&*panic))))))
                            .boxed(),
                    );
                }
                let Some(done) = running.next().await else { break };
                // The loop below outlives the task unless the batch returned early; then nothing waits.
                let _ = sent.send(done);
            }
        });
        let mut unverified = Vec::new();
        // A wave is over once each of its targets has its verdict (told by its pacer, before the target's
        // bookkeeping) or ended without one. Waves with nothing to do (a resumed rollout's) open at once.
        let mut undecided = remaining;
        let mut inconclusive = false;
        // Every target given work must come back with a result; one that does not is a failure.
        let mut outstanding: std::collections::BTreeSet<usize> = tasks_given.into_iter().collect();
        self.open_waves(state, &slots, &mut open, &undecided, inconclusive)
            .await?;
        loop {
            let (wave, i, was_told, r) = tokio::select! {
                biased;
                Some((wave, verdict)) = told.recv() => {
                    undecided[wave] -= 1;
                    inconclusive |= verdict == Decided::Unverified;
                    self.open_waves(state, &slots, &mut open, &undecided, inconclusive).await?;
                    continue;
                }
                next = results.recv() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            outstanding.remove(&i);
            if !was_told {
                undecided[wave] -= 1;
            }
            // Skipped or withheld: the failure budget ran out before this target's turn, or its wave did not
            // open; it stays pending.
            let Some(r) = r else {
                self.open_waves(state, &slots, &mut open, &undecided, inconclusive)
                    .await?;
                continue;
            };
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
            inconclusive |= !unverified.is_empty();
            self.open_waves(state, &slots, &mut open, &undecided, inconclusive)
                .await?;
        }
        for i in outstanding {
            let t = &mut state.targets[i];
            t.status = TargetStatus::Failed;
            t.message = Some(
                "its update ended without a verdict (agentctl lost track of it); `agentctl status` on the target shows where it stands".into(),
            );
            self.emit(target_event(&state.spec.name, t));
        }
        self.save(state).await?;
        Ok(unverified)
    }

    /// Opens the next wave for every wave whose targets all have their verdict, while the rollout may go on;
    /// closes the gate (the later waves' targets stay pending, untouched) when it may not: more failures
    /// than it may lose (counted as verdicts come in), an inconclusive verification, a pause asked for.
    async fn open_waves(
        &self,
        state: &mut RolloutState,
        slots: &Slots,
        open: &mut usize,
        undecided: &[usize],
        inconclusive: bool,
    ) -> Result<(), Error> {
        while *open < undecided.len() && !slots.gates[*open].is_closed() {
            if undecided[*open - 1] > 0 {
                return Ok(());
            }
            // The wave before is decided: what is known of it is saved before the next one starts (a target
            // whose result is not in yet reads `pending`; a resumed rollout settles it from its history).
            self.save(state).await?;
            // A pause or an abort asked for by an operator: the run's loop takes it at the step boundary.
            let name = state.spec.name.as_str();
            let paused = self
                .store
                .document(PAUSE_KIND, name)
                .await?
                .is_some_and(|r| !r.is_null())
                || self
                    .store
                    .document(super::requests::REQUEST_KIND, name)
                    .await?
                    .is_some_and(|r| matches!(r["action"].as_str(), Some("pause" | "abort")));
            if paused || inconclusive || slots.exhausted() || self.too_many_failures(state).is_some() {
                // The run's loop acts on it, as after a step of its own.
                slots.gates[*open..].iter().for_each(|g| g.close());
                return Ok(());
            }
            state.next_step += 1;
            self.emit(FleetEvent::StepStarted {
                rollout: state.spec.name.to_string(),
                step: state.next_step,
                detail: state.plan.steps[state.next_step].to_string(),
            });
            slots.gates[*open].add_permits(tokio::sync::Semaphore::MAX_PERMITS);
            *open += 1;
        }
        Ok(())
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

/// A target's failure from the panic that ended its work.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("agentctl failed on this target (a bug: please report it): {what}")
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

/// A target ready to be given to its update: wave, index, state, request, template, engine.
type Prepared = (
    usize,
    usize,
    TargetState,
    UpdateRequest,
    Option<ContainerSpec>,
    Result<Arc<dyn ContainerRuntime>, String>,
);

/// What a target's work is: wave, index, and its report and whether it was installed (or why it failed),
/// `None` when it was never tried; whether its verdict was told through its pacer.
type Done = (usize, usize, bool, Option<Result<(crate::UpdateReport, bool), String>>);

/// What every target's work in a batch shares.
struct TargetContext {
    store: Arc<dyn StateStore>,
    progress: Arc<dyn Reporter>,
    slots: Arc<Slots>,
    action: Action,
}

impl TargetContext {
    /// The work of one target (a named function, not a closure: the spawned task that runs it must be
    /// `Send` for every lifetime, which a closure over `Prepared` is not proven to be).
    fn work(&self, (wave, i, t, mut req, template, rt): Prepared) -> futures_util::future::BoxFuture<'static, Done> {
        let pace = Arc::new(TargetPace::new(
            self.slots.clone(),
            self.progress.clone(),
            &t.container,
            wave,
        ));
        req.pacer = Some(pace.clone());
        let (store, progress, slots, action) = (
            self.store.clone(),
            self.progress.clone(),
            self.slots.clone(),
            self.action,
        );
        async move {
            // No new target starts once more have failed than the rollout may lose, or once its wave will
            // not open.
            if slots.exhausted() || slots.closed(wave) {
                return (wave, i, false, None);
            }
            let result = Fleet::update_target(rt, store, progress, &t, &req, template.as_ref(), action).await;
            // Withheld: the failure budget ran out while it waited; it stays pending, untouched.
            if pace.withheld() {
                return (wave, i, false, None);
            }
            // A target that ended before its turn (an unreachable engine, a missing container) is reported
            // once its wave opens: in a wave that never opens it stays pending, untried.
            if !pace.admitted() && !slots.wave_open(wave).await {
                return (wave, i, false, None);
            }
            let failed = result
                .as_ref()
                .map_or(true, |(r, _)| r.status == UpdateStatus::RolledBack);
            pace.settle(failed);
            (wave, i, pace.told(), Some(result))
        }
        .boxed()
    }
}

/// A batch's slots and failure budget, shared by its targets' pacers.
struct Slots {
    engine: Arc<tokio::sync::Semaphore>,
    flight: Arc<tokio::sync::Semaphore>,
    failures: std::sync::atomic::AtomicUsize,
    budget: usize,
    /// Each wave's gate: without permits until it opens, closed when it never will.
    gates: Vec<Arc<tokio::sync::Semaphore>>,
    /// Where the targets' pacers send their wave and verdict.
    verdicts: tokio::sync::mpsc::UnboundedSender<(usize, Decided)>,
}

impl Slots {
    fn exhausted(&self) -> bool {
        self.failures.load(std::sync::atomic::Ordering::SeqCst) > self.budget
    }

    /// Whether `wave` will never open.
    fn closed(&self, wave: usize) -> bool {
        self.gates[wave].is_closed()
    }

    /// Waits until `wave` is open; `false` when it never will.
    async fn wave_open(&self, wave: usize) -> bool {
        self.gates[wave].acquire().await.is_ok()
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
    wave: usize,
}

#[derive(Default)]
struct Held {
    admitted: Option<bool>,
    engine: Option<tokio::sync::OwnedSemaphorePermit>,
    flight: Option<tokio::sync::OwnedSemaphorePermit>,
    counted: bool,
    /// Its verdict was sent to the batch.
    told: bool,
}

impl TargetPace {
    fn new(slots: Arc<Slots>, progress: Arc<dyn Reporter>, container: &str, wave: usize) -> TargetPace {
        TargetPace {
            slots,
            held: std::sync::Mutex::default(),
            progress,
            container: container.to_owned(),
            wave,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn withheld(&self) -> bool {
        self.held().admitted == Some(false)
    }

    fn told(&self) -> bool {
        self.held().told
    }

    fn admitted(&self) -> bool {
        self.held().admitted == Some(true)
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
        if !self.slots.wave_open(self.wave).await {
            self.held().admitted = Some(false);
            return false;
        }
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

    fn decided(&self, verdict: Decided) {
        self.settle(verdict == Decided::Reverted);
        let mut held = self.held();
        if !held.told {
            held.told = true;
            // The batch outlives its targets' work; a send fails only once it has returned.
            let _ = self.slots.verdicts.send((self.wave, verdict));
        }
    }
}
