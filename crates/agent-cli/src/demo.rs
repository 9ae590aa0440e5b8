//! `agentctl demo`: the closed loop on the local engine with embedded defaults. Builds the demo agent images
//! from the workspace (no registry), deploys a small fleet at 1.0.0, updates it to 2.0.0 one agent at a time
//! with verification, tries a broken 3.0.0 that rolls back by itself, and prints the history. Everything it
//! makes carries a run label and is removed at the end (also on Ctrl-C) unless `--keep`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use agent_core::{
    ContainerRuntime, ContainerSpec, EnvVar, Mount, MountKind, NetworkAttachment, RestartPolicy, StateStore,
};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, RUN_LABEL};
use agent_docker::DockerRuntime;
use agent_rollout::SqliteStore;

use crate::cli::{DemoArgs, Global};
use crate::render::{self, Progress};

const REPO: &str = "agentctl-demo/agent";

pub(crate) async fn run(g: &Global, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::connect(g).await?;
    let run = run_id("demo");
    let progress = Arc::new(Progress::new(g.no_progress, false));
    let state_tmp = tempfile::tempdir()?;
    let store: Arc<dyn StateStore> = if args.keep {
        crate::open_store(g)?
    } else {
        Arc::new(SqliteStore::open(&state_tmp.path().join("state.db"))?)
    };
    let label = format!("{RUN_LABEL}={run}");
    let body = demo(runtime.clone(), store, progress.clone(), &run, args);
    let outcome = tokio::select! {
        r = body => r,
        _ = tokio::signal::ctrl_c() => {
            progress.line("interrupted: cleaning up");
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    if args.keep && outcome.is_ok() {
        progress.line(&format!(
            "--keep: the fleet stays. Explore with `agentctl status demo-agent-1`, `agentctl history demo-agent-1`, `agentctl undo demo-agent-1`; remove it with `docker rm -f $(docker ps -aq --filter label={label})`"
        ));
    } else {
        let n = runtime.remove_labelled(&label).await;
        progress.line(&format!("cleaned up {n} object(s) labelled {label}"));
    }
    outcome
}

async fn demo(
    runtime: Arc<DockerRuntime>,
    store: Arc<dyn StateStore>,
    progress: Arc<Progress>,
    run: &str,
    args: &DemoArgs,
) -> anyhow::Result<ExitCode> {
    let labels = HashMap::from([(RUN_LABEL.to_owned(), run.to_owned())]);
    let engine = runtime.engine_info().await?;
    progress.line(&format!(
        "== agentctl demo on {} (engine {}, API {}, {}/{})",
        engine.endpoint, engine.version, engine.api_version, engine.os, engine.arch
    ));

    progress.line("== 1. build the demo agent (static binary) and its images, FROM scratch, no registry");
    let binary = tokio::task::spawn_blocking(demo_agent_binary).await??;
    let tag = |v: &str| format!("{REPO}:{v}");
    for (version, failure) in [("1.0.0", None), ("2.0.0", None), ("3.0.0", Some("fatal-logs"))] {
        let mut image = DemoImage::new(version);
        image.failure = failure.map(str::to_owned);
        let id = image.build(&runtime, &binary, &tag(version), &labels).await?;
        progress.line(&format!(
            "  built {} ({}){}",
            tag(version),
            &id[..19.min(id.len())],
            failure.map(|f| format!(", broken on purpose: {f}")).unwrap_or_default()
        ));
    }

    let network = format!("agentctl-demo-{run}");
    runtime.create_network(&network, None, &labels).await?;
    progress.line("== 2. start an embedded control center the agents send heartbeats to");
    let gateway = runtime
        .network_gateway(&network)
        .await?
        .ok_or_else(|| anyhow::anyhow!("network {network} has no gateway address"))?;
    let token = format!("demo-token-{run}");
    let cc =
        agent_health::ControlCenter::new(token.clone(), agent_health::ControlCenterConfig::default(), None).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listen = format!("{gateway}:0");
    let server = {
        let cc = cc.clone();
        tokio::spawn(async move {
            cc.serve(
                &listen,
                move |addr| {
                    let _ = tx.send(addr);
                },
                async move {
                    let _ = stop_rx.await;
                },
            )
            .await
        })
    };
    let cc_addr = rx
        .await
        .map_err(|_| anyhow::anyhow!("the control center did not start"))?;
    let cc_url = format!("http://{cc_addr}");
    progress.line(&format!("  listening on {cc_url}; the agents report to it"));
    let token_file = tempfile::NamedTempFile::new()?;
    std::fs::write(token_file.path(), &token)?;

    progress.line(&format!(
        "== 3. deploy {} agents at 1.0.0, reporting to the control center",
        args.agents
    ));
    let mut names = Vec::new();
    for i in 1..=args.agents {
        let name = format!("demo-agent-{i}");
        let volume = format!("agentctl-demo-{run}-{i}");
        runtime.create_volume(&volume, &labels).await?;
        let mut spec = ContainerSpec::new(name.parse()?, tag("1.0.0").parse()?);
        spec.env = vec![
            EnvVar::plain("LOG_LEVEL", "info"),
            EnvVar::plain("AGENT_ID", &name),
            EnvVar::plain("CONTROL_CENTER_URL", &cc_url),
            EnvVar::secret("CONTROL_CENTER_TOKEN", &token),
            EnvVar::plain("HEARTBEAT_INTERVAL_MS", "500"),
            EnvVar::secret("COLLECTOR_TOKEN", format!("demo-secret-{i}")),
        ];
        spec.labels = labels.clone().into_iter().collect();
        spec.labels.insert("app".into(), "demo-agent".into());
        spec.restart_policy = RestartPolicy::UnlessStopped;
        spec.networks = vec![NetworkAttachment {
            name: network.clone(),
            aliases: vec![format!("agent-{i}")],
            ..Default::default()
        }];
        spec.mounts = vec![Mount {
            target: "/var/lib/agent".into(),
            kind: MountKind::Volume {
                name: volume,
                anonymous: false,
            },
            read_only: false,
        }];
        runtime.create_container(&spec).await?;
        runtime.start_container(&name).await?;
        progress.line(&format!(
            "  started {name} (network {network}, alias agent-{i}, volume, secret env)"
        ));
        names.push(name);
    }

    let spec_text = |version: &str, name: &str| {
        let targets: String = names
            .iter()
            .map(|n| format!("  - {{host: '{}', container: {n}}}\n", runtime.endpoint()))
            .collect();
        format!(
            "name: {name}\nimage: {}\ntargets:\n{targets}strategy:\n  canary:\n    steps: [{{setWeight: 25}}, {{pause: 2s}}, {{setWeight: 50}}, {{setWeight: 100}}]\nhealth:\n  minHealthyTime: 2s\n  deadline: 30s\n  period: 500ms\n  http: {{port: 8080, path: /health}}\n  heartbeat: {{url: '{cc_url}', tokenFile: '{}', timeout: 5s}}\n  metrics: ['agent_up == 1']\nrollback: {{automatic: true, maxFailureRatio: 0}}\n",
            tag(version),
            token_file.path().display()
        )
    };
    let events: agent_rollout::FleetReporter = {
        let progress = progress.clone();
        Arc::new(move |e: &agent_rollout::FleetEvent| progress.line(&render::fleet_event(e)))
    };
    let connect: agent_rollout::Connector = {
        let rt = runtime.clone();
        Arc::new(move |_host: String| {
            let rt: Arc<dyn ContainerRuntime> = rt.clone();
            Box::pin(async move { Ok(rt) })
        })
    };
    let fleet = agent_rollout::Fleet::new(store.clone(), connect, events, progress.clone());

    progress.line("== 4. canary to 2.0.0: 25 %, pause, 50 %, 100 %; each agent verified by container, HEALTHCHECK, logs, HTTP, heartbeat (new container, new version) and metrics");
    let spec = agent_rollout::RolloutSpec::parse(&spec_text("2.0.0", &format!("{run}-v2")), "demo")?;
    let state = fleet.apply(spec).await?;
    println!("{}", render::rollout_table(&state));
    if state.phase() != agent_core::Phase::Succeeded {
        anyhow::bail!(
            "the demo expected the 2.0.0 canary to succeed, but it is {}",
            state.phase()
        );
    }
    for a in cc.agents() {
        progress.line(&format!(
            "  control center: {} reports {} ({:?})",
            a.last.agent_id, a.last.version, a.state
        ));
    }

    progress.line(
        "== 5. canary to 3.0.0, which logs a FATAL line: the first canary fails and the rollout reverts by itself",
    );
    let spec = agent_rollout::RolloutSpec::parse(&spec_text("3.0.0", &format!("{run}-v3")), "demo")?;
    let state = fleet.apply(spec).await?;
    println!("{}", render::rollout_table(&state));
    if state.phase() != agent_core::Phase::RolledBack {
        anyhow::bail!("the demo expected 3.0.0 to roll back, but it is {}", state.phase());
    }
    let running = runtime.inspect_container(&names[0]).await?;
    progress.line(&format!(
        "  {} runs {} again, {}",
        names[0],
        running.spec.image.familiar(),
        running.state.status
    ));
    let _ = stop_tx.send(());
    let _ = server.await;

    progress.line(&format!("== 6. the history of {}", names[0]));
    let h = agent_rollout::Updater::new(runtime.clone(), store.clone(), progress.clone())
        .history(&names[0].parse()?, 5)
        .await?;
    println!("{}", render::history_table(&h));
    progress
        .line("demo finished: 2.0.0 rolled out by canary and verified everywhere; the broken 3.0.0 failed its first canary and the rollout reverted by itself, with the evidence");
    Ok(ExitCode::SUCCESS)
}
