//! The throwaway environment of a contract run: the embedded control center, containers on the test
//! network, the address substitutions, the checks run from outside the agent, and the clean-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::{ContainerName, ContainerRuntime, ContainerSpec, EnvVar, RuntimeError};
use agent_health::ControlCenter;
use time::OffsetDateTime;

use super::{CaseOutcome, ContractError, MetricsContract, TestContainer, CONTRACT_LABEL};

/// `text` with `${AGENT_IP}` and `${IP:NAME}` put in from `ips` (keys `AGENT` and dependency names).
pub(super) fn substitute(text: &str, ips: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (name, ip) in ips {
        let key = if name == "AGENT" {
            "${AGENT_IP}".to_owned()
        } else {
            format!("${{IP:{name}}}")
        };
        out = out.replace(&key, ip);
    }
    out
}

/// Creates and starts a container on `network`, pulling its image when the engine does not have it.
pub(super) async fn start_on(
    runtime: &dyn ContainerRuntime,
    mut spec: ContainerSpec,
    network: &str,
    alias: Option<&str>,
    run: &str,
) -> Result<String, RuntimeError> {
    spec.networks = vec![agent_core::NetworkAttachment {
        name: network.to_owned(),
        aliases: alias.map(|a| vec![a.to_owned()]).unwrap_or_default(),
        ..Default::default()
    }];
    spec.labels.insert(CONTRACT_LABEL.to_owned(), run.to_owned());
    spec.labels.insert(OWNER_LABEL.to_owned(), owner());
    if let Err(RuntimeError::ImageNotFound { .. }) = runtime.inspect_image(&spec.image.to_string()).await {
        runtime.pull_image(&spec.image, &|_| {}).await?;
    }
    let id = runtime.create_container(&spec).await?;
    runtime.start_container(&id).await?;
    Ok(id)
}

/// The address of `container` on `network`.
pub(super) async fn address_on(runtime: &dyn ContainerRuntime, container: &str, network: &str) -> Option<String> {
    let info = runtime.inspect_container(container).await.ok()?;
    info.addresses
        .get(network)
        .or_else(|| info.addresses.values().next())
        .cloned()
}

/// Removes every container and network of contract run `run` (after a kill or Ctrl-C). Returns how many.
pub async fn cleanup(runtime: &dyn ContainerRuntime, run: &str) -> usize {
    let mut removed = 0;
    if let Ok(list) = runtime.list_containers(&[format!("{CONTRACT_LABEL}={run}")]).await {
        for c in list {
            let _ = runtime.stop_container(&c.id, Some(Duration::from_secs(1))).await;
            if runtime.remove_container(&c.id).await.is_ok() {
                removed += 1;
            }
        }
    }
    if runtime.remove_network(&network_name(run)).await.is_ok() {
        removed += 1;
    }
    removed
}

/// Removes every contract environment on `runtime` whose owner process is gone (killed with `-9`, its
/// machine's process table says): its containers (the agent, with the token of its control center, keeps
/// running otherwise) and its network (each costs one of the engine's few address pools). Environments of
/// live runs, of other machines' runs and of runs that name no owner (an earlier agentctl's) are left
/// alone. Returns the runs removed.
pub async fn sweep(runtime: &dyn ContainerRuntime) -> Vec<String> {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let label = [CONTRACT_LABEL.to_owned()];
    if let Ok(list) = runtime.list_containers(&label).await {
        for c in list {
            if let (Some(run), Some(owner)) = (c.labels.get(CONTRACT_LABEL), c.labels.get(OWNER_LABEL)) {
                owners.insert(run.clone(), owner.clone());
            }
        }
    }
    if let Ok(list) = runtime.list_networks(&label).await {
        for (_, labels) in list {
            if let (Some(run), Some(owner)) = (labels.get(CONTRACT_LABEL), labels.get(OWNER_LABEL)) {
                owners.insert(run.clone(), owner.clone());
            }
        }
    }
    let mut swept = Vec::new();
    for (run, owner) in owners {
        let mut parts = owner.split(':');
        let holder = agent_core::LeaseHolder {
            id: owner.clone(),
            hostname: parts.next().unwrap_or_default().to_owned(),
            pid: parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            purpose: String::new(),
        };
        if holder.pid != 0 && crate::lease::holder_is_dead(&holder) {
            tracing::warn!(
                run,
                owner,
                "removing the environment of a contract run whose process is gone"
            );
            cleanup(runtime, &run).await;
            swept.push(run);
        }
    }
    swept
}

/// The label naming the process that owns a contract environment (`host:pid:start:nonce`), so a later run
/// can tell an abandoned one from a live one.
pub(super) const OWNER_LABEL: &str = "io.agentctl.contract.owner";

/// The owner label's value for this process.
pub(super) fn owner() -> String {
    crate::lease::holder_for_this_process("contract").id
}

pub(super) fn network_name(run: &str) -> String {
    format!("agentctl-test-{run}")
}

/// A control center served on the test network's gateway, restartable on the same address.
pub(super) struct EmbeddedCenter {
    /// Where it listens.
    pub(super) address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedCenter {
    pub(super) async fn start(cc: Arc<ControlCenter>, address: &str) -> Result<EmbeddedCenter, ContractError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let address_owned = address.to_owned();
        let serving = cc.clone();
        let task = tokio::spawn(async move {
            let r = serving
                .serve(
                    &address_owned,
                    move |a| {
                        let _ = bound_tx.send(a);
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "contract test: the embedded control center stopped");
            }
        });
        let address = bound_rx
            .await
            .map_err(|_| ContractError::ControlCenter(format!("could not listen on {address}")))?;
        Ok(EmbeddedCenter {
            address,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub(super) async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub(super) async fn run_test_container(
    runtime: &dyn ContainerRuntime,
    tc: &TestContainer,
    network: &str,
    run: &str,
    ips: &BTreeMap<String, String>,
) -> (CaseOutcome, String) {
    let name = format!("agentctl-test-{run}-t-{}", tc.name);
    let Ok(container) = name.parse::<ContainerName>() else {
        return (
            CaseOutcome::Failed,
            format!("`{}` is not a usable container name", tc.name),
        );
    };
    let mut spec = ContainerSpec::new(container, tc.image.clone());
    if !tc.command.is_empty() {
        spec.command = Some(tc.command.iter().map(|a| substitute(a, ips)).collect());
    }
    spec.env = tc
        .env
        .iter()
        .map(|(k, v)| EnvVar::plain(k, substitute(v, ips)))
        .collect();
    if let Err(e) = start_on(runtime, spec, network, None, run).await {
        return (CaseOutcome::Failed, format!("could not start: {e}"));
    }
    let deadline = Instant::now() + tc.timeout;
    loop {
        match runtime.inspect_container(&name).await {
            Ok(i) if !i.state.is_running() => {
                let code = i.state.exit_code.unwrap_or(-1);
                let logs = runtime
                    .logs(&name, None, Some(5))
                    .await
                    .map(|l| l.into_iter().map(|l| l.text).collect::<Vec<_>>().join(" | "))
                    .unwrap_or_default();
                return if code == 0 {
                    (CaseOutcome::Passed, format!("exit 0; {logs}"))
                } else {
                    (CaseOutcome::Failed, format!("exit {code}; last output: {logs}"))
                };
            }
            Ok(_) if Instant::now() >= deadline => {
                return (
                    CaseOutcome::Failed,
                    format!("still running after {}", agent_core::format_duration(tc.timeout)),
                )
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return (CaseOutcome::Failed, e.to_string()),
        }
    }
}

pub(super) async fn check_metrics(
    runtime: &dyn ContainerRuntime,
    name: &str,
    m: &MetricsContract,
) -> (CaseOutcome, String) {
    let info = match runtime.inspect_container(name).await {
        Ok(i) => i,
        Err(e) => return (CaseOutcome::Failed, e.to_string()),
    };
    let Some(ip) = info.addresses.values().next() else {
        return (CaseOutcome::Failed, "the container has no address".into());
    };
    let url = format!("http://{ip}:{}{}", m.port, m.path);
    let resp = match agent_health::http::get(&url, Duration::from_secs(3)).await {
        Ok(r) => r,
        Err(e) => return (CaseOutcome::Failed, format!("GET {url}: {e}")),
    };
    if resp.status != 200 {
        return (CaseOutcome::Failed, format!("GET {url} answered {}", resp.status));
    }
    let samples = match agent_health::parse_text(&resp.body) {
        Ok(s) => s,
        Err(e) => {
            return (
                CaseOutcome::Failed,
                format!("{url} does not parse: line {}: {}", e.line, e.message),
            )
        }
    };
    let missing: Vec<&str> = m
        .series
        .iter()
        .filter(|s| !samples.iter().any(|x| &x.name == *s))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        (
            CaseOutcome::Passed,
            format!(
                "{} sample(s) parse; required series present: {}",
                samples.len(),
                m.series.join(", ")
            ),
        )
    } else {
        (CaseOutcome::Failed, format!("{url} lacks {}", missing.join(", ")))
    }
}

pub(super) fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i ^ OffsetDateTime::now_utc().unix_timestamp_nanos() as u64);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
