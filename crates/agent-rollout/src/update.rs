//! The safe in-place update of one agent container, undo, and recovery after a crash.
//!
//! Every step is written to the journal before it is carried out. The old container is never deleted before
//! its replacement is proven: it is stopped, renamed to `NAME.revN` and its restart policy set to `no`
//! (so a daemon restart never brings back a second instance), then kept as the fast rollback target.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ContainerInfo, ContainerName, ContainerRuntime, ContainerSpec, ContainerStatus, Digest, EngineConfig,
    ImageDefaults, ImageInfo, ImageRef, JournalEntry, MountKind, Outcome, RestartPolicy, Revision, RevisionHistory,
    RevisionNumber, RuntimeError, SpecDiff, StateStore, TagPolicy, UpdateMode, Version,
};
use std::collections::BTreeMap;

use agent_health::{
    AlertRule, ContainerStateProbe, DockerHealthProbe, HealthGate, HttpProbe, HttpProbeConfig, LogScanProbe, Probation,
    ProbationOutcome, Probe, ProbeContext, Timing, Verdict, VerdictOutcome,
};
use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::events::{Event, Reporter};
use crate::lease::{holder_for_this_process, LeaseGuard};

/// Environment variable naming a journal step at which the process aborts right after journaling it
/// (as a `kill -9` would): the crash-safety tests use it. `STEP` matches that step of any operation,
/// `KIND:STEP` only of one kind (`update`, `undo`, `stage`, `promote`). Never set it in production.
pub const CRASH_AT_ENV: &str = "AGENTCTL_CRASH_AT";

/// Environment variable naming a journal step (`STEP` or `KIND:STEP`) at which the process holds, right
/// after journaling it, until the file named by [`HOLD_FILE_ENV`] exists (at most two minutes); it creates
/// `FILE.held` when it starts holding. The fault tests use it to change the engine mid-update. Never set
/// it in production.
pub const HOLD_AT_ENV: &str = "AGENTCTL_HOLD_AT";

/// The release file of [`HOLD_AT_ENV`].
pub const HOLD_FILE_ENV: &str = "AGENTCTL_HOLD_FILE";

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
            Box::new(DockerHealthProbe),
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
    /// start-first here; [`Updater::stage`] and [`Updater::promote`] split it in two.
    pub mode: UpdateMode,
    /// Notified once the new container runs under the name and its verification begins (a stop-first
    /// update, the switch of a start-first one, an install): the engine work is over. A fleet uses it to hand the engine slot to the next target
    /// while this one is being proven (`maxUnverified`).
    pub started: Option<Arc<tokio::sync::Notify>>,
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
            started: None,
        }
    }

    fn notify_started(&self) {
        if let Some(n) = &self.started {
            n.notify_one();
        }
    }
}

/// How an update or undo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStatus {
    /// The new revision runs and was verified.
    Updated,
    /// The new revision failed; the previous one runs again.
    RolledBack,
    /// The request asked for what already runs; nothing was changed.
    Unchanged,
    /// A verified preview runs beside the untouched old container, waiting for [`Updater::promote`].
    Staged,
    /// The new revision runs, but a signal source could not be asked (the control center or Prometheus
    /// down), so it was neither proven nor rolled back: paused for a decision (`undo` goes back).
    Unverified,
}

impl UpdateStatus {
    /// The process exit code for this status (0 updated, unchanged or staged, 3 rolled back, 4 unverified).
    pub fn exit_code(self) -> i32 {
        match self {
            UpdateStatus::Updated | UpdateStatus::Unchanged | UpdateStatus::Staged => 0,
            UpdateStatus::RolledBack => 3,
            UpdateStatus::Unverified => 4,
        }
    }
}

/// What an interrupted operation was and what recovery did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// The operation id.
    pub operation: String,
    /// The last step it journaled.
    pub interrupted_at: String,
    /// `reverted` or `completed`.
    pub action: String,
}

/// The result of an update or undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateReport {
    /// The container.
    pub container: String,
    /// The engine.
    pub endpoint: String,
    /// How it ended.
    pub status: UpdateStatus,
    /// The revision this attempt recorded.
    pub revision: Revision,
    /// The revision that ran before.
    pub previous: Option<RevisionNumber>,
    /// The new container's verdict.
    pub verdict: Option<Verdict>,
    /// Fields of the new container that differ from the old one beyond the image (must be empty).
    pub unexpected_changes: SpecDiff,
    /// Why it rolled back.
    pub reason: Option<String>,
    /// The new container's last output lines, when it rolled back.
    pub last_logs: Vec<String>,
    /// Where the backup went.
    pub backup: Option<PathBuf>,
    /// Interrupted operations this command repaired first.
    pub recovered: Vec<Recovery>,
    /// How the probation watch ended, when there was one.
    pub probation: Option<ProbationOutcome>,
    /// The revision that restored the previous version after a probation alert.
    pub restored_by: Option<RevisionNumber>,
}

/// The current state of one container, for `agentctl status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The container.
    pub container: String,
    /// The engine.
    pub endpoint: String,
    /// The image it runs.
    pub image: Option<String>,
    /// Lifecycle status.
    pub state: Option<ContainerStatus>,
    /// HEALTHCHECK status.
    pub health: Option<String>,
    /// Restart count.
    pub restart_count: Option<u64>,
    /// The current revision.
    pub revision: Option<Revision>,
    /// Operations another process is running on it now.
    pub in_progress: Option<String>,
    /// Interrupted operations this command repaired.
    pub recovered: Vec<Recovery>,
    /// How what the engine runs differs from the current revision (another tool changed the container), with
    /// the fix; `None` when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
enum Step {
    Begin {
        kind: String,
        container: String,
        old_id: String,
        old_running: bool,
        old_restart: RestartPolicy,
        old_revision: u64,
        new_revision: u64,
        retained_name: String,
        /// Create a new container (`None`) or bring back this retained one.
        from_retained: Option<String>,
    },
    StopOld,
    RenameOld,
    DisableRestart,
    CreateNew,
    StartNew,
    Verify,
    Commit,
    Revert {
        reason: String,
    },
    Done {
        outcome: String,
    },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Begin { .. } => "begin",
            Step::StopOld => "stop-old",
            Step::RenameOld => "rename-old",
            Step::DisableRestart => "disable-restart",
            Step::CreateNew => "create-new",
            Step::StartNew => "start-new",
            Step::Verify => "verify",
            Step::Commit => "commit",
            Step::Revert { .. } => "revert",
            Step::Done { .. } => "done",
        }
    }
}

/// The journal steps of an update, in order (for crash tests and documentation).
pub const UPDATE_STEPS: &[&str] = &[
    "begin",
    "stop-old",
    "rename-old",
    "disable-restart",
    "create-new",
    "start-new",
    "verify",
    "commit",
    "revert",
    "done",
];

struct Journal {
    kind: String,
    store: Arc<dyn StateStore>,
    operation: String,
    subject: String,
    seq: u32,
}

impl Journal {
    async fn record(&mut self, step: &Step) -> Result<(), Error> {
        let record = serde_json::to_value(step).map_err(|e| Error::InvalidInput {
            what: "journal record".into(),
            message: e.to_string(),
        })?;
        self.store
            .append_journal(&JournalEntry {
                operation: self.operation.clone(),
                subject: self.subject.clone(),
                seq: self.seq,
                at: OffsetDateTime::now_utc(),
                record,
            })
            .await?;
        self.seq += 1;
        let at = |var: &str| {
            std::env::var(var).is_ok_and(|s| s == step.name() || s == format!("{}:{}", self.kind, step.name()))
        };
        if at(CRASH_AT_ENV) {
            // Test hook: die as `kill -9` would, right after the intent is durable.
            std::process::abort();
        }
        if at(HOLD_AT_ENV) {
            if let Ok(file) = std::env::var(HOLD_FILE_ENV) {
                // Test hook: let a fault test change the engine between this step and the next.
                let _ = std::fs::write(format!("{file}.held"), step.name());
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while !Path::new(&file).exists() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Ok(())
    }
}

/// Where the new container comes from.
enum Source {
    Create(Box<ContainerSpec>),
    Retained {
        name: String,
        restart: RestartPolicy,
        spec: Box<ContainerSpec>,
    },
    /// A verified preview running beside the old container; it takes the name.
    Preview {
        name: String,
        spec: Box<ContainerSpec>,
        verdict: Box<Verdict>,
    },
}

impl Source {
    fn spec(&self) -> &ContainerSpec {
        match self {
            Source::Create(spec) | Source::Retained { spec, .. } | Source::Preview { spec, .. } => spec,
        }
    }

    /// The existing container that becomes the new one, if any (reverting renames it back).
    fn existing(&self) -> Option<String> {
        match self {
            Source::Create(_) => None,
            Source::Retained { name, .. } | Source::Preview { name, .. } => Some(name.clone()),
        }
    }
}

/// The store document kind of staged previews.
const PREVIEW_KIND: &str = "preview";

/// A verified new container running beside the old one under `NAME.preview`, waiting to take the name
/// (blue-green: on promotion; start-first: at once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The preview container's name.
    pub container: String,
    /// Its id (a different container under the name is not ours).
    pub container_id: String,
    /// The image it runs.
    pub image: ImageRef,
    /// The image id.
    pub image_id: Option<String>,
    /// The digest.
    pub digest: Option<Digest>,
    /// Why (recorded in the history on promotion).
    pub cause: String,
    /// The spec it takes on with the name.
    pub spec: ContainerSpec,
    /// The new image's defaults (for the faithfulness check after the switch).
    pub new_defaults: ImageDefaults,
    /// Its verification.
    pub verdict: Verdict,
    /// Start-first: the switch follows at once, so a preview left by a crash is discarded, not kept.
    pub switch_at_once: bool,
    /// When it was verified.
    #[serde(with = "time::serde::rfc3339")]
    pub staged_at: OffsetDateTime,
}

/// The name of a container's preview.
pub fn preview_name(container: &str) -> String {
    format!("{container}.preview")
}

/// What preflight found: either nothing to do, or everything the replacement needs.
enum Prepared {
    Unchanged(Box<UpdateReport>),
    Ready(Box<Ready>),
}

struct Ready {
    old: ContainerInfo,
    old_defaults: ImageDefaults,
    current: Revision,
    new_spec: ContainerSpec,
    meta: RevisionMeta,
    backup: Option<PathBuf>,
}

/// Updates, undoes and repairs agent containers on one engine.
pub struct Updater {
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<dyn StateStore>,
    reporter: Arc<dyn Reporter>,
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

fn retained_name(container: &str, revision: RevisionNumber) -> String {
    format!("{container}.rev{revision}")
}

/// The first 12 digits of an image or container id, without its `sha256:`.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// When `name` is one agentctl makes for another container (`NAME.revN`, the retained revision N of NAME, or
/// `NAME.preview`), that container's name and what the name is.
pub fn reserved_name_owner(name: &str) -> Option<(&str, String)> {
    if let Some(owner) = name.strip_suffix(".preview").filter(|o| !o.is_empty()) {
        return Some((owner, "its staged preview".to_owned()));
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

    fn subject(&self, container: &str) -> String {
        subject_key(self.runtime.endpoint(), container)
    }

    async fn lease(&self, container: &str, purpose: &str) -> Result<LeaseGuard, Error> {
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
        LeaseGuard::acquire(self.store.clone(), &self.subject(container), &holder)
            .await
            .map_err(Error::from)
    }

    /// The revision history of `container`.
    pub async fn history(&self, container: &ContainerName, limit: usize) -> Result<RevisionHistory, Error> {
        let revs = self.store.revisions(&self.subject(container.as_str())).await?;
        Ok(RevisionHistory::from_revisions(limit, revs))
    }

    /// Updates `req.container` to `req.image`: preflight, backup, stop/rename/create/start, verify, and
    /// commit or roll back. Interrupted operations on the container are repaired first.
    pub async fn update(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let lease = self.lease(req.container.as_str(), "update").await?;
        let result = self.update_locked(&lease, req).await;
        lease.release().await?;
        result
    }

    async fn update_locked(&self, lease: &LeaseGuard, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = req.container.as_str();
        let recovered = self.recover_locked(name).await?;
        let ready = match self.prepare(req).await? {
            Prepared::Unchanged(mut report) => {
                report.recovered = recovered;
                return Ok(*report);
            }
            Prepared::Ready(ready) => *ready,
        };
        let backup = ready.backup.clone();
        let mut report = match req.mode {
            UpdateMode::StopFirst => {
                self.replace(
                    lease,
                    "update",
                    &ready.old,
                    &ready.old_defaults,
                    ready.current.number,
                    Source::Create(Box::new(ready.new_spec)),
                    ready.meta,
                    req,
                )
                .await?
            }
            UpdateMode::StartFirst | UpdateMode::BlueGreen => match self.stage_ready(&ready, req, true).await? {
                Ok(preview) => self.promote_locked(lease, name, preview, req).await?,
                Err(failed) => failed,
            },
        };
        report.backup = backup;
        report.recovered = recovered;
        if let (Some(watch), UpdateStatus::Updated) = (&req.watch, report.status) {
            self.probation(lease, req, watch, &mut report).await?;
        }
        Ok(report)
    }

    /// Preflight: nothing is changed until every check passed. Then the backup, when asked for.
    async fn prepare(&self, req: &UpdateRequest) -> Result<Prepared, Error> {
        let name = req.container.as_str();
        let old = self.runtime.inspect_container(name).await?;
        if old.spec.engine.as_ref().is_some_and(EngineConfig::removed_when_stopped) {
            return Err(Error::InvalidInput {
                what: format!("the update of {name}"),
                message: format!(
                    "{name} was started with --rm (HostConfig.AutoRemove): the engine deletes it and its anonymous volumes as soon as it stops, so it cannot be kept for a rollback and nothing was changed; recreate it without --rm (e.g. with --restart unless-stopped), then update it"
                ),
            });
        }
        let current_version = Version::of_image(&old.spec.image, &old.all_labels);
        // The policy first, from the reference alone: a refused tag is never pulled.
        let tag_version = req.image.tag().and_then(|t| Version::parse(t.as_str()));
        req.policy
            .check(&req.image, tag_version.as_ref(), current_version.as_ref())?;
        let engine = self.runtime.engine_info().await?;
        let image_info = self.resolve_image(&req.image, req.pull).await?;
        let candidate = Version::of_image(&req.image, &image_info.defaults.labels);
        req.policy
            .check(&req.image, candidate.as_ref(), current_version.as_ref())?;
        if image_info.os != engine.os || image_info.arch != engine.arch {
            return Err(Error::PlatformMismatch {
                image: req.image.to_string(),
                image_platform: format!("{}/{}", image_info.os, image_info.arch),
                engine_platform: format!("{}/{}", engine.os, engine.arch),
            });
        }
        let digest = image_info
            .digest_for(&req.image)
            .or_else(|| req.image.digest().cloned());
        self.reporter.report(&Event::Preflight {
            container: name.to_owned(),
            from: old.spec.image.to_string(),
            to: req.image.to_string(),
            digest: digest.as_ref().map(Digest::to_string),
        });
        let old_defaults = self
            .runtime
            .inspect_image(&old.image_id)
            .await
            .map(|i| i.defaults)
            .unwrap_or_default();
        let mut new_spec = old.spec.with_image(req.image.clone(), &old_defaults);
        if old.image_id == image_info.id && old.spec.image == req.image {
            let history = self.history(&req.container, req.history_limit).await?;
            let revision = self.adopt(name, &old, history).await?;
            return Ok(Prepared::Unchanged(Box::new(UpdateReport {
                container: name.to_owned(),
                endpoint: self.runtime.endpoint().to_owned(),
                status: UpdateStatus::Unchanged,
                previous: Some(revision.number),
                revision,
                verdict: None,
                unexpected_changes: SpecDiff::default(),
                reason: Some("the container already runs this image".into()),
                last_logs: Vec::new(),
                backup: None,
                recovered: Vec::new(),
                probation: None,
                restored_by: None,
            })));
        }
        new_spec.image = req.image.clone();
        if req.mode != UpdateMode::StopFirst {
            let exclusive = new_spec.exclusive_resources();
            if !exclusive.is_empty() {
                return Err(Error::InvalidInput {
                    what: format!("the start-first update of {name}"),
                    message: format!(
                        "it runs two instances at once, but {name} holds what only one container can: {}; use the stop-first update (the default) for it",
                        exclusive.join(", ")
                    ),
                });
            }
        }

        let history = self.history(&req.container, req.history_limit).await?;
        let current = self.adopt(name, &old, history).await?;
        self.ensure_retained_name_free(name, &retained_name(name, current.number))
            .await?;
        let backup = match &req.backup_dir {
            Some(dir) => Some(self.backup(dir, &old, current.number).await?),
            None => None,
        };
        let cause = req
            .cause
            .clone()
            .unwrap_or_else(|| format!("update to {}", req.image.familiar()));
        Ok(Prepared::Ready(Box::new(Ready {
            old,
            old_defaults,
            current,
            new_spec,
            meta: RevisionMeta {
                image: req.image.clone(),
                image_id: Some(image_info.id.clone()),
                digest,
                cause,
                new_defaults: image_info.defaults.clone(),
            },
            backup,
        })))
    }

    /// Creates a target that does not exist yet from `spec` (a rollout's `template`), verifies it like an
    /// update and records it as the container's first revision. A failing one is removed again (status
    /// rolled back): nothing was there before. `previous` is `None` in the report.
    pub async fn install(&self, spec: &ContainerSpec, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = spec.name.as_str();
        let lease = self.lease(name, "install").await?;
        let result = self.install_locked(spec, req).await;
        lease.release().await?;
        result
    }

    async fn install_locked(&self, spec: &ContainerSpec, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = spec.name.as_str();
        let recovered = self.recover_locked(name).await?;
        match self.runtime.inspect_container(name).await {
            Ok(_) => {
                return Err(Error::InvalidInput {
                    what: format!("the install of {name}"),
                    message: "a container with that name exists already; update it instead".into(),
                })
            }
            Err(RuntimeError::ContainerNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let tag_version = spec.image.tag().and_then(|t| Version::parse(t.as_str()));
        req.policy.check(&spec.image, tag_version.as_ref(), None)?;
        let engine = self.runtime.engine_info().await?;
        let image_info = self.resolve_image(&spec.image, req.pull).await?;
        if image_info.os != engine.os || image_info.arch != engine.arch {
            return Err(Error::PlatformMismatch {
                image: spec.image.to_string(),
                image_platform: format!("{}/{}", image_info.os, image_info.arch),
                engine_platform: format!("{}/{}", engine.os, engine.arch),
            });
        }
        let meta = RevisionMeta {
            image: spec.image.clone(),
            image_id: Some(image_info.id.clone()),
            digest: image_info
                .digest_for(&spec.image)
                .or_else(|| spec.image.digest().cloned()),
            cause: req
                .cause
                .clone()
                .unwrap_or_else(|| format!("installed {}", spec.image.familiar())),
            new_defaults: image_info.defaults.clone(),
        };
        let subject = self.subject(name);
        let history = self.history(&spec.name, req.history_limit).await?;
        let mut revision = new_revision(history.next_number(), &meta, spec.clone());
        self.store.put_revision(&subject, &revision).await?;
        let mut journal = Journal {
            kind: "install".into(),
            store: self.store.clone(),
            operation: format!("install-{name}-{}", OffsetDateTime::now_utc().unix_timestamp_nanos()),
            subject: subject.clone(),
            seq: 0,
        };
        journal
            .record(&Step::Begin {
                kind: "install".into(),
                container: name.to_owned(),
                old_id: String::new(),
                old_running: false,
                old_restart: RestartPolicy::No,
                old_revision: 0,
                new_revision: revision.number.get(),
                retained_name: String::new(),
                from_retained: None,
            })
            .await?;
        journal.record(&Step::CreateNew).await?;
        self.reporter.report(&Event::Step {
            step: "create-new",
            detail: format!("creating {name} from {} (it did not exist)", spec.image),
        });
        let started = async {
            self.runtime.create_container(spec).await?;
            journal.record(&Step::StartNew).await?;
            self.runtime.start_container(name).await?;
            Ok::<_, Error>(self.runtime.inspect_container(name).await?.id)
        }
        .await;
        let (verdict, diff, failure) = match started {
            Err(e) => (None, SpecDiff::default(), Some(e.to_string())),
            Ok(id) => {
                journal.record(&Step::Verify).await?;
                req.notify_started();
                let verdict = self
                    .verify(name, &id, &req.verify, req.extra_probes.as_ref(), &meta)
                    .await?;
                // Nothing ran before, so there is no configuration to be faithful to: record what the engine
                // made of the template (its log and network defaults included) as the revision's spec.
                revision.spec = self.runtime.inspect_container(name).await?.spec;
                let diff = SpecDiff::default();
                let failure = judge(&verdict, &diff);
                (Some(verdict), diff, failure)
            }
        };
        let unverified = verdict
            .as_ref()
            .filter(|v| failure.is_none() && v.outcome == VerdictOutcome::Inconclusive)
            .map(|v| format!("verification inconclusive: {}", v.reason));
        let status = match &failure {
            None => {
                journal.record(&Step::Commit).await?;
                match &unverified {
                    Some(reason) => {
                        revision.outcome = Outcome::Unverified { reason: reason.clone() };
                        UpdateStatus::Unverified
                    }
                    None => {
                        revision.outcome = Outcome::Succeeded;
                        UpdateStatus::Updated
                    }
                }
            }
            Some(reason) => {
                self.reporter.report(&Event::RollingBack { reason: reason.clone() });
                journal.record(&Step::Revert { reason: reason.clone() }).await?;
                self.remove_if(name, |_| true).await.map_err(|e| Error::RevertFailed {
                    container: name.to_owned(),
                    reason: reason.clone(),
                    error: e.to_string(),
                })?;
                revision.outcome = Outcome::RolledBack {
                    reason: format!("the new container was removed again: {reason}"),
                };
                UpdateStatus::RolledBack
            }
        };
        revision.finished_at = Some(OffsetDateTime::now_utc());
        self.store.put_revision(&subject, &revision).await?;
        journal
            .record(&Step::Done {
                outcome: if failure.is_none() { "installed" } else { "rolled-back" }.into(),
            })
            .await?;
        self.store.close_operation(&journal.operation).await?;
        Ok(UpdateReport {
            container: name.to_owned(),
            endpoint: self.runtime.endpoint().to_owned(),
            status,
            revision,
            previous: None,
            verdict,
            unexpected_changes: diff,
            reason: failure.or(unverified),
            last_logs: Vec::new(),
            backup: None,
            recovered,
            probation: None,
            restored_by: None,
        })
    }

    /// Takes back an [`Updater::install`]: stops and removes the container (nothing was there before) and
    /// records its revision as rolled back with `reason`.
    pub async fn uninstall(&self, container: &ContainerName, reason: &str) -> Result<(), Error> {
        let name = container.as_str();
        let lease = self.lease(name, "uninstall").await?;
        let result = async {
            self.recover_locked(name).await?;
            self.remove_if(name, |_| true).await?;
            let subject = self.subject(name);
            let history = self.history(container, usize::MAX).await?;
            if let Some(mut r) = history.current().cloned() {
                r.outcome = Outcome::RolledBack {
                    reason: reason.to_owned(),
                };
                self.store.put_revision(&subject, &r).await?;
            }
            self.reporter.report(&Event::Step {
                step: "uninstall",
                detail: format!("removed {name}: {reason}"),
            });
            Ok(())
        }
        .await;
        lease.release().await?;
        result
    }

    /// The old container is retained under `retained`: a container already there is not ours to touch.
    async fn ensure_retained_name_free(&self, name: &str, retained: &str) -> Result<(), Error> {
        match self.runtime.inspect_container(retained).await {
            Ok(_) => Err(Error::InvalidInput {
                what: format!("the container name {retained}"),
                message: format!(
                    "a container with that name already exists, and agentctl keeps the old {name} there as its rollback target; rename or remove it, then run the command again"
                ),
            }),
            Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Blue-green, first half: starts the new version beside the untouched old container as `NAME.preview`
    /// and verifies it. Healthy, it keeps running until [`Updater::promote`] (status `staged`); unhealthy, it
    /// is removed and the attempt recorded as rolled back. The old container is not touched either way.
    pub async fn stage(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let lease = self.lease(req.container.as_str(), "stage").await?;
        let result = async {
            let recovered = self.recover_locked(req.container.as_str()).await?;
            let mut req = req.clone();
            req.mode = UpdateMode::BlueGreen;
            let ready = match self.prepare(&req).await? {
                Prepared::Unchanged(report) => return Ok(*report),
                Prepared::Ready(ready) => *ready,
            };
            let history = self.history(&req.container, req.history_limit).await?;
            let mut report = match self.stage_ready(&ready, &req, false).await? {
                Err(failed) => failed,
                Ok(preview) => UpdateReport {
                    container: req.container.to_string(),
                    endpoint: self.runtime.endpoint().to_owned(),
                    status: UpdateStatus::Staged,
                    revision: Revision {
                        // The number promotion will record; nothing is recorded before.
                        number: history.next_number(),
                        image: preview.image.clone(),
                        image_id: preview.image_id.clone(),
                        digest: preview.digest.clone(),
                        spec: preview.spec.clone(),
                        cause: preview.cause.clone(),
                        created_at: preview.staged_at,
                        finished_at: None,
                        outcome: Outcome::InProgress,
                        protected: false,
                        retained_container: None,
                        retained_container_id: None,
                    },
                    previous: Some(ready.current.number),
                    verdict: Some(preview.verdict.clone()),
                    unexpected_changes: SpecDiff::default(),
                    reason: None,
                    last_logs: Vec::new(),
                    backup: None,
                    recovered: Vec::new(),
                    probation: None,
                    restored_by: None,
                },
            };
            report.backup = ready.backup;
            report.recovered = recovered;
            Ok(report)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Blue-green, second half: the staged preview takes the container's name; the old container is stopped
    /// and retained as for any update. Recorded as a new revision.
    pub async fn promote(&self, req: &UpdateRequest) -> Result<UpdateReport, Error> {
        let name = req.container.as_str();
        let lease = self.lease(name, "promote").await?;
        let result = async {
            let recovered = self.recover_locked(name).await?;
            let preview = self.preview(name).await?.ok_or_else(|| Error::InvalidInput {
                what: format!("the promotion of {name}"),
                message: format!("no preview of {name} is staged; stage one first (a blueGreen rollout does)"),
            })?;
            let mut report = self.promote_locked(&lease, name, preview, req).await?;
            report.recovered = recovered;
            Ok(report)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Removes the staged preview of `container`, if any; the running container is not touched. Returns
    /// whether there was one.
    pub async fn discard(&self, container: &ContainerName) -> Result<bool, Error> {
        let name = container.as_str();
        let lease = self.lease(name, "discard").await?;
        let result = async {
            self.recover_locked(name).await?;
            self.discard_locked(name).await
        }
        .await;
        lease.release().await?;
        result
    }

    /// The staged preview of `container`, if one is waiting.
    pub async fn preview(&self, container: &str) -> Result<Option<Preview>, Error> {
        let doc = self.store.document(PREVIEW_KIND, &self.subject(container)).await?;
        Ok(doc.and_then(|v| serde_json::from_value(v).ok()))
    }

    async fn set_preview(&self, container: &str, preview: Option<&Preview>) -> Result<(), Error> {
        let value = match preview {
            Some(p) => serde_json::to_value(p).map_err(|e| Error::InvalidInput {
                what: "preview record".into(),
                message: e.to_string(),
            })?,
            None => serde_json::Value::Null,
        };
        self.store
            .put_document(PREVIEW_KIND, &self.subject(container), &value)
            .await?;
        Ok(())
    }

    async fn discard_locked(&self, name: &str) -> Result<bool, Error> {
        let Some(preview) = self.preview(name).await? else {
            return Ok(false);
        };
        self.remove_if(&preview.container, |id| id == preview.container_id)
            .await?;
        self.set_preview(name, None).await?;
        self.reporter.report(&Event::Step {
            step: "discard-preview",
            detail: format!("removed {}", preview.container),
        });
        Ok(true)
    }

    /// Stops and removes `container` when it exists and `ours` accepts its id.
    async fn remove_if(&self, container: &str, ours: impl Fn(&str) -> bool) -> Result<(), RuntimeError> {
        match self.runtime.inspect_container(container).await {
            Ok(info) if ours(&info.id) => {
                self.runtime
                    .stop_container(container, Some(Duration::from_secs(10)))
                    .await?;
                self.runtime.remove_container(container).await
            }
            Ok(_) | Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates, starts and verifies the preview. `Ok(Err(report))`: it failed and was removed.
    async fn stage_ready(
        &self,
        ready: &Ready,
        req: &UpdateRequest,
        switch_at_once: bool,
    ) -> Result<Result<Preview, UpdateReport>, Error> {
        let name = ready.old.spec.name.as_str();
        let preview_name = preview_name(name);
        let mut spec = ready.new_spec.clone();
        spec.name = preview_name
            .parse()
            .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
                what: format!("the preview name of {name}"),
                message: format!("{e}; shorten the container name to use start-first or blue-green"),
            })?;
        // A preview left by an earlier attempt is replaced; a stranger's container under the name is not.
        if let Ok(info) = self.runtime.inspect_container(&preview_name).await {
            let ours = self.preview(name).await?.is_some_and(|p| p.container_id == info.id);
            if !ours {
                return Err(Error::InvalidInput {
                    what: format!("the container name {preview_name}"),
                    message: format!(
                        "a container with that name exists and is not a preview agentctl staged; rename or remove it so the new version of {name} can start beside the old one"
                    ),
                });
            }
            self.discard_locked(name).await?;
        }
        let subject = self.subject(name);
        let mut journal = Journal {
            kind: "stage".into(),
            store: self.store.clone(),
            operation: format!("stage-{name}-{}", OffsetDateTime::now_utc().unix_timestamp_nanos()),
            subject: subject.clone(),
            seq: 0,
        };
        journal
            .record(&Step::Begin {
                kind: "stage".into(),
                container: name.to_owned(),
                old_id: ready.old.id.clone(),
                old_running: ready.old.state.is_running(),
                old_restart: ready.old.spec.restart_policy,
                old_revision: ready.current.number.get(),
                new_revision: 0,
                retained_name: preview_name.clone(),
                from_retained: None,
            })
            .await?;
        journal.record(&Step::CreateNew).await?;
        self.reporter.report(&Event::Step {
            step: "create-new",
            detail: format!("creating {preview_name} from {} beside {name}", spec.image),
        });
        let started = async {
            self.runtime.create_container(&spec).await?;
            journal.record(&Step::StartNew).await?;
            self.reporter.report(&Event::Step {
                step: "start-new",
                detail: format!("starting {preview_name}"),
            });
            self.runtime.start_container(&preview_name).await?;
            Ok::<_, Error>(self.runtime.inspect_container(&preview_name).await?.id)
        }
        .await;
        let (verdict, diff, failure, id) = match started {
            Err(e) => (None, SpecDiff::default(), Some(e.to_string()), None),
            Ok(id) => {
                journal.record(&Step::Verify).await?;
                let verdict = self
                    .verify(&preview_name, &id, &req.verify, req.extra_probes.as_ref(), &ready.meta)
                    .await?;
                let diff = self
                    .faithfulness(&preview_name, &spec, &ready.old_defaults, &ready.meta.new_defaults)
                    .await?;
                let failure = judge(&verdict, &diff);
                (Some(verdict), diff, failure, Some(id))
            }
        };
        if let (None, Some(verdict), Some(id)) = (&failure, &verdict, id) {
            let preview = Preview {
                container: preview_name,
                container_id: id,
                image: ready.meta.image.clone(),
                image_id: ready.meta.image_id.clone(),
                digest: ready.meta.digest.clone(),
                cause: ready.meta.cause.clone(),
                spec: ready.new_spec.clone(),
                new_defaults: ready.meta.new_defaults.clone(),
                verdict: verdict.clone(),
                switch_at_once,
                staged_at: OffsetDateTime::now_utc(),
            };
            self.set_preview(name, Some(&preview)).await?;
            journal
                .record(&Step::Done {
                    outcome: "staged".into(),
                })
                .await?;
            self.store.close_operation(&journal.operation).await?;
            return Ok(Ok(preview));
        }
        let reason = failure.unwrap_or_default();
        self.reporter.report(&Event::RollingBack { reason: reason.clone() });
        let last_logs = self
            .runtime
            .logs(&preview_name, None, Some(20))
            .await
            .map(|l| l.into_iter().map(|l| l.text).collect())
            .unwrap_or_default();
        journal.record(&Step::Revert { reason: reason.clone() }).await?;
        let old_id = ready.old.id.clone();
        self.remove_if(&preview_name, |id| id != old_id)
            .await
            .map_err(|e| Error::RevertFailed {
                container: preview_name.clone(),
                reason: reason.clone(),
                error: e.to_string(),
            })?;
        let history = self.history(&req.container, req.history_limit).await?;
        let mut revision = new_revision(history.next_number(), &ready.meta, ready.new_spec.clone());
        revision.outcome = Outcome::RolledBack {
            reason: format!("the preview failed; {name} was not touched: {reason}"),
        };
        revision.finished_at = Some(OffsetDateTime::now_utc());
        self.store.put_revision(&subject, &revision).await?;
        journal
            .record(&Step::Done {
                outcome: "rolled-back".into(),
            })
            .await?;
        self.store.close_operation(&journal.operation).await?;
        Ok(Err(UpdateReport {
            container: name.to_owned(),
            endpoint: self.runtime.endpoint().to_owned(),
            status: UpdateStatus::RolledBack,
            revision,
            previous: Some(ready.current.number),
            verdict,
            unexpected_changes: diff,
            reason: Some(reason),
            last_logs,
            backup: None,
            recovered: Vec::new(),
            probation: None,
            restored_by: None,
        }))
    }

    /// The preview takes the name: the old container is stopped and retained as for any update.
    async fn promote_locked(
        &self,
        lease: &LeaseGuard,
        name: &str,
        preview: Preview,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let gone = || Error::InvalidInput {
            what: format!("the promotion of {name}"),
            message: format!(
                "its preview {} is gone or was replaced; stage it again",
                preview.container
            ),
        };
        match self.runtime.inspect_container(&preview.container).await {
            Ok(info) if info.id == preview.container_id => {}
            Ok(_) | Err(RuntimeError::ContainerNotFound { .. }) => return Err(gone()),
            Err(e) => return Err(e.into()),
        }
        let container: ContainerName =
            name.parse()
                .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
                    what: "container".into(),
                    message: e.to_string(),
                })?;
        let old = self.runtime.inspect_container(name).await?;
        let old_defaults = self
            .runtime
            .inspect_image(&old.image_id)
            .await
            .map(|i| i.defaults)
            .unwrap_or_default();
        let history = self.history(&container, req.history_limit).await?;
        let current = self.adopt(name, &old, history).await?;
        let report = self
            .replace(
                lease,
                "promote",
                &old,
                &old_defaults,
                current.number,
                Source::Preview {
                    name: preview.container.clone(),
                    spec: Box::new(preview.spec.clone()),
                    verdict: Box::new(preview.verdict.clone()),
                },
                RevisionMeta {
                    image: preview.image.clone(),
                    image_id: preview.image_id.clone(),
                    digest: preview.digest.clone(),
                    cause: preview.cause.clone(),
                    new_defaults: preview.new_defaults.clone(),
                },
                req,
            )
            .await?;
        if report.status == UpdateStatus::Updated {
            self.set_preview(name, None).await?;
        } else {
            // It failed after taking the name and was put back: of no further use.
            self.discard_locked(name).await?;
        }
        Ok(report)
    }

    /// Goes back to `to` (default: the last known-good revision before the current one), from its retained
    /// container when it still exists, else recreated from its snapshot. Recorded as a new revision.
    pub async fn undo(
        &self,
        container: &ContainerName,
        to: Option<RevisionNumber>,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let lease = self.lease(container.as_str(), "undo").await?;
        let result = self.undo_locked(&lease, container, to, req).await;
        lease.release().await?;
        result
    }

    async fn undo_locked(
        &self,
        lease: &LeaseGuard,
        container: &ContainerName,
        to: Option<RevisionNumber>,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let name = container.as_str();
        let recovered = self.recover_locked(name).await?;
        let history = self.history(container, req.history_limit).await?;
        let old = self.runtime.inspect_container(name).await?;
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
        let old_defaults = self
            .runtime
            .inspect_image(&old.image_id)
            .await
            .map(|i| i.defaults)
            .unwrap_or_default();
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
        let (source, image_id, new_defaults) = if retained_ok {
            let r = target.retained_container.clone().unwrap_or_default();
            let info = self.runtime.inspect_container(&r).await?;
            let defaults = self
                .runtime
                .inspect_image(&info.image_id)
                .await
                .map(|i| i.defaults)
                .unwrap_or_default();
            let mut spec = target.spec.clone();
            spec.name = container.clone();
            (
                Source::Retained {
                    name: r,
                    restart: target.spec.restart_policy,
                    spec: Box::new(spec),
                },
                Some(info.image_id),
                defaults,
            )
        } else {
            let mut spec = target.spec.clone();
            spec.name = container.clone();
            let missing = spec.restore_secrets(&old.spec);
            if !missing.is_empty() {
                return Err(Error::SecretsUnknown {
                    container: name.to_owned(),
                    revision: target.number,
                    names: missing,
                });
            }
            let info = self.resolve_image(&target.image, req.pull).await?;
            (Source::Create(Box::new(spec)), Some(info.id), info.defaults)
        };
        let report = self
            .replace(
                lease,
                "undo",
                &old,
                &old_defaults,
                current.number,
                source,
                RevisionMeta {
                    image: target.image.clone(),
                    image_id,
                    digest: target.digest.clone(),
                    cause: req
                        .cause
                        .clone()
                        .unwrap_or_else(|| format!("undo to revision {}", target.number)),
                    new_defaults,
                },
                req,
            )
            .await;
        let mut report = report?;
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
            Err(e) => return Err(e.into()),
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

    /// Watches the new revision; when a rule fires, goes back to the previous revision and records why.
    async fn probation(
        &self,
        lease: &LeaseGuard,
        req: &UpdateRequest,
        watch: &WatchConfig,
        report: &mut UpdateReport,
    ) -> Result<(), Error> {
        let name = req.container.as_str();
        let mut probes = req.verify.probes()?;
        if let Some(f) = &req.extra_probes {
            probes.extend(f());
        }
        let rules: Vec<AlertRule> = probes
            .into_iter()
            .map(|p| AlertRule {
                name: p.name().to_owned(),
                probe: p,
                for_: watch.alert_for,
            })
            .collect();
        self.reporter.report(&Event::Watching {
            container: name.to_owned(),
            window: agent_core::format_duration(watch.window),
            rules: rules.iter().map(|r| r.name.clone()).collect(),
        });
        let info = self.runtime.inspect_container(name).await?;
        let ctx = ProbeContext {
            runtime: self.runtime.clone(),
            container: name.to_owned(),
            started_at: info.state.started_at.unwrap_or_else(OffsetDateTime::now_utc) - Duration::from_secs(1),
            baseline_restarts: info.state.restart_count,
            expected_version: Version::of_image(&report.revision.image, &BTreeMap::new()).map(|v| v.to_string()),
            container_id: Some(info.id.clone()),
        };
        let probation = Probation {
            window: watch.window,
            period: watch.period,
            rules,
        };
        let reporter = self.reporter.clone();
        let outcome = probation
            .watch(&ctx, &move |m| reporter.report(&Event::AlertPending(m.to_owned())))
            .await;
        report.probation = Some(outcome.clone());
        let ProbationOutcome::Fired(alert) = outcome else {
            return Ok(());
        };
        let reason = format!(
            "probation: rule {} fired after {} failing: {}",
            alert.rule,
            agent_core::format_duration(alert.pending_for),
            alert.reason
        );
        self.reporter.report(&Event::RollingBack { reason: reason.clone() });
        let mut back = req.clone();
        back.watch = None;
        back.cause = Some(format!("rollback after {reason}"));
        let undo = self.undo_locked(lease, &req.container, report.previous, &back).await?;
        let subject = self.subject(name);
        let mut failed = report.revision.clone();
        failed.outcome = Outcome::RolledBack { reason: reason.clone() };
        self.store.put_revision(&subject, &failed).await?;
        report.revision = failed;
        report.status = UpdateStatus::RolledBack;
        report.reason = Some(reason);
        report.restored_by = Some(undo.revision.number);
        Ok(())
    }

    async fn resolve_image(&self, image: &ImageRef, pull: PullPolicy) -> Result<ImageInfo, Error> {
        let local = match self.runtime.inspect_image(&image.pull_ref()).await {
            Ok(i) => Some(i),
            Err(RuntimeError::ImageNotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let must_pull = match pull {
            PullPolicy::Always => true,
            PullPolicy::Never => false,
            PullPolicy::Missing => local.is_none(),
        };
        if !must_pull {
            return local.ok_or_else(|| {
                Error::Runtime(RuntimeError::ImageNotFound {
                    image: image.to_string(),
                    message: "it is not on the engine and the pull policy is `never`".into(),
                })
            });
        }
        // A registry hiccup is retried with backoff; a missing image or a refused pull is not.
        let pull = || async {
            let reporter = self.reporter.clone();
            self.runtime
                .pull_image(image, &move |p| reporter.report(&Event::Pull(p)))
                .await
        };
        let info = pull
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(3),
            )
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, RuntimeError::PullFailed { .. } | RuntimeError::Unavailable { .. }))
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "pull failed; retrying"))
            .await?;
        self.reporter.report(&Event::Pulled {
            image: image.to_string(),
            digest: info.digest_for(image).map(|d| d.to_string()),
        });
        Ok(info)
    }

    /// Makes sure the running container has a revision (the first time agentctl sees it, it is adopted as
    /// revision 1) and returns the current revision.
    async fn adopt(&self, name: &str, old: &ContainerInfo, history: RevisionHistory) -> Result<Revision, Error> {
        if let Some(cur) = history.current() {
            return Ok(cur.clone());
        }
        let image_info = self.runtime.inspect_image(&old.image_id).await.ok();
        let rev = Revision {
            number: history.next_number(),
            image: old.spec.image.clone(),
            image_id: Some(old.image_id.clone()),
            digest: image_info.as_ref().and_then(|i| i.digest_for(&old.spec.image)),
            spec: old.spec.clone(),
            cause: "adopted: running before agentctl managed it".into(),
            created_at: OffsetDateTime::now_utc(),
            finished_at: Some(OffsetDateTime::now_utc()),
            outcome: Outcome::Succeeded,
            protected: false,
            retained_container: None,
            retained_container_id: None,
        };
        self.store.put_revision(&self.subject(name), &rev).await?;
        Ok(rev)
    }

    async fn backup(&self, dir: &Path, old: &ContainerInfo, revision: RevisionNumber) -> Result<PathBuf, Error> {
        let name = old.spec.name.as_str();
        let target = dir.join(format!(
            "{name}-rev{revision}-{}",
            OffsetDateTime::now_utc().unix_timestamp()
        ));
        let err = |e: std::io::Error| Error::Backup {
            path: target.clone(),
            message: e.to_string(),
        };
        // The owner's only (0700/0600): a config file that was 0600 on the host must not become readable here.
        crate::files::private_dir(dir).map_err(err)?;
        crate::files::private_dir(&target).map_err(err)?;
        let spec = serde_json::to_vec_pretty(&old.spec).unwrap_or_default();
        crate::files::write_private(&target.join("spec.json"), &spec).map_err(err)?;
        let mut files = 0;
        for m in old.spec.mounts.iter().filter(|m| m.carries_data()) {
            let tar = self.runtime.export_path(name, &m.target).await?;
            let file = target.join(format!("{}.tar", m.target.trim_matches('/').replace('/', "_")));
            crate::files::write_private(&file, &tar).map_err(err)?;
            files += 1;
        }
        self.reporter.report(&Event::BackedUp {
            path: target.display().to_string(),
            mounts: files,
        });
        Ok(target)
    }

    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        lease: &LeaseGuard,
        kind: &str,
        old: &ContainerInfo,
        old_defaults: &ImageDefaults,
        old_revision: RevisionNumber,
        source: Source,
        meta: RevisionMeta,
        req: &UpdateRequest,
    ) -> Result<UpdateReport, Error> {
        let name = old.spec.name.as_str();
        let subject = self.subject(name);
        let history = self.history(&old.spec.name, req.history_limit).await?;
        let number = history.next_number();
        let retained = retained_name(name, old_revision);
        let mut journal = Journal {
            kind: kind.to_owned(),
            store: self.store.clone(),
            operation: format!(
                "{kind}-{name}-{number}-{}",
                OffsetDateTime::now_utc().unix_timestamp_nanos()
            ),
            subject: subject.clone(),
            seq: 0,
        };
        self.ensure_retained_name_free(name, &retained).await?;
        let mut revision = new_revision(number, &meta, source.spec().clone());
        self.store.put_revision(&subject, &revision).await?;
        journal
            .record(&Step::Begin {
                kind: kind.to_owned(),
                container: name.to_owned(),
                old_id: old.id.clone(),
                old_running: old.state.is_running(),
                old_restart: old.spec.restart_policy,
                old_revision: old_revision.get(),
                new_revision: number.get(),
                retained_name: retained.clone(),
                from_retained: source.existing(),
            })
            .await?;

        let attempt = self.swap_in(&mut journal, old, &retained, &source).await;
        let (verdict, diff, failure) = match attempt {
            Err(e) => (None, SpecDiff::default(), Some(format!("{e}"))),
            Ok(new_id) => {
                if lease.is_lost() {
                    return Err(Error::Busy {
                        message: "the lease on the container was lost during the update; re-run the command to repair"
                            .into(),
                    });
                }
                journal.record(&Step::Verify).await?;
                req.notify_started();
                let verdict = match &source {
                    // Verified as a preview already; it only has to have survived the switch.
                    Source::Preview { verdict, .. } => {
                        let info = self.runtime.inspect_container(name).await?;
                        let mut verdict = (**verdict).clone();
                        if !info.state.is_running() {
                            verdict.outcome = VerdictOutcome::Unhealthy;
                            verdict.reason = format!("the preview stopped during the switch ({:?})", info.state.status);
                        }
                        verdict
                    }
                    _ => {
                        self.verify(name, &new_id, &req.verify, req.extra_probes.as_ref(), &meta)
                            .await?
                    }
                };
                let diff = match &source {
                    Source::Create(spec) | Source::Preview { spec, .. } => {
                        self.faithfulness(name, spec, old_defaults, &meta.new_defaults).await?
                    }
                    Source::Retained { .. } => SpecDiff::default(),
                };
                let failure = judge(&verdict, &diff);
                (Some(verdict), diff, failure)
            }
        };

        let unverified = verdict
            .as_ref()
            .filter(|v| v.outcome == VerdictOutcome::Inconclusive)
            .map(|v| format!("verification inconclusive: {}", v.reason));
        match failure {
            None => {
                journal.record(&Step::Commit).await?;
                revision.outcome = match &unverified {
                    Some(reason) => Outcome::Unverified { reason: reason.clone() },
                    None => Outcome::Succeeded,
                };
                revision.finished_at = Some(OffsetDateTime::now_utc());
                self.store.put_revision(&subject, &revision).await?;
                let mut history = self.history(&old.spec.name, req.history_limit).await?;
                // Either way, the container that ran before is now retained under `retained`.
                if let Some(prev) = history.get_mut(old_revision) {
                    prev.retained_container = Some(retained.clone());
                    prev.retained_container_id = Some(old.id.clone());
                    let prev = prev.clone();
                    self.store.put_revision(&subject, &prev).await?;
                }
                // The revision we came back to no longer has a retained container: it runs.
                if let Source::Retained { name: from, .. } = &source {
                    if let Some(r) = history
                        .revisions()
                        .iter()
                        .find(|r| r.retained_container.as_deref() == Some(from))
                        .cloned()
                    {
                        let mut r = r;
                        r.retained_container = None;
                        r.retained_container_id = None;
                        self.store.put_revision(&subject, &r).await?;
                    }
                }
                let mut history = self.history(&old.spec.name, req.history_limit).await?;
                self.prune(&subject, &mut history).await?;
                journal
                    .record(&Step::Done {
                        outcome: "succeeded".into(),
                    })
                    .await?;
                self.store.close_operation(&journal.operation).await?;
                Ok(UpdateReport {
                    container: name.to_owned(),
                    endpoint: self.runtime.endpoint().to_owned(),
                    status: if unverified.is_some() {
                        UpdateStatus::Unverified
                    } else {
                        UpdateStatus::Updated
                    },
                    revision,
                    previous: Some(old_revision),
                    verdict,
                    unexpected_changes: diff,
                    reason: unverified,
                    last_logs: Vec::new(),
                    backup: None,
                    recovered: Vec::new(),
                    probation: None,
                    restored_by: None,
                })
            }
            Some(reason) => {
                self.reporter.report(&Event::RollingBack { reason: reason.clone() });
                let last_logs = self
                    .runtime
                    .logs(name, None, Some(20))
                    .await
                    .map(|l| l.into_iter().map(|l| l.text).collect())
                    .unwrap_or_default();
                journal.record(&Step::Revert { reason: reason.clone() }).await?;
                let begin = BeginFacts {
                    old_id: old.id.clone(),
                    old_running: old.state.is_running(),
                    old_restart: old.spec.restart_policy,
                    retained: retained.clone(),
                    from_retained: source.existing(),
                };
                self.revert(name, &begin).await.map_err(|e| Error::RevertFailed {
                    container: name.to_owned(),
                    reason: reason.clone(),
                    error: e.to_string(),
                })?;
                revision.outcome = Outcome::RolledBack { reason: reason.clone() };
                revision.finished_at = Some(OffsetDateTime::now_utc());
                self.store.put_revision(&subject, &revision).await?;
                journal
                    .record(&Step::Done {
                        outcome: "rolled-back".into(),
                    })
                    .await?;
                self.store.close_operation(&journal.operation).await?;
                Ok(UpdateReport {
                    container: name.to_owned(),
                    endpoint: self.runtime.endpoint().to_owned(),
                    status: UpdateStatus::RolledBack,
                    revision,
                    previous: Some(old_revision),
                    verdict,
                    unexpected_changes: diff,
                    reason: Some(reason),
                    last_logs,
                    backup: None,
                    recovered: Vec::new(),
                    probation: None,
                    restored_by: None,
                })
            }
        }
    }

    /// Stops and retains the old container and starts the new one. Returns the new container's id.
    async fn swap_in(
        &self,
        journal: &mut Journal,
        old: &ContainerInfo,
        retained: &str,
        source: &Source,
    ) -> Result<String, Error> {
        let name = old.spec.name.as_str();
        journal.record(&Step::StopOld).await?;
        self.reporter.report(&Event::Step {
            step: "stop-old",
            detail: format!("stopping {name}"),
        });
        self.runtime.stop_container(name, old.spec.stop_timeout).await?;
        journal.record(&Step::RenameOld).await?;
        self.reporter.report(&Event::Step {
            step: "rename-old",
            detail: format!("{name} -> {retained}"),
        });
        self.runtime.rename_container(name, retained).await?;
        journal.record(&Step::DisableRestart).await?;
        self.runtime.set_restart_policy(retained, RestartPolicy::No).await?;
        journal.record(&Step::CreateNew).await?;
        match source {
            Source::Create(spec) => {
                self.reporter.report(&Event::Step {
                    step: "create-new",
                    detail: format!("creating {name} from {}", spec.image),
                });
                self.runtime.create_container(spec).await?;
            }
            Source::Retained {
                name: from, restart, ..
            } => {
                self.reporter.report(&Event::Step {
                    step: "create-new",
                    detail: format!("{from} -> {name}"),
                });
                self.runtime.rename_container(from, name).await?;
                self.runtime.set_restart_policy(name, *restart).await?;
            }
            Source::Preview { name: from, .. } => {
                self.reporter.report(&Event::Step {
                    step: "create-new",
                    detail: format!("{from} -> {name} (already running and verified)"),
                });
                self.runtime.rename_container(from, name).await?;
            }
        }
        journal.record(&Step::StartNew).await?;
        self.reporter.report(&Event::Step {
            step: "start-new",
            detail: format!("starting {name}"),
        });
        self.runtime.start_container(name).await?;
        Ok(self.runtime.inspect_container(name).await?.id)
    }

    async fn verify(
        &self,
        name: &str,
        new_id: &str,
        config: &VerifyConfig,
        extra: Option<&ProbeFactory>,
        meta: &RevisionMeta,
    ) -> Result<Verdict, Error> {
        let mut gate = config.gate()?;
        if let Some(f) = extra {
            for p in f() {
                gate.push(p);
            }
        }
        let info = self.runtime.inspect_container(name).await?;
        let ctx = ProbeContext {
            runtime: self.runtime.clone(),
            container: name.to_owned(),
            started_at: info.state.started_at.unwrap_or_else(OffsetDateTime::now_utc) - Duration::from_secs(1),
            baseline_restarts: info.state.restart_count,
            expected_version: Version::of_image(&meta.image, &meta.new_defaults.labels).map(|v| v.to_string()),
            container_id: Some(new_id.to_owned()),
        };
        self.reporter.report(&Event::Verifying {
            container: name.to_owned(),
            probes: gate.probe_names().iter().map(|s| s.to_string()).collect(),
            timing: gate.timing().to_string(),
        });
        let reporter = self.reporter.clone();
        let verdict = gate.run(&ctx, &move |p| reporter.report(&Event::Waiting(p))).await;
        self.reporter.report(&Event::Verdict(verdict.clone()));
        Ok(verdict)
    }

    /// What differs between the new container and the old one as the engine reports both (the carried
    /// document and the typed view), beyond the image and the images' defaults.
    async fn faithfulness(
        &self,
        name: &str,
        intended: &ContainerSpec,
        old_defaults: &ImageDefaults,
        new_defaults: &ImageDefaults,
    ) -> Result<SpecDiff, Error> {
        let mut actual = self.runtime.inspect_container(name).await?.spec;
        let mut expected = intended.clone();
        expected.strip_image_defaults(old_defaults);
        expected.strip_image_defaults(new_defaults);
        // Created from the typed fields (a template, or a revision recorded before documents were carried):
        // there is no document to compare with, only the typed view.
        if expected.engine.is_none() {
            actual.engine = None;
        }
        // A VOLUME the new image declares where the old container mounted nothing gets a new anonymous
        // volume: the new image's default, like its env.
        for path in &new_defaults.volumes {
            if expected.mounts.iter().any(|m| &m.target == path) {
                continue;
            }
            actual
                .mounts
                .retain(|m| !(m.target == *path && matches!(m.kind, MountKind::Volume { anonymous: true, .. })));
            if let Some(engine) = &mut actual.engine {
                engine.remove_binds_at(path);
            }
        }
        Ok(expected.diff(&actual).ignoring_image())
    }

    async fn prune(&self, subject: &str, history: &mut RevisionHistory) -> Result<(), Error> {
        let dropped = history.prune();
        for rev in dropped {
            if let Some(c) = &rev.retained_container {
                // Only the container recorded as retained is removed; another one under the name is not ours.
                if let (Some(id), Ok(info)) = (&rev.retained_container_id, self.runtime.inspect_container(c).await) {
                    if info.id != *id {
                        tracing::warn!(container = %c, "not removing it: it is not the container retained for this revision");
                        self.store.delete_revision(subject, rev.number).await?;
                        continue;
                    }
                }
                let _ = self.runtime.stop_container(c, Some(Duration::from_secs(5))).await;
                match self.runtime.remove_container(c).await {
                    Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(container = %c, error = %e, "could not remove a pruned retained container")
                    }
                }
            }
            // Remove the image unless a kept revision still needs it (the engine also refuses while in use).
            if let Some(id) = &rev.image_id {
                let needed = history.revisions().iter().any(|r| r.image_id.as_ref() == Some(id));
                if !needed {
                    let _ = self.runtime.remove_image(id).await;
                }
            }
            self.store.delete_revision(subject, rev.number).await?;
            self.reporter.report(&Event::Pruned {
                revision: rev.number.get(),
            });
        }
        Ok(())
    }

    /// Puts the old container back under its name, from whatever state the engine is in. Idempotent.
    async fn revert(&self, name: &str, b: &BeginFacts) -> Result<(), RuntimeError> {
        // 1. Whatever runs under the name and is not the old container is the new one: take it away.
        match self.runtime.inspect_container(name).await {
            Ok(info) if info.id != b.old_id => {
                self.runtime.stop_container(name, Some(Duration::from_secs(10))).await?;
                match &b.from_retained {
                    None => self.runtime.remove_container(name).await?,
                    Some(from) => {
                        self.runtime.rename_container(name, from).await?;
                        self.runtime.set_restart_policy(from, RestartPolicy::No).await?;
                    }
                }
            }
            Ok(_) => {}
            Err(RuntimeError::ContainerNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // 2. The retained old container takes its name back.
        match self.runtime.inspect_container(&b.retained).await {
            Ok(info) if info.id == b.old_id => self.runtime.rename_container(&b.retained, name).await?,
            Ok(_) | Err(RuntimeError::ContainerNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // 3. Its restart policy and running state as before.
        let info = self.runtime.inspect_container(name).await?;
        self.runtime.set_restart_policy(name, b.old_restart).await?;
        if b.old_running && !info.state.is_running() {
            self.runtime.start_container(name).await?;
        }
        Ok(())
    }

    async fn recover_locked(&self, name: &str) -> Result<Vec<Recovery>, Error> {
        let subject = self.subject(name);
        let mut out = Vec::new();
        for op in self.store.open_operations(&subject).await? {
            let entries = self.store.journal(&op).await?;
            let steps: Vec<Step> = entries
                .iter()
                .filter_map(|e| serde_json::from_value(e.record.clone()).ok())
                .collect();
            let last = steps.last().map(|s| s.name()).unwrap_or("none").to_owned();
            let Some(Step::Begin {
                kind,
                old_id,
                old_running,
                old_restart,
                old_revision,
                new_revision,
                retained_name,
                from_retained,
                ..
            }) = steps.first().cloned()
            else {
                self.store.close_operation(&op).await?;
                continue;
            };
            if kind == "install" && !steps.iter().any(|s| matches!(s, Step::Commit)) {
                // Nothing was under the name before the install: whatever is there now is its half-made work.
                self.remove_if(name, |_| true).await.map_err(|e| Error::RevertFailed {
                    container: name.to_owned(),
                    reason: format!("removing an install interrupted at {last}"),
                    error: e.to_string(),
                })?;
                if let Some(n) = RevisionNumber::new(new_revision) {
                    if let Some(mut r) = self
                        .store
                        .revisions(&subject)
                        .await?
                        .into_iter()
                        .find(|r| r.number == n)
                    {
                        r.outcome = Outcome::RolledBack {
                            reason: format!("install interrupted at step {last}; removed by the next command"),
                        };
                        r.finished_at = Some(OffsetDateTime::now_utc());
                        self.store.put_revision(&subject, &r).await?;
                    }
                }
                self.store.close_operation(&op).await?;
                let rec = Recovery {
                    operation: op.clone(),
                    interrupted_at: last,
                    action: "reverted".into(),
                };
                self.reporter.report(&Event::Recovered(rec.clone()));
                out.push(rec);
                continue;
            }
            if kind == "stage" {
                // Staging never touches the old container: removing the half-made preview is the repair.
                self.remove_if(&retained_name, |id| id != old_id)
                    .await
                    .map_err(|e| Error::RevertFailed {
                        container: retained_name.clone(),
                        reason: format!("removing a preview interrupted at {last}"),
                        error: e.to_string(),
                    })?;
                self.store.close_operation(&op).await?;
                let rec = Recovery {
                    operation: op.clone(),
                    interrupted_at: last,
                    action: "reverted".into(),
                };
                self.reporter.report(&Event::Recovered(rec.clone()));
                out.push(rec);
                continue;
            }
            let number = RevisionNumber::new(new_revision);
            let committed = steps.iter().any(|s| matches!(s, Step::Commit));
            let action = if committed {
                // The new revision was proven before the crash: finish recording it.
                if let Some(n) = number {
                    let history = self
                        .history(
                            &name
                                .parse()
                                .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
                                    what: "container".into(),
                                    message: e.to_string(),
                                })?,
                            usize::MAX,
                        )
                        .await?;
                    if let Some(mut r) = history.get(n).cloned() {
                        if r.outcome == Outcome::InProgress {
                            r.outcome = Outcome::Succeeded;
                            r.finished_at = Some(OffsetDateTime::now_utc());
                            self.store.put_revision(&subject, &r).await?;
                        }
                    }
                    // As a finished update records it: the container that ran before is retained (so `undo`
                    // starts it again rather than recreating it, and pruning removes it), and the one we
                    // came back to, if any, runs again.
                    if kind != "install" && !retained_name.is_empty() {
                        for mut r in history.revisions().iter().cloned() {
                            let was = r.retained_container.clone();
                            if RevisionNumber::new(old_revision) == Some(r.number) {
                                r.retained_container = Some(retained_name.clone());
                                r.retained_container_id = Some(old_id.clone());
                            } else if from_retained.is_some() && was == from_retained {
                                r.retained_container = None;
                                r.retained_container_id = None;
                            }
                            if r.retained_container != was {
                                self.store.put_revision(&subject, &r).await?;
                            }
                        }
                    }
                }
                "completed"
            } else {
                let facts = BeginFacts {
                    old_id,
                    old_running,
                    old_restart,
                    retained: retained_name,
                    from_retained,
                };
                self.revert(name, &facts).await.map_err(|e| Error::RevertFailed {
                    container: name.to_owned(),
                    reason: format!("repairing an operation interrupted at {last}"),
                    error: e.to_string(),
                })?;
                if let Some(n) = number {
                    let history = self.store.revisions(&subject).await?;
                    if let Some(mut r) = history.into_iter().find(|r| r.number == n) {
                        r.outcome = Outcome::RolledBack {
                            reason: format!("interrupted at step {last}; reverted by the next command"),
                        };
                        r.finished_at = Some(OffsetDateTime::now_utc());
                        self.store.put_revision(&subject, &r).await?;
                    }
                }
                "reverted"
            };
            self.store.close_operation(&op).await?;
            let rec = Recovery {
                operation: op.clone(),
                interrupted_at: last,
                action: action.into(),
            };
            self.reporter.report(&Event::Recovered(rec.clone()));
            out.push(rec);
        }
        // A start-first update killed between its verified preview and the switch: the preview goes, so
        // that one instance runs (a blue-green preview waits for its promotion instead).
        if let Some(p) = self.preview(name).await? {
            if p.switch_at_once && self.discard_locked(name).await? {
                let rec = Recovery {
                    operation: format!("start-first preview {}", p.container),
                    interrupted_at: "staged".into(),
                    action: "reverted".into(),
                };
                self.reporter.report(&Event::Recovered(rec.clone()));
                out.push(rec);
            }
        }
        Ok(out)
    }
}

struct RevisionMeta {
    image: ImageRef,
    image_id: Option<String>,
    digest: Option<Digest>,
    cause: String,
    new_defaults: ImageDefaults,
}

struct BeginFacts {
    old_id: String,
    old_running: bool,
    old_restart: RestartPolicy,
    retained: String,
    from_retained: Option<String>,
}

/// Why a verified container must not stay, if it must not.
/// The one verdict rule of every path (update, start-first and blue-green previews, install, undo): why the
/// new container must go, or `None` when it stays. A configuration difference always fails; an inconclusive
/// verification (a control center or Prometheus down) does not: the new version stays, unverified, and the
/// caller decides (exit 4), so a monitoring outage never causes a rollback storm.
fn judge(verdict: &Verdict, diff: &SpecDiff) -> Option<String> {
    if !matches!(verdict.outcome, VerdictOutcome::Healthy | VerdictOutcome::Inconclusive) {
        Some(format!("verification {}: {}", verdict.outcome, verdict.reason))
    } else if !diff.is_empty() {
        Some(format!(
            "the new container's configuration differs from the old one beyond the image: {diff}"
        ))
    } else {
        None
    }
}

/// A revision being made now.
fn new_revision(number: RevisionNumber, meta: &RevisionMeta, spec: ContainerSpec) -> Revision {
    Revision {
        number,
        image: meta.image.clone(),
        image_id: meta.image_id.clone(),
        digest: meta.digest.clone(),
        spec,
        cause: meta.cause.clone(),
        created_at: OffsetDateTime::now_utc(),
        finished_at: None,
        outcome: Outcome::InProgress,
        protected: false,
        retained_container: None,
        retained_container_id: None,
    }
}
