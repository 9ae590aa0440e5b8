//! What to update and how it is verified: the request of every single-target operation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{ContainerName, ImageRef, RevisionHistory, TagPolicy, UpdateMode};
use agent_health::{
    ContainerStateProbe, DockerHealthProbe, HealthGate, HttpProbe, HttpProbeConfig, LogScanProbe, Probe, Timing,
};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// When to pull the image before an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull when the image is not on the engine, or is a tag (so a moved tag is noticed). Digest pins present
    /// locally are not pulled.
    #[default]
    Missing,
    /// Always pull.
    Always,
    /// Never pull; the image must be present.
    Never,
}

/// Where heartbeats are checked.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatCheck {
    /// The control center (`http://IP:PORT`).
    pub url: String,
    /// Its bearer token; never serialized.
    #[serde(skip_serializing, default)]
    pub token: String,
    /// A heartbeat older than this fails.
    #[serde(with = "agent_core::duration_text")]
    pub max_age: Duration,
}

impl std::fmt::Debug for HeartbeatCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatCheck")
            .field("url", &self.url)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// A PromQL query that must meet a condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryCheck {
    /// The Prometheus URL.
    pub prometheus: String,
    /// The query.
    pub query: String,
    /// The condition over its first value.
    pub condition: agent_health::Condition,
}

/// A sample of the agent's own `/metrics` that must meet a condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeCheck {
    /// The container port serving metrics.
    pub port: u16,
    /// The path (`/metrics`).
    pub path: String,
    /// The sample (`agent_up` or `agent_requests_total{code="500"}`).
    pub selector: String,
    /// The condition over its value.
    pub condition: agent_health::Condition,
}

/// How a new container is verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VerifyConfig {
    /// Probe timing.
    pub timing: Timing,
    /// Regular expressions for fatal log lines.
    pub fatal_patterns: Vec<String>,
    /// An HTTP probe, when the agent serves one.
    pub http: Option<HttpProbeConfig>,
    /// A heartbeat probe, when the agent reports to a control center.
    pub heartbeat: Option<HeartbeatCheck>,
    /// Prometheus query probes.
    pub queries: Vec<QueryCheck>,
    /// Probes of the agent's own metrics.
    pub scrapes: Vec<ScrapeCheck>,
    /// CPU and memory limits (from the engine's stats).
    pub resources: Option<agent_health::ResourceProbe>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            timing: Timing::default(),
            fatal_patterns: agent_health::DEFAULT_FATAL_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            http: None,
            heartbeat: None,
            queries: Vec::new(),
            scrapes: Vec::new(),
            resources: None,
        }
    }
}

impl VerifyConfig {
    /// The probes this configuration asks for: container state, Docker HEALTHCHECK, log scan, and HTTP,
    /// heartbeat, Prometheus queries and metric scrapes when configured.
    pub fn probes(&self) -> Result<Vec<Box<dyn Probe>>, Error> {
        let logs = LogScanProbe::new(self.fatal_patterns.clone()).map_err(|e| Error::InvalidInput {
            what: "fatal log pattern".into(),
            message: e.to_string(),
        })?;
        let mut probes: Vec<Box<dyn Probe>> = vec![
            Box::new(ContainerStateProbe),
            Box::new(DockerHealthProbe::new()),
            Box::new(logs),
        ];
        if let Some(h) = &self.http {
            probes.push(Box::new(HttpProbe::new(h.clone())));
        }
        if let Some(hb) = &self.heartbeat {
            let source = Arc::new(agent_health::RemoteControlCenter::new(&hb.url, &hb.token));
            probes.push(Box::new(agent_health::HeartbeatProbe::new(source, hb.max_age)));
        }
        for (i, q) in self.queries.iter().enumerate() {
            let source = Arc::new(agent_health::Prometheus::new(&q.prometheus));
            let name = if self.queries.len() == 1 {
                "prometheus".to_owned()
            } else {
                format!("prometheus-{}", i + 1)
            };
            probes.push(Box::new(agent_health::PromQueryProbe::new(
                &name,
                source,
                &q.query,
                q.condition.clone(),
            )));
        }
        for s in &self.scrapes {
            let probe = agent_health::ScrapeProbe::new(s.port, &s.path, &s.selector, s.condition.clone()).map_err(
                |message| Error::InvalidInput {
                    what: "metric check".into(),
                    message,
                },
            )?;
            probes.push(Box::new(probe));
        }
        if let Some(r) = &self.resources {
            probes.push(Box::new(r.clone()));
        }
        Ok(probes)
    }

    /// The gate over [`probes`](VerifyConfig::probes).
    pub fn gate(&self) -> Result<HealthGate, Error> {
        let mut gate = HealthGate::new(self.timing.clone());
        for p in self.probes()? {
            gate.push(p);
        }
        Ok(gate)
    }
}

/// Builds extra probes for a container under verification (heartbeat, metrics, user-defined).
pub type ProbeFactory = Arc<dyn Fn() -> Vec<Box<dyn Probe>> + Send + Sync>;

/// What to update and how.
#[derive(Clone)]
pub struct UpdateRequest {
    /// The container.
    pub container: ContainerName,
    /// The new image.
    pub image: ImageRef,
    /// Which references are allowed.
    pub policy: TagPolicy,
    /// When to pull.
    pub pull: PullPolicy,
    /// Why (recorded in the history); defaults to `update to IMAGE`.
    pub cause: Option<String>,
    /// Copy config-carrying mounts here before changing anything.
    pub backup_dir: Option<PathBuf>,
    /// Revisions kept.
    pub history_limit: usize,
    /// How to verify.
    pub verify: VerifyConfig,
    /// Extra probes.
    pub extra_probes: Option<ProbeFactory>,
    /// Keep watching after success, and roll back when an alert rule fires.
    pub watch: Option<WatchConfig>,
    /// Stop-first (the default: never two instances) or start-first (no gap: the new container starts
    /// beside the old one as `NAME.preview`, is verified, then takes the name). `BlueGreen` behaves as
    /// start-first here; [`Updater::stage`](crate::Updater::stage) and [`Updater::promote`](crate::Updater::promote) split it in two.
    pub mode: UpdateMode,
    /// Paces the operation among others a caller runs at the same time (a fleet's engine slots): see
    /// [`Pacer`]. `None` runs it at once.
    pub pacer: Option<Arc<dyn Pacer>>,
    /// Pre- and post-update hooks and the agent's update lock.
    pub hooks: crate::Hooks,
}

/// The probation watch after a successful update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchConfig {
    /// How long to watch.
    #[serde(with = "agent_core::duration_text")]
    pub window: Duration,
    /// How long a probe must fail before its rule fires (a crash or fatal log line fires at once).
    #[serde(with = "agent_core::duration_text")]
    pub alert_for: Duration,
    /// Time between evaluations.
    #[serde(with = "agent_core::duration_text")]
    pub period: Duration,
}

impl std::fmt::Debug for UpdateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateRequest")
            .field("container", &self.container)
            .field("image", &self.image)
            .field("pull", &self.pull)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl UpdateRequest {
    /// A request with the defaults: default tag policy, pull when missing, history limit 5.
    pub fn new(container: ContainerName, image: ImageRef) -> UpdateRequest {
        UpdateRequest {
            container,
            image,
            policy: TagPolicy::default(),
            pull: PullPolicy::default(),
            cause: None,
            backup_dir: None,
            history_limit: RevisionHistory::DEFAULT_LIMIT,
            verify: VerifyConfig::default(),
            extra_probes: None,
            watch: None,
            mode: UpdateMode::StopFirst,
            pacer: None,
            hooks: crate::Hooks::default(),
        }
    }

    /// Waits for the pacer's turn before the first change (idempotent); an error when it withholds it.
    pub(crate) async fn admit(&self) -> Result<(), Error> {
        match &self.pacer {
            Some(p) if !p.admit().await => Err(Error::Withheld {
                container: self.container.to_string(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn notify_started(&self) {
        if let Some(p) = &self.pacer {
            p.started();
        }
    }

    pub(crate) fn notify_decided(&self, verdict: Decided) {
        if let Some(p) = &self.pacer {
            p.decided(verdict);
        }
    }
}

/// Paces one operation among many that a caller runs at once, such as a fleet's targets within its engine
/// slots. The operation does its preparation unpaced (the locks, inspection, history, the journal's begin
/// facts, none of which change the agent), then asks for its turn right before its first change; a caller
/// can therefore prepare the next targets while the current ones change, and only the changes wait for a
/// slot. An operation with pre-update hooks or an update lock asks before those, so they run right before
/// the change as they would alone.
#[async_trait::async_trait]
pub trait Pacer: Send + Sync {
    /// Waits for the operation's turn; `false` withholds it (nothing was changed, and the operation ends
    /// with [`Error::Withheld`]). Called at most once per operation that goes on to change anything; an
    /// implementation must answer the same for a second call (a start-first update asks for its preview and
    /// again for its switch).
    async fn admit(&self) -> bool;
    /// The new container runs under its name and its verification begins: the engine work is over.
    fn started(&self);
    /// The verdict is in and acted on (committed, or reverted: the old container runs again). What is left
    /// is bookkeeping (the history, the lock's release).
    fn decided(&self, verdict: Decided);
}

/// An operation's verdict, acted on, as its [`Pacer`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Proven: the new container stays.
    Kept,
    /// Kept without proof: a signal source could not be asked, so the verification was inconclusive.
    Unverified,
    /// Failed verification (or a step failed): the old container runs again.
    Reverted,
}

/// What to go back to and how to verify it. There is no image to give: the revision names it.
#[derive(Clone)]
pub struct UndoRequest {
    /// The container.
    pub container: ContainerName,
    /// The revision (`None`: the last known-good one before the current one).
    pub to: Option<agent_core::RevisionNumber>,
    /// When to pull the revision's image (only when its retained container is gone).
    pub pull: PullPolicy,
    /// Why (recorded in the history); defaults to `undo to revision N`.
    pub cause: Option<String>,
    /// Revisions kept.
    pub history_limit: usize,
    /// How to verify the revision once it runs again.
    pub verify: VerifyConfig,
    /// Extra probes.
    pub extra_probes: Option<ProbeFactory>,
}

impl std::fmt::Debug for UndoRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UndoRequest")
            .field("container", &self.container)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl UndoRequest {
    /// Back to the last known-good revision, with the defaults (pull when missing, history limit 5).
    pub fn new(container: ContainerName) -> UndoRequest {
        UndoRequest {
            container,
            to: None,
            pull: PullPolicy::default(),
            cause: None,
            history_limit: RevisionHistory::DEFAULT_LIMIT,
            verify: VerifyConfig::default(),
            extra_probes: None,
        }
    }

    /// Back to revision `n`.
    pub fn to(mut self, n: agent_core::RevisionNumber) -> UndoRequest {
        self.to = Some(n);
        self
    }

    /// The same verification and bookkeeping settings as `req` (how a rollback follows an update).
    pub fn like(container: ContainerName, req: &UpdateRequest) -> UndoRequest {
        UndoRequest {
            container,
            to: None,
            pull: req.pull,
            cause: req.cause.clone(),
            history_limit: req.history_limit,
            verify: req.verify.clone(),
            extra_probes: req.extra_probes.clone(),
        }
    }

    /// The update that brings back `image` with these settings (the executor's request).
    pub(crate) fn to_update(&self, image: ImageRef) -> UpdateRequest {
        let mut req = UpdateRequest::new(self.container.clone(), image);
        req.pull = self.pull;
        req.cause = self.cause.clone();
        req.history_limit = self.history_limit;
        req.verify = self.verify.clone();
        req.extra_probes = self.extra_probes.clone();
        req
    }
}
