//! The one executor of single-target plans, and the recovery that repairs a killed one with the same code.
//!
//! [`Updater::execute`] journals [`Begin`], then each [`Act`] before doing it, verifies at the plan's verify
//! point, applies [`judge`], and on a revert runs the [`Inverse`]s of the reached steps. [`Updater::settle`]
//! then records what the decision leaves (revision outcome, retained containers, preview, pruning); recovery
//! after a kill rebuilds the plan from the journaled begin facts and calls the same inverses and the same
//! records.

use std::time::Duration;

use agent_core::{
    ContainerName, ContainerSpec, Digest, ImageDefaults, ImageRef, Outcome, RestartPolicy, Revision, RevisionNumber,
    RuntimeError, SpecDiff,
};
use agent_health::{Verdict, VerdictOutcome};
use time::OffsetDateTime;

use crate::error::{Error, StepFailed};
use crate::events::Event;
use crate::journal::Journal;
use crate::lease::LeaseGuard;
use crate::plan::{inverses, judge, Act, Begin, Decision, Inverse, OpKind, Step};
use crate::report::{Recovery, RecoveryAction, UpdateReport, UpdateStatus};
use crate::request::{Decided, UpdateRequest};
use crate::updater::{short_id, Updater};

/// A container's state in words, for messages about what the engine shows.
pub(crate) fn describe(info: &agent_core::ContainerInfo) -> String {
    match (info.state.status, info.state.exit_code) {
        (agent_core::ContainerStatus::Running, _) => "running".to_owned(),
        (status, Some(code)) if status != agent_core::ContainerStatus::Created => {
            format!("{status} (exit code {code})")
        }
        (status, _) => status.to_string(),
    }
}

/// What the new revision is: recorded with it.
#[derive(Clone)]
pub(crate) struct RevisionMeta {
    pub image: ImageRef,
    pub image_id: Option<String>,
    pub digest: Option<Digest>,
    pub cause: String,
    pub new_defaults: ImageDefaults,
}

impl RevisionMeta {
    /// A revision being made now, numbered `number`, with `spec`.
    pub(crate) fn revision(&self, number: RevisionNumber, spec: ContainerSpec) -> Revision {
        Revision {
            number,
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            digest: self.digest.clone(),
            spec,
            cause: self.cause.clone(),
            by: Some(crate::actor()),
            created_at: OffsetDateTime::now_utc(),
            finished_at: None,
            outcome: Outcome::InProgress,
            protected: false,
            retained_container: None,
            retained_container_id: None,
        }
    }
}

/// Where the new container comes from (needed only going forward, so not journaled).
pub(crate) enum Source {
    /// Created from this spec under the plan's target name.
    Create(Box<ContainerSpec>),
    /// An existing container renamed to the target: a retained revision (its restart policy restored) or a
    /// verified preview (`restart` `None`: it has its policy).
    Existing {
        /// Its name now.
        name: String,
        /// The restart policy it gets with the name.
        restart: Option<RestartPolicy>,
    },
}

/// How the new container is verified at the plan's verify point.
pub(crate) enum Check {
    /// By the request's health gate.
    Gate,
    /// Verified before as a preview: it only has to have survived the switch.
    Survived(Box<Verdict>),
}

/// A plan with what executing it needs.
pub(crate) struct Operation {
    /// The begin facts (the plan is built from them).
    pub begin: Begin,
    /// Where the new container comes from.
    pub source: Source,
    /// How it is verified.
    pub check: Check,
    /// What the engine must report for it beside the image (the intended spec and the old image's
    /// defaults); `None` when there is nothing to be faithful to (an install, a retained revision).
    pub faithful_to: Option<(ContainerSpec, ImageDefaults)>,
    /// What the new revision is.
    pub meta: RevisionMeta,
    /// The old container's stop timeout.
    pub stop_timeout: Option<Duration>,
    /// The operation that puts the new container under its name (not a preview's stage): it tells the
    /// request's pacer when the container started and when the verdict was acted on.
    pub notify_started: bool,
    /// The container that ran before, as the engine reported it (secret values included): recreated from
    /// this when a revert finds its retained container gone. `None` when nothing ran before.
    pub old: Option<OldContainer>,
}

/// The container that ran before an operation, enough to recreate it when its retained container is gone
/// (pruned, removed by hand): its whole configuration (the carried document, secret values included) and the
/// image it ran.
#[derive(Debug, Clone)]
pub(crate) struct OldContainer {
    /// Its configuration.
    pub spec: ContainerSpec,
    /// The id of the image it ran.
    pub image_id: String,
}

impl OldContainer {
    /// The old container as the engine reported it.
    pub(crate) fn of(info: &agent_core::ContainerInfo) -> OldContainer {
        OldContainer {
            spec: info.spec.clone(),
            image_id: info.image_id.clone(),
        }
    }
}

/// An executed plan: its decision made and carried out on the engine, its records not yet written.
pub(crate) struct Executed {
    /// The open journal ([`Journal::close`] ends it).
    pub journal: Journal,
    /// The new container's id, when it started.
    pub new_id: Option<String>,
    /// Its verdict, when it got that far.
    pub verdict: Option<Verdict>,
    /// How its configuration differs from the intended one.
    pub diff: SpecDiff,
    /// The decision.
    pub decision: Decision,
    /// Its last output lines, when it was taken away.
    pub last_logs: Vec<String>,
    /// How the old revision came back when it had to be recreated (its retained container was gone).
    pub restored: Option<String>,
}

impl Executed {
    /// The status a report of this decision has.
    pub(crate) fn status(&self) -> UpdateStatus {
        match &self.decision {
            Decision::Commit { unverified: None } => UpdateStatus::Updated,
            Decision::Commit { unverified: Some(_) } => UpdateStatus::Unverified,
            Decision::Revert { .. } => UpdateStatus::RolledBack,
        }
    }

    /// Why it was not proven or was taken away.
    pub(crate) fn reason(&self) -> Option<String> {
        match &self.decision {
            Decision::Commit { unverified } => unverified.clone(),
            Decision::Revert { reason } => Some(reason.clone()),
        }
    }

    /// Ends the journal with `outcome` and reports the operation `b` began (on `endpoint`) with `revision`.
    pub(crate) async fn close(
        self,
        endpoint: &str,
        b: &Begin,
        outcome: &str,
        revision: Revision,
    ) -> Result<UpdateReport, Error> {
        let (status, reason) = (self.status(), self.reason());
        self.journal.close(outcome).await?;
        Ok(UpdateReport {
            container: b.container.clone(),
            endpoint: endpoint.to_owned(),
            status,
            revision,
            previous: RevisionNumber::new(b.old_revision),
            verdict: self.verdict,
            unexpected_changes: self.diff,
            reason,
            last_logs: self.last_logs,
            backup: None,
            recovered: Vec::new(),
            probation: None,
            restored_by: None,
            restored: self.restored,
            notes: Vec::new(),
        })
    }
}

impl Updater {
    /// Runs `op`'s plan: journal, act, verify, decide, and revert when the decision says so.
    pub(crate) async fn execute(
        &self,
        op: &Operation,
        req: &UpdateRequest,
        lease: &LeaseGuard,
    ) -> Result<Executed, Error> {
        let begin = &op.begin;
        let target = begin.target().to_owned();
        let mut journal = Journal::open(
            begin.kind,
            self.store.clone(),
            &self.subject(&begin.container),
            &begin.container,
            lease.engine_lock().cloned(),
        );
        journal.record(&Step::Begin(begin.clone())).await?;
        // Everything so far prepared; the changes wait for the caller's turn (a fleet's engine slot).
        if let Err(e) = req.admit().await {
            journal.close("withheld").await?;
            return Err(e);
        }
        let plan = begin.plan();
        let mut reached = Vec::new();
        let mut failure = None;
        for act in &plan {
            if lease.is_lost() {
                failure = Some(format!(
                    "the lock on {} was lost before step {} (its record was removed and another agentctl took it): stopped before changing more",
                    begin.container,
                    act.step().name()
                ));
                break;
            }
            let done = async {
                journal.record(&act.step()).await?;
                reached.push(act.step());
                self.act(op, act).await
            };
            if let Err(e) = done.await {
                failure = Some(e.to_string());
                break;
            }
        }
        let mut new_id = None;
        let mut started_restarts = 0;
        if failure.is_none() {
            match self.runtime.inspect_container(&target).await {
                Ok(info) => {
                    started_restarts = info.state.restart_count;
                    new_id = Some(info.id);
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let (verdict, diff, decision) = match (&new_id, failure) {
            (Some(id), None) => {
                if lease.is_lost() {
                    return Err(Error::Busy {
                        message:
                            "the lease on the container was lost during the operation; re-run the command to repair"
                                .into(),
                    });
                }
                journal.record(&Step::Verify).await?;
                reached.push(Step::Verify);
                if op.notify_started {
                    req.notify_started();
                }
                let verdict = match &op.check {
                    Check::Gate => self.verify(&target, id, req, &op.meta).await?,
                    Check::Survived(verdict) => {
                        let info = self
                            .runtime
                            .inspect_container(&target)
                            .await
                            .map_err(Error::inspect(&target))?;
                        let mut verdict = (**verdict).clone();
                        if !info.state.is_running() {
                            verdict.outcome = VerdictOutcome::Unhealthy;
                            verdict.reason = format!("the preview stopped during the switch ({:?})", info.state.status);
                        }
                        verdict
                    }
                };
                let diff = match &op.faithful_to {
                    Some((spec, old_defaults)) => {
                        // The intended spec under the name the new container has (a preview's differs).
                        let spec = named(spec, &target)?;
                        self.faithfulness(&target, &spec, old_defaults, &op.meta.new_defaults)
                            .await?
                    }
                    None => SpecDiff::default(),
                };
                let mut decision = judge(&verdict, &diff);
                // Claim only what the engine shows: the container judged must still be the one that runs.
                if let Decision::Commit { .. } = decision {
                    if let Some(problem) = self
                        .read_back_new(&target, id, op.meta.image_id.as_deref(), started_restarts)
                        .await
                    {
                        decision = Decision::Revert {
                            reason: format!("read back after the verdict: {problem}"),
                        };
                    }
                }
                (Some(verdict), diff, decision)
            }
            (_, failure) => (
                None,
                SpecDiff::default(),
                Decision::Revert {
                    reason: failure.unwrap_or_default(),
                },
            ),
        };
        let mut last_logs = Vec::new();
        let mut restored = None;
        match &decision {
            Decision::Commit { unverified } => {
                journal
                    .record(&Step::Commit {
                        unverified: unverified.clone(),
                    })
                    .await?
            }
            Decision::Revert { reason } => {
                self.reporter.report(&Event::RollingBack { reason: reason.clone() });
                last_logs = self
                    .runtime
                    .logs(&target, None, Some(20))
                    .await
                    .map(|l| l.into_iter().map(|l| l.text).collect())
                    .unwrap_or_default();
                let step = Step::Revert { reason: reason.clone() };
                journal.record(&step).await?;
                reached.push(step);
                self.invert(begin, &inverses(&plan, &reached))
                    .await
                    .map_err(|e| e.reverting(&target, reason))?;
                restored = self.ensure_restored(begin, op.old.as_ref(), reason).await?;
            }
        }
        if op.notify_started {
            req.notify_decided(match &decision {
                Decision::Revert { .. } => Decided::Reverted,
                Decision::Commit { unverified: Some(_) } => Decided::Unverified,
                Decision::Commit { unverified: None } => Decided::Kept,
            });
        }
        Ok(Executed {
            journal,
            new_id,
            verdict,
            diff,
            decision,
            last_logs,
            restored,
        })
    }

    /// What contradicts keeping the new container `target` (id `id`, image `image_id`, `restarts` restarts
    /// when it started), read from the engine after the verdict: gone, replaced, stopped, restarted by its
    /// policy, or running another image. `None` when it runs as verified.
    async fn read_back_new(&self, target: &str, id: &str, image_id: Option<&str>, restarts: u64) -> Option<String> {
        match self.runtime.inspect_container(target).await {
            Ok(info) if info.id == id && info.state.restart_count > restarts => Some(format!(
                "{target} restarted {} time(s) since its start",
                info.state.restart_count - restarts
            )),
            Ok(info) if info.id != id => Some(format!(
                "{target} is another container ({}) than the one verified ({})",
                short_id(&info.id),
                short_id(id)
            )),
            Ok(info) if !info.state.is_running() => Some(format!("{target} is {}", describe(&info))),
            Ok(info) if image_id.is_some_and(|want| want != info.image_id) => Some(format!(
                "{target} runs image {}, not {}",
                short_id(&info.image_id),
                short_id(image_id.unwrap_or_default())
            )),
            Ok(_) => None,
            Err(RuntimeError::ContainerNotFound { .. }) => Some(format!("{target} is gone")),
            Err(e) => Some(format!("{target} could not be read back: {e}")),
        }
    }

    /// Reads the engine back after a revert of the operation `b` began and checks it shows what the revert
    /// was to leave: the old container under its name (running if it ran), or for an install, a restore and
    /// a stage, nothing new under the name. When the old container's retained copy is gone (pruned, removed
    /// by hand), it is recreated from `old`; the note says so. Anything else the engine shows is an error
    /// naming it ([`Error::NotAsExpected`], exit 5), never a claim that the old revision runs.
    pub(crate) async fn ensure_restored(
        &self,
        b: &Begin,
        old: Option<&OldContainer>,
        reason: &str,
    ) -> Result<Option<String>, Error> {
        let name = b.container.as_str();
        let not_as_expected = |expected: String, shows: String, fix: String| Error::NotAsExpected {
            container: name.to_owned(),
            expected,
            shows,
            fix,
        };
        let found = match self.runtime.inspect_container(b.target()).await {
            Ok(info) => Some(info),
            Err(RuntimeError::ContainerNotFound { .. }) => None,
            Err(e) => return Err(Error::inspect(b.target())(e)),
        };
        if !b.kind.replaces() {
            // Nothing was under the target name before (an install, a restore, a stage's preview).
            return match found {
                Some(info) => Err(not_as_expected(
                    format!("{} was taken away again", b.target()),
                    format!(
                        "{} ({}) is still there, {}",
                        b.target(),
                        short_id(&info.id),
                        describe(&info)
                    ),
                    format!("remove it with `docker rm -f {}` if it is not wanted", b.target()),
                )),
                None => Ok(None),
            };
        }
        let expected = if b.old_running {
            format!("revision {} runs again", b.old_revision)
        } else {
            format!("revision {} is back (stopped, as it was)", b.old_revision)
        };
        let status_fix = format!("run `agentctl status {name}` and `agentctl history {name}`");
        match found {
            Some(info) if info.id == b.old_id => {
                if b.old_running && !info.state.is_running() {
                    return Err(not_as_expected(
                        expected,
                        format!("{name} {}", describe(&info)),
                        status_fix,
                    ));
                }
                Ok(None)
            }
            Some(info) => Err(not_as_expected(
                expected,
                format!(
                    "another container under the name ({}, image {}, {})",
                    short_id(&info.id),
                    info.spec.image,
                    describe(&info)
                ),
                status_fix,
            )),
            None => {
                let Some(old) = old else {
                    return Err(not_as_expected(
                        expected,
                        format!(
                            "no container named {name}, and its retained container {} is gone too",
                            b.retained_name
                        ),
                        format!(
                            "`agentctl undo {name} --to-revision {}` recreates it from its recorded configuration",
                            b.old_revision
                        ),
                    ));
                };
                let (id, gone) = self.recreate_old(b, old, reason).await?;
                match self.runtime.inspect_container(name).await {
                    Ok(info) if info.id == id && (!b.old_running || info.state.is_running()) => Ok(Some(format!(
                        "recreated from its recorded configuration: its retained container {} was gone{}",
                        b.retained_name,
                        gone.map(|g| format!("; {g}")).unwrap_or_default()
                    ))),
                    Ok(info) => Err(not_as_expected(
                        expected,
                        format!("{name} was recreated from its configuration and {}", describe(&info)),
                        status_fix,
                    )),
                    Err(e) => Err(not_as_expected(
                        expected,
                        format!("{name} was recreated from its configuration and cannot be read back: {e}"),
                        status_fix,
                    )),
                }
            }
        }
    }

    /// Creates the old container of the operation `b` began again from `old` (its retained container is
    /// gone), its image pulled back by the recorded digest when the engine no longer has it; starts it when
    /// it ran. Returns its id, and what it says of the volumes it mounts that were gone and were created
    /// empty ([`Updater::gone_volumes`]). A step that fails is [`Error::RevertFailed`] (exit 5).
    async fn recreate_old(
        &self,
        b: &Begin,
        old: &OldContainer,
        reason: &str,
    ) -> Result<(String, Option<String>), Error> {
        let name = b.container.as_str();
        let image = old.spec.image.clone();
        if self.runtime.inspect_image(&old.image_id).await.is_err() {
            let digest = self
                .store
                .revisions(&self.subject(name))
                .await?
                .into_iter()
                .find(|r| r.number.get() == b.old_revision)
                .and_then(|r| r.digest)
                .or_else(|| image.digest().cloned());
            let Some(digest) = digest else {
                return Err(Error::NotAsExpected {
                    container: name.to_owned(),
                    expected: format!("revision {} runs again", b.old_revision),
                    shows: format!(
                        "no container named {name}: its retained container {} is gone, and so is its image {image} ({}), which was only local (no registry digest to pull it back by)",
                        b.retained_name,
                        short_id(&old.image_id)
                    ),
                    fix: format!(
                        "build or pull {image} on {} again, then run `agentctl undo {name} --to-revision {}`",
                        self.runtime.endpoint(),
                        b.old_revision
                    ),
                });
            };
            let pinned = image.with_digest(digest);
            self.reporter.report(&Event::Step {
                step: "restore-image",
                detail: format!(
                    "the image of revision {} is gone from the engine: pulling {pinned}",
                    b.old_revision
                ),
            });
            let reporter = self.reporter.clone();
            let pulled = self
                .runtime
                .pull_image(&pinned, &move |p| reporter.report(&Event::Pull(p)))
                .await
                .map_err(|e| StepFailed::at("restore-image", name)(e).reverting(name, reason))?;
            // The container is created with the reference it had; a tag that now names another image is
            // left alone (the reference by digest is used instead).
            if image.digest().is_none() && self.runtime.inspect_image(&image.pull_ref()).await.is_err() {
                self.runtime
                    .tag_image(&pulled.id, &image)
                    .await
                    .map_err(|e| StepFailed::at("restore-image", name)(e).reverting(name, reason))?;
            }
        }
        let mut spec = named(&old.spec, name)?;
        if let Ok(local) = self.runtime.inspect_image(&image.pull_ref()).await {
            if local.id != old.image_id {
                if let Some(d) = self
                    .runtime
                    .inspect_image(&old.image_id)
                    .await
                    .ok()
                    .and_then(|i| i.digest_for(&image))
                {
                    spec.image = image.with_digest(d);
                }
            }
        }
        self.reporter.report(&Event::Step {
            step: "recreate-old",
            detail: format!(
                "{} is gone: creating {name} again from revision {}'s configuration",
                b.retained_name, b.old_revision
            ),
        });
        let gone = self.gone_volumes(&spec).await;
        if let Some(g) = &gone {
            self.reporter.report(&Event::Step {
                step: "recreate-old",
                detail: g.clone(),
            });
        }
        let id = self
            .runtime
            .create_container(&spec)
            .await
            .map_err(|e| StepFailed::at("recreate-old", name)(e).reverting(name, reason))?;
        if b.old_running {
            self.runtime
                .start_container(name)
                .await
                .map_err(|e| StepFailed::at("recreate-old", name)(e).reverting(name, reason))?;
        }
        Ok((id, gone))
    }

    /// What creating `spec` will do to the volumes it mounts that the engine no longer has (a `docker volume
    /// prune` after its containers were removed): the engine creates them anew, empty, and the data they held
    /// is not there. `None` when every volume is there (or the runtime cannot tell).
    pub(crate) async fn gone_volumes(&self, spec: &ContainerSpec) -> Option<String> {
        let mut gone = Vec::new();
        for m in &spec.mounts {
            if let agent_core::MountKind::Volume { name, anonymous } = &m.kind {
                if let Ok(Some(false)) = self.runtime.volume_exists(name).await {
                    let what = if *anonymous {
                        format!("anonymous volume {}", short_id(name))
                    } else {
                        format!("volume {name}")
                    };
                    gone.push(format!("its {what} at {} was gone (pruned)", m.target));
                }
            }
        }
        (!gone.is_empty()).then(|| {
            let (was, it) = if gone.len() == 1 {
                ("was", "it")
            } else {
                ("were", "they")
            };
            format!(
                "{} and {was} created empty: the data {it} held is not there",
                gone.join(", ")
            )
        })
    }

    /// Carries out one step of `op`'s plan.
    async fn act(&self, op: &Operation, act: &Act) -> Result<(), Error> {
        let b = &op.begin;
        let (name, retained) = (b.container.as_str(), b.retained_name.as_str());
        let step = act.step().name();
        let report = |detail: String| self.reporter.report(&Event::Step { step, detail });
        match act {
            Act::StopOld => {
                report(format!("stopping {name}"));
                self.runtime
                    .stop_container(name, op.stop_timeout)
                    .await
                    .map_err(StepFailed::at(step, name))?;
            }
            Act::RenameOld => {
                report(format!("{name} -> {retained}"));
                self.runtime
                    .rename_container(name, retained)
                    .await
                    .map_err(StepFailed::at(step, name))?;
            }
            Act::DisableRestart => self
                .runtime
                .set_restart_policy(retained, RestartPolicy::No)
                .await
                .map_err(StepFailed::at(step, retained))?,
            Act::CreateNew { target, .. } => match &op.source {
                Source::Create(spec) => {
                    let spec = named(spec, target)?;
                    let suffix = match b.kind {
                        OpKind::Stage => format!(" beside {name}"),
                        OpKind::Install => " (it did not exist)".to_owned(),
                        OpKind::Restore => {
                            format!(" ({name} did not exist: brought back from its recorded configuration)")
                        }
                        _ => String::new(),
                    };
                    report(format!("creating {target} from {}{suffix}", spec.image));
                    self.runtime
                        .create_container(&spec)
                        .await
                        .map_err(StepFailed::at(step, target))?;
                }
                Source::Existing { name: from, restart } => {
                    let verified = if restart.is_none() {
                        " (already running and verified)"
                    } else {
                        ""
                    };
                    report(format!("{from} -> {target}{verified}"));
                    self.runtime
                        .rename_container(from, target)
                        .await
                        .map_err(StepFailed::at(step, from))?;
                    if let Some(policy) = restart {
                        self.runtime
                            .set_restart_policy(target, *policy)
                            .await
                            .map_err(StepFailed::at(step, target))?;
                    }
                }
            },
            Act::StartNew { target } => {
                report(format!("starting {target}"));
                self.runtime
                    .start_container(target)
                    .await
                    .map_err(StepFailed::at(step, target))?;
            }
        }
        Ok(())
    }

    /// Runs `inverses` for the operation `b` began, from whatever state the engine is in. Idempotent.
    pub(crate) async fn invert(&self, b: &Begin, inverses: &[Inverse]) -> Result<(), StepFailed> {
        let name = b.container.as_str();
        let id_of = |c: String, step: &'static str| async move {
            match self.runtime.inspect_container(&c).await {
                Ok(info) => Ok(Some(info)),
                Err(RuntimeError::ContainerNotFound { .. }) => Ok(None),
                Err(e) => Err(StepFailed::at(step, &c)(e)),
            }
        };
        for inverse in inverses {
            let step = inverse.name();
            match inverse {
                Inverse::StopNew { target } => {
                    if let Some(info) = id_of(target.clone(), step).await? {
                        if info.id != b.old_id && info.state.is_running() {
                            self.runtime
                                .stop_container(target, Some(Duration::from_secs(10)))
                                .await
                                .map_err(StepFailed::at(step, target))?;
                        }
                    }
                }
                Inverse::TakeAway { target, back_to } => {
                    let Some(info) = id_of(target.clone(), step).await? else {
                        continue;
                    };
                    if info.id == b.old_id {
                        continue;
                    }
                    self.runtime
                        .stop_container(target, Some(Duration::from_secs(10)))
                        .await
                        .map_err(StepFailed::at(step, target))?;
                    match back_to {
                        None => self
                            .runtime
                            .remove_container(target)
                            .await
                            .map_err(StepFailed::at(step, target))?,
                        Some(from) => {
                            self.runtime
                                .rename_container(target, from)
                                .await
                                .map_err(StepFailed::at(step, target))?;
                            // A retained revision goes back to being retained: never restarted by the daemon.
                            // A preview keeps its policy for its promotion.
                            if b.kind != OpKind::Promote {
                                self.runtime
                                    .set_restart_policy(from, RestartPolicy::No)
                                    .await
                                    .map_err(StepFailed::at(step, from))?;
                            }
                        }
                    }
                }
                Inverse::RestoreRestart => {
                    for c in [&b.retained_name, &b.container] {
                        if id_of(c.clone(), step).await?.is_some_and(|i| i.id == b.old_id) {
                            self.runtime
                                .set_restart_policy(c, b.old_restart)
                                .await
                                .map_err(StepFailed::at(step, c))?;
                            break;
                        }
                    }
                }
                Inverse::RenameBack => {
                    if id_of(b.retained_name.clone(), step)
                        .await?
                        .is_some_and(|i| i.id == b.old_id)
                    {
                        self.runtime
                            .rename_container(&b.retained_name, name)
                            .await
                            .map_err(StepFailed::at(step, &b.retained_name))?;
                    }
                }
                Inverse::RestartOld => {
                    let old = id_of(name.to_owned(), step).await?.filter(|i| i.id == b.old_id);
                    if let Some(info) = old {
                        if b.old_running && !info.state.is_running() {
                            self.runtime
                                .start_container(name)
                                .await
                                .map_err(StepFailed::at(step, name))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The container an interrupted operation `b` replaced, as its revision recorded it, for recovery to
    /// recreate when its retained container is gone: the stored spec with its secret values taken from the
    /// new container (which the update gave the same ones), while that still exists. `None` when nothing
    /// was replaced or the revision is not recorded.
    async fn recorded_old(&self, b: &Begin) -> Result<Option<OldContainer>, Error> {
        if !b.kind.replaces() {
            return Ok(None);
        }
        let Some(revision) = self
            .store
            .revisions(&self.subject(&b.container))
            .await?
            .into_iter()
            .find(|r| r.number.get() == b.old_revision)
        else {
            return Ok(None);
        };
        let mut spec = revision.spec.clone();
        if let Ok(new) = self.runtime.inspect_container(b.target()).await {
            if new.id != b.old_id {
                spec.restore_secrets(&new.spec);
            }
        }
        Ok(revision.image_id.map(|image_id| OldContainer { spec, image_id }))
    }

    /// Records what a committed operation leaves: the new revision's outcome (unverified when `unverified`
    /// says why), the old container as retained, the revision brought back as running, no preview after a
    /// promotion, and the history pruned to `prune_to` when given. The same for a live operation and for
    /// recovery. Returns the new revision.
    pub(crate) async fn commit_records(
        &self,
        b: &Begin,
        unverified: Option<&str>,
        prune_to: Option<usize>,
    ) -> Result<Option<Revision>, Error> {
        let name = b.container.as_str();
        let subject = self.subject(name);
        let container = container_name(name)?;
        let history = self.history(&container, usize::MAX).await?;
        let mut new = RevisionNumber::new(b.new_revision).and_then(|n| history.get(n).cloned());
        if let Some(r) = &mut new {
            if r.outcome == Outcome::InProgress {
                r.outcome = match unverified {
                    Some(reason) => Outcome::Unverified {
                        reason: reason.to_owned(),
                    },
                    None => Outcome::Succeeded,
                };
                r.finished_at = Some(OffsetDateTime::now_utc());
            }
            if b.kind == OpKind::Install {
                // Nothing ran before, so there is no configuration to be faithful to: record what the engine
                // made of the template (its log and network defaults included) as the revision's spec.
                if let Ok(info) = self.runtime.inspect_container(name).await {
                    r.spec = info.spec;
                }
            }
            self.store.put_revision(&subject, r).await?;
        }
        if b.kind.replaces() || b.kind == OpKind::Restore {
            for mut r in history.revisions().iter().cloned() {
                let was = (r.retained_container.clone(), r.retained_container_id.clone());
                if b.kind.replaces() && RevisionNumber::new(b.old_revision) == Some(r.number) {
                    // The container that ran before is now retained.
                    r.retained_container = Some(b.retained_name.clone());
                    r.retained_container_id = Some(b.old_id.clone());
                } else if b.from_retained.is_some() && r.retained_container == b.from_retained {
                    // The revision brought back runs: it no longer has a retained container.
                    r.retained_container = None;
                    r.retained_container_id = None;
                }
                if (r.retained_container.clone(), r.retained_container_id.clone()) != was {
                    self.store.put_revision(&subject, &r).await?;
                }
            }
        }
        if b.kind == OpKind::Promote {
            self.set_preview(name, None).await?;
        }
        if let Some(limit) = prune_to {
            let mut history = self.history(&container, limit).await?;
            self.prune(&subject, &mut history).await?;
        }
        Ok(new)
    }

    /// Records a reverted operation's revision (when it made one) as rolled back for `reason`. Returns it.
    pub(crate) async fn revert_records(&self, b: &Begin, reason: String) -> Result<Option<Revision>, Error> {
        let Some(n) = RevisionNumber::new(b.new_revision) else {
            return Ok(None);
        };
        let subject = self.subject(&b.container);
        let Some(mut r) = self
            .store
            .revisions(&subject)
            .await?
            .into_iter()
            .find(|r| r.number == n)
        else {
            return Ok(None);
        };
        r.outcome = Outcome::RolledBack { reason };
        r.finished_at = Some(OffsetDateTime::now_utc());
        self.store.put_revision(&subject, &r).await?;
        Ok(Some(r))
    }

    /// Records an executed update, undo or promotion, ends its journal and reports it.
    pub(crate) async fn settle(
        &self,
        op: &Operation,
        ex: Executed,
        req: &UpdateRequest,
        revision: Revision,
        lease: &LeaseGuard,
    ) -> Result<UpdateReport, Error> {
        let b = &op.begin;
        let recorded = match &ex.decision {
            Decision::Commit { unverified } => {
                self.commit_records(b, unverified.as_deref(), Some(req.history_limit))
                    .await?
            }
            Decision::Revert { reason } => {
                let reason = match b.kind {
                    OpKind::Install => format!("the new container was removed again: {reason}"),
                    OpKind::Restore => format!("{} was taken away again: {reason}", b.container),
                    _ => reason.clone(),
                };
                self.revert_records(b, reason).await?
            }
        };
        // The engine's copy of the history, before the journal closes: a runner with another store reads
        // the decision from it (the new revision recorded as succeeded) if this process dies now.
        if let Some(lock) = lease.engine_lock() {
            if let Err(e) = lock
                .save_history(self.store.as_ref(), &self.subject(&b.container))
                .await
            {
                self.reporter.report(&Event::Step {
                    step: "engine-history",
                    detail: format!(
                        "the copy of the history on the engine was not updated ({e}); the state store has it"
                    ),
                });
            }
        }
        let outcome = match ex.status() {
            UpdateStatus::RolledBack => "rolled-back",
            _ if b.kind == OpKind::Install => "installed",
            _ => "succeeded",
        };
        ex.close(self.runtime.endpoint(), b, outcome, recorded.unwrap_or(revision))
            .await
    }

    /// Repairs the interrupted operations on `name`: each one's plan is rebuilt from its journaled begin
    /// facts; a committed one is finished (its records), any other is reverted by the inverses of the steps
    /// it reached. Then a start-first preview left between its verification and its switch is discarded.
    pub(crate) async fn recover_locked(&self, name: &str) -> Result<Vec<Recovery>, Error> {
        let subject = self.subject(name);
        let mut out = Vec::new();
        for op in self.store.open_operations(&subject).await? {
            let entries = self.store.journal(&op).await?;
            let steps: Vec<Step> = entries
                .iter()
                .filter_map(|e| serde_json::from_value(e.record.clone()).ok())
                .collect();
            let last = steps.last().map(|s| s.name()).unwrap_or("none").to_owned();
            let Some(Step::Begin(begin)) = steps.first().cloned() else {
                self.store.close_operation(&op).await?;
                continue;
            };
            let committed = steps.iter().find_map(|s| match s {
                Step::Commit { unverified } => Some(unverified.clone()),
                _ => None,
            });
            // A stage is finished only when its preview was recorded; otherwise the preview goes.
            let completes = match (&committed, begin.kind) {
                (Some(_), OpKind::Stage) => {
                    let staged = self.preview(name).await?;
                    match (staged, self.runtime.inspect_container(&begin.retained_name).await) {
                        (Some(p), Ok(info)) => p.container_id == info.id,
                        _ => false,
                    }
                }
                (c, _) => c.is_some(),
            };
            let action = if completes {
                let unverified = committed.flatten();
                self.commit_records(&begin, unverified.as_deref(), None).await?;
                RecoveryAction::Completed
            } else {
                let why = format!("repairing an operation interrupted at {last}");
                let old = self.recorded_old(&begin).await?;
                self.invert(&begin, &inverses(&begin.plan(), &steps))
                    .await
                    .map_err(|e| e.reverting(begin.target(), &why))?;
                if let Some(note) = self.ensure_restored(&begin, old.as_ref(), &why).await? {
                    self.reporter.report(&Event::Step {
                        step: "recreate-old",
                        detail: format!("{name}: revision {} {note}", begin.old_revision),
                    });
                }
                let reason = match begin.kind {
                    OpKind::Install => format!("install interrupted at step {last}; removed by the next command"),
                    _ => format!("interrupted at step {last}; reverted by the next command"),
                };
                self.revert_records(&begin, reason).await?;
                RecoveryAction::Reverted
            };
            self.store.close_operation(&op).await?;
            let rec = Recovery {
                operation: op.clone(),
                interrupted_at: last,
                action,
            };
            self.reporter.report(&Event::Recovered(rec.clone()));
            out.push(rec);
        }
        // A start-first update killed between its verified preview and the switch: the preview goes, so
        // that one instance runs (a blue-green preview waits for its promotion instead).
        if let Some(p) = self.preview(name).await? {
            if p.switch_at_once && self.discard_locked(name).await? {
                let rec = Recovery {
                    operation: format!("start-first preview {}", p.container),
                    interrupted_at: "staged".into(),
                    action: RecoveryAction::Reverted,
                };
                self.reporter.report(&Event::Recovered(rec.clone()));
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// `spec` under the name `name`.
fn named(spec: &ContainerSpec, name: &str) -> Result<ContainerSpec, Error> {
    let mut spec = spec.clone();
    spec.name = container_name(name)?;
    Ok(spec)
}

/// `name` as a container name (it came from one).
pub(crate) fn container_name(name: &str) -> Result<ContainerName, Error> {
    name.parse()
        .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
            what: "container".into(),
            message: e.to_string(),
        })
}
