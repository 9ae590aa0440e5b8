//! Fleet rollouts: a rollout spec (YAML or JSON) over targets on one or more engines, executed step by step
//! from the planner's [`RolloutPlan`]: recreate, rolling (stop-first batches, or start-first with
//! `maxSurge`), blue-green (verified previews, then a switch) and canary (weights, pauses, analysis). The
//! tag is resolved to a digest once and that digest is deployed everywhere. When the failed fraction crosses
//! `maxFailureRatio`, or an analysis fails, every target the rollout touched goes back to its previous
//! revision (walking further back when that one fails too); targets it created from the `template` go. State is saved after every step, so `rollout promote|resume|abort|status` work from any
//! process and a second `apply` resumes an interrupted rollout.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    duration_text, plan, ContainerName, ContainerRuntime, ContainerSpec, ImageRef, Input, Pause, Phase, PlanStep,
    RevisionNumber, RolloutPlan, StateMachine, StateStore, Strategy, Target, UpdateMode,
};
use agent_health::{AnalysisOutcome, AnalysisRun, AnalysisSpec, HttpProbeConfig, Prometheus, Timing};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::events::{Event, Reporter};
use crate::lease::{holder_for_this_process, LeaseGuard};
use crate::notify::{Notifier, NotifySpec, Outbox, Webhook};
use crate::update::{HeartbeatCheck, PullPolicy, ScrapeCheck, UpdateRequest, UpdateStatus, Updater, VerifyConfig};

const DOC_KIND: &str = "rollout";
/// Pause requests for running rollouts, by name (checked before each step).
const PAUSE_KIND: &str = "rollout-pause-request";

/// One target as written in a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Engine endpoint.
    pub host: String,
    /// Container name.
    pub container: ContainerName,
}

/// Health checks for every target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HealthSpec {
    /// Minimum healthy time.
    #[serde(with = "duration_text")]
    pub min_healthy_time: Duration,
    /// Verification deadline.
    #[serde(with = "duration_text")]
    pub deadline: Duration,
    /// Probe period.
    #[serde(with = "duration_text")]
    pub period: Duration,
    /// HTTP probe.
    pub http: Option<HttpProbeConfig>,
    /// Heartbeat probe: `{url, tokenFile, timeout}`.
    pub heartbeat: Option<HeartbeatSpec>,
    /// Checks of the agent's own metrics, like `agent_up == 1`, on `metricsPort`.
    pub metrics: Vec<String>,
    /// Port of the agent's metrics.
    pub metrics_port: u16,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            min_healthy_time: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            period: Duration::from_millis(500),
            http: None,
            heartbeat: None,
            metrics: Vec::new(),
            metrics_port: 8080,
        }
    }
}

/// Heartbeat checks in a spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatSpec {
    /// Control center URL.
    pub url: String,
    /// File with its token (or env AGENTCTL_CC_TOKEN).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Maximum heartbeat age.
    #[serde(with = "duration_text", default = "thirty")]
    pub timeout: Duration,
}

fn thirty() -> Duration {
    Duration::from_secs(30)
}

/// When and how to roll back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RollbackSpec {
    /// Revert every touched target when the rollout fails.
    pub automatic: bool,
    /// The failed fraction of all targets above which the rollout aborts (0 = any failure).
    pub max_failure_ratio: f64,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        RollbackSpec {
            automatic: true,
            max_failure_ratio: 0.0,
        }
    }
}

/// History settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HistorySpec {
    /// Revisions kept per target.
    pub limit: usize,
}

impl Default for HistorySpec {
    fn default() -> Self {
        HistorySpec { limit: 5 }
    }
}

/// A rollout, as written in `agentctl apply -f spec.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// The rollout's name (one rollout of this name runs at a time).
    pub name: ContainerName,
    /// The image; a tag is resolved to a digest once and pinned on every target.
    pub image: ImageRef,
    /// The targets.
    pub targets: Vec<TargetSpec>,
    /// Exactly one of recreate, rolling, blueGreen, canary.
    pub strategy: Strategy,
    /// Health checks.
    #[serde(default)]
    pub health: HealthSpec,
    /// Named analyses for canary steps.
    #[serde(default)]
    pub analysis: BTreeMap<String, AnalysisSpec>,
    /// Rollback settings.
    #[serde(default)]
    pub rollback: RollbackSpec,
    /// History settings.
    #[serde(default)]
    pub history: HistorySpec,
    /// Targets updated at once within a batch.
    #[serde(default = "five")]
    pub parallelism: usize,
    /// Targets whose new container has started and is still being verified that may wait beside the
    /// `parallelism` targets in engine work. 0 (the default): a target holds its slot until it is proven,
    /// so at most `parallelism` targets run an unproven version. N: a target hands its slot to the next one
    /// as soon as its container has started, and up to N more unproven targets run at once; a faster
    /// pipeline for a larger blast radius (every touched target is still rolled back on failure, and no new
    /// target starts once the failures exceed `rollback.maxFailureRatio`). It matters where a step holds
    /// more targets than `parallelism` (recreate, a large canary step).
    #[serde(default)]
    pub max_unverified: usize,
    /// Where events are sent.
    #[serde(default)]
    pub notify: Vec<NotifySpec>,
    /// Container settings (the fields of a revision's `spec`, camelCase) for targets that do not exist
    /// yet: such a target is created with them, the rollout's image and its own name, verified, and removed
    /// again if the rollout reverts. Without a template a missing target fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
}

fn five() -> usize {
    5
}

/// The largest rollout spec read, in bytes: a spec is a few kilobytes; this is far beyond any real fleet.
pub const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;
/// The most values a spec may hold, for JSON as for YAML (the YAML parser's own node budget).
pub const MAX_SPEC_NODES: usize = 250_000;
/// The most targets one rollout may have.
pub const MAX_TARGETS: usize = 10_000;

/// An upper bound of the values in a JSON text: its `{`, `[` and `,` outside strings, plus one.
fn json_nodes(text: &str) -> usize {
    let (mut nodes, mut in_string, mut escaped) = (1, false, false);
    for b in text.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[' | b',') => nodes += 1,
            _ => {}
        }
    }
    nodes
}

impl RolloutSpec {
    /// Reads a spec file, or standard input for `-`, refusing what is not a regular file (a device, a FIFO)
    /// and anything over [`MAX_SPEC_BYTES`] before reading it all. Returns the text and a name for messages.
    pub fn read(path: &std::path::Path) -> Result<(String, String), Error> {
        use std::io::Read;
        let source = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        let refuse = |message: String| Error::InvalidInput {
            what: format!("rollout spec {source}"),
            message,
        };
        let reader: Box<dyn Read> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
            if !meta.is_file() {
                return Err(refuse(
                    "it is not a regular file (a device, FIFO or directory); give a spec file, or `-f -` to read standard input".into(),
                ));
            }
            if meta.len() > MAX_SPEC_BYTES {
                return Err(refuse(format!(
                    "it is {} bytes, more than the {MAX_SPEC_BYTES} a spec may have; split the fleet into several rollouts",
                    meta.len()
                )));
            }
            Box::new(std::fs::File::open(path).map_err(|e| refuse(format!("cannot read it: {e}")))?)
        };
        let mut bytes = Vec::new();
        reader
            .take(MAX_SPEC_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refuse(format!("cannot read it: {e}")))?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(refuse(format!(
                "it is more than the {MAX_SPEC_BYTES} bytes a spec may have; split the fleet into several rollouts"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| refuse(format!("it is not UTF-8 text: {e}")))?;
        Ok((text, source))
    }

    /// Parses YAML (or JSON, which is YAML) with errors that give the line and column. Texts over
    /// [`MAX_SPEC_BYTES`], JSON over [`MAX_SPEC_NODES`] values and specs over [`MAX_TARGETS`] targets are
    /// refused before they are acted on.
    pub fn parse(text: &str, source: &str) -> Result<RolloutSpec, Error> {
        let refuse = |message: String| Error::InvalidInput {
            what: format!("rollout spec {source}"),
            message,
        };
        if text.len() as u64 > MAX_SPEC_BYTES {
            return Err(refuse(format!(
                "it is {} bytes, more than the {MAX_SPEC_BYTES} a spec may have; split the fleet into several rollouts",
                text.len()
            )));
        }
        let json = text.trim_start().starts_with('{');
        if json && json_nodes(text) > MAX_SPEC_NODES {
            return Err(refuse(format!(
                "it has more than {MAX_SPEC_NODES} values (the same limit as for YAML); split the fleet into several rollouts"
            )));
        }
        let spec: RolloutSpec = if json {
            serde_json::from_str(text).map_err(|e| Error::InvalidInput {
                what: format!("rollout spec {source}"),
                message: e.to_string(),
            })?
        } else {
            serde_saphyr::from_str(text).map_err(|e| Error::InvalidInput {
                what: format!("rollout spec {source}"),
                message: e.to_string(),
            })?
        };
        spec.validate()?;
        Ok(spec)
    }

    fn invalid(&self, message: String) -> Error {
        Error::InvalidInput {
            what: format!("rollout spec {}", self.name),
            message,
        }
    }

    /// The spec a missing target is created from: the template with the target's name and `image`.
    pub fn template_for(&self, container: &ContainerName, image: &ImageRef) -> Result<Option<ContainerSpec>, Error> {
        let Some(template) = &self.template else {
            return Ok(None);
        };
        let mut v = template.clone();
        let Some(map) = v.as_object_mut() else {
            return Err(
                self.invalid("template must be a mapping of container settings (env, labels, restartPolicy, …)".into())
            );
        };
        for field in ["name", "image"] {
            if map.contains_key(field) {
                return Err(self.invalid(format!(
                    "template sets `{field}`; the name comes from each target and the image from the rollout"
                )));
            }
        }
        map.insert("name".into(), serde_json::Value::String(container.to_string()));
        map.insert("image".into(), serde_json::Value::String(image.to_string()));
        let spec: ContainerSpec = serde_json::from_value(v).map_err(|e| self.invalid(format!("template: {e}")))?;
        // The template is stored with the rollout's state: secret values have no place in it.
        let policy = agent_core::SecretPolicy::default();
        if let Some(e) = spec.env.iter().find(|e| e.is_secret() || policy.is_secret(&e.name)) {
            return Err(self.invalid(format!(
                "template env `{}` looks secret, and the template is stored with the rollout; pass secrets to the agent through a mounted file or its env file instead",
                e.name
            )));
        }
        Ok(Some(spec))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.targets.len() > MAX_TARGETS {
            return Err(self.invalid(format!(
                "it has {} targets, more than the {MAX_TARGETS} one rollout may have; split the fleet into several rollouts",
                self.targets.len()
            )));
        }
        if let Some(t) = self.targets.first() {
            self.template_for(&t.container, &self.image)?;
        }
        if !(0.0..=1.0).contains(&self.rollback.max_failure_ratio) {
            return Err(self.invalid(format!(
                "rollback.maxFailureRatio is {}; give a fraction from 0 to 1, like 0.2",
                self.rollback.max_failure_ratio
            )));
        }
        if self.parallelism == 0 {
            return Err(self.invalid("parallelism must be at least 1".into()));
        }
        if self.health.min_healthy_time >= self.health.deadline {
            return Err(self.invalid("health.minHealthyTime must be shorter than health.deadline".into()));
        }
        for t in &self.targets {
            if !(t.host.starts_with("unix://") || t.host.starts_with("tcp://") || t.host.starts_with("https://")) {
                return Err(self.invalid(format!(
                    "target {} has host {:?}; use unix:///path/docker.sock or tcp://HOST:PORT",
                    t.container, t.host
                )));
            }
        }
        for n in &self.notify {
            if !n.webhook.starts_with("http://") {
                return Err(self.invalid(format!("notify webhook {:?} must be an http:// URL", n.webhook)));
            }
        }
        for (name, a) in &self.analysis {
            if a.success_condition.is_none() && a.failure_condition.is_none() {
                return Err(self.invalid(format!("analysis {name} needs successCondition or failureCondition")));
            }
        }
        self.plan().map(|_| ())
    }

    /// The plan.
    pub fn plan(&self) -> Result<RolloutPlan, Error> {
        let targets: Vec<Target> = self
            .targets
            .iter()
            .map(|t| Target {
                host: t.host.clone(),
                container: t.container.clone(),
            })
            .collect();
        let names: Vec<&str> = self.analysis.keys().map(String::as_str).collect();
        plan(&targets, &self.strategy, &names).map_err(|e| self.invalid(e.to_string()))
    }

    fn verify(&self) -> Result<VerifyConfig, Error> {
        let mut v = VerifyConfig {
            timing: Timing {
                min_healthy_time: self.health.min_healthy_time,
                deadline: self.health.deadline,
                period: self.health.period,
                ..Timing::default()
            },
            http: self.health.http.clone(),
            ..VerifyConfig::default()
        };
        if let Some(h) = &self.health.heartbeat {
            let token = match &h.token_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| self.invalid(format!("health.heartbeat.tokenFile {}: {e}", f.display())))?,
                None => std::env::var("AGENTCTL_CC_TOKEN")
                    .map_err(|_| self.invalid("health.heartbeat needs tokenFile or env AGENTCTL_CC_TOKEN".into()))?,
            };
            v.heartbeat = Some(HeartbeatCheck {
                url: h.url.clone(),
                token: token.trim().to_owned(),
                max_age: h.timeout,
            });
        }
        for m in &self.health.metrics {
            let (selector, rest) = split_metric(m)
                .ok_or_else(|| self.invalid(format!("health.metrics: {m:?} is not `SELECTOR OP NUMBER`")))?;
            let condition = agent_health::Condition::parse(&format!("result {rest}")).map_err(|e| self.invalid(e))?;
            v.scrapes.push(ScrapeCheck {
                port: self.health.metrics_port,
                path: "/metrics".into(),
                selector,
                condition,
            });
        }
        Ok(v)
    }
}

fn split_metric(text: &str) -> Option<(String, String)> {
    let t = text.trim();
    let end = match t.find('{') {
        Some(_) => t.find('}')? + 1,
        None => t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))?,
    };
    Some((t[..end].to_owned(), t[end..].trim().to_owned()))
}

/// Where one target stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStatus {
    /// Not touched yet.
    Pending,
    /// Runs the new revision.
    Updated,
    /// Its update failed and it rolled itself back.
    Failed,
    /// Updated, then reverted by the rollout's rollback.
    Reverted,
    /// Could not be reverted, or its engine was unreachable: needs attention.
    Broken,
    /// Blue-green: its verified preview runs beside the old container, waiting for promotion.
    Staged,
}

/// One target's record in a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetState {
    /// Engine.
    pub host: String,
    /// Container.
    pub container: String,
    /// Status.
    pub status: TargetStatus,
    /// The revision it ran before this rollout.
    pub previous: Option<u64>,
    /// The revision this rollout made.
    pub revision: Option<u64>,
    /// It did not exist: this rollout created it from the template (a rollback removes it).
    #[serde(default)]
    pub installed: bool,
    /// The last message about it.
    pub message: Option<String>,
}

/// A rollout's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The spec.
    pub spec: RolloutSpec,
    /// The image actually deployed (pinned to the digest when the registry gave one).
    pub pinned: ImageRef,
    /// The plan.
    pub plan: RolloutPlan,
    /// Index of the next step to run.
    pub next_step: usize,
    /// The state machine.
    pub machine: StateMachine,
    /// Per target.
    pub targets: Vec<TargetState>,
    /// Why it paused, failed or rolled back.
    pub reason: Option<String>,
    /// Analyses run so far.
    pub analyses: Vec<(String, AnalysisRun)>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl RolloutState {
    /// The phase.
    pub fn phase(&self) -> Phase {
        self.machine.phase()
    }

    /// The exit code for where it stands (0, 3, 4, 5).
    pub fn exit_code(&self) -> i32 {
        self.phase().exit_code().unwrap_or(1)
    }
}

/// One line of the rollout's event stream (`-o json`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum FleetEvent {
    /// The rollout started or resumed.
    Started {
        /// Rollout name.
        rollout: String,
        /// The pinned image.
        image: String,
        /// Targets.
        targets: usize,
        /// Steps.
        steps: usize,
        /// Resumed from step.
        from_step: usize,
    },
    /// A step began.
    StepStarted {
        /// Rollout name.
        rollout: String,
        /// Step index.
        step: usize,
        /// The step.
        detail: String,
    },
    /// A target was updated (or failed).
    TargetUpdated {
        /// Rollout name.
        rollout: String,
        /// Engine.
        host: String,
        /// Container.
        container: String,
        /// Outcome.
        status: TargetStatus,
        /// The revision made.
        revision: Option<u64>,
        /// Why, when it failed.
        reason: Option<String>,
    },
    /// An analysis finished.
    Analysis {
        /// Rollout name.
        rollout: String,
        /// Analysis name.
        name: String,
        /// Its run.
        run: AnalysisRun,
    },
    /// The rollout paused.
    Paused {
        /// Rollout name.
        rollout: String,
        /// Why.
        reason: String,
        /// Until when, for a timed pause.
        until: Option<String>,
    },
    /// The rollout is reverting every touched target.
    RollingBack {
        /// Rollout name.
        rollout: String,
        /// Why.
        reason: String,
        /// What had been attempted: the targets updated so far.
        touched: Vec<String>,
    },
    /// The rollout ended.
    Finished {
        /// Rollout name.
        rollout: String,
        /// Final phase.
        phase: Phase,
        /// Exit code.
        exit_code: i32,
        /// Every target's state.
        targets: Vec<TargetState>,
        /// Why, when not succeeded.
        reason: Option<String>,
    },
}

/// Receives fleet events.
pub type FleetReporter = Arc<dyn Fn(&FleetEvent) + Send + Sync>;

/// Connects to an engine endpoint.
pub type Connector = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Arc<dyn ContainerRuntime>, String>> + Send>> + Send + Sync,
>;

/// Runs rollouts.
pub struct Fleet {
    store: Arc<dyn StateStore>,
    connect: Connector,
    events: FleetReporter,
    progress: Arc<dyn Reporter>,
    runtimes: tokio::sync::Mutex<HashMap<String, Arc<dyn ContainerRuntime>>>,
    extra_notifiers: Vec<Arc<dyn Notifier>>,
    outbox: std::sync::Mutex<Arc<Outbox>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

fn key(name: &str) -> String {
    format!("rollout:{name}")
}

impl Fleet {
    /// A fleet runner storing in `store`, connecting with `connect`, reporting fleet events to `events` and
    /// per-target progress to `progress`.
    pub fn new(
        store: Arc<dyn StateStore>,
        connect: Connector,
        events: FleetReporter,
        progress: Arc<dyn Reporter>,
    ) -> Fleet {
        Fleet {
            store,
            connect,
            events,
            progress,
            runtimes: tokio::sync::Mutex::new(HashMap::new()),
            extra_notifiers: Vec::new(),
            outbox: std::sync::Mutex::new(Arc::new(Outbox::default())),
        }
    }

    /// Also sends every event to `notifier` (beside the spec's webhooks).
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Fleet {
        self.extra_notifiers.push(notifier);
        self
    }

    fn outbox(&self) -> Arc<Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn runtime(&self, host: &str) -> Result<Arc<dyn ContainerRuntime>, String> {
        let mut map = self.runtimes.lock().await;
        if let Some(r) = map.get(host) {
            return Ok(r.clone());
        }
        let r = (self.connect)(host.to_owned()).await?;
        map.insert(host.to_owned(), r.clone());
        Ok(r)
    }

    /// The saved state of a rollout.
    pub async fn state(&self, name: &str) -> Result<Option<RolloutState>, Error> {
        match self.store.document(DOC_KIND, name).await? {
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| Error::InvalidInput {
                what: format!("saved rollout {name}"),
                message: e.to_string(),
            }),
            None => Ok(None),
        }
    }

    async fn save(&self, state: &mut RolloutState) -> Result<(), Error> {
        state.updated_at = OffsetDateTime::now_utc();
        let v = serde_json::to_value(&*state).map_err(|e| Error::InvalidInput {
            what: "rollout state".into(),
            message: e.to_string(),
        })?;
        self.store.put_document(DOC_KIND, state.spec.name.as_str(), &v).await?;
        Ok(())
    }

    async fn lease(&self, name: &str, purpose: &str) -> Result<LeaseGuard, Error> {
        let holder = holder_for_this_process(&format!("{purpose} rollout {name}"));
        LeaseGuard::acquire(self.store.clone(), &key(name), &holder)
            .await
            .map_err(Error::from)
    }

    /// Applies a spec: starts a new rollout, or resumes one of the same name that did not finish.
    pub async fn apply(&self, spec: RolloutSpec) -> Result<RolloutState, Error> {
        let lease = self.lease(spec.name.as_str(), "apply").await?;
        let result = async {
            let mut state = match self.state(spec.name.as_str()).await? {
                // A process died while rolling back: finish that first, whatever the new spec says.
                Some(mut s) if s.phase() == Phase::RollingBack => {
                    self.finish_rollback(&mut s).await?;
                    return Ok(s);
                }
                Some(mut s) if !s.phase().is_terminal() && s.phase() != Phase::Paused && s.spec.image == spec.image => {
                    // Resuming after a process that stopped: find out what it left half done.
                    self.settle(&mut s).await?;
                    s
                }
                Some(s) if s.phase() == Phase::Paused => {
                    return Err(Error::InvalidInput {
                        what: format!("rollout {}", spec.name),
                        message: format!(
                            "it is paused ({}); run `agentctl rollout promote {0}` to continue or `agentctl rollout abort {0}` to revert",
                            s.reason.clone().unwrap_or_default()
                        )
                        .replace("{0}", spec.name.as_str()),
                    })
                }
                _ => self.start(spec).await?,
            };
            self.run(&mut state).await?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    async fn start(&self, spec: RolloutSpec) -> Result<RolloutState, Error> {
        let plan = spec.plan()?;
        // Resolve the tag to a digest once, on the first engine that answers, and pin it everywhere. An
        // unreachable engine fails only its own targets later (counting toward the failure ratio).
        let mut hosts: Vec<&str> = spec.targets.iter().map(|t| t.host.as_str()).collect();
        hosts.dedup();
        let mut reached = None;
        let mut errors = Vec::new();
        for h in hosts {
            match self.runtime(h).await {
                Ok(rt) => {
                    reached = Some(rt);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        let rt = reached.ok_or_else(|| Error::InvalidInput {
            what: "engines".into(),
            message: format!("no target's engine could be reached: {}", errors.join("; ")),
        })?;
        let local = rt.inspect_image(&spec.image.pull_ref()).await.ok();
        let info = match local {
            Some(i) if spec.image.digest().is_some() || i.repo_digests.is_empty() => i,
            _ => {
                let progress = self.progress.clone();
                rt.pull_image(&spec.image, &move |p| progress.report(&Event::Pull(p)))
                    .await?
            }
        };
        let pinned = match info.digest_for(&spec.image) {
            Some(d) => spec.image.with_digest(d),
            None => spec.image.clone(),
        };
        let mut machine = StateMachine::default();
        let _ = machine.apply(Input::Start);
        let targets = spec
            .targets
            .iter()
            .map(|t| TargetState {
                host: t.host.clone(),
                container: t.container.to_string(),
                status: TargetStatus::Pending,
                previous: None,
                revision: None,
                message: None,
                installed: false,
            })
            .collect();
        let mut state = RolloutState {
            pinned,
            plan,
            next_step: 0,
            machine,
            targets,
            reason: None,
            analyses: Vec::new(),
            started_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
            spec,
        };
        self.save(&mut state).await?;
        Ok(state)
    }

    /// Continues a paused rollout (a pause until promotion, an inconclusive analysis, or a timed pause).
    pub async fn promote(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "promote").await?;
        let result = async {
            let mut state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
                what: "rollout".into(),
                message: format!("no rollout named {name}; start one with `agentctl apply -f SPEC`"),
            })?;
            state.machine.apply(Input::Promote).map_err(|e| Error::InvalidInput {
                what: format!("rollout {name}"),
                message: e.to_string(),
            })?;
            state.reason = None;
            self.save(&mut state).await?;
            self.run(&mut state).await?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Stops a rollout and reverts every target it touched.
    pub async fn abort(&self, name: &str, reason: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "abort").await?;
        let result = async {
            let mut state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
                what: "rollout".into(),
                message: format!("no rollout named {name}"),
            })?;
            if state.phase() == Phase::RollingBack {
                self.finish_rollback(&mut state).await?;
                return Ok(state);
            }
            state
                .machine
                .apply(Input::Abort {
                    reason: reason.to_owned(),
                })
                .map_err(|e| Error::InvalidInput {
                    what: format!("rollout {name}"),
                    message: e.to_string(),
                })?;
            self.open_outbox(&state.spec);
            let r = self.rollback(&mut state, reason.to_owned()).await;
            self.outbox().drain().await;
            r?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Pauses a rollout: at the next step boundary when a process is running it (the request is stored and
    /// that process sees it), or now when none is (a rollout whose process died). Resume with
    /// [`Fleet::promote`].
    pub async fn pause(&self, name: &str, reason: &str) -> Result<RolloutState, Error> {
        let state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
            what: "rollout".into(),
            message: format!("no rollout named {name}"),
        })?;
        if state.phase().is_terminal() || state.phase() == Phase::Paused {
            return Err(Error::InvalidInput {
                what: format!("rollout {name}"),
                message: format!("it is {}; only a running rollout can be paused", state.phase()),
            });
        }
        match self.lease(name, "pause").await {
            Ok(lease) => {
                let result = async {
                    let mut state = state;
                    self.pause_state(&mut state, reason.to_owned()).await?;
                    Ok(state)
                }
                .await;
                lease.release().await?;
                result
            }
            Err(Error::Busy { .. }) => {
                self.store
                    .put_document(PAUSE_KIND, name, &serde_json::json!({ "reason": reason }))
                    .await?;
                Ok(state)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a rollout that ended aborted, rolled back or failed again from its first step, with the same
    /// spec and pinned image; targets already on it are left as they are.
    pub async fn retry(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "retry").await?;
        let result = async {
            let mut state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
                what: "rollout".into(),
                message: format!("no rollout named {name}"),
            })?;
            state.machine.apply(Input::Retry).map_err(|e| Error::InvalidInput {
                what: format!("rollout {name}"),
                message: format!("{e}; only an aborted, rolled-back or failed rollout can be retried"),
            })?;
            for t in &mut state.targets {
                t.status = TargetStatus::Pending;
                t.message = None;
            }
            state.next_step = 0;
            state.reason = None;
            state.analyses.clear();
            self.save(&mut state).await?;
            self.run(&mut state).await?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Takes a finished (or paused) rollout back: every target it updated returns to the revision it ran
    /// before (for blue-green after promotion: the kept old container starts again).
    pub async fn undo(&self, name: &str) -> Result<RolloutState, Error> {
        let lease = self.lease(name, "undo").await?;
        let result = async {
            let mut state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
                what: "rollout".into(),
                message: format!("no rollout named {name}"),
            })?;
            if !matches!(state.phase(), Phase::Succeeded | Phase::Paused) {
                return Err(Error::InvalidInput {
                    what: format!("rollout {name}"),
                    message: format!(
                        "it is {}; undo takes back a succeeded or paused rollout (a running one: `rollout abort`)",
                        state.phase()
                    ),
                });
            }
            self.open_outbox(&state.spec);
            let r = self.rollback(&mut state, "undo requested".into()).await;
            self.outbox().drain().await;
            r?;
            Ok(state)
        }
        .await;
        lease.release().await?;
        result
    }

    /// Every target's revision history (newest last), as recorded by its updates.
    pub async fn history(&self, name: &str) -> Result<Vec<(TargetState, Vec<agent_core::Revision>)>, Error> {
        let state = self.state(name).await?.ok_or_else(|| Error::InvalidInput {
            what: "rollout".into(),
            message: format!("no rollout named {name}"),
        })?;
        let mut out = Vec::new();
        for t in state.targets {
            let mut revs = self
                .store
                .revisions(&crate::update::subject_key(&t.host, &t.container))
                .await?;
            revs.sort_by_key(|r| r.number);
            out.push((t, revs));
        }
        Ok(out)
    }

    /// Every saved rollout.
    pub async fn all(&self) -> Result<Vec<RolloutState>, Error> {
        Ok(self
            .store
            .documents(DOC_KIND)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect())
    }

    /// Routes this rollout's events to the spec's webhooks and the extra notifiers.
    fn open_outbox(&self, spec: &RolloutSpec) {
        let mut notifiers = self.extra_notifiers.clone();
        notifiers.extend(
            spec.notify
                .iter()
                .map(|n| Arc::new(Webhook::new(&n.webhook)) as Arc<dyn Notifier>),
        );
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Outbox::new(notifiers));
    }

    fn emit(&self, e: FleetEvent) {
        (self.events)(&e);
        self.outbox().send(&e);
    }

    async fn run(&self, state: &mut RolloutState) -> Result<(), Error> {
        self.open_outbox(&state.spec);
        let result = self.run_steps(state).await;
        self.outbox().drain().await;
        result
    }

    async fn run_steps(&self, state: &mut RolloutState) -> Result<(), Error> {
        let name = state.spec.name.to_string();
        self.emit(FleetEvent::Started {
            rollout: name.clone(),
            image: state.pinned.to_string(),
            targets: state.targets.len(),
            steps: state.plan.steps.len(),
            from_step: state.next_step,
        });
        let verify = state.spec.verify()?;
        while state.next_step < state.plan.steps.len() {
            if let Some(req) = self.store.document(PAUSE_KIND, &name).await? {
                if !req.is_null() {
                    self.store
                        .put_document(PAUSE_KIND, &name, &serde_json::Value::Null)
                        .await?;
                    let why = req["reason"].as_str().unwrap_or("paused by the operator").to_owned();
                    return self.pause_state(state, format!("paused: {why}")).await;
                }
            }
            let step = state.plan.steps[state.next_step].clone();
            self.emit(FleetEvent::StepStarted {
                rollout: name.clone(),
                step: state.next_step,
                detail: describe(&step),
            });
            match step {
                PlanStep::Update { targets, mode, .. } => {
                    let unverified = self
                        .update_batch(state, &targets, &verify, Action::Update(mode))
                        .await?;
                    if let Some(reason) = self.too_many_failures(state) {
                        return self.fail(state, reason).await;
                    }
                    if !unverified.is_empty() {
                        // A signal source could not be asked: wait for a human, never roll back on it.
                        state.next_step += 1;
                        return self
                            .pause_state(
                                state,
                                format!(
                                    "verification was inconclusive on {} (the new version runs there); `rollout promote` continues, `rollout abort` reverts",
                                    unverified.join("; ")
                                ),
                            )
                            .await;
                    }
                }
                PlanStep::Promote { .. } => {
                    let staged: Vec<usize> = (0..state.targets.len())
                        .filter(|&i| state.targets[i].status == TargetStatus::Staged)
                        .collect();
                    self.update_batch(state, &staged, &verify, Action::Promote).await?;
                    if let Some(reason) = self.too_many_failures(state) {
                        return self.fail(state, reason).await;
                    }
                }
                PlanStep::Pause { pause: Pause::For(d) } => {
                    let until = OffsetDateTime::now_utc() + d;
                    self.emit(FleetEvent::Paused {
                        rollout: name.clone(),
                        reason: format!("pause for {}", agent_core::format_duration(d)),
                        until: until.format(&time::format_description::well_known::Rfc3339).ok(),
                    });
                    tokio::time::sleep(d).await;
                }
                PlanStep::Pause {
                    pause: Pause::UntilPromoted,
                } => {
                    state.next_step += 1;
                    return self
                        .pause_state(state, "waiting for `agentctl rollout promote`".into())
                        .await;
                }
                PlanStep::Analysis { name: analysis } => {
                    let spec = state
                        .spec
                        .analysis
                        .get(&analysis)
                        .cloned()
                        .ok_or_else(|| Error::InvalidInput {
                            what: "analysis".into(),
                            message: format!("{analysis} is not defined"),
                        })?;
                    let run = spec.run(&Prometheus::new(&spec.prometheus)).await;
                    self.emit(FleetEvent::Analysis {
                        rollout: name.clone(),
                        name: analysis.clone(),
                        run: run.clone(),
                    });
                    state.analyses.push((analysis.clone(), run.clone()));
                    match run.outcome {
                        AnalysisOutcome::Successful => {}
                        AnalysisOutcome::Failed => {
                            let last = run.measurements.last().map(|m| m.message.clone()).unwrap_or_default();
                            return self.fail(state, format!("analysis {analysis} failed: {last}")).await;
                        }
                        AnalysisOutcome::Inconclusive => {
                            let last = run.measurements.last().map(|m| m.message.clone()).unwrap_or_default();
                            state.next_step += 1;
                            return self
                                .pause_state(state, format!("analysis {analysis} was inconclusive: {last}"))
                                .await;
                        }
                    }
                }
            }
            state.next_step += 1;
            self.save(state).await?;
        }
        let _ = state.machine.apply(Input::Complete);
        self.save(state).await?;
        self.finished(state);
        Ok(())
    }

    fn finished(&self, state: &RolloutState) {
        self.emit(FleetEvent::Finished {
            rollout: state.spec.name.to_string(),
            phase: state.phase(),
            exit_code: state.exit_code(),
            targets: state.targets.clone(),
            reason: state.reason.clone(),
        });
    }

    async fn pause_state(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        if state.phase() == Phase::Progressing {
            let _ = state.machine.apply(Input::Pause { reason: reason.clone() });
        }
        state.reason = Some(reason.clone());
        self.save(state).await?;
        self.emit(FleetEvent::Paused {
            rollout: state.spec.name.to_string(),
            reason,
            until: None,
        });
        self.finished(state);
        Ok(())
    }

    async fn fail(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        if !state.spec.rollback.automatic {
            let _ = state.machine.apply(Input::Fail { reason: reason.clone() });
            state.reason = Some(format!("{reason}; automatic rollback is off"));
            self.save(state).await?;
            self.finished(state);
            return Ok(());
        }
        self.rollback(state, reason).await
    }

    /// Why the rollout must stop, when more targets failed than `rollback.maxFailureRatio` allows.
    fn too_many_failures(&self, state: &RolloutState) -> Option<String> {
        let failed = failed_targets(state);
        (failed > failures_allowed(state)).then(|| {
            format!(
                "{failed} of {} targets failed ({:.0} %), above maxFailureRatio {:.0} %",
                state.targets.len(),
                failed as f64 / state.targets.len() as f64 * 100.0,
                state.spec.rollback.max_failure_ratio * 100.0
            )
        })
    }

    async fn update_batch(
        &self,
        state: &mut RolloutState,
        indices: &[usize],
        verify: &VerifyConfig,
        action: Action,
    ) -> Result<Vec<String>, Error> {
        // Engine slots bound the targets being stopped, created and started; `in_flight` bounds those plus
        // the started ones still being verified.
        let engine = Arc::new(tokio::sync::Semaphore::new(state.spec.parallelism));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            state.spec.parallelism + state.spec.max_unverified,
        ));
        // No new target starts once more have failed than the rollout may lose.
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(failed_targets(state)));
        let budget = failures_allowed(state);
        let mut tasks = Vec::new();
        for &i in indices {
            let ready = match action {
                Action::Update(_) => TargetStatus::Pending,
                Action::Promote => TargetStatus::Staged,
            };
            if state.targets[i].status != ready {
                continue;
            }
            let t = state.targets[i].clone();
            let mut req = UpdateRequest::new(
                t.container
                    .parse()
                    .map_err(|e: agent_core::ContainerNameError| Error::InvalidInput {
                        what: "target".into(),
                        message: e.to_string(),
                    })?,
                state.pinned.clone(),
            );
            req.verify = verify.clone();
            req.history_limit = state.spec.history.limit;
            req.pull = PullPolicy::Missing;
            if let Action::Update(mode) = action {
                req.mode = mode;
            }
            req.cause = Some(rollout_cause(state));
            let (engine, in_flight, failures) = (engine.clone(), in_flight.clone(), failures.clone());
            let started = Arc::new(tokio::sync::Notify::new());
            req.started = Some(started.clone());
            let template = state.spec.template_for(&req.container, &state.pinned)?;
            let rt = self.runtime(&t.host).await;
            let store = self.store.clone();
            let progress = self.progress.clone();
            tasks.push(async move {
                let _in_flight = in_flight.acquire().await;
                let engine_slot = engine.acquire().await;
                if failures.load(std::sync::atomic::Ordering::SeqCst) > budget {
                    return (i, None);
                }
                let work = Self::update_target(rt, store, progress, &t, &req, template.as_ref(), action);
                tokio::pin!(work);
                let result = tokio::select! {
                    r = &mut work => r,
                    _ = started.notified() => {
                        // Started: the engine work is over, the next target may begin while this one is proven.
                        drop(engine_slot);
                        work.await
                    }
                };
                if result
                    .as_ref()
                    .map_or(true, |(r, _)| r.status == UpdateStatus::RolledBack)
                {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (i, Some(result))
            });
        }
        let results = futures_util::future::join_all(tasks).await;
        let mut unverified = Vec::new();
        for (i, r) in results {
            // Skipped: the failure budget ran out before this target's turn; it stays pending, untouched.
            let Some(r) = r else { continue };
            let t = &mut state.targets[i];
            match r {
                Ok((report, installed)) => {
                    t.installed = installed;
                    t.previous = report.previous.map(RevisionNumber::get);
                    t.revision = Some(report.revision.number.get());
                    match report.status {
                        UpdateStatus::Updated | UpdateStatus::Unchanged => {
                            t.status = TargetStatus::Updated;
                            t.message = None;
                        }
                        UpdateStatus::RolledBack => {
                            t.status = TargetStatus::Failed;
                            t.message = report.reason.clone();
                        }
                        UpdateStatus::Unverified => {
                            t.status = TargetStatus::Updated;
                            t.message = report.reason.clone();
                            unverified.push(format!(
                                "{}@{}: {}",
                                t.container,
                                t.host,
                                report.reason.clone().unwrap_or_default()
                            ));
                        }
                        UpdateStatus::Staged => {
                            t.status = TargetStatus::Staged;
                            t.message = Some(format!("preview verified beside {}", t.container));
                        }
                    }
                }
                Err(e) => {
                    t.status = TargetStatus::Failed;
                    t.message = Some(e);
                }
            }
            self.emit(target_event(&state.spec.name, t));
        }
        self.save(state).await?;
        Ok(unverified)
    }

    /// Finds out what happened to targets a killed process was working on. The rollout's state is saved
    /// after each batch, so a target whose update was under way when the process died still reads
    /// `pending` (or `staged`, for a promotion): its own journal is repaired first, then its history says
    /// whether this rollout's revision runs there (`updated`, to be rolled back with the rest) or not
    /// (`pending`: reverted or never started, tried again by a resumed rollout); a preview of this
    /// rollout's image that was staged makes it `staged`.
    async fn settle(&self, state: &mut RolloutState) -> Result<(), Error> {
        let cause = rollout_cause(state);
        let mut changed = false;
        for i in 0..state.targets.len() {
            let t = state.targets[i].clone();
            if !matches!(t.status, TargetStatus::Pending | TargetStatus::Staged) {
                continue;
            }
            let Ok((rt, name)) = self.target(&t).await else {
                continue;
            };
            let updater = Updater::new(rt, self.store.clone(), self.progress.clone());
            updater.recover(&name).await?;
            let history = updater.history(&name, usize::MAX).await?;
            let ours = |r: &&agent_core::Revision| {
                r.image == state.pinned && r.created_at >= state.started_at && r.cause == cause
            };
            let latest = history.revisions().iter().rev().find(ours);
            let staged = updater
                .preview(name.as_str())
                .await?
                .is_some_and(|p| p.image == state.pinned);
            let target = &mut state.targets[i];
            match latest {
                Some(latest) if history.current().is_some_and(|c| c.number == latest.number) => {
                    if target.status == TargetStatus::Updated {
                        continue;
                    }
                    let before = history
                        .revisions()
                        .iter()
                        .rev()
                        .filter(|r| r.number < latest.number)
                        .find(|r| {
                            matches!(
                                r.outcome,
                                agent_core::Outcome::Succeeded | agent_core::Outcome::Unverified { .. }
                            )
                        });
                    target.status = TargetStatus::Updated;
                    target.message = Some("its update finished after the rollout's process stopped".into());
                    target.revision = Some(latest.number.get());
                    target.previous = before.map(|r| r.number.get());
                    // Nothing was recorded before it (an update adopts what ran first): the rollout created it.
                    target.installed = history.revisions().first().is_some_and(|r| r.number == latest.number);
                }
                _ if staged => {
                    if target.status == TargetStatus::Staged {
                        continue;
                    }
                    target.status = TargetStatus::Staged;
                    target.message = Some("its preview was staged before the rollout's process stopped".into());
                }
                // Reverted (by its own verification or by the repair of the interrupted update) or never
                // started: nothing of this rollout runs there, and a resumed rollout tries it again.
                _ => continue,
            }
            changed = true;
        }
        if changed {
            self.save(state).await?;
        }
        Ok(())
    }

    /// Updates (or installs, stages or promotes) one target; the report and whether it was installed.
    async fn update_target(
        rt: Result<Arc<dyn ContainerRuntime>, String>,
        store: Arc<dyn StateStore>,
        progress: Arc<dyn Reporter>,
        t: &TargetState,
        req: &UpdateRequest,
        template: Option<&ContainerSpec>,
        action: Action,
    ) -> Result<(crate::UpdateReport, bool), String> {
        let rt = rt.map_err(|e| format!("engine {} unreachable: {e}", t.host))?;
        let updater = Updater::new(rt.clone(), store, progress);
        if let Action::Update(_) = action {
            match rt.inspect_container(req.container.as_str()).await {
                Err(agent_core::RuntimeError::ContainerNotFound { .. }) => {
                    let Some(spec) = template else {
                        return Err(format!(
                            "container {} does not exist on {}; add a `template` to the spec to create missing targets",
                            req.container, t.host
                        ));
                    };
                    return updater
                        .install(spec, req)
                        .await
                        .map(|r| (r, true))
                        .map_err(|e| e.to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let report = match action {
            Action::Update(UpdateMode::BlueGreen) => updater.stage(req).await,
            Action::Update(_) => updater.update(req).await,
            Action::Promote => updater.promote(req).await,
        };
        report.map(|r| (r, false)).map_err(|e| e.to_string())
    }

    /// The engine of target `t` and its container name, or why not.
    async fn target(&self, t: &TargetState) -> Result<(Arc<dyn ContainerRuntime>, ContainerName), String> {
        let rt = self
            .runtime(&t.host)
            .await
            .map_err(|e| format!("engine {} unreachable: {e}", t.host))?;
        let name = t
            .container
            .parse()
            .map_err(|e: agent_core::ContainerNameError| e.to_string())?;
        Ok((rt, name))
    }

    /// Removes the staged previews of a blue-green rollout; their live containers were never touched.
    async fn discard_previews(&self, state: &mut RolloutState) -> Result<usize, Error> {
        let mut broken = 0;
        for i in 0..state.targets.len() {
            if state.targets[i].status != TargetStatus::Staged {
                continue;
            }
            let t = state.targets[i].clone();
            let outcome = async {
                let (rt, name) = self.target(&t).await?;
                Updater::new(rt, self.store.clone(), self.progress.clone())
                    .discard(&name)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let t = &mut state.targets[i];
            match outcome {
                Ok(_) => {
                    t.status = TargetStatus::Reverted;
                    t.message = Some("preview removed; the running container was never touched".into());
                }
                Err(e) => {
                    t.status = TargetStatus::Broken;
                    t.message = Some(format!("its preview could not be removed: {e}"));
                    broken += 1;
                }
            }
            self.emit(target_event(&state.spec.name, t));
            self.save(state).await?;
        }
        Ok(broken)
    }

    /// Reverts every target this rollout updated to the revision it ran before.
    /// Finishes a rollback that a stopped process left half done: the targets it reverted stay reverted,
    /// the rest are reverted now.
    async fn finish_rollback(&self, state: &mut RolloutState) -> Result<(), Error> {
        self.open_outbox(&state.spec);
        let reason = state.reason.clone().unwrap_or_else(|| "rollback".into());
        let r = self.rollback(state, reason).await;
        self.outbox().drain().await;
        r
    }

    async fn rollback(&self, state: &mut RolloutState, reason: String) -> Result<(), Error> {
        let _ = state.machine.apply(Input::StartRollback { reason: reason.clone() });
        state.reason = Some(reason.clone());
        self.save(state).await?;
        self.settle(state).await?;
        let mut broken = self.discard_previews(state).await?;
        let touched: Vec<usize> = (0..state.targets.len())
            .filter(|&i| state.targets[i].status == TargetStatus::Updated)
            .collect();
        self.emit(FleetEvent::RollingBack {
            rollout: state.spec.name.to_string(),
            reason: reason.clone(),
            touched: touched
                .iter()
                .map(|&i| format!("{}@{}", state.targets[i].container, state.targets[i].host))
                .collect(),
        });
        let verify = state.spec.verify()?;
        for i in touched {
            let t = state.targets[i].clone();
            let to = t.previous.and_then(RevisionNumber::new);
            if t.installed {
                let outcome = async {
                    let (rt, name) = self.target(&t).await?;
                    Updater::new(rt, self.store.clone(), self.progress.clone())
                        .uninstall(
                            &name,
                            &format!("removed by the rollback of rollout {}: {reason}", state.spec.name),
                        )
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                let t = &mut state.targets[i];
                match outcome {
                    Ok(()) => {
                        t.status = TargetStatus::Reverted;
                        t.message = Some("removed: it did not exist before the rollout".into());
                    }
                    Err(e) => {
                        t.status = TargetStatus::Broken;
                        t.message = Some(format!("could not remove the container the rollout created: {e}"));
                        broken += 1;
                    }
                }
                self.emit(target_event(&state.spec.name, t));
                self.save(state).await?;
                continue;
            }
            let outcome = async {
                let (rt, name) = self.target(&t).await?;
                let mut req = UpdateRequest::new(name.clone(), state.pinned.clone());
                req.verify = verify.clone();
                req.history_limit = state.spec.history.limit;
                req.cause = Some(format!("rollback of rollout {}: {reason}", state.spec.name));
                let updater = Updater::new(rt, self.store.clone(), self.progress.clone());
                // The revision it ran before; when that one fails too, walk back through older revisions
                // that once succeeded, newest first.
                let mut attempts = vec![to];
                let history = updater.history(&name, usize::MAX).await.map_err(|e| e.to_string())?;
                attempts.extend(
                    history
                        .revisions()
                        .iter()
                        .rev()
                        .filter(|r| r.outcome == agent_core::Outcome::Succeeded && to.is_none_or(|p| r.number < p))
                        .map(|r| Some(r.number)),
                );
                let mut failed = Vec::new();
                for attempt in attempts {
                    let which = attempt.map_or("the last known-good revision".to_owned(), |n| format!("revision {n}"));
                    match updater.undo(&name, attempt, &req).await {
                        Ok(report) if report.status != UpdateStatus::RolledBack => {
                            let walked = if failed.is_empty() {
                                String::new()
                            } else {
                                format!(" ({which}, after {})", failed.join("; "))
                            };
                            return Ok((report.revision.number.get(), walked));
                        }
                        Ok(report) => failed.push(format!("{which} failed: {}", report.reason.unwrap_or_default())),
                        Err(e) => failed.push(format!("{which} could not be restored: {e}")),
                    }
                }
                Err(format!("no earlier revision came back healthy: {}", failed.join("; ")))
            }
            .await;
            let t = &mut state.targets[i];
            match outcome {
                Ok((rev, walked)) => {
                    t.status = TargetStatus::Reverted;
                    t.message = Some(format!("reverted as revision {rev}{walked}"));
                }
                Err(e) => {
                    t.status = TargetStatus::Broken;
                    t.message = Some(e);
                    broken += 1;
                }
            }
            self.emit(target_event(&state.spec.name, t));
            self.save(state).await?;
        }
        let input = if broken == 0 {
            Input::RollbackComplete
        } else {
            Input::Fail {
                reason: format!("{broken} target(s) could not be reverted"),
            }
        };
        let _ = state.machine.apply(input);
        self.save(state).await?;
        self.finished(state);
        Ok(())
    }
}

/// Targets that failed or could not be reverted.
fn failed_targets(state: &RolloutState) -> usize {
    state
        .targets
        .iter()
        .filter(|t| matches!(t.status, TargetStatus::Failed | TargetStatus::Broken))
        .count()
}

/// How many targets may fail before the rollout stops: the largest count whose fraction of the targets is
/// not above `rollback.maxFailureRatio`.
fn failures_allowed(state: &RolloutState) -> usize {
    (state.spec.rollback.max_failure_ratio * state.targets.len() as f64).floor() as usize
}

/// The cause a rollout's updates record in each target's history.
fn rollout_cause(state: &RolloutState) -> String {
    format!("rollout {} to {}", state.spec.name, state.spec.image.familiar())
}

/// What a batch does to each of its targets.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Update (stop-first or start-first) or, for blue-green, stage a preview.
    Update(UpdateMode),
    /// Let a staged preview take the name.
    Promote,
}

fn target_event(rollout: &ContainerName, t: &TargetState) -> FleetEvent {
    FleetEvent::TargetUpdated {
        rollout: rollout.to_string(),
        host: t.host.clone(),
        container: t.container.clone(),
        status: t.status,
        revision: t.revision,
        reason: t.message.clone(),
    }
}

fn describe(step: &PlanStep) -> String {
    match step {
        PlanStep::Update {
            batch, targets, weight, ..
        } => {
            format!("batch {batch}: update {} target(s), reaching {weight} %", targets.len())
        }
        PlanStep::Pause { pause: Pause::For(d) } => format!("pause {}", agent_core::format_duration(*d)),
        PlanStep::Pause {
            pause: Pause::UntilPromoted,
        } => "pause until promoted".into(),
        PlanStep::Analysis { name } => format!("analysis {name}"),
        PlanStep::Promote { .. } => "promote".into(),
    }
}

/// Prometheus text exposition of rollouts: how many are in each phase, and per rollout its current step,
/// duration and targets by status. Served by `agentctl … --metrics-listen ADDR`.
pub fn metrics_text(states: &[RolloutState]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let phases = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Verifying,
        Phase::Paused,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
        Phase::Aborted,
    ];
    out.push_str("# HELP agentctl_rollouts Rollouts by phase.\n# TYPE agentctl_rollouts gauge\n");
    for p in phases {
        let n = states.iter().filter(|s| s.phase() == p).count();
        let _ = writeln!(out, "agentctl_rollouts{{phase=\"{p}\"}} {n}");
    }
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    out.push_str("# HELP agentctl_rollout_step The step a rollout is at (0-based) and how many it has.\n# TYPE agentctl_rollout_step gauge\n");
    for s in states {
        let _ = writeln!(
            out,
            "agentctl_rollout_step{{rollout=\"{}\",phase=\"{}\",steps=\"{}\"}} {}",
            esc(s.spec.name.as_str()),
            s.phase(),
            s.plan.steps.len(),
            s.next_step
        );
    }
    out.push_str("# HELP agentctl_rollout_duration_seconds From the start to the last change.\n# TYPE agentctl_rollout_duration_seconds gauge\n");
    for s in states {
        let secs = (s.updated_at - s.started_at).as_seconds_f64().max(0.0);
        let _ = writeln!(
            out,
            "agentctl_rollout_duration_seconds{{rollout=\"{}\"}} {secs:.3}",
            esc(s.spec.name.as_str())
        );
    }
    out.push_str(
        "# HELP agentctl_rollout_targets Targets of a rollout by status.\n# TYPE agentctl_rollout_targets gauge\n",
    );
    for s in states {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for t in &s.targets {
            let k = serde_json::to_value(t.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *by.entry(k).or_default() += 1;
        }
        for (status, n) in by {
            let _ = writeln!(
                out,
                "agentctl_rollout_targets{{rollout=\"{}\",status=\"{status}\"}} {n}",
                esc(s.spec.name.as_str())
            );
        }
    }
    out
}
