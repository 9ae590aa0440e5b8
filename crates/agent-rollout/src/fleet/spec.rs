//! The rollout spec: what `agentctl apply -f` reads, its bounds, validation and plan.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agent_core::{
    duration_text, plan, plan_traffic, ContainerName, ContainerSpec, ImageRef, RolloutPlan, Strategy, Target,
};
use agent_health::{AnalysisSpec, HttpProbeConfig, Timing};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::notify::NotifySpec;
use crate::request::{HeartbeatCheck, ScrapeCheck, VerifyConfig};

/// One target as written in a spec: a container on an engine, or a service on a Swarm manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Engine endpoint (for a service: a manager's).
    pub host: String,
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerName>,
    /// Service name: the service counts as one unit per task (replicated) or per node (global), and
    /// steps take a share of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ContainerName>,
}

impl TargetSpec {
    /// A container target.
    pub fn container(host: &str, container: ContainerName) -> TargetSpec {
        TargetSpec {
            host: host.to_owned(),
            container: Some(container),
            service: None,
        }
    }

    /// A service target.
    pub fn service(host: &str, service: ContainerName) -> TargetSpec {
        TargetSpec {
            host: host.to_owned(),
            container: None,
            service: Some(service),
        }
    }

    /// The container or service name.
    pub fn name(&self) -> &ContainerName {
        match (&self.container, &self.service) {
            (Some(c), _) => c,
            (None, Some(s)) => s,
            (None, None) => unreachable!("validated: a target names a container or a service"),
        }
    }
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

pub(super) fn thirty() -> Duration {
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
    /// `preUpdate` (in the old container; exit 75 skips the target), `postUpdate` (in the new one, must
    /// pass), `timeout`, `lockFile` and `lockTimeout` (the agent's update lock).
    #[serde(default)]
    pub hooks: crate::Hooks,
    /// Container settings (the fields of a revision's `spec`, camelCase) for targets that do not exist
    /// yet: such a target is created with them, the rollout's image and its own name, verified, and removed
    /// again if the rollout reverts. Without a template a missing target fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
    /// A load balancer in front of the targets (`haproxy: {socket, backend, port}`): canary weights become
    /// shares of the requests, sent to previews beside the running containers, and blue-green switches by
    /// weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::traffic::TrafficSpec>,
}

pub(super) fn five() -> usize {
    5
}

/// The largest rollout spec read, in bytes: a spec is a few kilobytes; this is far beyond any real fleet.
pub const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;
/// The most values a spec may hold, for JSON as for YAML (the YAML parser's own node budget).
pub const MAX_SPEC_NODES: usize = 250_000;
/// The most targets one rollout may have.
pub const MAX_TARGETS: usize = 10_000;

/// The most revisions a spec may keep per target (`history.limit`).
pub const MAX_HISTORY: usize = 1_000;

/// An upper bound of the values in a JSON text: its `{`, `[` and `,` outside strings, plus one.
pub(super) fn json_nodes(text: &str) -> usize {
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
        let mut spec: RolloutSpec = if json {
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
        // One engine is one target however its address is written (`…sock/`, `//`, a symlinked `/var/run`).
        for t in &mut spec.targets {
            t.host = agent_core::normalize_endpoint(&t.host, &|path| {
                std::fs::canonicalize(path)
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            });
        }
        spec.validate()?;
        Ok(spec)
    }

    pub(super) fn invalid(&self, message: String) -> Error {
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
        for (i, t) in self.targets.iter().enumerate() {
            if t.container.is_some() == t.service.is_some() {
                return Err(self.invalid(format!(
                    "target {} (host {}) must name exactly one of `container` and `service`",
                    i + 1,
                    t.host
                )));
            }
        }
        if let Some(c) = self.targets.iter().find_map(|t| t.container.as_ref()) {
            self.template_for(c, &self.image)?;
        }
        if self.targets.iter().any(|t| t.service.is_some()) {
            let why = if self.traffic.is_some() {
                Some("`traffic`")
            } else if matches!(self.strategy, Strategy::BlueGreen { .. }) {
                Some("blue-green (a service has no preview beside it; use canary or rolling)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.invalid(format!("service targets cannot be rolled out with {why}")));
            }
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
        // Bounded like the targets: more slots than targets mean nothing, and counts this large would only
        // overflow the machinery that hands them out.
        for (field, value) in [
            ("parallelism", self.parallelism),
            ("maxUnverified", self.max_unverified),
        ] {
            if value > MAX_TARGETS {
                return Err(self.invalid(format!(
                    "{field} is {value}, more than the {MAX_TARGETS} targets a rollout may have; give at most {MAX_TARGETS}"
                )));
            }
        }
        if self.history.limit > MAX_HISTORY || self.history.limit < 2 {
            return Err(self.invalid(format!(
                "history.limit is {}; keep from 2 to {MAX_HISTORY} revisions per target",
                self.history.limit
            )));
        }
        if self.health.min_healthy_time >= self.health.deadline {
            return Err(self.invalid("health.minHealthyTime must be shorter than health.deadline".into()));
        }
        for t in &self.targets {
            if !(t.host.starts_with("unix://") || t.host.starts_with("tcp://") || t.host.starts_with("https://")) {
                return Err(self.invalid(format!(
                    "target {} has host {:?}; use unix:///path/docker.sock or tcp://HOST:PORT",
                    t.name(),
                    t.host
                )));
            }
        }
        for n in &self.notify {
            n.url().map_err(|e| self.invalid(e))?;
        }
        if let Some(t) = &self.traffic {
            let h = &t.haproxy;
            if h.socket.trim().is_empty() || h.backend.trim().is_empty() || h.port == 0 {
                return Err(self.invalid(
                    "traffic.haproxy needs `socket` (the runtime API's path or HOST:PORT), `backend` and the agents' `port`".into(),
                ));
            }
            crate::traffic::check_identifier(&h.backend)
                .map_err(|e| self.invalid(format!("traffic.haproxy.backend: {e}")))?;
        }
        for (name, a) in &self.analysis {
            match &a.judge {
                Some(judge) => judge
                    .check()
                    .map_err(|e| self.invalid(format!("analysis {name}: {e}")))?,
                None if a.query.trim().is_empty() => {
                    return Err(self.invalid(format!("analysis {name} needs a query (or a judge)")));
                }
                None if a.success_condition.is_none() && a.failure_condition.is_none() => {
                    return Err(self.invalid(format!("analysis {name} needs successCondition or failureCondition")));
                }
                None => {}
            }
        }
        self.plan().map(|_| ())
    }

    /// The plan, each service counted as one unit (the plan of a started rollout counts its tasks:
    /// [`RolloutSpec::plan_for`]).
    pub fn plan(&self) -> Result<RolloutPlan, Error> {
        let targets: Vec<Target> = self
            .targets
            .iter()
            .map(|t| Target {
                host: t.host.clone(),
                container: t.name().clone(),
            })
            .collect();
        self.plan_for(&targets)
    }

    /// The plan over these units (containers, and each service's tasks).
    pub fn plan_for(&self, targets: &[Target]) -> Result<RolloutPlan, Error> {
        let names: Vec<&str> = self.analysis.keys().map(String::as_str).collect();
        match &self.traffic {
            Some(_) => plan_traffic(targets, &self.strategy, &names),
            None => plan(targets, &self.strategy, &names),
        }
        .map_err(|e| self.invalid(e.to_string()))
    }

    pub(crate) fn verify(&self) -> Result<VerifyConfig, Error> {
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
            let token = crate::settings::read_token(h.token_file.as_deref())
                .map_err(|e| self.invalid(format!("health.heartbeat: {e}")))?;
            if let Some(w) = &token.warning {
                tracing::warn!("health.heartbeat: {w}");
            }
            v.heartbeat = Some(HeartbeatCheck {
                url: h.url.clone(),
                token: token.value,
                max_age: h.timeout,
            });
        }
        for m in &self.health.metrics {
            let (selector, condition) =
                crate::settings::parse_metric_check(m).map_err(|e| self.invalid(format!("health.metrics: {e}")))?;
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

/// Where the spec `new` differs from the stored `old`, as `path: old → new` lines (at most 12; values
/// shortened), for a refusal that shows what would change.
pub(crate) fn differences(old: &RolloutSpec, new: &RolloutSpec) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}[{i}]"), x, y, out);
                }
            }
            (x, y) if x != y => {
                let short = |v: &Value| {
                    let t = v.to_string();
                    if t.chars().count() > 60 {
                        format!("{}…", t.chars().take(60).collect::<String>())
                    } else {
                        t
                    }
                };
                out.push(format!("{path}: {} → {}", short(x), short(y)));
            }
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["the specs cannot be compared".into()];
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.len() > 12 {
        let more = out.len() - 12;
        out.truncate(12);
        out.push(format!("and {more} more"));
    }
    out
}
