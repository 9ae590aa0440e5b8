//! Going back: undo to any revision (from its retained container when it is the one recorded, else from its
//! snapshot), and `status`, which repairs interrupted operations and reports drift.

use agent_core::{ContainerName, ImageInfo, Revision, RevisionHistory, RevisionNumber, RuntimeError};

use crate::engine_state::engine_history;
use crate::error::Error;
use crate::events::Event;
use crate::executor::{Check, RevisionMeta, Source};
use crate::lease::LeaseGuard;
use crate::plan::OpKind;
use crate::report::{Recovery, StatusReport, UpdateReport};
use crate::request::{PullPolicy, UndoRequest};
use crate::updater::{short_id, Updater};

impl Updater {
    /// Goes back to `to` (default: the last known-good revision before the current one), from its retained
    /// container when it still exists, else recreated from its snapshot. Recorded as a new revision.
    pub async fn undo(&self, undo: &UndoRequest) -> Result<UpdateReport, Error> {
        let lease = self.lease(undo.container.as_str(), "undo").await?;
        let result = self.undo_locked(&lease, undo).await;
        lease.release().await?;
        result
    }

    pub(crate) async fn undo_locked(&self, lease: &LeaseGuard, undo: &UndoRequest) -> Result<UpdateReport, Error> {
        let (container, to, req) = (&undo.container, undo.to, undo);
        let name = container.as_str();
        let recovered = self.recover_locked(name).await?;
        // The agent may be gone (removed by mistake): then the revision is brought back under the free name.
        let old = match self.runtime.inspect_container(name).await {
            Ok(info) => Some(info),
            Err(RuntimeError::ContainerNotFound { .. }) => None,
            Err(e) => return Err(Error::inspect(name)(e)),
        };
        let history = self.history(container, req.history_limit).await?;
        let current = match &old {
            Some(old) => self.adopt(name, old, history).await?,
            None => history.current().cloned().ok_or_else(|| Error::NoHistory {
                container: name.to_owned(),
                endpoint: self.runtime.endpoint().to_owned(),
            })?,
        };
        let history = self.history(container, req.history_limit).await?;
        let target = match to {
            Some(n) => history.get(n).cloned().ok_or_else(|| Error::NoSuchRevision {
                container: name.to_owned(),
                revision: n,
                available: history.revisions().iter().map(|r| r.number.get()).collect(),
            })?,
            None => history.last_known_good().cloned().ok_or_else(|| Error::NothingToUndo {
                container: name.to_owned(),
            })?,
        };
        if target.number == current.number && old.is_some() {
            return Err(Error::InvalidInput {
                what: "--to-revision".into(),
                message: format!(
                    "revision {} is the one running now; pick another from `agentctl history {name}`",
                    target.number
                ),
            });
        }
        // The retained container is used only when it is the one recorded (its id, else its image): a
        // container that merely has the name is not the revision, and is not touched.
        let retained_ok = match &target.retained_container {
            Some(r) => match self.runtime.inspect_container(r).await {
                Ok(info) => {
                    let same = match (&target.retained_container_id, &target.image_id) {
                        (Some(id), _) => *id == info.id,
                        (None, Some(image_id)) => *image_id == info.image_id,
                        (None, None) => true,
                    };
                    if !same {
                        self.reporter.report(&Event::Step {
                            step: "retained-mismatch",
                            detail: format!(
                                "{r} is not the container recorded for revision {} (another container has the name); recreating the revision from its snapshot instead and leaving {r} alone",
                                target.number
                            ),
                        });
                    }
                    same
                }
                Err(_) => {
                    self.reporter.report(&Event::Step {
                        step: "retained-gone",
                        detail: format!(
                            "{r}, the container retained for revision {}, is gone (pruned or removed); recreating the revision from its recorded configuration",
                            target.number
                        ),
                    });
                    false
                }
            },
            None => false,
        };
        let mut spec = target.spec.clone();
        spec.name = container.clone();
        let (source, image_id, new_defaults, faithful_to) = if retained_ok {
            let r = target.retained_container.clone().unwrap_or_default();
            let info = self.runtime.inspect_container(&r).await.map_err(Error::inspect(&r))?;
            let defaults = self.defaults_of(&info.image_id).await;
            let source = Source::Existing {
                name: r,
                restart: Some(target.spec.restart_policy),
            };
            (source, Some(info.image_id), defaults, None)
        } else {
            // Secret values are never stored: they come from the running container, or, when the agent was
            // removed, from the newest of its retained containers that is still there.
            let mut missing = match &old {
                Some(old) => spec.restore_secrets(&old.spec),
                None => spec.restore_secrets(&spec.clone()),
            };
            if old.is_none() && !missing.is_empty() {
                for r in history.revisions().iter().rev() {
                    let Some(retained) = &r.retained_container else {
                        continue;
                    };
                    if let Ok(info) = self.runtime.inspect_container(retained).await {
                        missing = spec.restore_secrets(&info.spec);
                        if missing.is_empty() {
                            break;
                        }
                    }
                }
            }
            if !missing.is_empty() {
                return Err(Error::SecretsUnknown {
                    container: name.to_owned(),
                    revision: target.number,
                    names: missing,
                });
            }
            // Said before anything changes: what recreating the revision changes beyond the image.
            if let Some(old) = &old {
                let differs = old.spec.diff(&spec).ignoring_image();
                if !differs.is_empty() {
                    self.reporter.report(&Event::Step {
                        step: "undo-config",
                        detail: format!(
                            "revision {}'s recorded configuration differs from the running container's beyond the image: {differs}",
                            target.number
                        ),
                    });
                }
            }
            let info = self.revision_image(&target, req.pull).await?;
            let old_defaults = match &old {
                Some(old) => self.defaults_of(&old.image_id).await,
                None => info.defaults.clone(),
            };
            let faithful_to = Some((spec.clone(), old_defaults));
            (
                Source::Create(Box::new(spec.clone())),
                Some(info.id),
                info.defaults,
                faithful_to,
            )
        };
        // Recreated from its configuration, it gets new, empty volumes for those that were pruned: said before
        // and in the report, never found out later.
        let gone = match &source {
            Source::Create(spec) => self.gone_volumes(spec).await,
            Source::Existing { .. } => None,
        };
        if let Some(g) = &gone {
            self.reporter.report(&Event::Step {
                step: "volume-gone",
                detail: format!("revision {}: {g}", target.number),
            });
        }
        let req = undo.to_update(target.image.clone());
        let meta = RevisionMeta {
            image: target.image.clone(),
            image_id,
            digest: target.digest.clone(),
            cause: req.cause.clone().unwrap_or_else(|| match &old {
                Some(_) => format!("undo to revision {}", target.number),
                None => format!("undo to revision {} ({name} did not exist)", target.number),
            }),
            new_defaults,
        };
        let mut report = match &old {
            Some(old) => {
                self.replace(
                    lease,
                    OpKind::Undo,
                    old,
                    current.number,
                    source,
                    spec,
                    Check::Gate,
                    faithful_to,
                    meta,
                    &req,
                )
                .await?
            }
            // Nothing holds the name (the agent was removed): the revision comes back under it.
            None => {
                self.appear(
                    lease,
                    OpKind::Restore,
                    current.number.get(),
                    source,
                    spec,
                    faithful_to,
                    meta,
                    &req,
                )
                .await?
            }
        };
        report.recovered = recovered;
        report
            .notes
            .extend(gone.map(|g| format!("revision {}: {g}", target.number)));
        Ok(report)
    }

    /// The image of `revision` on the engine: the local one when its id is still there, else pulled, by the
    /// recorded digest when there is one (a tag may have moved since), then given its tag back.
    async fn revision_image(&self, revision: &Revision, pull: PullPolicy) -> Result<ImageInfo, Error> {
        let local = match &revision.image_id {
            Some(id) => self.runtime.inspect_image(id).await.ok(),
            None => None,
        };
        match (local, &revision.digest) {
            (Some(info), _) if pull != PullPolicy::Always => Ok(info),
            (None, Some(digest)) if revision.image.digest().is_none() => {
                let pinned = revision.image.with_digest(digest.clone());
                let info = self.resolve_image(&pinned, PullPolicy::Always).await?;
                if self.runtime.inspect_image(&revision.image.pull_ref()).await.is_err() {
                    self.runtime
                        .tag_image(&info.id, &revision.image)
                        .await
                        .map_err(|source| Error::ResolveImage {
                            image: revision.image.to_string(),
                            source,
                        })?;
                }
                Ok(info)
            }
            _ => self.resolve_image(&revision.image, pull).await,
        }
    }

    /// Repairs interrupted operations on `container` (if no live process holds it) and reports its state.
    pub async fn status(&self, container: &ContainerName, limit: usize) -> Result<StatusReport, Error> {
        let name = container.as_str();
        // The engine's copy of the history as this command found it (taking the lock writes it again).
        let on_engine = engine_history(self.runtime.as_ref(), name).await;
        let (recovered, in_progress) = match self.lease(name, "status").await {
            Ok(lease) => {
                let r = self.recover_locked(name).await;
                lease.release().await?;
                (r?, None)
            }
            Err(Error::Busy { message }) => (Vec::new(), Some(message)),
            // A lock record that is not agentctl's writing: reported here, never trusted.
            Err(e @ Error::UnreadableRecord { .. }) => (Vec::new(), Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let history = self.history(container, limit).await?;
        let info = match self.runtime.inspect_container(name).await {
            Ok(i) => Some(i),
            Err(RuntimeError::ContainerNotFound { .. }) => None,
            Err(e) => return Err(Error::inspect(name)(e)),
        };
        let revision = history.current().cloned();
        let drift = match (&info, &revision) {
            (Some(i), Some(r)) if r.image_id.as_ref().is_some_and(|id| *id != i.image_id) => Some(format!(
                "the engine runs image {} ({}), but revision {} is {} ({}): the container was changed outside agentctl; `agentctl update {name} --image {}` records what runs, `agentctl undo {name} --to-revision {}` brings the revision back",
                i.spec.image,
                short_id(&i.image_id),
                r.number,
                r.image,
                short_id(r.image_id.as_deref().unwrap_or_default()),
                i.spec.image,
                r.number
            )),
            _ => None,
        };
        let rewritten = in_progress.is_none();
        let findings = self
            .findings(container, &history, info.is_some(), on_engine, rewritten)
            .await;
        Ok(StatusReport {
            drift,
            findings,
            container: name.to_owned(),
            endpoint: self.runtime.endpoint().to_owned(),
            image: info.as_ref().map(|i| i.spec.image.to_string()),
            state: info.as_ref().map(|i| i.state.status),
            health: info
                .as_ref()
                .and_then(|i| i.state.health.as_ref())
                .map(|h| format!("{:?}", h.status).to_lowercase()),
            restart_count: info.as_ref().map(|i| i.state.restart_count),
            revision,
            in_progress,
            recovered,
        })
    }

    /// What the engine shows that the recorded history does not expect, in words with the fix: the container
    /// gone while a revision is recorded, retained containers gone (pruned), and the engine's copy of the
    /// history missing, unreadable or different from the state store's.
    async fn findings(
        &self,
        container: &ContainerName,
        history: &RevisionHistory,
        exists: bool,
        on_engine: Result<Option<(String, Vec<Revision>)>, Error>,
        rewritten: bool,
    ) -> Vec<String> {
        let name = container.as_str();
        let mut out = Vec::new();
        if let (false, Some(r)) = (exists, history.current()) {
            out.push(format!(
                "{name} does not exist on the engine, but revision {} ({}) is recorded as running: it was removed outside agentctl; `agentctl undo {name} --to-revision {}` brings it back",
                r.number,
                r.image.familiar(),
                r.number
            ));
        }
        for (n, retained) in self.retained_gone(history).await {
            out.push(format!(
                "{retained}, the container retained for revision {n}, is gone (pruned or removed); an undo to revision {n} recreates it from its recorded configuration"
            ));
        }
        if !self.runtime.supports_records() || history.revisions().is_empty() {
            return out;
        }
        match on_engine {
            Ok(None) => out.push(format!(
                "the engine kept no copy of {name}'s history (its records {name}.agentctl-history.0 and .1 were gone: `docker container prune` removes them); {}",
                if rewritten {
                    "written again from the state store"
                } else {
                    "the next update or undo writes it again"
                }
            )),
            Ok(Some((record, on_engine))) => {
                let summary = |revs: &mut dyn Iterator<Item = &Revision>| {
                    revs.map(|r| format!("{} {}", r.number, r.outcome.status()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                // The history shown may be cut to the newest revisions; compare those.
                let oldest = history.revisions().iter().map(|r| r.number).min();
                let stored = summary(&mut history.revisions().iter());
                let engine = summary(&mut on_engine.iter().filter(|r| oldest.is_some_and(|o| r.number >= o)));
                if engine != stored {
                    out.push(format!(
                        "the engine's history of {name} (record {record}: {engine}) differs from the state store's ({stored}): another agentctl with another state store changed {name}, or the record was altered; the state store's is used here"
                    ));
                }
            }
            Err(e) => out.push(e.to_string()),
        }
        out
    }

    /// The revisions of `history` whose retained container is gone from the engine: `(revision, name)`.
    pub async fn retained_gone(&self, history: &RevisionHistory) -> Vec<(RevisionNumber, String)> {
        let mut gone = Vec::new();
        for r in history.revisions() {
            let Some(retained) = &r.retained_container else {
                continue;
            };
            if let Err(RuntimeError::ContainerNotFound { .. }) = self.runtime.inspect_container(retained).await {
                gone.push((r.number, retained.clone()));
            }
        }
        gone
    }

    /// Repairs interrupted operations on `container`, taking its lease.
    pub async fn recover(&self, container: &ContainerName) -> Result<Vec<Recovery>, Error> {
        let lease = self.lease(container.as_str(), "recover").await?;
        let r = self.recover_locked(container.as_str()).await;
        lease.release().await?;
        r
    }

    /// Marks revision `n` of `container` as protected (never pruned, its retained container kept) or takes
    /// the mark away. Returns the revision as recorded.
    pub async fn protect(
        &self,
        container: &ContainerName,
        n: agent_core::RevisionNumber,
        protected: bool,
    ) -> Result<agent_core::Revision, Error> {
        let name = container.as_str();
        let lease = self
            .lease(name, if protected { "protect" } else { "unprotect" })
            .await?;
        let result = async {
            let history = self.history(container, usize::MAX).await?;
            let mut r = history.get(n).cloned().ok_or_else(|| Error::NoSuchRevision {
                container: name.to_owned(),
                revision: n,
                available: history.revisions().iter().map(|r| r.number.get()).collect(),
            })?;
            r.protected = protected;
            self.store.put_revision(&self.subject(name), &r).await?;
            Ok(r)
        }
        .await;
        lease.release().await?;
        result
    }
}
