//! The engine and store work the single-target operations share: images, adoption, backups, verification,
//! faithfulness, pruning, previews and the probation watch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_core::{
    ContainerInfo, ContainerSpec, ImageDefaults, ImageInfo, ImageRef, MountKind, Outcome, Revision, RevisionHistory,
    RevisionNumber, RuntimeError, SpecDiff, Version,
};
use agent_health::{AlertRule, Probation, ProbationOutcome, ProbeContext, Verdict};
use backon::{ExponentialBuilder, Retryable};
use time::OffsetDateTime;

use crate::error::{Error, StepFailed};
use crate::events::Event;
use crate::executor::RevisionMeta;
use crate::lease::LeaseGuard;
use crate::report::{Preview, UpdateReport, UpdateStatus, PREVIEW_KIND};
use crate::request::{PullPolicy, UndoRequest, UpdateRequest, WatchConfig};
use crate::updater::Updater;

impl Updater {
    /// What the probes of container `name` (as `info` shows it) are given: its start, its restart count, the
    /// version it must report and its id.
    fn probe_context(&self, name: &str, info: &ContainerInfo, expected: Option<Version>) -> ProbeContext {
        ProbeContext {
            runtime: self.runtime.clone(),
            container: name.to_owned(),
            started_at: info.state.started_at.unwrap_or_else(OffsetDateTime::now_utc) - Duration::from_secs(1),
            baseline_restarts: info.state.restart_count,
            expected_version: expected.map(|v| v.to_string()),
            container_id: Some(info.id.clone()),
        }
    }

    /// The image, pulled as the policy says, checked to be for the engine's platform.
    pub(crate) async fn resolve_for_engine(&self, image: &ImageRef, req: &UpdateRequest) -> Result<ImageInfo, Error> {
        let engine = self
            .runtime
            .engine_info()
            .await
            .map_err(|source| Error::EngineInfo { source })?;
        let info = self.resolve_image(image, req.pull).await?;
        if info.os != engine.os || info.arch != engine.arch {
            return Err(Error::PlatformMismatch {
                image: image.to_string(),
                image_platform: format!("{}/{}", info.os, info.arch),
                engine_platform: format!("{}/{}", engine.os, engine.arch),
            });
        }
        Ok(info)
    }

    /// The defaults (env, labels, volumes…) of the image `id`; none when it is gone.
    pub(crate) async fn defaults_of(&self, id: &str) -> ImageDefaults {
        self.runtime
            .inspect_image(id)
            .await
            .map(|i| i.defaults)
            .unwrap_or_default()
    }

    /// The old container is retained under `retained`: a container already there is not ours to touch.
    pub(crate) async fn ensure_retained_name_free(&self, name: &str, retained: &str) -> Result<(), Error> {
        match self.runtime.inspect_container(retained).await {
            Ok(_) => Err(Error::InvalidInput {
                what: format!("the container name {retained}"),
                message: format!(
                    "a container with that name already exists, and agentctl keeps the old {name} there as its rollback target; rename or remove it, then run the command again"
                ),
            }),
            Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
            Err(e) => Err(Error::inspect(retained)(e)),
        }
    }
    /// The staged preview of `container`, if one is waiting.
    pub async fn preview(&self, container: &str) -> Result<Option<Preview>, Error> {
        let doc = self.store.document(PREVIEW_KIND, &self.subject(container)).await?;
        Ok(doc.and_then(|v| serde_json::from_value(v).ok()))
    }

    pub(crate) async fn set_preview(&self, container: &str, preview: Option<&Preview>) -> Result<(), Error> {
        let value = match preview {
            Some(p) => serde_json::to_value(p).map_err(|e| Error::InvalidInput {
                what: "preview record".into(),
                message: e.to_string(),
            })?,
            None => serde_json::Value::Null,
        };
        self.store
            .put_document(PREVIEW_KIND, &self.subject(container), &value)
            .await?;
        Ok(())
    }

    pub(crate) async fn discard_locked(&self, name: &str) -> Result<bool, Error> {
        let Some(preview) = self.preview(name).await? else {
            return Ok(false);
        };
        self.remove_if(&preview.container, |id| id == preview.container_id)
            .await?;
        self.set_preview(name, None).await?;
        self.reporter.report(&Event::Step {
            step: "discard-preview",
            detail: format!("removed {}", preview.container),
        });
        Ok(true)
    }

    /// Stops and removes `container` when it exists and `ours` accepts its id.
    pub(crate) async fn remove_if(&self, container: &str, ours: impl Fn(&str) -> bool) -> Result<(), Error> {
        match self.runtime.inspect_container(container).await {
            Ok(info) if ours(&info.id) => {
                self.runtime
                    .stop_container(container, Some(Duration::from_secs(10)))
                    .await
                    .map_err(StepFailed::at("stop", container))?;
                self.runtime
                    .remove_container(container)
                    .await
                    .map_err(StepFailed::at("remove", container))?;
                Ok(())
            }
            Ok(_) | Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
            Err(e) => Err(Error::inspect(container)(e)),
        }
    }

    /// Watches the new revision; when a rule fires, goes back to the previous revision and records why.
    pub(crate) async fn probation(
        &self,
        lease: &LeaseGuard,
        req: &UpdateRequest,
        watch: &WatchConfig,
        report: &mut UpdateReport,
    ) -> Result<(), Error> {
        let name = req.container.as_str();
        let mut probes = req.verify.probes()?;
        if let Some(f) = &req.extra_probes {
            probes.extend(f());
        }
        let rules: Vec<AlertRule> = probes
            .into_iter()
            .map(|p| AlertRule {
                name: p.name().to_owned(),
                probe: p,
                for_: watch.alert_for,
            })
            .collect();
        self.reporter.report(&Event::Watching {
            container: name.to_owned(),
            window: agent_core::format_duration(watch.window),
            rules: rules.iter().map(|r| r.name.clone()).collect(),
        });
        let expected = Version::of_image(&report.revision.image, &BTreeMap::new());
        let info = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?;
        let ctx = self.probe_context(name, &info, expected);
        let probation = Probation {
            window: watch.window,
            period: watch.period,
            rules,
        };
        let reporter = self.reporter.clone();
        let outcome = probation
            .watch(&ctx, &move |m| reporter.report(&Event::AlertPending(m.to_owned())))
            .await;
        report.probation = Some(outcome.clone());
        let ProbationOutcome::Fired(alert) = outcome else {
            return Ok(());
        };
        let reason = format!(
            "probation: rule {} fired after {} failing: {}",
            alert.rule,
            agent_core::format_duration(alert.pending_for),
            alert.reason
        );
        self.reporter.report(&Event::RollingBack { reason: reason.clone() });
        let mut back = UndoRequest::like(req.container.clone(), req);
        back.to = report.previous;
        back.cause = Some(format!("rollback after {reason}"));
        let undo = self.undo_locked(lease, &back).await?;
        let subject = self.subject(name);
        let mut failed = report.revision.clone();
        failed.outcome = Outcome::RolledBack { reason: reason.clone() };
        self.store.put_revision(&subject, &failed).await?;
        report.revision = failed;
        report.status = UpdateStatus::RolledBack;
        report.reason = Some(reason);
        report.restored_by = Some(undo.revision.number);
        Ok(())
    }

    pub(crate) async fn resolve_image(&self, image: &ImageRef, pull: PullPolicy) -> Result<ImageInfo, Error> {
        let local = match self.runtime.inspect_image(&image.pull_ref()).await {
            Ok(i) => Some(i),
            Err(RuntimeError::ImageNotFound { .. }) => None,
            Err(source) => {
                return Err(Error::ResolveImage {
                    image: image.to_string(),
                    source,
                })
            }
        };
        let must_pull = match pull {
            PullPolicy::Always => true,
            PullPolicy::Never => false,
            PullPolicy::Missing => local.is_none(),
        };
        if !must_pull {
            return local.ok_or_else(|| Error::ResolveImage {
                image: image.to_string(),
                source: RuntimeError::ImageNotFound {
                    image: image.to_string(),
                    message: "it is not on the engine and the pull policy is `never`".into(),
                },
            });
        }
        // A registry hiccup is retried with backoff; a missing image or a refused pull is not.
        let pull = || async {
            let reporter = self.reporter.clone();
            self.runtime
                .pull_image(image, &move |p| reporter.report(&Event::Pull(p)))
                .await
        };
        let info = pull
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(3),
            )
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, RuntimeError::PullFailed { .. } | RuntimeError::Unavailable { .. }))
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "pull failed; retrying"))
            .await
            .map_err(|source| Error::ResolveImage {
                image: image.to_string(),
                source,
            })?;
        self.reporter.report(&Event::Pulled {
            image: image.to_string(),
            digest: info.digest_for(image).map(|d| d.to_string()),
        });
        Ok(info)
    }

    /// Makes sure the running container has a revision (the first time agentctl sees it, it is adopted as
    /// revision 1) and returns the current revision.
    pub(crate) async fn adopt(
        &self,
        name: &str,
        old: &ContainerInfo,
        history: RevisionHistory,
    ) -> Result<Revision, Error> {
        if let Some(cur) = history.current() {
            return Ok(cur.clone());
        }
        let image_info = self.runtime.inspect_image(&old.image_id).await.ok();
        let rev = Revision {
            number: history.next_number(),
            image: old.spec.image.clone(),
            image_id: Some(old.image_id.clone()),
            digest: image_info.as_ref().and_then(|i| i.digest_for(&old.spec.image)),
            spec: old.spec.clone(),
            cause: "adopted: running before agentctl managed it".into(),
            by: None,
            created_at: OffsetDateTime::now_utc(),
            finished_at: Some(OffsetDateTime::now_utc()),
            outcome: Outcome::Succeeded,
            protected: false,
            retained_container: None,
            retained_container_id: None,
        };
        self.store.put_revision(&self.subject(name), &rev).await?;
        Ok(rev)
    }

    pub(crate) async fn backup(
        &self,
        dir: &Path,
        old: &ContainerInfo,
        revision: RevisionNumber,
    ) -> Result<PathBuf, Error> {
        let name = old.spec.name.as_str();
        let target = dir.join(format!(
            "{name}-rev{revision}-{}",
            OffsetDateTime::now_utc().unix_timestamp()
        ));
        let err = |e: std::io::Error| Error::Backup {
            path: target.clone(),
            message: e.to_string(),
        };
        // The owner's only (0700/0600): a config file that was 0600 on the host must not become readable here.
        crate::files::private_dir(dir).map_err(err)?;
        crate::files::private_dir(&target).map_err(err)?;
        let spec = serde_json::to_vec_pretty(&old.spec).unwrap_or_default();
        crate::files::write_private(&target.join("spec.json"), &spec).map_err(err)?;
        let mut files = 0;
        for m in old.spec.mounts.iter().filter(|m| m.carries_data()) {
            let tar = self
                .runtime
                .export_path(name, &m.target)
                .await
                .map_err(|e| Error::Backup {
                    path: target.clone(),
                    message: format!("copying {}:{} out failed: {e}", name, m.target),
                })?;
            let file = target.join(format!("{}.tar", m.target.trim_matches('/').replace('/', "_")));
            crate::files::write_private(&file, &tar).map_err(err)?;
            files += 1;
        }
        self.reporter.report(&Event::BackedUp {
            path: target.display().to_string(),
            mounts: files,
        });
        Ok(target)
    }

    /// Runs the request's health gate (and its extra probes) on the container `name` with id `new_id`.
    pub(crate) async fn verify(
        &self,
        name: &str,
        new_id: &str,
        req: &UpdateRequest,
        meta: &RevisionMeta,
    ) -> Result<Verdict, Error> {
        let mut gate = req.verify.gate()?;
        if let Some(f) = &req.extra_probes {
            for p in f() {
                gate.push(p);
            }
        }
        if !req.hooks.post_update.is_empty() {
            gate.push(Box::new(crate::hooks::PostUpdateProbe::new(&req.hooks)));
        }
        let info = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?;
        let expected = Version::of_image(&meta.image, &meta.new_defaults.labels);
        let mut ctx = self.probe_context(name, &info, expected);
        ctx.container_id = Some(new_id.to_owned());
        self.reporter.report(&Event::Verifying {
            container: name.to_owned(),
            probes: gate.probe_names().iter().map(|s| s.to_string()).collect(),
            timing: gate.timing().to_string(),
        });
        let reporter = self.reporter.clone();
        let verdict = gate.run(&ctx, &move |p| reporter.report(&Event::Waiting(p))).await;
        self.reporter.report(&Event::Verdict(verdict.clone()));
        Ok(verdict)
    }

    /// What differs between the new container and the old one as the engine reports both (the carried
    /// document and the typed view), beyond the image and the images' defaults.
    pub(crate) async fn faithfulness(
        &self,
        name: &str,
        intended: &ContainerSpec,
        old_defaults: &ImageDefaults,
        new_defaults: &ImageDefaults,
    ) -> Result<SpecDiff, Error> {
        let mut actual = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?
            .spec;
        let mut expected = intended.clone();
        expected.strip_image_defaults(old_defaults);
        expected.strip_image_defaults(new_defaults);
        // Created from the typed fields (a template, or a revision recorded before documents were carried):
        // there is no document to compare with, only the typed view.
        if expected.engine.is_none() {
            actual.engine = None;
        }
        // A VOLUME the new image declares where the old container mounted nothing gets a new anonymous
        // volume: the new image's default, like its env.
        for path in &new_defaults.volumes {
            if expected.mounts.iter().any(|m| &m.target == path) {
                continue;
            }
            actual
                .mounts
                .retain(|m| !(m.target == *path && matches!(m.kind, MountKind::Volume { anonymous: true, .. })));
            if let Some(engine) = &mut actual.engine {
                engine.remove_binds_at(path);
            }
        }
        Ok(expected.diff(&actual).ignoring_image())
    }

    pub(crate) async fn prune(&self, subject: &str, history: &mut RevisionHistory) -> Result<(), Error> {
        let dropped = history.prune();
        for rev in dropped {
            if let Some(c) = &rev.retained_container {
                // Only the container recorded as retained is removed; another one under the name is not ours.
                if let (Some(id), Ok(info)) = (&rev.retained_container_id, self.runtime.inspect_container(c).await) {
                    if info.id != *id {
                        tracing::warn!(container = %c, "not removing it: it is not the container retained for this revision");
                        self.store.delete_revision(subject, rev.number).await?;
                        continue;
                    }
                }
                let _ = self.runtime.stop_container(c, Some(Duration::from_secs(5))).await;
                match self.runtime.remove_container(c).await {
                    Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(container = %c, error = %e, "could not remove a pruned retained container")
                    }
                }
            }
            // Remove the image unless a kept revision still needs it (the engine also refuses while in use).
            if let Some(id) = &rev.image_id {
                let needed = history.revisions().iter().any(|r| r.image_id.as_ref() == Some(id));
                if !needed {
                    let _ = self.runtime.remove_image(id).await;
                }
            }
            self.store.delete_revision(subject, rev.number).await?;
            self.reporter.report(&Event::Pruned {
                revision: rev.number.get(),
            });
        }
        Ok(())
    }
}
