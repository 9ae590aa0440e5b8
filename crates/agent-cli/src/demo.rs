//! `agentctl demo`: the closed loop on the local engine with embedded defaults. Builds the demo agent from the
//! workspace, starts a local registry (Debian's `docker-registry`) and a control center, deploys a small fleet
//! at 1.0.0, then delivers: 2.0.0 is built (linted, multi-stage, labelled, pushed), contract-tested, rolled out
//! as a canary and watched; 3.0.0 speaks a protocol the control center does not accept and is stopped by its
//! tests before any host; 3.0.1 passes its tests but the hosts' configuration breaks it, so its canary fails
//! and the rollout reverts by itself. It prints the deliveries and a history. Everything it makes carries a
//! run label and is removed at the end (also on Ctrl-C) unless `--keep`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use agent_core::{
    ContainerRuntime, ContainerSpec, EnvVar, Mount, MountKind, NetworkAttachment, RestartPolicy, StateStore,
};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, RUN_LABEL};
use agent_docker::DockerRuntime;
use agent_rollout::delivery::{Deliverer, DeliveryOutcome, DeliverySpec};
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
        crate::open_store(g).await?
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
        let mut n = runtime.remove_labelled(&label).await;
        // The agents' history records carry no run label; their store (a temporary one) is gone with them.
        for i in 1..=args.agents {
            n += agent_rollout::remove_history_records(runtime.as_ref(), &format!("demo-agent-{i}"))
                .await
                .unwrap_or(0);
        }
        // The 1.0.0 image is not labelled with the run (see `demo`): remove it by name once no container uses it.
        let _ = runtime.remove_image(&format!("{REPO}:1.0.0")).await;
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

    progress.line("== 1. build the demo agent (static binary), its 1.0.0 image, and start a local registry");
    let binary = tokio::task::spawn_blocking(demo_agent_binary).await??;
    let tag = |v: &str| format!("{REPO}:{v}");
    // Not labelled with the run: a label the image carries counts as the image's own, not the container's,
    // and would not follow the agents to the delivered versions (the run label must, for the clean-up).
    let id = DemoImage::new("1.0.0")
        .build(&runtime, &binary, &tag("1.0.0"), &HashMap::new())
        .await?;
    progress.line(&format!("  built {} ({})", tag("1.0.0"), &id[..19.min(id.len())]));
    let registry = tokio::task::spawn_blocking(agent_docker::testing::LocalRegistry::start)
        .await?
        .map_err(|e| anyhow::anyhow!("starting the local registry: {e}"))?;
    let delivered_repo = format!("{}/agentctl-demo/node-agent", registry.address());
    progress.line(&format!(
        "  registry on {} (Debian's docker-registry)",
        registry.address()
    ));

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
            // This host's configuration breaks 3.0.1 (it exits at start here), which no clean test
            // environment can see: only a canary on the fleet can.
            EnvVar::plain("AGENT_BROKEN_ON", "3.0.1"),
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

    let targets: String = names
        .iter()
        .map(|n| format!("    - {{host: '{}', container: {n}}}\n", runtime.endpoint()))
        .collect();
    let delivery_text = format!(
        "build:\n  image: {delivered_repo}\ntest:\n  protocol: '>=1.0, <2'\n  requireSeries: [agent_up]\nrollout:\n  name: demo-{run}\n  targets:\n{targets}  strategy:\n    canary:\n      steps: [{{setWeight: 25}}, {{pause: 2s}}, {{setWeight: 50}}, {{setWeight: 100}}]\n  health:\n    minHealthyTime: 2s\n    deadline: 30s\n    period: 500ms\n    http: {{port: 8080, path: /health}}\n    heartbeat: {{url: '{cc_url}', tokenFile: '{}', timeout: 5s}}\n    metrics: ['agent_up == 1']\nwatch:\n  window: 5s\n  alertFor: 2s\n",
        token_file.path().display()
    );
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
    let fleet = Arc::new(agent_rollout::Fleet::new(
        store.clone(),
        connect.clone(),
        events,
        progress.clone(),
    ));
    let on_line: agent_rollout::delivery::DeliveryProgress = {
        let progress = progress.clone();
        Arc::new(move |l: &str| progress.line(l))
    };
    let deliverer = Deliverer::new(store.clone(), fleet, connect, runtime.clone(), on_line);
    let spec = DeliverySpec::parse(&delivery_text, "demo delivery")?;
    let context = tempfile::tempdir()?;
    std::fs::copy(&binary, context.path().join("agent"))?;
    let builder = crate::deliver::EngineBuilder {
        runtime: runtime.clone(),
        base: context.path().to_owned(),
        progress: progress.clone(),
    };
    let mut delivered = Vec::new();
    for (step, version, extra, expected) in [
        (
            "4. deliver 2.0.0: build (lint, multi-stage, OCI labels, push), contract tests, canary 25 % / pause / 50 % / 100 % gated on container, HEALTHCHECK, logs, HTTP, heartbeat and metrics, then a watch",
            "2.0.0",
            "",
            DeliveryOutcome::Delivered,
        ),
        (
            "5. deliver 3.0.0, which speaks protocol 2.0: its contract tests stop it before any host is touched",
            "3.0.0",
            "ENV AGENT_PROTOCOL=2.0\n",
            DeliveryOutcome::TestFailed,
        ),
        (
            "6. deliver 3.0.1, which passes its tests but the hosts' configuration breaks: the first canary fails and the rollout reverts by itself",
            "3.0.1",
            "",
            DeliveryOutcome::RolledBack,
        ),
    ] {
        progress.line(&format!("== {step}"));
        std::fs::write(context.path().join("Dockerfile"), dockerfile(extra))?;
        let record = deliverer.deliver(&spec, Some(version), &builder).await?;
        progress.line(&format!(
            "  delivery {}: {}{}",
            record.id,
            record.outcome,
            record.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
        if record.outcome != expected {
            anyhow::bail!("the demo expected {version} to end {expected}, but it ended {}", record.outcome);
        }
        delivered.push(format!("{delivered_repo}:{version}"));
    }
    let running = runtime.inspect_container(&names[0]).await?;
    progress.line(&format!(
        "  {} runs {} again, {}",
        names[0],
        running.spec.image.familiar(),
        running.state.status
    ));
    for a in cc.agents() {
        progress.line(&format!(
            "  control center: {} reports {} ({:?})",
            a.last.agent_id, a.last.version, a.state
        ));
    }
    let _ = stop_tx.send(());
    let _ = server.await;

    progress.line("== 7. the deliveries: who, commit, digest, tests, outcome");
    outln!("{}", crate::deliver::records_table(&deliverer.records().await?));
    progress.line(&format!("== 8. the history of {}", names[0]));
    let h = agent_rollout::Updater::new(runtime.clone(), store.clone(), progress.clone())
        .history(&names[0].parse()?, 5)
        .await?;
    outln!("{}", render::history_table(&h, &[]));
    // Images this run made and pushed are its own: remove them locally (the registry goes with the run).
    for t in &delivered {
        let _ = runtime.remove_image(t).await;
    }
    progress.line("demo finished: 2.0.0 built, tested, rolled out by canary and watched; 3.0.0 stopped by its tests before any host; 3.0.1 failed its first canary and the rollout reverted by itself, with the evidence");
    Ok(ExitCode::SUCCESS)
}

/// The demo's Dockerfile: multi-stage, non-root, HEALTHCHECK, exec form; `extra` adds lines to the final stage.
fn dockerfile(extra: &str) -> String {
    format!(
        "FROM scratch AS build\nCOPY agent /agent\n\nFROM scratch\nARG VERSION\nENV AGENT_VERSION=${{VERSION}}\n{extra}COPY --from=build /agent /agent\nUSER 65534:65534\nEXPOSE 8080\nHEALTHCHECK --interval=2s --timeout=2s --retries=2 CMD [\"/agent\", \"healthcheck\"]\nENTRYPOINT [\"/agent\"]\n"
    )
}
