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

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The event could not be encoded.
    #[error("could not encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The receiver could not be reached (after the retries).
    #[error("{target} could not be reached: {message}")]
    Unreachable {
        /// The receiver, credentials redacted.
        target: String,
        /// Why.
        message: String,
    },
    /// The receiver answered with an error status.
    #[error("{target} answered HTTP {status}")]
    Refused {
        /// The receiver, credentials redacted.
        target: String,
        /// The status code.
        status: u16,
    },
    /// Any other failure of a custom notifier.
    #[error("{0}")]
    Other(String),
}

/// Receives rollout events.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// A short description for logs (`webhook http://…`).
    fn describe(&self) -> String;

    /// Delivers one event; errors are logged, never propagated to the rollout.
    async fn notify(&self, event: &FleetEvent) -> Result<(), NotifyError>;
}

/// A notification target in a spec: `webhook: URL`, or `webhookFile: PATH` whose first line is the URL. A URL
/// with a password (`http://user:pass@host/…`) is refused in `webhook`, because the spec is stored with the
/// rollout's state; `webhookFile` keeps it out of the state (only the path is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// POST every event as JSON to this URL (`http://IP:PORT/path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Read that URL from this file when the rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_file: Option<std::path::PathBuf>,
}

impl NotifySpec {
    /// The webhook URL, read from `webhookFile` when given; the error says what is wrong and how to fix it.
    pub fn url(&self) -> Result<String, String> {
        match (&self.webhook, &self.webhook_file) {
            (Some(url), None) => {
                if agent_core::has_url_credentials(url) {
                    return Err(format!(
                        "the webhook URL {} holds a password, and the spec is stored with the rollout's state; put the URL in a file readable only by you and name it with `webhookFile:`",
                        agent_core::redact_url_credentials(url)
                    ));
                }
                check_http(url)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("webhookFile {}: {e}", path.display()))?;
                let url = text.lines().next().unwrap_or_default().trim();
                check_http(url).map_err(|e| format!("webhookFile {}: {e}", path.display()))
            }
            _ => Err("give exactly one of `webhook: URL` and `webhookFile: PATH`".into()),
        }
    }
}

fn check_http(url: &str) -> Result<String, String> {
    if url.starts_with("http://") {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "notify webhook {:?} must be an http:// URL",
            agent_core::redact_url_credentials(url)
        ))
    }
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

    async fn notify(&self, event: &FleetEvent) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(event)?;
        let target = agent_core::redact_url_credentials(&self.url);
        let send = || async {
            let r = agent_health::http::request(
                "POST",
                &self.url,
                &[("Content-Type", "application/json")],
                Some(&body),
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| NotifyError::Unreachable {
                target: target.clone(),
                message: agent_core::redact_url_credentials(&e.to_string()),
            })?;
            if (200..300).contains(&r.status) {
                Ok(())
            } else {
                Err(NotifyError::Refused {
                    target: target.clone(),
                    status: r.status,
                })
            }
        };
        send.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(3),
        )
        .sleep(tokio::time::sleep)
        .await
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
