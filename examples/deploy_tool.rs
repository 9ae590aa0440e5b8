//! A custom deploy tool on the public API: update several agents one after another, stop at the first one
//! that rolls back, and undo the ones already updated so the fleet stays on one version.
//!
//! `cargo run -p agentctl-examples --example deploy_tool -- 127.0.0.1:5000/acme/agent:1.4.2 agent-1 agent-2`

use std::sync::Arc;

use agent_core::{ContainerName, RuntimeError};
use agent_docker::DockerRuntime;
use agent_rollout::{Error, Silent, SqliteStore, UndoRequest, UpdateRequest, UpdateStatus, Updater};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: deploy_tool IMAGE CONTAINER..."))?;
    let containers: Vec<ContainerName> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let updater = Updater::new(
        Arc::new(DockerRuntime::connect(None).await?),
        Arc::new(SqliteStore::open("deploy-tool.db".as_ref())?),
        Arc::new(Silent),
    );
    let mut done: Vec<&ContainerName> = Vec::new();
    for c in &containers {
        let report = match updater.update(&UpdateRequest::new(c.clone(), image.parse()?)).await {
            Ok(report) => report,
            // The errors say which operation failed; the engine's own error is their source.
            Err(Error::Inspect {
                source: RuntimeError::ContainerNotFound { .. },
                ..
            }) => {
                println!("{c}: not on this engine, skipped");
                continue;
            }
            Err(e @ Error::RevertFailed { .. }) => {
                eprintln!("{e}");
                std::process::exit(5);
            }
            Err(e) => return Err(e.into()),
        };
        println!("{c}: {:?}", report.status);
        if report.status == UpdateStatus::RolledBack {
            println!(
                "{c} failed ({}); reverting {} updated agent(s)",
                report.reason.unwrap_or_default(),
                done.len()
            );
            for d in done.iter().rev() {
                let undo = updater.undo(&UndoRequest::new((*d).clone())).await?;
                println!("{d}: back to revision {}", undo.revision.number);
            }
            std::process::exit(3);
        }
        done.push(c);
    }
    println!("{} agent(s) on {image}", done.len());
    Ok(())
}
