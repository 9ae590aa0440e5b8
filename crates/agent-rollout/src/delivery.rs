//! `agentctl deliver`: build → test → push → rollout → watch from one file, stopping at the first stage that fails,
//! with one record of who delivered what.
//!
//! The build is injected ([`Builder`]): it needs the engine's build API, which lives in `agent-docker`; the
//! rest is here. A failed build or contract test changes nothing on any host; a failed rollout or watch
//! rolls back; the record of every delivery is kept in the state store (kind `delivery`), and an interrupted
//! delivery's rollout is finished by the next `deliver` of the same name before anything new starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{duration_text, ContainerRuntime, StateStore, Version};
use agent_health::{AlertRule, Probation, ProbationOutcome, ProbeContext};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::contract::{self, Contract, ContractReport, MetricsContract};
use crate::error::Error;
use crate::fleet::{Fleet, RolloutSpec};

const DOC_KIND: &str = "delivery";

/// The `build:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildSection {
    /// The context directory, relative to the delivery file.
    #[serde(default = "dot")]
    pub context: PathBuf,
    /// The Dockerfile, relative to the context.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The repository, without a tag.
    pub image: String,
    /// The semantic version (`--version` overrides it).
    #[serde(default)]
    pub version: Option<String>,
    /// Lint rules allowed.
    #[serde(default)]
    pub allow: Vec<String>,
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

/// The `test:` section: the contract (the gate's timing is the rollout's `health`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TestSection {
    /// Environment of the agent under test.
    pub env: BTreeMap<String, String>,
    /// The variable naming the control center's URL (default `CONTROL_CENTER_URL`).
    pub url_env: Option<String>,
    /// The variable with its token (default `CONTROL_CENTER_TOKEN`).
    pub token_env: Option<String>,
    /// Accepted protocol versions (`>=1.0, <2`).
    pub protocol: Option<String>,
    /// Series the metrics page must have (on the rollout's `health.metricsPort`).
    pub require_series: Vec<String>,
    /// Commands run in the agent (argv) that must exit 0.
    pub exec: Vec<Vec<String>>,
    /// Run with a read-only root filesystem.
    pub read_only: bool,
    /// The stop timeout it must stop within.
    #[serde(with = "agent_core::duration_text_opt")]
    pub stop_timeout: Option<Duration>,
    /// Containers started beside the agent first (`{name, image, env, command}`).
    pub dependencies: Vec<contract::Dependency>,
    /// Containers that test it from the outside (`{name, image, command, env, timeout}`), each must exit 0.
    pub containers: Vec<contract::TestContainer>,
}

/// The `watch:` section: probation after 100 %.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchSection {
    /// How long to keep watching every target.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// How long a probe must fail before its alert fires (a crash or fatal log fires at once).
    #[serde(with = "duration_text", default = "ten")]
    pub alert_for: Duration,
    /// Time between evaluations.
    #[serde(with = "duration_text", default = "one")]
    pub period: Duration,
}

fn ten() -> Duration {
    Duration::from_secs(10)
}
fn one() -> Duration {
    Duration::from_secs(1)
}

/// A delivery file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// How to build.
    pub build: BuildSection,
    /// The contract.
    #[serde(default)]
    pub test: TestSection,
    /// A rollout spec without `image`: the image is the build's pushed digest.
    pub rollout: serde_json::Value,
    /// Probation after 100 %.
    #[serde(default)]
    pub watch: Option<WatchSection>,
}

impl DeliverySpec {
    /// Parses a delivery file (YAML or JSON) and checks its rollout section with a stand-in image, so that a
    /// bad spec is refused before anything is built.
    pub fn parse(text: &str, source: &str) -> Result<DeliverySpec, Error> {
        let invalid = |message: String| Error::InvalidInput {
            what: format!("delivery spec {source}"),
            message,
        };
        let spec: DeliverySpec = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if spec.rollout.get("image").is_some() {
            return Err(invalid(
                "rollout sets `image`; in a delivery the image is the build's pushed digest: remove it".into(),
            ));
        }
        spec.rollout_with(&format!("{}:0.0.0", spec.build.image))?;
        if let Some(p) = &spec.test.protocol {
            semver::VersionReq::parse(p).map_err(|e| invalid(format!("test.protocol `{p}`: {e}")))?;
        }
        Ok(spec)
    }

    /// The rollout section with `image` put in.
    pub fn rollout_with(&self, image: &str) -> Result<RolloutSpec, Error> {
        let mut v = self.rollout.clone();
        let Some(map) = v.as_object_mut() else {
            return Err(Error::InvalidInput {
                what: "delivery spec".into(),
                message: "rollout must be a mapping (a rollout spec without `image`)".into(),
            });
        };
        map.insert("image".into(), serde_json::Value::String(image.to_owned()));
        let text = serde_json::to_string(&v).map_err(|e| Error::InvalidInput {
            what: "delivery spec".into(),
            message: e.to_string(),
        })?;
        RolloutSpec::parse(&text, "rollout section")
    }

    /// The contract for `image` built from the test section and the rollout's health.
    pub fn contract(&self, image: agent_core::ImageRef, rollout: &RolloutSpec) -> Result<Contract, Error> {
        let mut c = Contract::new(image);
        c.verify = rollout.verify()?;
        // The embedded control center stands in for the fleet's during the test.
        c.verify.heartbeat = None;
        c.env = self.test.env.clone().into_iter().collect();
        if let Some(u) = &self.test.url_env {
            c.url_env = u.clone();
        }
        if let Some(t) = &self.test.token_env {
            c.token_env = t.clone();
        }
        c.protocol = self
            .test
            .protocol
            .as_deref()
            .map(semver::VersionReq::parse)
            .transpose()
            .map_err(|e| Error::InvalidInput {
                what: "delivery spec".into(),
                message: format!("test.protocol: {e}"),
            })?;
        if !self.test.require_series.is_empty() {
            c.metrics = Some(MetricsContract {
                port: rollout.health.metrics_port,
                path: "/metrics".into(),
                series: self.test.require_series.clone(),
            });
        }
        c.exec = self.test.exec.clone();
        c.read_only = self.test.read_only;
        c.stop_timeout = self.test.stop_timeout;
        c.dependencies = self.test.dependencies.clone();
        c.test_containers = self.test.containers.clone();
        Ok(c)
    }
}

/// What a build produced, on the local engine (not pushed yet).
#[derive(Debug, Clone)]
pub struct Built {
    /// The repository.
    pub repository: String,
    /// The tags given (`REPO:SEMVER` first): the contract tests run on the first.
    pub tags: Vec<String>,
    /// The version.
    pub version: String,
    /// The git commit, when known.
    pub commit: Option<String>,
}

/// Builds and pushes the image of a delivery (implemented over the engine by the CLI with `agent-docker`).
#[async_trait]
pub trait Builder: Send + Sync {
    /// Builds `section` as `version` on the engine the tests run on; the error is the whole explanation
    /// (findings included).
    async fn build(&self, section: &BuildSection, version: &str) -> Result<Built, String>;

    /// Pushes what `build` made, after its tests passed; returns `REPO@sha256:…`, the reference the rollout
    /// pins.
    async fn push(&self, built: &Built) -> Result<String, String>;
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryOutcome {
    /// Still running (or killed: the next `deliver` of the same name finishes its rollout).
    Running,
    /// Built, tested, rolled out to 100 % and watched.
    Delivered,
    /// The build (or its lint, or the push) failed; nothing changed on any host.
    BuildFailed,
    /// The contract tests failed; nothing changed on any host.
    TestFailed,
    /// The rollout or the watch failed, and every touched target was reverted.
    RolledBack,
    /// The rollout paused; `agentctl rollout promote NAME` continues it.
    Paused,
    /// The rollout failed and could not revert every target.
    Failed,
}

impl std::fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryOutcome::Running => "running",
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::BuildFailed => "build-failed",
            DeliveryOutcome::TestFailed => "test-failed",
            DeliveryOutcome::RolledBack => "rolled-back",
            DeliveryOutcome::Paused => "paused",
            DeliveryOutcome::Failed => "failed",
        })
    }
}

impl DeliveryOutcome {
    /// The exit code: 0 delivered, 1 build or test failed, 3 rolled back, 4 paused, 5 not fully reverted.
    pub fn exit_code(self) -> i32 {
        match self {
            DeliveryOutcome::Delivered => 0,
            DeliveryOutcome::BuildFailed | DeliveryOutcome::TestFailed | DeliveryOutcome::Running => 1,
            DeliveryOutcome::RolledBack => 3,
            DeliveryOutcome::Paused => 4,
            DeliveryOutcome::Failed => 5,
        }
    }
}

/// One delivery: who ran it, when, from which commit and digest, the test results and the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// `NAME-<unix ms>`.
    pub id: String,
    /// The rollout's name.
    pub name: String,
    /// Who ran it: `AGENTCTL_ACTOR` (a CI job or token name), else `user@host`.
    pub by: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub finished_at: Option<OffsetDateTime>,
    /// The version built.
    pub version: String,
    /// The git commit.
    #[serde(default)]
    pub commit: Option<String>,
    /// The pinned image.
    #[serde(default)]
    pub image: Option<String>,
    /// The stage reached: `build`, `test`, `push`, `rollout`, `watch`, `done`.
    pub stage: String,
    /// The outcome.
    pub outcome: DeliveryOutcome,
    /// Why it stopped, when it did not deliver.
    #[serde(default)]
    pub reason: Option<String>,
    /// The contract test results.
    #[serde(default)]
    pub tests: Option<ContractReport>,
    /// The rollout spec as applied, for the next `deliver` to finish an interrupted one.
    #[serde(default)]
    pub rollout: Option<serde_json::Value>,
}

/// Progress of a delivery: a stage starting, a test case, a line of detail.
pub type DeliveryProgress = Arc<dyn Fn(&str) + Send + Sync>;

/// Every delivery recorded in `store`, oldest first (no engine needed).
pub async fn records(store: &dyn StateStore) -> Result<Vec<DeliveryRecord>, Error> {
    let mut all: Vec<DeliveryRecord> = store
        .documents(DOC_KIND)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_value(v).ok())
        .collect();
    all.sort_by_key(|r| r.started_at);
    Ok(all)
}

/// Runs deliveries against a fleet, testing on `local` (the engine this process builds and tests on).
pub struct Deliverer {
    store: Arc<dyn StateStore>,
    fleet: Arc<Fleet>,
    connect: agent_core::Connector,
    local: Arc<dyn ContainerRuntime>,
    progress: DeliveryProgress,
}

impl Deliverer {
    /// A deliverer over `fleet` (which must use `store`), reaching target engines through `connect`.
    pub fn new(
        store: Arc<dyn StateStore>,
        fleet: Arc<Fleet>,
        connect: agent_core::Connector,
        local: Arc<dyn ContainerRuntime>,
        progress: DeliveryProgress,
    ) -> Deliverer {
        Deliverer {
            store,
            fleet,
            connect,
            local,
            progress,
        }
    }

    async fn save(&self, r: &DeliveryRecord) -> Result<(), Error> {
        let v = serde_json::to_value(r).map_err(|e| Error::InvalidInput {
            what: "delivery record".into(),
            message: e.to_string(),
        })?;
        self.store.put_document(DOC_KIND, &r.id, &v).await?;
        Ok(())
    }

    /// Every delivery recorded, oldest first.
    pub async fn records(&self) -> Result<Vec<DeliveryRecord>, Error> {
        records(self.store.as_ref()).await
    }

    /// Finishes the rollout of an earlier delivery of `name` that a killed process left running.
    async fn repair(&self, name: &str) -> Result<(), Error> {
        let open: Vec<DeliveryRecord> = self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.name == name && r.outcome == DeliveryOutcome::Running)
            .collect();
        for mut r in open {
            match r.rollout.clone() {
                Some(v) if matches!(r.stage.as_str(), "rollout" | "watch") => {
                    let spec: RolloutSpec = serde_json::from_value(v).map_err(|e| Error::InvalidInput {
                        what: format!("delivery record {}", r.id),
                        message: e.to_string(),
                    })?;
                    (self.progress)(&format!(
                        "repairing delivery {} (interrupted during {}): finishing its rollout",
                        r.id, r.stage
                    ));
                    let state = self.fleet.apply(spec).await?;
                    r.outcome = rollout_outcome(state.exit_code());
                    r.reason = Some(format!(
                        "interrupted during {}; the next deliver finished its rollout ({})",
                        r.stage,
                        state.phase()
                    ));
                }
                _ => {
                    r.outcome = DeliveryOutcome::Failed;
                    r.reason = Some(format!("interrupted during {}, before any host was changed", r.stage));
                }
            }
            r.finished_at = Some(OffsetDateTime::now_utc());
            self.save(&r).await?;
        }
        Ok(())
    }

    /// Runs one delivery (see the module docs); `version` overrides the build section's.
    pub async fn deliver(
        &self,
        spec: &DeliverySpec,
        version: Option<&str>,
        builder: &dyn Builder,
    ) -> Result<DeliveryRecord, Error> {
        let version = version
            .map(str::to_owned)
            .or_else(|| spec.build.version.clone())
            .ok_or_else(|| Error::InvalidInput {
                what: "delivery".into(),
                message: "no version: set build.version or pass --version".into(),
            })?;
        let placeholder = spec.rollout_with(&format!("{}:{}", spec.build.image, version))?;
        let name = placeholder.name.to_string();
        self.repair(&name).await?;
        let started_at = OffsetDateTime::now_utc();
        let mut r = DeliveryRecord {
            id: format!("{name}-{}", started_at.unix_timestamp_nanos() / 1_000_000),
            name: name.clone(),
            by: crate::actor(),
            started_at,
            finished_at: None,
            version: version.clone(),
            commit: None,
            image: None,
            stage: "build".into(),
            outcome: DeliveryOutcome::Running,
            reason: None,
            tests: None,
            rollout: None,
        };
        self.save(&r).await?;
        let p = &self.progress;

        p(&format!("build {}:{version}", spec.build.image));
        let built = match builder.build(&spec.build, &version).await {
            Ok(b) => b,
            Err(reason) => return self.finish(r, DeliveryOutcome::BuildFailed, Some(reason)).await,
        };
        r.commit = built.commit.clone();
        let local = built.tags.first().cloned().unwrap_or_default();
        r.image = Some(local.clone());
        r.version = built.version.clone();
        r.stage = "test".into();
        self.save(&r).await?;

        p(&format!("test {local}"));
        let image: agent_core::ImageRef =
            local
                .parse()
                .map_err(|e: agent_core::ImageRefError| Error::InvalidInput {
                    what: "built image".into(),
                    message: e.to_string(),
                })?;
        let mut c = spec.contract(image, &placeholder)?;
        for t in &placeholder.targets {
            if c.targets.iter().any(|(h, _)| h == &t.host) {
                continue;
            }
            if let Ok(rt) = (self.connect)(t.host.clone()).await {
                if let Ok(info) = rt.engine_info().await {
                    c.targets.push((t.host.clone(), info));
                }
            }
        }
        let run = format!("{}-{:x}", std::process::id(), started_at.unix_timestamp() & 0xffff);
        let progress = self.progress.clone();
        let report = contract::run(self.local.clone(), &c, &run, &move |case| {
            let word = format!("{:?}", case.outcome).to_lowercase();
            progress(&format!("  {word} {}: {}", case.name, case.detail))
        })
        .await;
        let report = match report {
            Ok(rep) => rep,
            Err(e) => return self.finish(r, DeliveryOutcome::TestFailed, Some(e.to_string())).await,
        };
        let passed = report.passed();
        let failed: Vec<String> = report
            .cases
            .iter()
            .filter(|c| c.outcome == contract::CaseOutcome::Failed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        r.tests = Some(report);
        if !passed {
            return self
                .finish(r, DeliveryOutcome::TestFailed, Some(failed.join("; ")))
                .await;
        }

        // Only a tested image is pushed: the registry never holds a version that failed its contract.
        r.stage = "push".into();
        self.save(&r).await?;
        p(&format!("push {}", built.tags.join(", ")));
        let pinned = match builder.push(&built).await {
            Ok(pinned) => pinned,
            Err(reason) => return self.finish(r, DeliveryOutcome::BuildFailed, Some(reason)).await,
        };
        r.image = Some(pinned.clone());
        let rollout = spec.rollout_with(&pinned)?;

        r.stage = "rollout".into();
        r.rollout = serde_json::to_value(&rollout).ok();
        self.save(&r).await?;
        p(&format!("rollout {name} to {} target(s)", rollout.targets.len()));
        let state = self.fleet.apply(rollout.clone()).await?;
        let outcome = rollout_outcome(state.exit_code());
        if outcome != DeliveryOutcome::Delivered {
            let reason = state
                .reason
                .clone()
                .unwrap_or_else(|| format!("the rollout ended {}", state.phase()));
            return self.finish(r, outcome, Some(reason)).await;
        }

        if let Some(w) = &spec.watch {
            r.stage = "watch".into();
            self.save(&r).await?;
            p(&format!("watch {name} for {}", agent_core::format_duration(w.window)));
            if let Some(reason) = self.watch(&rollout, w, &built.version).await? {
                p(&format!("watch: {reason}; rolling back"));
                let back = self.fleet.undo(&name).await?;
                let outcome = if back.exit_code() == 5 {
                    DeliveryOutcome::Failed
                } else {
                    DeliveryOutcome::RolledBack
                };
                return self.finish(r, outcome, Some(reason)).await;
            }
        }
        r.stage = "done".into();
        self.finish(r, DeliveryOutcome::Delivered, None).await
    }

    async fn finish(
        &self,
        mut r: DeliveryRecord,
        outcome: DeliveryOutcome,
        reason: Option<String>,
    ) -> Result<DeliveryRecord, Error> {
        r.outcome = outcome;
        r.reason = reason;
        r.finished_at = Some(OffsetDateTime::now_utc());
        self.save(&r).await?;
        Ok(r)
    }

    /// Watches every target's new container for the window; the first alert that fires, as a reason.
    async fn watch(&self, rollout: &RolloutSpec, w: &WatchSection, version: &str) -> Result<Option<String>, Error> {
        let verify = rollout.verify()?;
        let mut watches = Vec::new();
        for t in &rollout.targets {
            // The watch after a delivery reads containers; a service's tasks are verified by its rollout.
            let Some(container) = &t.container else {
                continue;
            };
            let runtime = (self.connect)(t.host.clone())
                .await
                .map_err(|source| Error::EngineInfo { source })?;
            let info = runtime
                .inspect_container(container.as_str())
                .await
                .map_err(Error::inspect(container.as_str()))?;
            let rules: Vec<AlertRule> = verify
                .probes()?
                .into_iter()
                .map(|probe| AlertRule {
                    name: probe.name().to_owned(),
                    probe,
                    for_: w.alert_for,
                })
                .collect();
            let ctx = ProbeContext {
                runtime,
                container: container.to_string(),
                started_at: info.state.started_at.unwrap_or_else(OffsetDateTime::now_utc),
                baseline_restarts: info.state.restart_count,
                expected_version: Version::parse(version).map(|v| v.to_string()),
                container_id: Some(info.id.clone()),
            };
            let probation = Probation {
                window: w.window,
                period: w.period,
                rules,
            };
            let target = format!("{}/{}", t.host, container);
            watches.push(async move { (target, probation.watch(&ctx, &|_| {}).await) });
        }
        for (target, outcome) in futures_util::future::join_all(watches).await {
            if let ProbationOutcome::Fired(alert) = outcome {
                return Ok(Some(format!(
                    "{target}: rule {} fired after {} failing: {}",
                    alert.rule,
                    agent_core::format_duration(alert.pending_for),
                    alert.reason
                )));
            }
        }
        Ok(None)
    }
}

fn rollout_outcome(code: i32) -> DeliveryOutcome {
    match code {
        0 => DeliveryOutcome::Delivered,
        3 => DeliveryOutcome::RolledBack,
        4 => DeliveryOutcome::Paused,
        _ => DeliveryOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
build:
  image: 127.0.0.1:5000/acme/agent
  version: 1.2.3
test:
  protocol: ">=1.0, <2"
  requireSeries: [agent_up]
rollout:
  name: node-agent
  targets:
    - {host: "unix:///var/run/docker.sock", container: node-agent-1}
  strategy: {canary: {steps: [{setWeight: 50}]}}
watch:
  window: 30s
"#;

    #[test]
    fn a_delivery_file_is_checked_before_anything_is_built() {
        let d = DeliverySpec::parse(SPEC, "d.yaml").unwrap();
        assert_eq!(d.build.context, PathBuf::from("."));
        let r = d.rollout_with("127.0.0.1:5000/acme/agent@sha256:".to_owned().as_str());
        assert!(r.is_err(), "an invalid image is refused by the rollout's own parser");
        let with_image = SPEC.replace("  name: node-agent", "  name: node-agent\n  image: x:1.0.0");
        let err = DeliverySpec::parse(&with_image, "d.yaml").unwrap_err().to_string();
        assert!(err.contains("remove it"), "{err}");
        let bad_rollout = SPEC.replace("parallel", "").replace("  targets:", "  tagrets:");
        assert!(DeliverySpec::parse(&bad_rollout, "d.yaml").is_err());
        let bad_protocol = SPEC.replace(">=1.0, <2", "one");
        assert!(DeliverySpec::parse(&bad_protocol, "d.yaml")
            .unwrap_err()
            .to_string()
            .contains("test.protocol"));
    }

    #[test]
    fn outcomes_map_to_the_documented_exit_codes() {
        assert_eq!(DeliveryOutcome::Delivered.exit_code(), 0);
        for o in [
            DeliveryOutcome::TestFailed,
            DeliveryOutcome::RolledBack,
            DeliveryOutcome::BuildFailed,
        ] {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                o.to_string(),
                "Display and JSON agree"
            );
        }
        assert_eq!(DeliveryOutcome::TestFailed.exit_code(), 1);
        assert_eq!(rollout_outcome(3).exit_code(), 3);
        assert_eq!(rollout_outcome(4).exit_code(), 4);
        assert_eq!(rollout_outcome(5).exit_code(), 5);
    }
}
