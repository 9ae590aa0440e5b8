//! A user-defined probe: the agent counts as healthy only once its HTTP `/version` answers the version we
//! expect, combined with the built-in container-state probe in one health gate.
//!
//! `cargo run -p agentctl-examples --example custom_probe -- node-agent 2.0.0`

use std::sync::Arc;
use std::time::Duration;

use agent_core::{ContainerRuntime, OffsetDateTime};
use agent_docker::DockerRuntime;
use agent_health::{http, ContainerStateProbe, HealthGate, Observation, Probe, ProbeContext, Timing};
use async_trait::async_trait;

/// Passes when `GET http://CONTAINER:8080/version` returns the expected version.
struct VersionProbe {
    expected: String,
}

#[async_trait]
impl Probe for VersionProbe {
    fn name(&self) -> &str {
        "version"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        let info = match ctx.runtime.inspect_container(&ctx.container).await {
            Ok(i) => i,
            Err(e) => return Observation::Fail(e.to_string()),
        };
        let Some(ip) = info.addresses.values().next() else {
            return Observation::Pending("no address yet".into());
        };
        match http::get(&format!("http://{ip}:8080/version"), Duration::from_secs(2)).await {
            Ok(r) if r.body.trim() == self.expected => Observation::Pass(format!("reports {}", self.expected)),
            Ok(r) => Observation::Fail(format!("reports {:?}, want {}", r.body.trim(), self.expected)),
            Err(e) => Observation::Fail(e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(container), Some(expected)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: custom_probe CONTAINER VERSION");
    };
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::connect(None).await?);
    let gate = HealthGate::new(Timing {
        deadline: Duration::from_secs(20),
        ..Timing::default()
    })
    .with_probe(ContainerStateProbe)
    .with_probe(VersionProbe { expected });
    let ctx = ProbeContext {
        runtime,
        container,
        started_at: OffsetDateTime::now_utc(),
        baseline_restarts: 0,
        expected_version: None,
        container_id: None,
    };
    let verdict = gate.run(&ctx, &|_| {}).await;
    println!("{verdict}");
    Ok(())
}
