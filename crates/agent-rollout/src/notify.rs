//! Notifications of rollout events. [`Notifier`] is an open set; [`Webhook`] posts each event as JSON with
//! retries and backoff. Deliveries run beside the rollout: a receiver that is down or slow never blocks or
//! breaks it (each attempt has a timeout, and at the end the rollout waits for outstanding deliveries at most
//! [`DRAIN_TIMEOUT`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};

use crate::events::FleetEvent;

/// How long the end of a rollout waits for notifications still being delivered.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Receives rollout events.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// A short description for logs (`webhook http://…`).
    fn describe(&self) -> String;

    /// Delivers one event; errors are logged, never propagated to the rollout.
    async fn notify(&self, event: &FleetEvent) -> Result<(), String>;
}

/// A notification target in a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// POST every event as JSON to this URL (`http://IP:PORT/path`).
    pub webhook: String,
}

/// Posts events as JSON; retries three times with exponential backoff; 2 s per attempt.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
}

impl Webhook {
    /// A webhook to `url`.
    pub fn new(url: &str) -> Webhook {
        Webhook { url: url.to_owned() }
    }
}

#[async_trait]
impl Notifier for Webhook {
    fn describe(&self) -> String {
        format!("webhook {}", agent_core::redact_url_credentials(&self.url))
    }

    async fn notify(&self, event: &FleetEvent) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let send = || async {
            let r = agent_health::http::request(
                "POST",
                &self.url,
                &[("Content-Type", "application/json")],
                Some(&body),
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| e.to_string())?;
            if (200..300).contains(&r.status) {
                Ok(())
            } else {
                Err(format!("answered {}", r.status))
            }
        };
        send.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(3),
        )
        .sleep(tokio::time::sleep)
        .await
        .map_err(|e| agent_core::redact_url_credentials(&format!("{}: {e}", self.url)))
    }
}

/// Fans events out to notifiers in background tasks.
#[derive(Default)]
pub(crate) struct Outbox {
    notifiers: Vec<Arc<dyn Notifier>>,
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Outbox {
    pub(crate) fn new(notifiers: Vec<Arc<dyn Notifier>>) -> Outbox {
        Outbox {
            notifiers,
            tasks: Default::default(),
        }
    }

    pub(crate) fn send(&self, event: &FleetEvent) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for n in &self.notifiers {
            let (n, e) = (n.clone(), event.clone());
            tasks.spawn(async move {
                if let Err(err) = n.notify(&e).await {
                    tracing::warn!(notifier = %n.describe(), error = %err, "a notification was not delivered");
                }
            });
        }
    }

    /// Waits for outstanding deliveries, at most [`DRAIN_TIMEOUT`].
    pub(crate) async fn drain(&self) {
        let mut set = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async { while set.join_next().await.is_some() {} }).await;
        set.abort_all();
    }
}
