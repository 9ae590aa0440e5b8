//! Going back: undo to any revision (from its retained container when it is the one recorded, else from its
//! snapshot), and `status`, which repairs interrupted operations and reports drift.

use agent_core::{ContainerName, RuntimeError};

use crate::error::Error;
use crate::events::Event;
use crate::executor::{Check, RevisionMeta, Source};
use crate::lease::LeaseGuard;
use crate::plan::OpKind;
use crate::report::{Recovery, StatusReport, UpdateReport};
use crate::request::UndoRequest;
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
        let history = self.history(container, req.history_limit).await?;
        let old = self
            .runtime
            .inspect_container(name)
            .await
            .map_err(Error::inspect(name))?;
        let current = self.adopt(name, &old, history.clone()).await?;
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
        if target.number == current.number {
            return Err(Error::InvalidInput {
                what: "--to-revision".into(),
                message: format!(
                    "revision {} is the one running now; pick another from `agentctl history {name}`",
                    target.number
                ),
            });
        }
        let old_defaults = self.defaults_of(&old.image_id).await;
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
                Err(_) => false,
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
            let missing = spec.restore_secrets(&old.spec);
            if !missing.is_empty() {
                return Err(Error::SecretsUnknown {
                    container: name.to_owned(),
                    revision: target.number,
                    names: missing,
                });
            }
            let info = self.resolve_image(&target.image, req.pull).await?;
            let faithful_to = Some((spec.clone(), old_defaults));
            (
                Source::Create(Box::new(spec.clone())),
                Some(info.id),
                info.defaults,
                faithful_to,
            )
        };
        let req = undo.to_update(target.image.clone());
        let meta = RevisionMeta {
            image: target.image.clone(),
            image_id,
            digest: target.digest.clone(),
            cause: req
                .cause
                .clone()
                .unwrap_or_else(|| format!("undo to revision {}", target.number)),
            new_defaults,
        };
        let mut report = self
            .replace(
                lease,
                OpKind::Undo,
                &old,
                current.number,
                source,
                spec,
                Check::Gate,
                faithful_to,
                meta,
                &req,
            )
            .await?;
        report.recovered = recovered;
        Ok(report)
    }

    /// Repairs interrupted operations on `container` (if no live process holds it) and reports its state.
    pub async fn status(&self, container: &ContainerName, limit: usize) -> Result<StatusReport, Error> {
        let name = container.as_str();
        let (recovered, in_progress) = match self.lease(name, "status").await {
            Ok(lease) => {
                let r = self.recover_locked(name).await;
                lease.release().await?;
                (r?, None)
            }
            Err(Error::Busy { message }) => (Vec::new(), Some(message)),
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
        Ok(StatusReport {
            drift,
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
