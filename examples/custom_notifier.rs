//! A custom notifier: write every rollout event as one line to a log file (a chat or paging integration is
//! the same shape), next to the spec's webhooks.
//!
//! `cargo run -p agentctl-examples --example custom_notifier -- rollout.yaml events.log`

use std::io::Write;
use std::sync::{Arc, Mutex};

use agent_rollout::{Fleet, FleetEvent, FleetReporter, Notifier, NotifyError, RolloutSpec, Silent, SqliteStore};
use async_trait::async_trait;

/// Appends each event as a JSON line.
struct FileNotifier {
    file: Mutex<std::fs::File>,
}

#[async_trait]
impl Notifier for FileNotifier {
    fn describe(&self) -> String {
        "event log file".into()
    }

    async fn notify(&self, event: &FleetEvent) -> Result<(), NotifyError> {
        let line = serde_json::to_string(event)?;
        let mut f = self.file.lock().map_err(|e| NotifyError::Other(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| NotifyError::Other(e.to_string()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(spec_path), Some(log_path)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: custom_notifier SPEC.yaml EVENTS.log");
    };
    let spec = RolloutSpec::parse(&std::fs::read_to_string(&spec_path)?, &spec_path)?;
    let connect = agent_docker::connector(agent_core::SecretPolicy::default());
    let quiet: FleetReporter = Arc::new(|_: &FleetEvent| {});
    let notifier = Arc::new(FileNotifier {
        file: Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?),
    });
    let fleet = Fleet::new(
        Arc::new(SqliteStore::open("rollouts.db".as_ref())?),
        connect,
        quiet,
        Arc::new(Silent),
    )
    .with_notifier(notifier);
    let state = fleet.apply(spec).await?;
    println!("rollout {} is {}; events in {log_path}", state.spec.name, state.phase());
    std::process::exit(state.exit_code());
}
