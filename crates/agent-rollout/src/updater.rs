//! The `Updater`: one engine, one store, one reporter; the lease every operation starts with, the names
//! agentctl reserves, and the revision history. The operations are in `update`, `undo` and `executor`.

use std::sync::Arc;

use agent_core::{ContainerName, ContainerRuntime, RevisionHistory, RevisionNumber, StateStore};

use crate::engine_state::{engine_history, EngineLock, HISTORY_RECORD, HISTORY_SUFFIX, JOURNAL_SUFFIX, LOCK_SUFFIX};
use crate::error::Error;
use crate::events::{Event, Reporter};
use crate::lease::{holder_for_this_process, LeaseGuard};

/// Updates, undoes and repairs agent containers on one engine.
pub struct Updater {
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) reporter: Arc<dyn Reporter>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("endpoint", &self.runtime.endpoint())
            .finish_non_exhaustive()
    }
}

/// The store key of a container on an engine.
pub fn subject_key(endpoint: &str, container: &str) -> String {
    format!("container:{endpoint}/{container}")
}

pub(crate) fn retained_name(container: &str, revision: RevisionNumber) -> String {
    format!("{container}.rev{revision}")
}

/// The first 12 digits of an image or container id, without its `sha256:`.
pub(crate) fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// When `name` is one agentctl makes for another container (`NAME.revN`, the retained revision N of NAME, or
/// `NAME.preview`, its engine lock `NAME.agentctl-lock`, its journal `NAME.agentctl-journal`, its history
/// `NAME.agentctl-history.0` and `.1`), that container's name and what the name is.
pub fn reserved_name_owner(name: &str) -> Option<(&str, String)> {
    if let Some(owner) = name.strip_suffix(".preview").filter(|o| !o.is_empty()) {
        return Some((owner, "its staged preview".to_owned()));
    }
    if let Some(owner) = name.strip_suffix(LOCK_SUFFIX).filter(|o| !o.is_empty()) {
        return Some((owner, "its engine lock".to_owned()));
    }
    if let Some(owner) = name.strip_suffix(JOURNAL_SUFFIX).filter(|o| !o.is_empty()) {
        return Some((owner, "the journal of its operation under way".to_owned()));
    }
    if let Some(owner) = [".0", ".1"]
        .iter()
        .find_map(|slot| name.strip_suffix(slot)?.strip_suffix(HISTORY_SUFFIX))
        .filter(|o| !o.is_empty())
    {
        return Some((owner, "its history".to_owned()));
    }
    if name == HISTORY_RECORD {
        return Some(("every agent on the engine", "the history".to_owned()));
    }
    let (owner, number) = name.rsplit_once(".rev")?;
    let valid = !owner.is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| (owner, format!("its retained revision {number}")))
}

impl Updater {
    /// An updater for `runtime`, storing in `store`, reporting to `reporter`.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, store: Arc<dyn StateStore>, reporter: Arc<dyn Reporter>) -> Updater {
        Updater {
            runtime,
            store,
            reporter,
        }
    }

    /// The engine this updater works on, as its runtime names it.
    pub fn endpoint(&self) -> &str {
        self.runtime.endpoint()
    }

    pub(crate) fn subject(&self, container: &str) -> String {
        subject_key(self.runtime.endpoint(), container)
    }

    pub(crate) async fn lease(&self, container: &str, purpose: &str) -> Result<LeaseGuard, Error> {
        // Every operation starts here: none may act on a name agentctl keeps for another container (an
        // update of `NAME.rev1` would start a second instance of NAME beside it).
        if let Some((owner, what)) = reserved_name_owner(container) {
            return Err(Error::InvalidInput {
                what: format!("the container name {container}"),
                message: format!(
                    "it is reserved: agentctl keeps {what} of {owner} under it; act on {owner} instead (`agentctl undo {owner} --to-revision N`, `agentctl history {owner}`)"
                ),
            });
        }
        let holder = holder_for_this_process(&format!("{purpose} {container}"));
        let lease = LeaseGuard::acquire(self.store.clone(), &self.subject(container), &holder).await?;
        // The lock on the engine: every agentctl sees it, whatever its state store.
        match EngineLock::acquire(self.runtime.clone(), &self.store, container, &holder).await {
            Ok(lock) => Ok(lease.with_engine_lock(lock)),
            Err(e) => {
                let _ = lease.release().await;
                Err(e)
            }
        }
    }

    /// The revision history of `container`: the store's, else (a new runner, an empty state directory) the
    /// copy kept on the engine, checked, reported with the record it came from, and then stored.
    pub async fn history(&self, container: &ContainerName, limit: usize) -> Result<RevisionHistory, Error> {
        let subject = self.subject(container.as_str());
        let mut revs = self.store.revisions(&subject).await?;
        if revs.is_empty() {
            if let Some((record, from_engine)) = engine_history(self.runtime.as_ref(), container.as_str()).await? {
                self.reporter.report(&Event::Step {
                    step: "engine-history",
                    detail: format!(
                        "the state store has no history of {container}: {} revision(s) read from the engine record {record}",
                        from_engine.len()
                    ),
                });
                for r in &from_engine {
                    self.store.put_revision(&subject, r).await?;
                }
                revs = from_engine;
            }
        }
        Ok(RevisionHistory::from_revisions(limit, revs))
    }
}

#[cfg(test)]
mod tests {
    use super::reserved_name_owner;

    #[test]
    fn the_names_agentctl_keeps_beside_a_container_are_reserved_and_name_their_owner() {
        for (name, owner) in [
            ("agent.rev3", "agent"),
            ("agent.preview", "agent"),
            ("agent.agentctl-lock", "agent"),
            ("agent.agentctl-journal", "agent"),
            ("agent.agentctl-history.0", "agent"),
            ("my.agent.agentctl-history.1", "my.agent"),
            ("agentctl-history", "every agent on the engine"),
        ] {
            assert_eq!(reserved_name_owner(name).map(|(o, _)| o), Some(owner), "{name}");
        }
        for name in [
            "agent",
            "agent.rev",
            "agent.agentctl-history.2",
            ".agentctl-journal",
            "agent.agentctl-history",
        ] {
            assert!(reserved_name_owner(name).is_none(), "{name}");
        }
    }
}
