//! Operators' requests to a rollout that another process is running: `rollout abort`, `promote` and `pause`
//! from any process, taken by the running `apply` through the store.
//!
//! The process that runs a rollout holds its lease, so another process cannot act on it directly. It writes
//! its request into the store (one document per rollout) and waits; the running process looks for requests
//! at every step boundary and, while it waits (a timed pause, an analysis), every [`POLL`], takes the request
//! (the document is cleared, which tells the requester) and acts on it: an abort reverts at once, a
//! promotion ends the wait, a pause stops the rollout where it stands. While it waits it also reads the
//! weights back from the load balancer every health period and puts back any that were changed behind its
//! back (Argo Rollouts' `VerifyWeight`).

use std::future::Future;
use std::time::Duration;

use agent_core::Input;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::route::Routing;
use super::state::{AuditEntry, RolloutState};
use super::{transition, Fleet, PAUSE_KIND};
use crate::error::Error;
use crate::events::FleetEvent;

/// The store document kind of requests to running rollouts, by rollout name.
pub(super) const REQUEST_KIND: &str = "rollout-request";

/// How often a waiting rollout looks for requests.
pub(super) const POLL: Duration = Duration::from_millis(200);

/// What an operator asks of a running rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub(super) enum Ask {
    /// Revert every target it touched.
    Abort {
        /// Why.
        reason: String,
    },
    /// End the pause (or skip the analysis) it waits in.
    Promote,
    /// Stop where it stands until promoted.
    Pause {
        /// Why.
        reason: String,
    },
}

/// A request as stored: what, by whom, when, and an id the requester recognises it by.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Request {
    pub id: String,
    #[serde(flatten)]
    pub ask: Ask,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// How a wait ended.
pub(super) enum Waited<T> {
    /// The work finished.
    Done(T),
    /// An operator's request came first.
    Asked(Request),
}

impl Fleet {
    /// The request waiting for the rollout `name`, taken (cleared in the store); a pause asked for the way an
    /// earlier agentctl asked is one too.
    pub(super) async fn take_request(&self, name: &str) -> Result<Option<Request>, Error> {
        if let Some(v) = self.store.document(REQUEST_KIND, name).await?.filter(|v| !v.is_null()) {
            self.store
                .put_document(REQUEST_KIND, name, &serde_json::Value::Null)
                .await?;
            return Ok(serde_json::from_value(v).ok());
        }
        if let Some(v) = self.store.document(PAUSE_KIND, name).await?.filter(|v| !v.is_null()) {
            self.store
                .put_document(PAUSE_KIND, name, &serde_json::Value::Null)
                .await?;
            return Ok(Some(Request {
                id: String::new(),
                ask: Ask::Pause {
                    reason: v["reason"].as_str().unwrap_or("paused by the operator").to_owned(),
                },
                by: v["by"].as_str().unwrap_or_default().to_owned(),
                at: OffsetDateTime::now_utc(),
            }));
        }
        Ok(None)
    }

    /// Runs `work` while looking for operators' requests every [`POLL`] and, with traffic, reading the
    /// weights back every health period: the first request ends the wait (the work is dropped).
    pub(super) async fn wait_for<T>(
        &self,
        state: &mut RolloutState,
        work: impl Future<Output = T>,
    ) -> Result<Waited<T>, Error> {
        tokio::pin!(work);
        let name = state.spec.name.to_string();
        let period = state.spec.health.period.max(POLL);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut weights_read = tokio::time::Instant::now();
        loop {
            tokio::select! {
                out = &mut work => return Ok(Waited::Done(out)),
                _ = tick.tick() => {
                    if let Some(r) = self.take_request(&name).await? {
                        return Ok(Waited::Asked(r));
                    }
                    if state.traffic.is_some() && weights_read.elapsed() >= period {
                        self.keep_weights(state).await?;
                        weights_read = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Reads the load balancer's weights back and, where one differs from what the rollout set (changed by
    /// hand or by another tool, or a server gone after a reload), sets them again, saying so.
    async fn keep_weights(&self, state: &mut RolloutState) -> Result<(), Error> {
        let Some(traffic) = state.traffic.clone() else {
            return Ok(());
        };
        let Some(found) = self.weights_differ(state).await? else {
            return Ok(());
        };
        self.emit(FleetEvent::TrafficCorrected {
            rollout: state.spec.name.to_string(),
            found: found.clone(),
            weight: traffic.weight,
        });
        state.record(format!("traffic: {found}; set back to {} %", traffic.weight));
        self.route(state, Routing::Share(traffic.weight)).await
    }

    /// Acts on `request` taken while the rollout stood at its current step: records who asked, then reverts
    /// (abort) or pauses. Returns `true` when the rollout stopped (the caller returns), `false` for a
    /// promotion (the caller goes on past the wait).
    pub(super) async fn act_on(
        &self,
        state: &mut RolloutState,
        request: Request,
        waiting: bool,
    ) -> Result<bool, Error> {
        let by = if request.by.is_empty() {
            crate::actor()
        } else {
            request.by.clone()
        };
        let mut record = |action: String| {
            state.audit.push(AuditEntry {
                at: OffsetDateTime::now_utc(),
                by: by.clone(),
                action,
            })
        };
        match request.ask {
            Ask::Abort { reason } => {
                record(format!("abort: {reason} (taken by the running apply)"));
                transition(state, Input::Abort { reason: reason.clone() })?;
                self.rollback(state, reason).await?;
                Ok(true)
            }
            Ask::Pause { reason } => {
                record(format!("pause: {reason} (taken by the running apply)"));
                // A timed pause asked to stop is over: a promotion continues after it.
                if waiting {
                    state.next_step += 1;
                }
                self.pause_state(state, format!("paused: {reason}")).await?;
                Ok(true)
            }
            Ask::Promote => {
                record(if waiting {
                    "promote: ended the wait (taken by the running apply)".into()
                } else {
                    "promote: the rollout was not waiting; nothing to do".into()
                });
                self.save(state).await?;
                Ok(false)
            }
        }
    }

    /// Stores `ask` for the process that runs the rollout `name`; returns the request's id.
    pub(super) async fn request(&self, name: &str, ask: Ask) -> Result<String, Error> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let request = Request {
            id: id.clone(),
            ask,
            by: crate::actor(),
            at: OffsetDateTime::now_utc(),
        };
        let value = serde_json::to_value(&request).map_err(|e| Error::InvalidInput {
            what: "rollout request".into(),
            message: e.to_string(),
        })?;
        self.store.put_document(REQUEST_KIND, name, &value).await?;
        Ok(id)
    }

    /// Hands `ask` (an abort or a promotion) to the process that runs the rollout `name` and waits for it to
    /// take the request, or for that process to end (then the request is withdrawn and carried out here,
    /// under the rollout's lease). An abort is then followed to its end, taking the rollout over if that
    /// process dies meanwhile. Returns the rollout's state.
    pub(super) async fn hand_over(&self, name: &str, ask: Ask) -> Result<RolloutState, Error> {
        let id = self.request(name, ask.clone()).await?;
        let purpose = match &ask {
            Ask::Abort { .. } => "abort",
            _ => "promote",
        };
        loop {
            let pending = self.store.document(REQUEST_KIND, name).await?;
            if !pending.as_ref().is_some_and(|v| v["id"] == id.as_str()) {
                break;
            }
            match self.lease(name, purpose).await {
                Ok(lease) => {
                    // The process that ran it ended before taking the request: carry it out here.
                    self.store
                        .put_document(REQUEST_KIND, name, &serde_json::Value::Null)
                        .await?;
                    let result = match &ask {
                        Ask::Abort { reason } => self.abort_locked(name, reason).await,
                        _ => self.promote_locked(name).await,
                    };
                    lease.release().await?;
                    return result;
                }
                Err(Error::Busy { .. }) => tokio::time::sleep(POLL / 2).await,
                Err(e) => return Err(e),
            }
        }
        if !matches!(ask, Ask::Abort { .. }) {
            return self.existing(name).await;
        }
        // The abort was taken: follow the rollback to its end.
        loop {
            let state = self.existing(name).await?;
            if state.phase().is_terminal() {
                return Ok(state);
            }
            match self.lease(name, "abort").await {
                // The running process is gone: finish what it left.
                Ok(lease) => {
                    let result = self.abort_locked(name, "aborted by the operator").await;
                    lease.release().await?;
                    return result;
                }
                Err(Error::Busy { .. }) => tokio::time::sleep(POLL).await,
                Err(e) => return Err(e),
            }
        }
    }
}
