//! The heartbeat probe: passes only when the NEW container itself reports the NEW version to the control
//! center, recently. A heartbeat from the old instance, or from the new one reporting an old version, does
//! not count.

use std::sync::Arc;
use std::time::Duration;

use agent_core::format_duration;
use async_trait::async_trait;
use time::OffsetDateTime;

use crate::control_center::{AgentRecord, ControlCenter};
use crate::gate::{Observation, Probe, ProbeContext};
use crate::http;

/// Where heartbeats are read from: a control center in this process or one over HTTP.
#[async_trait]
pub trait HeartbeatSource: Send + Sync {
    /// The agents whose last heartbeat came from `container` (full or short id).
    async fn by_container(&self, container: &str) -> Result<Vec<AgentRecord>, String>;
}

#[async_trait]
impl HeartbeatSource for ControlCenter {
    async fn by_container(&self, container: &str) -> Result<Vec<AgentRecord>, String> {
        Ok(ControlCenter::by_container(self, container))
    }
}

/// A control center reached over HTTP (`http://IP:PORT`) with its bearer token.
#[derive(Clone)]
pub struct RemoteControlCenter {
    url: String,
    token: String,
}

impl std::fmt::Debug for RemoteControlCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never show the token.
        f.debug_struct("RemoteControlCenter")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RemoteControlCenter {
    /// A client for the control center at `url`.
    pub fn new(url: &str, token: &str) -> RemoteControlCenter {
        RemoteControlCenter {
            url: url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
        }
    }
}

#[async_trait]
impl HeartbeatSource for RemoteControlCenter {
    async fn by_container(&self, container: &str) -> Result<Vec<AgentRecord>, String> {
        let url = format!("{}/v1/agents?container={container}", self.url);
        let auth = format!("Bearer {}", self.token);
        let resp = http::request("GET", &url, &[("Authorization", &auth)], None, Duration::from_secs(3))
            .await
            .map_err(|e| format!("control center {}: {e}", self.url))?;
        if resp.status != 200 {
            return Err(format!(
                "control center {} answered {}: {}",
                self.url,
                resp.status,
                resp.body.trim()
            ));
        }
        serde_json::from_str(&resp.body).map_err(|e| format!("control center {}: unreadable answer: {e}", self.url))
    }
}

/// Passes when the container under test sent a heartbeat with the expected version within `max_age`.
#[derive(Clone)]
pub struct HeartbeatProbe {
    source: Arc<dyn HeartbeatSource>,
    max_age: Duration,
}

impl std::fmt::Debug for HeartbeatProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatProbe")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl HeartbeatProbe {
    /// A probe reading from `source`; a heartbeat older than `max_age` fails.
    pub fn new(source: Arc<dyn HeartbeatSource>, max_age: Duration) -> HeartbeatProbe {
        HeartbeatProbe { source, max_age }
    }
}

#[async_trait]
impl Probe for HeartbeatProbe {
    fn name(&self) -> &str {
        "heartbeat"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        let Some(id) = ctx.container_id.as_deref() else {
            return Observation::Inconclusive("the container id under test is unknown".into());
        };
        let short: String = id.chars().take(12).collect();
        let records = match self.source.by_container(id).await {
            Ok(r) => r,
            // The control center being down proves nothing about the agent: inconclusive, never a rollback.
            Err(e) => return Observation::Inconclusive(e),
        };
        let now = OffsetDateTime::now_utc();
        let age_of = |r: &AgentRecord| {
            let age = (now - r.last_seen).max(time::Duration::ZERO);
            Duration::from_secs_f64(age.as_seconds_f64())
        };
        let Some(newest) = records.iter().max_by_key(|r| r.last_seen) else {
            return Observation::Pending(format!("no heartbeat from container {short} yet"));
        };
        // The rule when several agents speak for one container (two OpAMP instances, an agent id that
        // changed): every one heard from within `max_age` must report the new version and, when it says
        // anything about its health, healthy. A verdict never depends on which of them spoke last.
        let fresh: Vec<&AgentRecord> = records.iter().filter(|r| age_of(r) <= self.max_age).collect();
        if fresh.is_empty() {
            return Observation::Fail(format!(
                "agent {}: last heartbeat {} ago (more than {})",
                newest.last.agent_id,
                format_duration(age_of(newest)),
                format_duration(self.max_age)
            ));
        }
        let of = if fresh.len() > 1 {
            format!(" (one of {} agents reporting for it)", fresh.len())
        } else {
            String::new()
        };
        for r in &fresh {
            if let Some(want) = &ctx.expected_version {
                if &r.last.version != want {
                    return Observation::Fail(format!(
                        "agent {} in container {short} reports version {}, expected {want}{of}",
                        r.last.agent_id, r.last.version
                    ));
                }
            }
            if let Some(h) = r.last.health.as_ref().filter(|h| !h.healthy) {
                let broken: Vec<String> = h
                    .components
                    .iter()
                    .filter(|(_, c)| !c.healthy)
                    .map(|(name, c)| {
                        format!(
                            "{name}: {}",
                            if c.last_error.is_empty() {
                                &c.status
                            } else {
                                &c.last_error
                            }
                        )
                    })
                    .collect();
                return Observation::Fail(format!(
                    "agent {} in container {short} reports itself unhealthy: {}{}{of}",
                    r.last.agent_id,
                    if h.last_error.is_empty() {
                        &h.status
                    } else {
                        &h.last_error
                    },
                    if broken.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", broken.join("; "))
                    }
                ));
            }
        }
        let r = fresh.iter().max_by_key(|r| r.last_seen).copied().unwrap_or(newest);
        // The agent's own view of its health (OpAMP's `health`), when it gives one; none said is unknown,
        // and the heartbeat alone decides.
        let own = match &r.last.health {
            Some(h) => format!(
                "healthy by its own report ({})",
                if h.status.is_empty() { "ok" } else { &h.status }
            ),
            None => "its own health unknown (not reported)".to_owned(),
        };
        Observation::Pass(format!(
            "agent {} in container {short} reports {} (status {}), {own}, last seen {} ago{}",
            r.last.agent_id,
            r.last.version,
            r.last.status,
            format_duration(age_of(r)),
            if fresh.len() > 1 {
                format!("; all {} agents reporting for it agree", fresh.len())
            } else {
                String::new()
            }
        ))
    }
}
