//! The safe in-place update of one agent container, blue-green staging and promotion, install, undo, and
//! recovery after a crash.
//!
//! Each operation checks everything first, then builds an [`Operation`]: its journaled plan (see the `plan`
//! module) and what executing it needs, and hands it to the one executor. The old container is never
//! deleted before its replacement is proven: it is stopped, renamed to `NAME.revN` and its restart policy set
//! to `no` (so a daemon restart never brings back a second instance), then kept as the fast rollback target.

use std::path::PathBuf;

use agent_core::{
    ContainerInfo, ContainerName, ContainerSpec, Digest, EngineConfig, ImageDefaults, Outcome, RestartPolicy, Revision,
    RevisionNumber, RuntimeError, SpecDiff, UpdateMode, Version,
};
use time::OffsetDateTime;

use crate::error::Error;
use crate::events::Event;
use crate::executor::{container_name, Check, OldContainer, Operation, RevisionMeta, Source};
use crate::lease::LeaseGuard;
use crate::plan::{Begin, Decision, OpKind};
use crate::report::{preview_name, Preview, UpdateReport, UpdateStatus};
use crate::request::UpdateRequest;
use crate::updater::{retained_name, Updater};

/// What preflight found: either nothing to do, or everything the replacement needs.
enum Prepared {
    Unchanged(Box<UpdateReport>),
    Ready(Box<Ready>),
}

struct Ready {
    old: ContainerInfo,
    old_defaults: ImageDefaults,
    current: Revision,
    new_spec: ContainerSpec,
    meta: RevisionMeta,
    backup: Option<PathBuf>,
}

impl Updater {
    /// Updates `req.container` to `req.image`: preflight, backup, stop/rename/create/start, verify, and
    /// commit or roll back. Interrupted operations on the container are repaired first.
    pub async fn update(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let lease = self.lease(req.container.as_str(), "update").await?;
        let result = self.update_locked(&lease, req).await;
        lease.release().await?;
        result
    }

    async fn update_locked(&self, lease: &LeaseGuard, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = req.container.as_str();
        let recovered = self.recover_locked(name).await?;
        let ready = match self.prepare(req).await? {
            Prepared::Unchanged(mut report) => {
                report.recovered = recovered;
                return Ok(*report);
            }
            Prepared::Ready(ready) => *ready,
        };
        let backup = ready.backup.clone();
        let mut report = match req.mode {
            UpdateMode::StopFirst => {
                let spec = ready.new_spec.clone();
                let faithful_to = Some((spec.clone(), ready.old_defaults.clone()));
                let source = Source::Create(Box::new(spec.clone()));
                self.replace(
                    lease,
                    OpKind::Update,
                    &ready.old,
                    ready.current.number,
                    source,
                    spec,
                    Check::Gate,
                    faithful_to,
                    ready.meta,
                    req,
                )
                .await?
            }
            UpdateMode::StartFirst | UpdateMode::BlueGreen => match self.stage_ready(lease, &ready, req, true).await? {
                Ok(preview) => self.promote_locked(lease, name, preview, req).await?,
                Err(failed) => failed,
            },
        };
        report.backup = backup;
        report.recovered = recovered;
        if let (Some(watch), UpdateStatus::Updated) = (&req.watch, report.status) {
            self.probation(lease, req, watch, &mut report).await?;
        }
        Ok(report)
    }

    /// Preflight: nothing is changed until every check passed. Then the backup, when asked for.
    async fn prepare(&self, req: &UpdateRequest) -> Result<Prepared, Error> {
        let name = req.container.as_str();
        let old = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?;
        if old.spec.engine.as_ref().is_some_and(EngineConfig::removed_when_stopped) {
            return Err(Error::InvalidInput {
                what: format!("the update of {name}"),
                message: format!(
                    "{name} was started with --rm (HostConfig.AutoRemove): the engine deletes it and its anonymous volumes as soon as it stops, so it cannot be kept for a rollback and nothing was changed; recreate it without --rm (e.g. with --restart unless-stopped), then update it"
                ),
            });
        }
        let current_version = Version::of_image(&old.spec.image, &old.all_labels);
        // The policy first, from the reference alone: a refused tag is never pulled.
        let tag_version = req.image.tag().and_then(|t| Version::parse(t.as_str()));
        req.policy
            .check(&req.image, tag_version.as_ref(), current_version.as_ref())?;
        let image_info = self.resolve_for_engine(&req.image, req).await?;
        let candidate = Version::of_image(&req.image, &image_info.defaults.labels);
        req.policy
            .check(&req.image, candidate.as_ref(), current_version.as_ref())?;
        let digest = image_info
            .digest_for(&req.image)
            .or_else(|| req.image.digest().cloned());
        self.reporter.report(&Event::Preflight {
            container: name.to_owned(),
            from: old.spec.image.to_string(),
            to: req.image.to_string(),
            digest: digest.as_ref().map(Digest::to_string),
        });
        let old_defaults = self.defaults_of(&old.image_id).await;
        let mut new_spec = old.spec.with_image(req.image.clone(), &old_defaults);
        if old.image_id == image_info.id && old.spec.image == req.image {
            return self
                .unchanged(req, &old, "the container already runs this image".into())
                .await;
        }
        new_spec.image = req.image.clone();
        if req.mode != UpdateMode::StopFirst {
            let exclusive = new_spec.exclusive_resources();
            if !exclusive.is_empty() {
                return Err(Error::InvalidInput {
                    what: format!("the start-first update of {name}"),
                    message: format!(
                        "it runs two instances at once, but {name} holds what only one container can: {}; use the stop-first update (the default) for it",
                        exclusive.join(", ")
                    ),
                });
            }
        }

        let reporter = self.reporter.clone();
        let waiting = move |detail: &str| {
            reporter.report(&Event::Step {
                step: "update-lock",
                detail: detail.to_owned(),
            })
        };
        // The agent's lock and its pre-update hook belong right before the change: a paced update waits for
        // its turn first (otherwise it waits in `execute`, after the journal's begin facts).
        if !req.hooks.pre_update.is_empty() || req.hooks.lock_file.is_some() {
            req.admit().await?;
        }
        if let crate::hooks::Before::Skip(reason) =
            crate::hooks::before_update(self.runtime.as_ref(), name, &req.hooks, &waiting).await?
        {
            return self.unchanged(req, &old, reason).await;
        }
        let history = self.history(&req.container, req.history_limit).await?;
        let current = self.adopt(name, &old, history).await?;
        self.ensure_retained_name_free(name, &retained_name(name, current.number))
            .await?;
        let backup = match &req.backup_dir {
            Some(dir) => Some(self.backup(dir, &old, current.number).await?),
            None => None,
        };
        let cause = req
            .cause
            .clone()
            .unwrap_or_else(|| format!("update to {}", req.image.familiar()));
        Ok(Prepared::Ready(Box::new(Ready {
            old,
            old_defaults,
            current,
            new_spec,
            meta: RevisionMeta {
                image: req.image.clone(),
                image_id: Some(image_info.id.clone()),
                digest,
                cause,
                new_defaults: image_info.defaults.clone(),
            },
            backup,
        })))
    }

    /// The report of an update that changes nothing (`reason` says why), adopting the container's revision.
    async fn unchanged(&self, req: &UpdateRequest, old: &ContainerInfo, reason: String) -> Result<Prepared, Error> {
        let name = req.container.as_str();
        let history = self.history(&req.container, req.history_limit).await?;
        let revision = self.adopt(name, old, history).await?;
        Ok(Prepared::Unchanged(Box::new(UpdateReport {
            container: name.to_owned(),
            endpoint: self.runtime.endpoint().to_owned(),
            status: UpdateStatus::Unchanged,
            previous: Some(revision.number),
            revision,
            verdict: None,
            unexpected_changes: SpecDiff::default(),
            reason: Some(reason),
            last_logs: Vec::new(),
            backup: None,
            recovered: Vec::new(),
            probation: None,
            restored_by: None,
            restored: None,
            notes: Vec::new(),
        })))
    }

    /// Creates a target that does not exist yet from `spec` (a rollout's `template`), verifies it like an
    /// update and records it as the container's first revision. A failing one is removed again (status
    /// rolled back): nothing was there before. `previous` is `None` in the report.
    pub async fn install(&self, spec: &ContainerSpec, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = spec.name.as_str();
        let lease = self.lease(name, "install").await?;
        let result = self.install_locked(&lease, spec, req).await;
        lease.release().await?;
        result
    }

    async fn install_locked(
        &self,
        lease: &LeaseGuard,
        spec: &ContainerSpec,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let name = spec.name.as_str();
        let recovered = self.recover_locked(name).await?;
        match self.runtime.inspect_container(name).await {
            Ok(_) => {
                return Err(Error::InvalidInput {
                    what: format!("the install of {name}"),
                    message: "a container with that name exists already; update it instead".into(),
                })
            }
            Err(RuntimeError::ContainerNotFound { .. }) => {}
            Err(e) => return Err(Error::inspect(name)(e)),
        }
        let tag_version = spec.image.tag().and_then(|t| Version::parse(t.as_str()));
        req.policy.check(&spec.image, tag_version.as_ref(), None)?;
        let image_info = self.resolve_for_engine(&spec.image, req).await?;
        let meta = RevisionMeta {
            image: spec.image.clone(),
            image_id: Some(image_info.id.clone()),
            digest: image_info
                .digest_for(&spec.image)
                .or_else(|| spec.image.digest().cloned()),
            cause: req
                .cause
                .clone()
                .unwrap_or_else(|| format!("installed {}", spec.image.familiar())),
            new_defaults: image_info.defaults.clone(),
        };
        let source = Source::Create(Box::new(spec.clone()));
        let mut report = self
            .appear(lease, OpKind::Install, 0, source, spec.clone(), None, meta, req)
            .await?;
        report.recovered = recovered;
        Ok(report)
    }

    /// Puts `source` under its free name (`spec`'s) as a new revision, `kind` an install or a restore
    /// after revision `old_revision` (0: none): the plan built, executed and settled. Nothing ran under the
    /// name before, so nothing is retained (the report's `previous` is `None`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn appear(
        &self,
        lease: &LeaseGuard,
        kind: OpKind,
        old_revision: u64,
        source: Source,
        spec: ContainerSpec,
        faithful_to: Option<(ContainerSpec, ImageDefaults)>,
        meta: RevisionMeta,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let name = spec.name.to_string();
        let history = self.history(&spec.name, req.history_limit).await?;
        let revision = meta.revision(history.next_number(), spec);
        self.store.put_revision(&self.subject(&name), &revision).await?;
        let from_retained = match &source {
            Source::Existing { name, .. } => Some(name.clone()),
            Source::Create(_) => None,
        };
        let op = Operation {
            begin: Begin {
                kind,
                container: name,
                old_id: String::new(),
                old_running: false,
                old_restart: RestartPolicy::No,
                old_revision,
                new_revision: revision.number.get(),
                retained_name: String::new(),
                from_retained,
            },
            source,
            check: Check::Gate,
            faithful_to,
            meta,
            stop_timeout: None,
            notify_started: true,
            old: None,
        };
        let ex = self.execute(&op, req, lease).await?;
        let mut report = self.settle(&op, ex, req, revision, lease).await?;
        report.previous = None;
        Ok(report)
    }

    /// Takes back an [`Updater::install`]: stops and removes the container (nothing was there before) and
    /// records its revision as rolled back with `reason`.
    pub async fn uninstall(&self, container: &ContainerName, reason: &str) -> Result<(), Error> {
        let name = container.as_str();
        let lease = self.lease(name, "uninstall").await?;
        let result = async {
            self.recover_locked(name).await?;
            self.remove_if(name, |_| true).await?;
            let subject = self.subject(name);
            let history = self.history(container, usize::MAX).await?;
            if let Some(mut r) = history.current().cloned() {
                r.outcome = Outcome::RolledBack {
                    reason: reason.to_owned(),
                };
                self.store.put_revision(&subject, &r).await?;
            }
            self.reporter.report(&Event::Step {
                step: "uninstall",
                detail: format!("removed {name}: {reason}"),
            });
            Ok(())
        }
        .await;
        lease.release().await?;
        result
    }

    /// Blue-green, first half: starts the new version beside the untouched old container as `NAME.preview`
    /// and verifies it. Healthy, it keeps running until [`Updater::promote`] (status `staged`); unhealthy, it
    /// is removed and the attempt recorded as rolled back. The old container is not touched either way.
    pub async fn stage(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let lease = self.lease(req.container.as_str(), "stage").await?;
        let result = async {
            let recovered = self.recover_locked(req.container.as_str()).await?;
            let mut req = req.clone();
            req.mode = UpdateMode::BlueGreen;
            let ready = match self.prepare(&req).await? {
                Prepared::Unchanged(report) => return Ok(*report),
                Prepared::Ready(ready) => *ready,
            };
            let history = self.history(&req.container, req.history_limit).await?;
            let mut report = match self.stage_ready(&lease, &ready, &req, false).await? {
                Err(failed) => failed,
                Ok(preview) => UpdateReport {
                    container: req.container.to_string(),
                    endpoint: self.runtime.endpoint().to_owned(),
                    status: UpdateStatus::Staged,
                    revision: Revision {
                        // The number promotion will record; nothing is recorded before.
                        created_at: preview.staged_at,
                        ..ready.meta.revision(history.next_number(), preview.spec.clone())
                    },
                    previous: Some(ready.current.number),
                    reason: (preview.verdict.outcome == agent_health::VerdictOutcome::Inconclusive)
                        .then(|| format!("verification inconclusive: {}", preview.verdict.reason)),
                    verdict: Some(preview.verdict.clone()),
                    unexpected_changes: SpecDiff::default(),
                    last_logs: Vec::new(),
                    backup: None,
                    recovered: Vec::new(),
                    probation: None,
                    restored_by: None,
                    restored: None,
                    notes: Vec::new(),
                },
            };
            report.backup = ready.backup;
            report.recovered = recovered;
            Ok(report)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Blue-green, second half: the staged preview takes the container's name; the old container is stopped
    /// and retained as for any update. Recorded as a new revision.
    pub async fn promote(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = req.container.as_str();
        let lease = self.lease(name, "promote").await?;
        let result = async {
            let recovered = self.recover_locked(name).await?;
            let preview = self.preview(name).await?.ok_or_else(|| Error::InvalidInput {
                what: format!("the promotion of {name}"),
                message: format!("no preview of {name} is staged; stage one first (a blueGreen rollout does)"),
            })?;
            let mut report = self.promote_locked(&lease, name, preview, req).await?;
            report.recovered = recovered;
            Ok(report)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Removes the staged preview of `container`, if any; the running container is not touched. Returns
    /// whether there was one.
    pub async fn discard(&self, container: &ContainerName) -> Result<bool, Error> {
        let name = container.as_str();
        let lease = self.lease(name, "discard").await?;
        let result = async {
            self.recover_locked(name).await?;
            self.discard_locked(name).await
        }
        .await;
        lease.release().await?;
        result
    }

    /// Creates, starts and verifies the preview. `Ok(Err(report))`: it failed and was removed.
    async fn stage_ready(
        &self,
        lease: &LeaseGuard,
        ready: &Ready,
        req: &UpdateRequest,
        switch_at_once: bool,
    ) -> Result<Result<Preview, UpdateReport>, Error> {
        let name = ready.old.spec.name.as_str();
        let preview_name = preview_name(name);
        preview_name.parse::<ContainerName>().map_err(|e| Error::InvalidInput {
            what: format!("the preview name of {name}"),
            message: format!("{e}; shorten the container name to use start-first or blue-green"),
        })?;
        // A preview left by an earlier attempt is replaced; a stranger's container under the name is not.
        if let Ok(info) = self.runtime.inspect_container(&preview_name).await {
            let ours = self.preview(name).await?.is_some_and(|p| p.container_id == info.id);
            if !ours {
                return Err(Error::InvalidInput {
                    what: format!("the container name {preview_name}"),
                    message: format!(
                        "a container with that name exists and is not a preview agentctl staged; rename or remove it so the new version of {name} can start beside the old one"
                    ),
                });
            }
            self.discard_locked(name).await?;
        }
        let op = Operation {
            begin: Begin {
                kind: OpKind::Stage,
                container: name.to_owned(),
                old_id: ready.old.id.clone(),
                old_running: ready.old.state.is_running(),
                old_restart: ready.old.spec.restart_policy,
                old_revision: ready.current.number.get(),
                new_revision: 0,
                retained_name: preview_name.clone(),
                from_retained: None,
            },
            source: Source::Create(Box::new(ready.new_spec.clone())),
            check: Check::Gate,
            faithful_to: Some((ready.new_spec.clone(), ready.old_defaults.clone())),
            meta: ready.meta.clone(),
            stop_timeout: None,
            notify_started: false,
            old: None,
        };
        let ex = self.execute(&op, req, lease).await?;
        if let (Decision::Commit { .. }, Some(verdict), Some(id)) = (&ex.decision, &ex.verdict, &ex.new_id) {
            let preview = Preview {
                container: preview_name,
                container_id: id.clone(),
                image: ready.meta.image.clone(),
                image_id: ready.meta.image_id.clone(),
                digest: ready.meta.digest.clone(),
                cause: ready.meta.cause.clone(),
                spec: ready.new_spec.clone(),
                new_defaults: ready.meta.new_defaults.clone(),
                verdict: verdict.clone(),
                switch_at_once,
                staged_at: OffsetDateTime::now_utc(),
            };
            self.set_preview(name, Some(&preview)).await?;
            ex.journal.close("staged").await?;
            return Ok(Ok(preview));
        }
        // Nothing was recorded for the attempt before: record it now, as rolled back.
        let reason = ex.reason().unwrap_or_default();
        let history = self.history(&req.container, req.history_limit).await?;
        let mut revision = ready.meta.revision(history.next_number(), ready.new_spec.clone());
        revision.outcome = Outcome::RolledBack {
            reason: format!("the preview failed; {name} was not touched: {reason}"),
        };
        revision.finished_at = Some(OffsetDateTime::now_utc());
        self.store.put_revision(&self.subject(name), &revision).await?;
        let report = ex
            .close(self.runtime.endpoint(), &op.begin, "rolled-back", revision)
            .await?;
        Ok(Err(report))
    }

    /// The preview takes the name: the old container is stopped and retained as for any update.
    async fn promote_locked(
        &self,
        lease: &LeaseGuard,
        name: &str,
        preview: Preview,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let gone = || Error::InvalidInput {
            what: format!("the promotion of {name}"),
            message: format!(
                "its preview {} is gone or was replaced; stage it again",
                preview.container
            ),
        };
        let staged = match self.runtime.inspect_container(&preview.container).await {
            Ok(info) if info.id == preview.container_id => info,
            Ok(_) | Err(RuntimeError::ContainerNotFound { .. }) => return Err(gone()),
            Err(e) => return Err(Error::inspect(&preview.container)(e)),
        };
        // The stored preview has its secrets redacted; the running preview has their values.
        let mut spec = preview.spec.clone();
        spec.restore_secrets(&staged.spec);
        let old = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?;
        let old_defaults = self.defaults_of(&old.image_id).await;
        let history = self.history(&container_name(name)?, req.history_limit).await?;
        let current = self.adopt(name, &old, history).await?;
        let source = Source::Existing {
            name: preview.container.clone(),
            restart: None,
        };
        let meta = RevisionMeta {
            image: preview.image.clone(),
            image_id: preview.image_id.clone(),
            digest: preview.digest.clone(),
            cause: preview.cause.clone(),
            new_defaults: preview.new_defaults.clone(),
        };
        let check = Check::Survived(Box::new(preview.verdict.clone()));
        let faithful_to = Some((spec.clone(), old_defaults));
        let report = self
            .replace(
                lease,
                OpKind::Promote,
                &old,
                current.number,
                source,
                spec,
                check,
                faithful_to,
                meta,
                req,
            )
            .await?;
        if report.status == UpdateStatus::RolledBack {
            // It failed after taking the name and was put back: of no further use.
            self.discard_locked(name).await?;
        }
        Ok(report)
    }

    /// The old container gives up the name to the new one (`kind` update, undo or promote): the plan is
    /// built, executed and settled; `spec` is what the new revision records.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn replace(
        &self,
        lease: &LeaseGuard,
        kind: OpKind,
        old: &ContainerInfo,
        old_revision: RevisionNumber,
        source: Source,
        spec: ContainerSpec,
        check: Check,
        faithful_to: Option<(ContainerSpec, ImageDefaults)>,
        meta: RevisionMeta,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let name = old.spec.name.as_str();
        let retained = retained_name(name, old_revision);
        self.ensure_retained_name_free(name, &retained).await?;
        let history = self.history(&old.spec.name, req.history_limit).await?;
        let revision = meta.revision(history.next_number(), spec);
        self.store.put_revision(&self.subject(name), &revision).await?;
        let from_retained = match &source {
            Source::Existing { name, .. } => Some(name.clone()),
            Source::Create(_) => None,
        };
        let op = Operation {
            begin: Begin {
                kind,
                container: name.to_owned(),
                old_id: old.id.clone(),
                old_running: old.state.is_running(),
                old_restart: old.spec.restart_policy,
                old_revision: old_revision.get(),
                new_revision: revision.number.get(),
                retained_name: retained,
                from_retained,
            },
            source,
            check,
            faithful_to,
            meta,
            stop_timeout: old.spec.stop_timeout,
            notify_started: true,
            old: Some(OldContainer::of(old)),
        };
        let ex = self.execute(&op, req, lease).await?;
        self.settle(&op, ex, req, revision, lease).await
    }
}
