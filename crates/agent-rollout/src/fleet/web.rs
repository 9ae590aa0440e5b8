//! The control center's web actions on rollouts, carried out by a [`Fleet`] on the same store.

use std::sync::Arc;
use std::time::Duration;

use agent_core::{Connector, Phase, StateStore};
use agent_health::web::{RolloutActions, WebAction};

use super::Fleet;
use crate::events::{FleetEvent, Silent};

/// Carries out promote, pause, resume and abort from the control center's web view, each as the signed-in
/// user (their name is the actor of the rollout's audit entries). A promotion or an abort runs on in the
/// background after the answer; its outcome shows in the rollout's state.
pub struct WebActions {
    store: Arc<dyn StateStore>,
    connect: Connector,
}

impl std::fmt::Debug for WebActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebActions").finish_non_exhaustive()
    }
}

impl WebActions {
    /// Actions on the rollouts in `store`, reaching their engines through `connect`.
    pub fn new(store: Arc<dyn StateStore>, connect: Connector) -> WebActions {
        WebActions { store, connect }
    }

    fn fleet(&self) -> Fleet {
        let events: crate::events::FleetReporter = Arc::new(|e: &FleetEvent| {
            if let Ok(line) = serde_json::to_string(e) {
                tracing::info!(event = %line, "web action");
            }
        });
        Fleet::new(self.store.clone(), self.connect.clone(), events, Arc::new(Silent))
    }
}

#[async_trait::async_trait]
impl RolloutActions for WebActions {
    async fn act(&self, rollout: &str, action: WebAction, actor: &str) -> Result<String, String> {
        let fleet = self.fleet();
        let state = fleet
            .state(rollout)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no rollout named {rollout}"))?;
        let phase = state.phase();
        let (name, actor) = (rollout.to_owned(), actor.to_owned());
        if action == WebAction::Pause {
            return crate::as_actor(
                actor.clone(),
                fleet.pause(&name, &format!("paused from the web by {actor}")),
            )
            .await
            .map(|s| format!("pause requested; the rollout is {}", s.phase()))
            .map_err(|e| e.to_string());
        }
        let abort = match action {
            WebAction::Promote | WebAction::Resume if phase == Phase::Paused => false,
            WebAction::Abort if !phase.is_terminal() => true,
            _ => {
                return Err(format!(
                    "the rollout is {phase}; {} needs a {} rollout",
                    action.name(),
                    if action == WebAction::Abort {
                        "running or paused"
                    } else {
                        "paused"
                    }
                ))
            }
        };
        // The work runs on a thread of its own (a rollout's future is driven where it starts, as in the
        // CLI) and outlives the request. A refusal (another process holds the rollout) comes at once.
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A rollout's future is large (the CLI drives it on the main thread's 8 MiB stack): give it as much.
        let spawned = std::thread::Builder::new()
            .name(format!("web {}", action.name()))
            .stack_size(16 * 1024 * 1024)
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot start the {} task: {e}", action.name())));
                        return;
                    }
                };
                let result = runtime.block_on(crate::as_actor(actor.clone(), async {
                    match abort {
                        true => fleet.abort(&name, &format!("aborted from the web by {actor}")).await,
                        false => fleet.promote(&name).await,
                    }
                }));
                if let Err(e) = &result {
                    tracing::warn!(rollout = name, error = %e, "web action failed");
                }
                let _ = tx.send(result.map(|s| s.phase()).map_err(|e| e.to_string()));
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start the {} task: {e}", action.name()));
        }
        match tokio::time::timeout(Duration::from_secs(2), rx).await {
            Ok(Ok(Ok(phase))) => Ok(format!("{}: the rollout is {phase}", action.name())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(format!("the {} task ended without an answer", action.name())),
            Err(_) => Ok(format!("{} under way; this page follows it", action.name())),
        }
    }
}
