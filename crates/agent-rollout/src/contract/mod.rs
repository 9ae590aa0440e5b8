//! Contract tests of an agent image in a throwaway environment (`agentctl test`): the image runs on a network
//! of its own, pointed at a control center embedded in this process, and must show the behaviour every host
//! will rely on before it reaches one. Each check is one case of the report (and of its JUnit XML); the
//! environment is removed afterwards whatever happened, and [`cleanup`] removes what a killed run left.
//!
//! The cases, in order: `platform` (the image's OS/arch against every target engine), `non-root`, `healthy`
//! (the same gate as `update`, with the heartbeat probe on the embedded control center), `heartbeat` (the
//! image's version and a protocol inside the accepted range), `metrics` (the page parses and has the required
//! series), each `exec` command, `reconnect` (heartbeats resume after the control center restarts),
//! `graceful-stop` (exit 0 on the stop signal within the stop timeout).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::{ContainerName, ContainerRuntime, ContainerSpec, EngineInfo, EnvVar, ImageRef, RuntimeError, Version};
use agent_health::{ControlCenter, ControlCenterConfig, HeartbeatProbe, VerdictOutcome};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::VerifyConfig;

mod environment;

use environment::{
    address_on, check_metrics, network_name, random_token, run_test_container, start_on, substitute, EmbeddedCenter,
};
pub use environment::{cleanup, sweep};

/// The label on every object a contract run creates, with the run id as value.
pub const CONTRACT_LABEL: &str = "io.agentctl.contract";

/// What the image must do.
#[derive(Clone)]
pub struct Contract {
    /// The image under test.
    pub image: ImageRef,
    /// The gate (timing, fatal log patterns, an HTTP probe); the heartbeat probe is added on the embedded
    /// control center.
    pub verify: VerifyConfig,
    /// Extra environment of the agent.
    pub env: Vec<(String, String)>,
    /// The variables that tell the agent where the control center is and its token.
    pub url_env: String,
    /// See [`url_env`](Self::url_env).
    pub token_env: String,
    /// The protocol versions the control center accepts (`>=1.0, <2`); `None` accepts any, a heartbeat
    /// without one included.
    pub protocol: Option<semver::VersionReq>,
    /// The metrics page: port, path and the series it must have; `None` skips the case.
    pub metrics: Option<MetricsContract>,
    /// Run with a read-only root filesystem.
    pub read_only: bool,
    /// Commands run in the agent (argv, no shell) that must exit 0.
    pub exec: Vec<Vec<String>>,
    /// The engines the image will run on: it must match each one's OS and architecture.
    pub targets: Vec<(String, EngineInfo)>,
    /// How long to wait for heartbeats to resume after the control center restarts.
    pub reconnect_within: Duration,
    /// The stop timeout the agent runs with (the engine's 10 s when `None`); it must stop within it.
    pub stop_timeout: Option<Duration>,
    /// Containers started on the test network before the agent (a collector, a database).
    pub dependencies: Vec<Dependency>,
    /// Containers run on the test network once the agent is healthy; each must exit 0.
    pub test_containers: Vec<TestContainer>,
}

/// A container the agent needs, started on the test network before it, reachable by its name as an alias
/// and by its address as `${IP:NAME}` in the agent's env and the test containers' command and env.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dependency {
    /// Its name (an alias on the network).
    pub name: String,
    /// Its image.
    pub image: ImageRef,
    /// Its environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its command, when not the image's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// A container that tests the agent from the outside, on the same network, once it is healthy: it must exit
/// 0 within `timeout`. `${AGENT_IP}` in its command and env is the agent's address, `${IP:NAME}` a
/// dependency's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestContainer {
    /// Its name (the case is `test-container: NAME`).
    pub name: String,
    /// Its image.
    pub image: ImageRef,
    /// Its command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long it may run.
    #[serde(with = "agent_core::duration_text", default = "sixty")]
    pub timeout: Duration,
}

fn sixty() -> Duration {
    Duration::from_secs(60)
}

/// The agent's metrics page.
#[derive(Debug, Clone)]
pub struct MetricsContract {
    /// Container port.
    pub port: u16,
    /// Path (`/metrics`).
    pub path: String,
    /// Metric names that must be present.
    pub series: Vec<String>,
}

impl Contract {
    /// The default contract for `image`: the default gate, the demo agent's variable names, no protocol
    /// range, no metrics, the local engine only.
    pub fn new(image: ImageRef) -> Contract {
        Contract {
            image,
            verify: VerifyConfig::default(),
            env: Vec::new(),
            url_env: "CONTROL_CENTER_URL".into(),
            token_env: "CONTROL_CENTER_TOKEN".into(),
            protocol: None,
            metrics: None,
            read_only: false,
            exec: Vec::new(),
            targets: Vec::new(),
            reconnect_within: Duration::from_secs(15),
            stop_timeout: None,
            dependencies: Vec::new(),
            test_containers: Vec::new(),
        }
    }
}

/// How one case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseOutcome {
    /// It held.
    Passed,
    /// It did not.
    Failed,
    /// Not run: an earlier case it needs failed, or it was not asked for.
    Skipped,
}

/// One case of the contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Case {
    /// `platform`, `healthy`, `exec: /agent selftest`, …
    pub name: String,
    /// The outcome.
    pub outcome: CaseOutcome,
    /// What was seen, or why it failed (names both sides of a mismatch).
    pub detail: String,
    /// How long it took.
    #[serde(with = "agent_core::duration_text")]
    pub elapsed: Duration,
}

/// The result of a contract run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractReport {
    /// The run id: the value of [`CONTRACT_LABEL`] on what it created.
    pub run: String,
    /// The image tested.
    pub image: String,
    /// Its version (OCI version label, else the tag).
    pub version: Option<String>,
    /// The cases in order.
    pub cases: Vec<Case>,
    /// When it ran.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
}

impl ContractReport {
    /// Whether every case that ran passed (skipped cases after a failure do not hide it).
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.outcome != CaseOutcome::Failed)
    }

    /// The report as JUnit XML: one test suite named after the image, one test case per case.
    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(format!("agentctl test {}", self.image));
        for c in &self.cases {
            let status = match c.outcome {
                CaseOutcome::Passed => TestCaseStatus::success(),
                CaseOutcome::Failed => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(c.detail.clone());
                    s
                }
                CaseOutcome::Skipped => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(c.detail.clone());
                    s
                }
            };
            let mut case = TestCase::new(c.name.clone(), status);
            case.set_time(c.elapsed);
            case.set_classname("agent-contract");
            if c.outcome == CaseOutcome::Passed {
                case.set_system_out(c.detail.clone());
            }
            suite.add_test_case(case);
        }
        let mut report = Report::new("agentctl");
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}

/// Why the environment could not be set up (the contract itself never ran).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// An engine step of the set-up failed.
    #[error("setting up the test environment ({step}): {source}")]
    Setup {
        /// `inspect-image`, `network`, `create`, `start`.
        step: &'static str,
        /// The engine's error.
        source: RuntimeError,
    },
    /// The embedded control center could not start.
    #[error("starting the embedded control center: {0}")]
    ControlCenter(String),
    /// The gate configuration is invalid.
    #[error(transparent)]
    Verify(#[from] crate::Error),
}

/// Progress of a contract run.
pub type CaseProgress<'a> = &'a (dyn Fn(&Case) + Send + Sync);

/// Runs `contract` on `runtime` as run `run` (names and labels carry it). Set-up failures are errors; every
/// check of the image is a case of the report.
pub async fn run(
    runtime: Arc<dyn ContainerRuntime>,
    contract: &Contract,
    run: &str,
    progress: CaseProgress<'_>,
) -> Result<ContractReport, ContractError> {
    let started = OffsetDateTime::now_utc();
    let mut cases = Vec::new();
    let mut record = |name: &str, outcome: CaseOutcome, detail: String, t: Instant| {
        let case = Case {
            name: name.to_owned(),
            outcome,
            detail,
            elapsed: t.elapsed(),
        };
        progress(&case);
        cases.push(case);
    };
    let setup = |step| move |source| ContractError::Setup { step, source };

    let t = Instant::now();
    let image = match runtime.inspect_image(&contract.image.to_string()).await {
        Err(RuntimeError::ImageNotFound { .. }) => runtime
            .pull_image(&contract.image, &|_| {})
            .await
            .map_err(setup("pull"))?,
        other => other.map_err(setup("inspect-image"))?,
    };
    let version = Version::of_image(&contract.image, &image.defaults.labels).map(|v| v.to_string());

    // platform
    let mismatched: Vec<String> = contract
        .targets
        .iter()
        .filter(|(_, e)| e.os != image.os || e.arch != image.arch)
        .map(|(name, e)| format!("{name} is {}/{}", e.os, e.arch))
        .collect();
    let platform = format!("{}/{}", image.os, image.arch);
    if mismatched.is_empty() {
        let engines = if contract.targets.is_empty() {
            "no target engines given".to_owned()
        } else {
            format!("{} target engine(s)", contract.targets.len())
        };
        record(
            "platform",
            CaseOutcome::Passed,
            format!("{platform} matches {engines}"),
            t,
        );
    } else {
        record(
            "platform",
            CaseOutcome::Failed,
            format!("the image is {platform}, but {}", mismatched.join(", ")),
            t,
        );
    }

    // non-root, from what the engine reports of the image
    let t = Instant::now();
    let user = image.defaults.user.clone().unwrap_or_default();
    let name_part = user.split(':').next().unwrap_or_default();
    if user.is_empty() || name_part == "root" || name_part == "0" {
        record(
            "non-root",
            CaseOutcome::Failed,
            format!(
                "the image runs as {}; set a non-root USER",
                if user.is_empty() { "root (no USER)" } else { &user }
            ),
            t,
        );
    } else {
        record("non-root", CaseOutcome::Passed, format!("runs as {user}"), t);
    }

    // What killed runs left first (their agents hold a control center's token; each network costs one of
    // the engine's address pools).
    environment::sweep(runtime.as_ref()).await;
    // The environment: a network, a control center on its gateway, the agent.
    let labels = BTreeMap::from([
        (CONTRACT_LABEL.to_owned(), run.to_owned()),
        (environment::OWNER_LABEL.to_owned(), environment::owner()),
    ]);
    let network = network_name(run);
    let gateway = runtime
        .create_isolated_network(&network, &labels)
        .await
        .map_err(setup("network"))?;
    let outcome = within_network(
        &runtime,
        contract,
        run,
        &network,
        &gateway,
        version.as_deref(),
        &mut record,
    )
    .await;
    cleanup(runtime.as_ref(), run).await;
    outcome?;
    Ok(ContractReport {
        run: run.to_owned(),
        image: contract.image.to_string(),
        version,
        cases,
        started,
    })
}

type Record<'r> = dyn FnMut(&str, CaseOutcome, String, Instant) + Send + 'r;

async fn within_network(
    runtime: &Arc<dyn ContainerRuntime>,
    contract: &Contract,
    run: &str,
    network: &str,
    gateway: &str,
    version: Option<&str>,
    record: &mut Record<'_>,
) -> Result<(), ContractError> {
    let token = random_token();
    let config = ControlCenterConfig {
        late_after: Duration::from_secs(5),
        down_after: Duration::from_secs(30),
        drain_timeout: Duration::from_millis(200),
        ..ControlCenterConfig::default()
    };
    let cc = ControlCenter::new(token.clone(), config, None)
        .await
        .map_err(|e| ContractError::ControlCenter(e.to_string()))?;
    let mut center = EmbeddedCenter::start(cc.clone(), &format!("{gateway}:0")).await?;
    let setup = |step| move |source| ContractError::Setup { step, source };
    let mut ips = BTreeMap::new();
    for d in &contract.dependencies {
        let dep_name = format!("agentctl-test-{run}-{}", d.name);
        let mut spec = ContainerSpec::new(
            dep_name.parse::<ContainerName>().map_err(|e| {
                ContractError::Verify(crate::Error::InvalidInput {
                    what: format!("dependency {}", d.name),
                    message: e.to_string(),
                })
            })?,
            d.image.clone(),
        );
        spec.env = d.env.iter().map(|(k, v)| EnvVar::plain(k, v)).collect();
        spec.command = d.command.clone();
        start_on(runtime.as_ref(), spec, network, Some(&d.name), run)
            .await
            .map_err(setup("dependency"))?;
        if let Some(ip) = address_on(runtime.as_ref(), &dep_name, network).await {
            ips.insert(d.name.clone(), ip);
        }
    }
    let name = format!("agentctl-test-{run}");
    let mut spec = ContainerSpec::new(
        name.parse::<ContainerName>().map_err(|e| {
            ContractError::Verify(crate::Error::InvalidInput {
                what: "run id".into(),
                message: e.to_string(),
            })
        })?,
        contract.image.clone(),
    );
    spec.network_mode = Some(network.to_owned());
    spec.read_only_rootfs = contract.read_only;
    spec.stop_timeout = contract.stop_timeout;
    spec.labels.insert(CONTRACT_LABEL.to_owned(), run.to_owned());
    spec.labels
        .insert(environment::OWNER_LABEL.to_owned(), environment::owner());
    spec.env
        .push(EnvVar::plain(&contract.url_env, format!("http://{}", center.address)));
    spec.env.push(EnvVar::secret(&contract.token_env, token.clone()));
    for (k, v) in &contract.env {
        spec.env.push(EnvVar::plain(k, substitute(v, &ips)));
    }
    let id = runtime.create_container(&spec).await.map_err(setup("create"))?;
    let begun = OffsetDateTime::now_utc();
    runtime.start_container(&name).await.map_err(setup("start"))?;

    // healthy: the update gate plus the heartbeat probe on the embedded control center
    let t = Instant::now();
    let mut gate = contract.verify.gate()?;
    gate.push(Box::new(HeartbeatProbe::new(cc.clone(), Duration::from_secs(10))));
    let ctx = agent_health::ProbeContext {
        runtime: runtime.clone(),
        container: name.clone(),
        started_at: begun,
        baseline_restarts: 0,
        expected_version: version.map(str::to_owned),
        container_id: Some(id.clone()),
    };
    let verdict = gate.run(&ctx, &|_| {}).await;
    let healthy = verdict.outcome == VerdictOutcome::Healthy;
    let evidence: Vec<String> = verdict
        .evidence
        .iter()
        .map(|e| format!("{}: {}", e.probe, e.last.detail()))
        .collect();
    record(
        "healthy",
        if healthy {
            CaseOutcome::Passed
        } else {
            CaseOutcome::Failed
        },
        format!(
            "{} after {:.1} s ({}); {}",
            verdict.outcome,
            verdict.elapsed.as_secs_f64(),
            verdict.reason,
            evidence.join("; ")
        ),
        t,
    );

    let skip = |record: &mut Record<'_>, what: &str| {
        record(
            what,
            CaseOutcome::Skipped,
            "skipped: the agent did not become healthy".into(),
            Instant::now(),
        )
    };
    if !healthy {
        for what in ["heartbeat", "metrics", "reconnect", "graceful-stop"] {
            skip(record, what);
        }
        center.stop().await;
        return Ok(());
    }

    // heartbeat: version and protocol
    let t = Instant::now();
    let heard = cc.by_container(&id);
    match heard.first() {
        None => record(
            "heartbeat",
            CaseOutcome::Failed,
            "no heartbeat from the agent's container".into(),
            t,
        ),
        Some(a) => {
            let mut problems = Vec::new();
            if let Some(v) = version {
                if a.last.version != v {
                    problems.push(format!("it reports version {}, the image is {v}", a.last.version));
                }
            }
            let proto = a.last.protocol.as_str();
            if let Some(req) = &contract.protocol {
                match lenient_version(proto) {
                    None => problems.push(format!(
                        "it sends no protocol version{}; the control center accepts {req}",
                        if proto.is_empty() {
                            String::new()
                        } else {
                            format!(" it can read (`{proto}`)")
                        }
                    )),
                    Some(p) if !req.matches(&p) => {
                        problems.push(format!("it speaks protocol {proto}, the control center accepts {req}"))
                    }
                    Some(_) => {}
                }
            }
            if problems.is_empty() {
                record(
                    "heartbeat",
                    CaseOutcome::Passed,
                    format!(
                        "agent {} reports version {}, protocol {}",
                        a.last.agent_id,
                        a.last.version,
                        if proto.is_empty() { "(none)" } else { proto }
                    ),
                    t,
                );
            } else {
                record("heartbeat", CaseOutcome::Failed, problems.join("; "), t);
            }
        }
    }

    // metrics
    let t = Instant::now();
    match &contract.metrics {
        None => record("metrics", CaseOutcome::Skipped, "no metrics contract given".into(), t),
        Some(m) => {
            let (outcome, detail) = check_metrics(runtime.as_ref(), &name, m).await;
            record("metrics", outcome, detail, t);
        }
    }

    // exec commands
    for cmd in &contract.exec {
        let t = Instant::now();
        let title = format!("exec: {}", cmd.join(" "));
        match runtime.exec(&name, cmd, Duration::from_secs(30)).await {
            Ok(o) if o.exit_code == 0 => record(&title, CaseOutcome::Passed, "exit 0".into(), t),
            Ok(o) => record(
                &title,
                CaseOutcome::Failed,
                format!("exit {}: {}", o.exit_code, o.output.trim()),
                t,
            ),
            Err(e) => record(&title, CaseOutcome::Failed, e.to_string(), t),
        }
    }

    // test containers, from the outside on the same network
    if let Some(ip) = address_on(runtime.as_ref(), &name, network).await {
        ips.insert("AGENT".into(), ip);
    }
    for tc in &contract.test_containers {
        let t = Instant::now();
        let title = format!("test-container: {}", tc.name);
        let (outcome, detail) = run_test_container(runtime.as_ref(), tc, network, run, &ips).await;
        record(&title, outcome, detail, t);
    }

    // reconnect: the control center goes away and comes back on the same address
    let t = Instant::now();
    let address = center.address.to_string();
    center.stop().await;
    let before = cc.by_container(&id).first().map_or(0, |a| a.heartbeats);
    tokio::time::sleep(Duration::from_secs(2)).await;
    center = EmbeddedCenter::start(cc.clone(), &address).await?;
    let deadline = Instant::now() + contract.reconnect_within;
    let mut resumed = false;
    while Instant::now() < deadline {
        if cc.by_container(&id).first().is_some_and(|a| a.heartbeats > before) {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    record(
        "reconnect",
        if resumed {
            CaseOutcome::Passed
        } else {
            CaseOutcome::Failed
        },
        if resumed {
            format!(
                "heartbeats resumed {:.1} s after the control center came back",
                (t.elapsed().as_secs_f64() - 2.0).max(0.0)
            )
        } else {
            format!(
                "no heartbeat within {} s after the control center restarted on {address}",
                contract.reconnect_within.as_secs()
            )
        },
        t,
    );
    center.stop().await;

    // graceful stop: the image's stop signal, its stop timeout (10 s when unset), exit 0
    let t = Instant::now();
    let timeout = spec.stop_timeout.unwrap_or(Duration::from_secs(10));
    let stopped = runtime.stop_container(&name, Some(timeout)).await;
    let took = t.elapsed();
    let state = runtime.inspect_container(&name).await.map(|i| i.state);
    let (outcome, detail) = match (stopped, state) {
        (Err(e), _) | (_, Err(e)) => (CaseOutcome::Failed, e.to_string()),
        (Ok(()), Ok(s)) => match s.exit_code {
            Some(0) if took < timeout => (CaseOutcome::Passed, format!("exit 0 after {:.1} s", took.as_secs_f64())),
            Some(code) => (
                CaseOutcome::Failed,
                format!(
                    "exit {code} after {:.1} s (stop timeout {} s){}",
                    took.as_secs_f64(),
                    timeout.as_secs(),
                    if code == 137 {
                        ": killed, it did not stop on its stop signal"
                    } else {
                        ""
                    }
                ),
            ),
            None => (CaseOutcome::Failed, "the engine reports no exit code".into()),
        },
    };
    record("graceful-stop", outcome, detail, t);
    Ok(())
}

/// `1`, `1.2` and `1.2.3` as semantic versions (protocol versions are rarely written in full).
fn lenient_version(text: &str) -> Option<semver::Version> {
    Version::parse(text).and_then(|v| semver::Version::parse(&v.to_string()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, outcome: CaseOutcome, detail: &str) -> Case {
        Case {
            name: name.into(),
            outcome,
            detail: detail.into(),
            elapsed: Duration::from_millis(1500),
        }
    }

    #[test]
    fn junit_has_one_case_per_check_with_failures_and_skips() {
        let report = ContractReport {
            run: "r1".into(),
            image: "reg/agent:1.0.0".into(),
            version: Some("1.0.0".into()),
            cases: vec![
                case("healthy", CaseOutcome::Passed, "healthy after 2.0 s"),
                case(
                    "heartbeat",
                    CaseOutcome::Failed,
                    "it speaks protocol 2.0, the control center accepts ^1 & <x>",
                ),
                case("metrics", CaseOutcome::Skipped, "no metrics contract given"),
            ],
            started: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(!report.passed());
        let xml = report.junit();
        assert!(
            xml.contains(r#"tests="3""#) && xml.contains(r#"failures="1""#) && xml.contains(r#"skipped="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="heartbeat" classname="agent-contract" time="1.500">"#),
            "{xml}"
        );
        assert!(xml.contains("&lt;x&gt;"), "messages are escaped: {xml}");
    }

    #[test]
    fn protocol_versions_may_be_short() {
        let req = semver::VersionReq::parse(">=1.0, <2").unwrap();
        assert!(req.matches(&lenient_version("1").unwrap()));
        assert!(req.matches(&lenient_version("1.4").unwrap()));
        assert!(!req.matches(&lenient_version("2.0").unwrap()));
        assert!(lenient_version("one").is_none());
    }
}
