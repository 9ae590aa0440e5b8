//! `agentctl demo`: the closed loop on the local engine with embedded defaults. Builds the demo agent images
//! from the workspace (no registry), deploys a small fleet at 1.0.0, updates it to 2.0.0 one agent at a time
//! with verification, tries a broken 3.0.0 that rolls back by itself, and prints the history. Everything it
//! makes carries a run label and is removed at the end (also on Ctrl-C) unless `--keep`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ContainerRuntime, ContainerSpec, EnvVar, Mount, MountKind, NetworkAttachment, RestartPolicy, StateStore,
};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, RUN_LABEL};
use agent_docker::DockerRuntime;
use agent_health::{HttpProbeConfig, Timing};
use agent_rollout::{SqliteStore, UpdateRequest, UpdateStatus, Updater, VerifyConfig};

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

    progress.line(&format!("== 2. deploy {} agents at 1.0.0", args.agents));
    let network = format!("agentctl-demo-{run}");
    runtime.create_network(&network, None, &labels).await?;
    let mut names = Vec::new();
    for i in 1..=args.agents {
        let name = format!("demo-agent-{i}");
        let volume = format!("agentctl-demo-{run}-{i}");
        runtime.create_volume(&volume, &labels).await?;
        let mut spec = ContainerSpec::new(name.parse()?, tag("1.0.0").parse()?);
        spec.env = vec![
            EnvVar::plain("LOG_LEVEL", "info"),
            EnvVar::plain("AGENT_ID", &name),
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

    let verify = VerifyConfig {
        timing: Timing {
            period: Duration::from_millis(500),
            min_healthy_time: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
            ..Timing::default()
        },
        http: Some(HttpProbeConfig {
            port: 8080,
            path: "/health".into(),
            expected_status: None,
            host_port: None,
        }),
        ..VerifyConfig::default()
    };
    let updater = Updater::new(runtime.clone(), store, progress.clone());
    let request = |name: &str, image: &str| -> anyhow::Result<UpdateRequest> {
        let mut r = UpdateRequest::new(name.parse()?, image.parse()?);
        r.verify = verify.clone();
        Ok(r)
    };

    progress
        .line("== 3. update every agent to 2.0.0, one at a time, each verified (container, HEALTHCHECK, logs, HTTP)");
    for name in &names {
        let report = updater.update(&request(name, &tag("2.0.0"))?).await?;
        progress.line(&render::update_text(&report));
        if report.status != UpdateStatus::Updated {
            anyhow::bail!(
                "the demo expected {name} to update to 2.0.0, but it {:?}",
                report.status
            );
        }
    }

    progress.line("== 4. try 3.0.0, which logs a FATAL line: it must roll back by itself");
    let report = updater.update(&request(&names[0], &tag("3.0.0"))?).await?;
    progress.line(&render::update_text(&report));
    if report.status != UpdateStatus::RolledBack {
        anyhow::bail!("the demo expected 3.0.0 to roll back, but it {:?}", report.status);
    }
    let running = runtime.inspect_container(&names[0]).await?;
    progress.line(&format!(
        "  {} runs {} again, {}",
        names[0],
        running.spec.image.familiar(),
        running.state.status
    ));

    progress.line(&format!("== 5. the history of {}", names[0]));
    let h = updater.history(&names[0].parse()?, 5).await?;
    println!("{}", render::history_table(&h));
    progress
        .line("demo finished: 2.0.0 rolled out and verified everywhere, the broken 3.0.0 rolled back with evidence");
    Ok(ExitCode::SUCCESS)
}
