//! A CI gate on the public API: contract-test an agent image in a throwaway environment (its own network,
//! an embedded control center), write JUnit XML, and fail the job unless every case passed.
//!
//! `cargo run -p agentctl-examples --example contract_gate -- 127.0.0.1:5000/acme/agent:1.4.2 contract.xml`

use std::sync::Arc;
use std::time::Duration;

use agent_core::ContainerRuntime;
use agent_docker::DockerRuntime;
use agent_rollout::contract::{self, CaseOutcome, Contract, MetricsContract};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || anyhow::anyhow!("usage: contract_gate IMAGE JUNIT_FILE");
    let image = args.next().ok_or_else(usage)?.parse()?;
    let junit = args.next().ok_or_else(usage)?;
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::connect(None).await?);

    let mut c = Contract::new(image);
    c.verify.timing.min_healthy_time = Duration::from_secs(2);
    c.protocol = Some(">=1.0, <2".parse()?);
    c.metrics = Some(MetricsContract {
        port: 8080,
        path: "/metrics".into(),
        series: vec!["agent_up".into()],
    });
    // The images this gate ships to must match the engines it will run on.
    c.targets
        .push((runtime.endpoint().to_owned(), runtime.engine_info().await?));

    let run = format!("gate-{}", std::process::id());
    let report = contract::run(runtime.clone(), &c, &run, &|case| {
        println!("{:?} {}: {}", case.outcome, case.name, case.detail);
    })
    .await?;
    std::fs::write(&junit, report.junit())?;
    let failed = report.cases.iter().filter(|c| c.outcome == CaseOutcome::Failed).count();
    if failed > 0 {
        anyhow::bail!("{failed} case(s) failed; see {junit}");
    }
    println!("every case passed; JUnit in {junit}");
    Ok(())
}
