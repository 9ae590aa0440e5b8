//! Embed the SDK in a Rust service: update one of its own agents, report progress through a closure, and
//! act on the outcome.
//!
//! `cargo run -p agentctl-examples --example update_agent -- node-agent 127.0.0.1:5000/acme/agent:1.4.2`

use std::sync::Arc;

use agent_docker::DockerRuntime;
use agent_rollout::{Event, SqliteStore, UpdateRequest, UpdateStatus, Updater};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(container), Some(image)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: update_agent CONTAINER IMAGE");
    };
    let runtime = Arc::new(DockerRuntime::connect(None).await?);
    let store = Arc::new(SqliteStore::open("agent-updates.db".as_ref())?);
    // Libraries never print: the service decides what to do with each event.
    let reporter = Arc::new(|e: &Event| {
        if let Event::Step { step, detail } = e {
            eprintln!("[{step}] {detail}");
        }
    });
    let updater = Updater::new(runtime, store, reporter);
    let report = updater
        .update(&UpdateRequest::new(container.parse()?, image.parse()?))
        .await?;
    match report.status {
        UpdateStatus::Updated => println!("{container} now runs {image}"),
        UpdateStatus::Unchanged => println!("{container} already ran {image}"),
        UpdateStatus::RolledBack => println!("{container} rolled back: {}", report.reason.unwrap_or_default()),
        UpdateStatus::Unverified => println!(
            "{container} runs {image}, unverified: {}",
            report.reason.unwrap_or_default()
        ),
        // Only `Updater::stage` (the first half of blue-green) leaves a preview waiting.
        UpdateStatus::Staged => println!("{container}: a preview of {image} waits for promotion"),
    }
    std::process::exit(report.status.exit_code());
}
