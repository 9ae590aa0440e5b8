//! The control center: an HTTP service (axum) that agents send heartbeats to, and that tells which agent runs
//! which version and whether it is up, late or down.
//!
//! - `POST /v1/heartbeats` (bearer token): `{agentId, container, host, version, revision, status}`.
//! - `GET /v1/agents` (`?container=ID` filters), `GET /v1/agents/{id}`: agents with last seen, version and
//!   state, 1000 a page sorted by id (`?after=ID&limit=N`; the header `x-agentctl-next-after` names the next
//!   page's `after`).
//! - `POST /v1/opamp` (bearer token): OpAMP's plain-HTTP transport, protobuf `AgentToServer` in (gzip
//!   accepted), `ServerToAgent` out; each message counts as a heartbeat (see [`crate::opamp`]).
//! - `GET /metrics`: Prometheus text. `GET /healthz`: liveness (no token).
//!
//! Bad input never crashes it: a body over the limit is 413, malformed JSON or missing fields are 400 with
//! the reason, a missing or wrong token is 401 (compared in constant time). State is written to a
//! [`StateStore`] behind the requests (every `flush_interval`), so a restart forgets nothing that was flushed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agent_core::{duration_text, StateStore};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

const DOC_KIND: &str = "control-center/agent";

/// One heartbeat as agents send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Stable id of the agent (survives updates).
    pub agent_id: String,
    /// The container sending it (its id or short id: the container's hostname by default).
    #[serde(default)]
    pub container: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: String,
    /// The version it runs.
    pub version: String,
    /// The revision it was deployed as, if known.
    #[serde(default)]
    pub revision: String,
    /// Its own view of its health (`ok`, `degraded`, …).
    #[serde(default = "ok")]
    pub status: String,
    /// The version of the protocol it speaks to the control center (`1.0`), if it says; contract tests check
    /// it against the range the control center accepts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Its own report of its health, when it sends one (OpAMP's `health`); none is unknown, not a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SelfHealth>,
}

/// An agent's own report of its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfHealth {
    /// Whether it says it is healthy.
    pub healthy: bool,
    /// Its status in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Its last error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Its components (receivers, exporters, …) by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
}

/// The longest text an agent may have kept about itself (a status, an error, a component's name): the
/// identity fields' bound. Longer text is cut there and ends with `…`.
pub const MAX_AGENT_TEXT: usize = 256;

/// The most components of an agent's own health report that are kept; more are summed up in one entry.
pub const MAX_COMPONENTS: usize = 32;

/// The most text (bytes of every status, error and component name, after [`inert`]) kept of one agent's own
/// health report; components past it are summed up in one entry, as past [`MAX_COMPONENTS`]. With the
/// entry's fixed costs, what one agent can make the control center keep is bounded by about 7 KiB.
pub const MAX_HEALTH_TEXT: usize = 4096;

/// `text` made inert for every place it is shown: control characters (escape sequences, line breaks) as
/// their escaped form (`\u{1b}`, `\n`), at most [`MAX_AGENT_TEXT`] bytes.
pub fn inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_AGENT_TEXT));
    for c in text.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > MAX_AGENT_TEXT - '…'.len_utf8() {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

impl SelfHealth {
    /// Bounds what the agent said: every text made [`inert`], at most [`MAX_COMPONENTS`] components and
    /// [`MAX_HEALTH_TEXT`] bytes of text in all (the unhealthy components kept first), the rest counted in
    /// one entry named `…`. Bounding twice changes nothing: that entry's count is carried over.
    pub fn bound(&mut self) {
        let carried = self
            .components
            .remove("…")
            .and_then(|c| c.status.split(' ').next()?.parse::<usize>().ok())
            .unwrap_or(0);
        self.status = inert(&self.status);
        self.last_error = inert(&self.last_error);
        let mut all: Vec<(String, ComponentStatus)> = std::mem::take(&mut self.components)
            .into_iter()
            .map(|(name, c)| {
                let c = ComponentStatus {
                    healthy: c.healthy,
                    status: inert(&c.status),
                    last_error: inert(&c.last_error),
                };
                (inert(&name), c)
            })
            .collect();
        all.sort_by_key(|(_, c)| c.healthy);
        let mut text = self.status.len() + self.last_error.len();
        let total = all.len();
        let kept: Vec<(String, ComponentStatus)> = all
            .into_iter()
            .take(MAX_COMPONENTS)
            .take_while(|(name, c)| {
                text += name.len() + c.status.len() + c.last_error.len();
                text <= MAX_HEALTH_TEXT
            })
            .collect();
        let dropped = total - kept.len() + carried;
        self.components = kept.into_iter().collect();
        if dropped > 0 {
            self.components.insert(
                "…".into(),
                ComponentStatus {
                    healthy: true,
                    status: format!("{dropped} more components not kept"),
                    last_error: String::new(),
                },
            );
        }
    }
}

/// One component's health in a [`SelfHealth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Whether it is healthy.
    pub healthy: bool,
    /// Its status in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Its last error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

fn ok() -> String {
    "ok".to_owned()
}

/// Whether an agent reports on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Seen within `late_after`.
    Up,
    /// Not seen for `late_after`, but within `down_after`.
    Late,
    /// Not seen for `down_after`.
    Down,
}

/// What the control center knows about one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// The last heartbeat.
    #[serde(flatten)]
    pub last: Heartbeat,
    /// When it was received.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When the first heartbeat from this agent was received.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// When the current container (`last.container`) first reported.
    #[serde(with = "time::serde::rfc3339")]
    pub container_since: OffsetDateTime,
    /// Heartbeats received in all.
    pub heartbeats: u64,
    /// Derived when read.
    pub state: AgentState,
}

/// Timing and limits of a control center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ControlCenterConfig {
    /// An agent is late after this long without a heartbeat.
    #[serde(with = "duration_text")]
    pub late_after: Duration,
    /// And down after this long.
    #[serde(with = "duration_text")]
    pub down_after: Duration,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// How often state is written to the store.
    #[serde(with = "duration_text")]
    pub flush_interval: Duration,
    /// Whether `/metrics` (which names every agent) answers without the token.
    #[serde(default)]
    pub public_metrics: bool,
    /// How long open connections may take to finish after shutdown was asked for.
    #[serde(with = "duration_text", default = "default_drain")]
    pub drain_timeout: Duration,
    /// Most connections open at once; the next wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection without a byte either way for this long is closed (a client that never finishes its
    /// headers included).
    #[serde(with = "duration_text", default = "default_idle")]
    pub idle_timeout: Duration,
    /// The heartbeat interval offered to OpAMP agents.
    #[serde(with = "duration_text", default = "default_heartbeat")]
    pub heartbeat_interval: Duration,
    /// The interval offered while a rollout is under way (the store holds one that is neither pending nor
    /// ended), so gates see the new version's heartbeats sooner.
    #[serde(with = "duration_text", default = "default_rollout_heartbeat")]
    pub rollout_heartbeat_interval: Duration,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

fn default_rollout_heartbeat() -> Duration {
    Duration::from_secs(5)
}

fn default_max_connections() -> usize {
    1024
}

fn default_idle() -> Duration {
    Duration::from_secs(10)
}

fn default_drain() -> Duration {
    Duration::from_secs(5)
}

impl Default for ControlCenterConfig {
    fn default() -> Self {
        ControlCenterConfig {
            late_after: Duration::from_secs(15),
            down_after: Duration::from_secs(60),
            body_limit: 16 * 1024,
            flush_interval: Duration::from_secs(1),
            public_metrics: false,
            drain_timeout: default_drain(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle(),
            heartbeat_interval: default_heartbeat(),
            rollout_heartbeat_interval: default_rollout_heartbeat(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    record: AgentRecord,
    dirty: bool,
}

/// The control center's state, shareable between the HTTP service and in-process readers (probes).
pub struct ControlCenter {
    pub(crate) config: ControlCenterConfig,
    token: String,
    agents: RwLock<HashMap<String, Entry>>,
    pub(crate) store: Option<Arc<dyn StateStore>>,
    accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// What OpAMP agents said about themselves, by instance uid (later messages omit it).
    pub(crate) opamp: RwLock<HashMap<Vec<u8>, OpampInstance>>,
    pub(crate) rollout_active: std::sync::atomic::AtomicBool,
    /// Signed-in browsers of the web view.
    pub(crate) sessions: crate::web::Sessions,
    /// Failed sign-ins of the web view by client address.
    pub(crate) sign_in_failures: crate::web::SignInFailures,
    /// The web view's last fingerprint and when it was made (shared by every event stream).
    pub(crate) fingerprint: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// What carries out the web view's actions, when the embedder gave it.
    pub(crate) actions: std::sync::OnceLock<Arc<dyn crate::web::RolloutActions>>,
}

/// What an OpAMP instance said about itself: who it is and the sequence number of its last message. Its
/// health is kept once, in its agent record (a message without health carries the last one over).
#[derive(Debug, Clone, Default)]
pub(crate) struct OpampInstance {
    pub(crate) who: crate::opamp::Identity,
    pub(crate) sequence: u64,
}

/// Agents written to the store in one call by [`ControlCenter::flush`].
const FLUSH_CHUNK: usize = 500;

/// At most this many OpAMP instances are remembered; beyond, one is forgotten (it is asked for its full
/// state again on its next message).
pub(crate) const MAX_OPAMP_INSTANCES: usize = 100_000;

impl std::fmt::Debug for ControlCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCenter")
            .field("config", &self.config)
            .field("agents", &self.agents.read().map(|a| a.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

/// Why a control center could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlCenterError {
    /// The token is empty or too short.
    #[error(
        "the control-center token must be at least 16 characters (give it with --token-file or AGENTCTL_CC_TOKEN)"
    )]
    WeakToken,
    /// The listen address is taken or invalid.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        message: String,
    },
    /// Loading saved state failed.
    #[error(transparent)]
    Store(#[from] agent_core::StoreError),
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; compare every byte regardless of where they differ.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Heartbeat {
    /// Parses and validates a heartbeat as the control center receives it (JSON); the error says what is
    /// wrong, prefixed `malformed` (not JSON of the right shape) or `invalid` (a field out of bounds).
    pub fn parse(body: &[u8]) -> Result<Heartbeat, String> {
        let hb: Heartbeat = serde_json::from_slice(body)
            .map_err(|e| format!("malformed heartbeat: {e}; send JSON with agentId and version"))?;
        validate(&hb).map_err(|e| format!("invalid heartbeat: {e}"))?;
        Ok(hb)
    }
}

pub(crate) fn validate(hb: &Heartbeat) -> Result<(), String> {
    let field_ok = |name: &str, v: &str, required: bool| -> Result<(), String> {
        if required && v.trim().is_empty() {
            return Err(format!("`{name}` is required and must not be empty"));
        }
        if v.len() > 256 {
            return Err(format!("`{name}` is {} bytes long, at most 256 are allowed", v.len()));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("`{name}` contains control characters"));
        }
        Ok(())
    };
    field_ok("agentId", &hb.agent_id, true)?;
    field_ok("version", &hb.version, true)?;
    field_ok("container", &hb.container, false)?;
    field_ok("host", &hb.host, false)?;
    field_ok("revision", &hb.revision, false)?;
    field_ok("status", &hb.status, false)?;
    field_ok("protocol", &hb.protocol, false)
}

impl ControlCenter {
    /// A control center with this token and configuration; loads saved agents from `store` when given.
    pub async fn new(
        token: String,
        config: ControlCenterConfig,
        store: Option<Arc<dyn StateStore>>,
    ) -> Result<Arc<ControlCenter>, ControlCenterError> {
        let token = token.trim().to_owned();
        if token.len() < 16 {
            return Err(ControlCenterError::WeakToken);
        }
        let mut agents = HashMap::new();
        if let Some(s) = &store {
            for (id, value) in s.documents(DOC_KIND).await? {
                if let Ok(record) = serde_json::from_value::<AgentRecord>(value) {
                    agents.insert(id, Entry { record, dirty: false });
                }
            }
        }
        Ok(Arc::new(ControlCenter {
            config,
            token,
            agents: RwLock::new(agents),
            store,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            opamp: RwLock::new(HashMap::new()),
            rollout_active: std::sync::atomic::AtomicBool::new(false),
            sessions: Default::default(),
            sign_in_failures: Default::default(),
            fingerprint: tokio::sync::Mutex::new(None),
            actions: std::sync::OnceLock::new(),
        }))
    }

    fn state_of(&self, last_seen: OffsetDateTime, now: OffsetDateTime) -> AgentState {
        let age = now - last_seen;
        if age >= self.config.down_after {
            AgentState::Down
        } else if age >= self.config.late_after {
            AgentState::Late
        } else {
            AgentState::Up
        }
    }

    /// Records a heartbeat received now.
    pub fn record(&self, hb: Heartbeat) {
        self.record_at(hb, OffsetDateTime::now_utc());
    }

    fn record_at(&self, mut hb: Heartbeat, now: OffsetDateTime) {
        // What an agent says about its own health is bounded and made inert before anything keeps it.
        if let Some(h) = &mut hb.health {
            h.bound();
        }
        let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
        match agents.get_mut(&hb.agent_id) {
            Some(e) => {
                if e.record.last.container != hb.container {
                    e.record.container_since = now;
                }
                e.record.last = hb;
                e.record.last_seen = now;
                e.record.heartbeats += 1;
                e.dirty = true;
            }
            None => {
                agents.insert(
                    hb.agent_id.clone(),
                    Entry {
                        record: AgentRecord {
                            last: hb,
                            last_seen: now,
                            first_seen: now,
                            container_since: now,
                            heartbeats: 1,
                            state: AgentState::Up,
                        },
                        dirty: true,
                    },
                );
            }
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// The health last recorded for `agent_id` while it ran in `container`, if any.
    pub(crate) fn last_health(&self, agent_id: &str, container: &str) -> Option<SelfHealth> {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        agents
            .get(agent_id)
            .filter(|e| e.record.last.container == container)
            .and_then(|e| e.record.last.health.clone())
    }

    /// Every agent, with its state as of now, sorted by id.
    pub fn agents(&self) -> Vec<AgentRecord> {
        let now = OffsetDateTime::now_utc();
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<AgentRecord> = agents
            .values()
            .map(|e| {
                let mut r = e.record.clone();
                r.state = self.state_of(r.last_seen, now);
                r
            })
            .collect();
        v.sort_by(|a, b| a.last.agent_id.cmp(&b.last.agent_id));
        v
    }

    /// One agent.
    pub fn agent(&self, id: &str) -> Option<AgentRecord> {
        let now = OffsetDateTime::now_utc();
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        agents.get(id).map(|e| {
            let mut r = e.record.clone();
            r.state = self.state_of(r.last_seen, now);
            r
        })
    }

    /// A page of the agents, sorted by id: at most `limit` whose id sorts after `after` (all from the start
    /// when `None`), and the id to ask `after` for the next page when there is one.
    pub fn agents_page(&self, after: Option<&str>, limit: usize) -> (Vec<AgentRecord>, Option<String>) {
        let now = OffsetDateTime::now_utc();
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<&String> = agents.keys().filter(|k| after.is_none_or(|a| k.as_str() > a)).collect();
        ids.sort();
        let more = ids.len() > limit;
        let page: Vec<AgentRecord> = ids
            .into_iter()
            .take(limit)
            .filter_map(|id| agents.get(id))
            .map(|e| {
                let mut r = e.record.clone();
                r.state = self.state_of(r.last_seen, now);
                r
            })
            .collect();
        let next = more.then(|| page.last().map(|r| r.last.agent_id.clone())).flatten();
        (page, next)
    }

    /// How many agents run each version in each state: what the web view's counts and its change
    /// notifications are made of, read without copying any record.
    pub fn counts(&self) -> BTreeMap<(String, AgentState), usize> {
        let now = OffsetDateTime::now_utc();
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut counts = BTreeMap::new();
        for e in agents.values() {
            *counts
                .entry((e.record.last.version.clone(), self.state_of(e.record.last_seen, now)))
                .or_default() += 1;
        }
        counts
    }

    /// The agents whose last heartbeat came from `container`: a heartbeat names it when it carries exactly
    /// its full id or exactly its 12-digit short id (what `HOSTNAME` holds in a container without
    /// `--hostname`). Never by prefix: a heartbeat naming `d` must not pass for every id starting with `d`.
    pub fn by_container(&self, container: &str) -> Vec<AgentRecord> {
        let now = OffsetDateTime::now_utc();
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<AgentRecord> = agents
            .values()
            .filter(|e| same_container(&e.record.last.container, container))
            .map(|e| {
                let mut r = e.record.clone();
                r.state = self.state_of(r.last_seen, now);
                r
            })
            .collect();
        found.sort_by(|a, b| a.last.agent_id.cmp(&b.last.agent_id));
        found
    }

    /// Lets the web view's promote, pause, resume and abort act through `actions` (once; later calls are
    /// ignored). Without it the pages show rollouts but offer no actions that work.
    pub fn set_actions(&self, actions: Arc<dyn crate::web::RolloutActions>) {
        let _ = self.actions.set(actions);
    }

    /// Whether `token` is the control center's token (compared in constant time).
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), self.token.as_bytes())
    }

    /// Whether a rollout is under way, as last read from the store.
    pub fn rollout_active(&self) -> bool {
        self.rollout_active.load(Ordering::Relaxed)
    }

    /// Reads from the store whether a rollout is under way (one in a phase that is neither pending nor
    /// ended): the OpAMP answer then offers the shorter heartbeat interval.
    pub async fn refresh_rollout_active(&self) {
        let Some(store) = &self.store else { return };
        let Ok(docs) = store.documents("rollout").await else {
            return;
        };
        let active = docs.iter().any(|(_, doc)| {
            serde_json::from_value::<agent_core::Phase>(doc["machine"]["phase"].clone())
                .is_ok_and(|p| !p.is_terminal() && p != agent_core::Phase::Pending)
        });
        self.rollout_active.store(active, Ordering::Relaxed);
    }

    /// Writes changed agents to the store. Called by the service every `flush_interval` and at shutdown.
    pub async fn flush(&self) -> Result<usize, agent_core::StoreError> {
        let Some(store) = &self.store else { return Ok(0) };
        let dirty: Vec<(String, AgentRecord)> = {
            let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
            agents
                .iter_mut()
                .filter(|(_, e)| e.dirty)
                .map(|(k, e)| {
                    e.dirty = false;
                    (k.clone(), e.record.clone())
                })
                .collect()
        };
        // In chunks: the documents of 10,000 changed agents at once would be a peak the allocator keeps.
        let written = dirty.len();
        for chunk in dirty.chunks(FLUSH_CHUNK) {
            let docs: Vec<(String, serde_json::Value)> = chunk
                .iter()
                .map(|(id, record)| (id.clone(), serde_json::to_value(record).unwrap_or_default()))
                .collect();
            store.put_documents(DOC_KIND, &docs).await?;
        }
        Ok(written)
    }

    /// Prometheus text exposition of the control center's view.
    pub fn metrics(&self) -> String {
        let agents = self.agents();
        let mut out = String::new();
        out.push_str("# HELP agentctl_cc_heartbeats_accepted_total Heartbeats accepted.\n# TYPE agentctl_cc_heartbeats_accepted_total counter\n");
        out.push_str(&format!(
            "agentctl_cc_heartbeats_accepted_total {}\n",
            self.accepted.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP agentctl_cc_requests_rejected_total Requests refused (auth, size, malformed).\n# TYPE agentctl_cc_requests_rejected_total counter\n");
        out.push_str(&format!(
            "agentctl_cc_requests_rejected_total {}\n",
            self.rejected.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP agentctl_cc_agents Agents by state.\n# TYPE agentctl_cc_agents gauge\n");
        for state in ["up", "late", "down"] {
            let n = agents
                .iter()
                .filter(|a| {
                    serde_json::to_value(a.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .as_deref()
                        == Some(state)
                })
                .count();
            out.push_str(&format!("agentctl_cc_agents{{state=\"{state}\"}} {n}\n"));
        }
        out.push_str("# HELP agentctl_cc_agent_last_seen_seconds Seconds since each agent's last heartbeat.\n# TYPE agentctl_cc_agent_last_seen_seconds gauge\n");
        let now = OffsetDateTime::now_utc();
        for a in &agents {
            out.push_str(&format!(
                "agentctl_cc_agent_last_seen_seconds{{agent=\"{}\",version=\"{}\"}} {:.3}\n",
                escape_label(&a.last.agent_id),
                escape_label(&a.last.version),
                (now - a.last_seen).as_seconds_f64()
            ));
        }
        out
    }

    /// The HTTP service.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/heartbeats", post(post_heartbeat))
            .route("/v1/opamp", post(crate::opamp::post))
            .route("/v1/agents", get(list_agents))
            .route("/v1/agents/{id}", get(get_agent))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .merge(crate::web::routes())
            .layer(DefaultBodyLimit::max(self.config.body_limit))
            .with_state(self.clone())
    }

    /// Serves on `address` until `shutdown` resolves, flushing state to the store periodically and at the end.
    /// Returns the bound address through `bound` as soon as it listens.
    pub async fn serve(
        self: Arc<Self>,
        address: &str,
        bound: impl FnOnce(SocketAddr) + Send,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlCenterError> {
        let listen_err = |e: std::io::Error| ControlCenterError::Listen {
            address: address.to_owned(),
            message: e.to_string(),
        };
        let listener = tokio::net::TcpListener::bind(address).await.map_err(listen_err)?;
        bound(listener.local_addr().map_err(listen_err)?);
        let flusher = {
            let cc = self.clone();
            tokio::spawn(async move {
                let mut rounds = 0u64;
                loop {
                    tokio::time::sleep(cc.config.flush_interval).await;
                    if let Err(e) = cc.flush().await {
                        tracing::error!(error = %e, "control center: flushing state failed");
                    }
                    if rounds.is_multiple_of(5) {
                        cc.refresh_rollout_active().await;
                    }
                    rounds += 1;
                }
            })
        };
        // After shutdown is asked for, open connections get `drain_timeout` to finish; an idle client that
        // never sends a request does not hold the process (or its final flush) hostage.
        let (asked, mut asked_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = asked.send(true);
        };
        let drain = self.config.drain_timeout;
        let deadline = async move {
            while !*asked_rx.borrow_and_update() {
                if asked_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(drain).await;
        };
        let listener =
            crate::listener::GuardedListener::new(listener, self.config.max_connections, self.config.idle_timeout);
        // With each client's address: the web view counts failed sign-ins per address.
        let server = axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<crate::listener::PeerAddr>(),
        )
        .with_graceful_shutdown(signal);
        let result = tokio::select! {
            r = server => r,
            () = deadline => {
                tracing::warn!(after = ?drain, "control center: connections still open at shutdown were dropped");
                Ok(())
            }
        };
        flusher.abort();
        self.flush().await?;
        result.map_err(listen_err)
    }
}

/// Escapes a Prometheus label value.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub(crate) fn authorized(cc: &ControlCenter, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(token.trim().as_bytes(), cc.token.as_bytes())
}

async fn post_heartbeat(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&cc, &headers) {
        cc.rejected.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let hb = match Heartbeat::parse(&body) {
        Ok(h) => h,
        Err(e) => {
            cc.rejected.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    cc.record(hb);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct AgentFilter {
    container: Option<String>,
    /// Agents whose id sorts after this one (the next page).
    after: Option<String>,
    /// At most this many (default and most: [`AGENTS_PAGE`]).
    limit: Option<usize>,
}

/// The most agents one `GET /v1/agents` returns; the header [`NEXT_PAGE_HEADER`] names the `after` of the
/// next page.
pub const AGENTS_PAGE: usize = 1000;

/// The response header naming the id to pass as `after` for the next page of `GET /v1/agents`.
pub const NEXT_PAGE_HEADER: &str = "x-agentctl-next-after";

/// Whether container ids `a` and `b` name the same container: equal, or one is the full 64-digit id and the
/// other exactly its 12-digit short form.
pub(crate) fn same_container(a: &str, b: &str) -> bool {
    const SHORT: usize = 12;
    const FULL: usize = 64;
    match (a.len(), b.len()) {
        (0, _) | (_, 0) => false,
        (SHORT, FULL) => b.starts_with(a),
        (FULL, SHORT) => a.starts_with(b),
        _ => a == b,
    }
}

async fn list_agents(
    State(cc): State<Arc<ControlCenter>>,
    headers: HeaderMap,
    Query(f): Query<AgentFilter>,
) -> Response {
    if !authorized(&cc, &headers) {
        cc.rejected.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if let Some(c) = f.container {
        return Json(cc.by_container(&c)).into_response();
    }
    let limit = f.limit.unwrap_or(AGENTS_PAGE).clamp(1, AGENTS_PAGE);
    let (page, next) = cc.agents_page(f.after.as_deref(), limit);
    let mut response = Json(page).into_response();
    if let Some(next) = next.and_then(|n| axum::http::HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert(NEXT_PAGE_HEADER, next);
    }
    response
}

async fn get_agent(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&cc, &headers) {
        cc.rejected.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    match cc.agent(&id) {
        Some(a) => Json(a).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no agent {id:?} has sent a heartbeat")),
    }
}

async fn metrics(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap) -> Response {
    if !cc.config.public_metrics && !authorized(&cc, &headers) {
        cc.rejected.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::UNAUTHORIZED,
            "the metrics name every agent: send the bearer token (Prometheus: authorization.credentials_file), or start the control center with --public-metrics",
        );
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        cc.metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"short", b"longer"));
    }

    #[tokio::test]
    async fn states_and_container_changes() {
        let cc = ControlCenter::new("0123456789abcdef".into(), ControlCenterConfig::default(), None)
            .await
            .unwrap();
        let hb = |c: &str, v: &str| Heartbeat {
            agent_id: "a1".into(),
            container: c.into(),
            host: "h".into(),
            version: v.into(),
            revision: String::new(),
            status: "ok".into(),
            protocol: "1.0".into(),
            health: None,
        };
        let t0 = OffsetDateTime::now_utc() - Duration::from_secs(120);
        cc.record_at(hb("aaaa", "1.0.0"), t0);
        assert_eq!(cc.agent("a1").unwrap().state, AgentState::Down);
        cc.record_at(hb("bbbb", "2.0.0"), OffsetDateTime::now_utc() - Duration::from_secs(20));
        let a = cc.agent("a1").unwrap();
        assert_eq!(
            (a.state, a.heartbeats, a.last.version.as_str()),
            (AgentState::Late, 2, "2.0.0")
        );
        assert!(a.container_since > t0);
        assert_eq!(cc.by_container("bbbb").len(), 1, "the id it sent");
        assert!(cc.by_container("bbbbcccc").is_empty(), "never by prefix");
        assert!(cc.by_container("aaaa").is_empty());
        let full = "d2f4f6e1c37a".to_owned() + &"0".repeat(52);
        for digit in "0123456789abcdef".chars() {
            cc.record(hb(&digit.to_string(), "1.1.0"));
        }
        assert!(cc.by_container(&full).is_empty(), "one-digit ids are no container's");
        cc.record(hb("d2f4f6e1c37a", "1.1.0"));
        assert_eq!(cc.by_container(&full).len(), 1, "the short id names the full one");
        assert!(same_container(&full, &full) && same_container(&full[..12], &full));
        assert!(!same_container(&full[..11], &full) && !same_container("", ""));
        assert!(matches!(
            ControlCenter::new("short".into(), ControlCenterConfig::default(), None).await,
            Err(ControlCenterError::WeakToken)
        ));
        assert!(validate(&hb("c", "")).is_err());
        assert!(validate(&Heartbeat {
            agent_id: "x\u{7}".into(),
            ..hb("c", "1")
        })
        .is_err());
    }
}
