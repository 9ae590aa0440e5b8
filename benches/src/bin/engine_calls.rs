//! What each engine call a verified update makes costs the machine: CPU time of every process (from
//! `/proc/stat`: the engine's daemons and shims, the agent, this program) and wall time per call, on the
//! local engine, each kind repeated ROUNDS times one after the other on an idle machine.
//!
//! ```sh
//! cargo build --release -p agent-cli -p agentctl-benches
//! target/release/engine-calls [ROUNDS]
//! ```
//!
//! The calls are those of agentctl's `DockerRuntime`, the same code a rollout runs; the stop, remove,
//! create and start of an agent container are the work the shell loop and the engine limit do per target.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use agent_core::{ContainerRuntime, ContainerSpec, ImageRef, RestartPolicy, RECORD_LABEL};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, RUN_LABEL};
use agent_docker::DockerRuntime;
use agentctl_benches::{agent_healthcheck, machine_cpu_s, Result, FLEET_HEALTHCHECK_INTERVAL};

fn main() {
    if let Err(e) = run() {
        eprintln!("engine-calls: {e}");
        std::process::exit(1);
    }
}

/// Runs `call` `rounds` times; CPU ms and wall ms per call.
fn measure<F, Fut>(rt: &tokio::runtime::Runtime, rounds: usize, mut call: F) -> Result<(f64, f64)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let cpu0 = machine_cpu_s().ok_or("no /proc/stat")?;
    let t0 = Instant::now();
    for i in 0..rounds {
        rt.block_on(call(i))?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = machine_cpu_s().ok_or("no /proc/stat")? - cpu0;
    Ok((cpu * 1000.0 / rounds as f64, wall * 1000.0 / rounds as f64))
}

fn run() -> Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| "usage: engine-calls [ROUNDS]")?,
        None => 30,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let docker = rt.block_on(DockerRuntime::connect(None)).map_err(|e| e.to_string())?;
    let run = run_id("ec");
    let labels = HashMap::from([(RUN_LABEL.to_owned(), run.clone())]);
    let tag = format!("agentctl-bench/engine-calls:{run}");
    let binary = demo_agent_binary().map_err(|e| e.to_string())?;
    rt.block_on(DemoImage::new("1.0.0").build(&docker, &binary, &tag, &labels))
        .map_err(|e| e.to_string())?;
    let image: ImageRef = tag.parse().map_err(|e| format!("{e}"))?;
    let spec = |name: &str| -> Result<ContainerSpec> {
        let mut s = ContainerSpec::new(name.parse().map_err(|e| format!("{e}"))?, image.clone());
        s.labels.insert(RUN_LABEL.into(), run.clone());
        s.restart_policy = RestartPolicy::UnlessStopped;
        s.healthcheck = Some(agent_healthcheck(FLEET_HEALTHCHECK_INTERVAL));
        Ok(s)
    };
    let agent = format!("{run}-agent");
    let result = (|| -> Result<Vec<(&str, (f64, f64))>> {
        rt.block_on(async {
            docker
                .create_container(&spec(&agent)?)
                .await
                .map_err(|e| e.to_string())?;
            docker.start_container(&agent).await.map_err(|e| e.to_string())
        })?;
        std::thread::sleep(Duration::from_secs(2));
        let d = &docker;
        let mut rows = Vec::new();
        let idle0 = machine_cpu_s().ok_or("no /proc/stat")?;
        std::thread::sleep(Duration::from_secs(3));
        let idle = (machine_cpu_s().ok_or("no /proc/stat")? - idle0) / 3.0;
        rows.push((
            "the machine idle, one agent running (CPU ms per second)",
            (idle * 1000.0, 1000.0),
        ));
        let err = |e: agent_core::RuntimeError| e.to_string();
        rows.push((
            "inspect the container",
            measure(&rt, rounds, |_| async {
                d.inspect_container(&agent).await.map(drop).map_err(err)
            })?,
        ));
        rows.push((
            "read its logs",
            measure(&rt, rounds, |_| async {
                d.logs(&agent, None, None).await.map(drop).map_err(err)
            })?,
        ));
        let health = vec!["/agent".to_owned(), "healthcheck".to_owned()];
        rows.push((
            "exec its HEALTHCHECK command",
            measure(&rt, rounds, |_| async {
                d.exec(&agent, &health, Duration::from_secs(5))
                    .await
                    .map(drop)
                    .map_err(err)
            })?,
        ));
        let record_labels = BTreeMap::from([(RECORD_LABEL.to_owned(), "bench".to_owned())]);
        rows.push((
            "create and remove a record (a lock)",
            measure(&rt, rounds, |i| {
                let (name, labels) = (format!("{run}-lock-{i}"), record_labels.clone());
                async move {
                    let id = d.create_record(&name, &labels).await.map_err(err)?;
                    d.remove_record(&id).await.map_err(err)
                }
            })?,
        ));
        // A history of ten revisions is about 20 KiB of JSON: the size of the label written here.
        let mut history_labels = record_labels.clone();
        history_labels.insert("io.agentctl.history".to_owned(), "x".repeat(20 * 1024));
        rows.push((
            "create and remove a record with a 20 KiB label (begin facts, history)",
            measure(&rt, rounds, |i| {
                let (name, labels) = (format!("{run}-history-{i}"), history_labels.clone());
                async move {
                    let id = d.create_record(&name, &labels).await.map_err(err)?;
                    d.remove_record(&id).await.map_err(err)
                }
            })?,
        ));
        let labelled = format!("{run}-labelled");
        rt.block_on(d.create_record(&labelled, &history_labels)).map_err(err)?;
        rows.push((
            "inspect that record (read its labels)",
            measure(&rt, rounds, |_| async {
                d.record(&labelled).await.map(drop).map_err(err)
            })?,
        ));
        let record = format!("{run}-record");
        rt.block_on(d.create_record(&record, &record_labels)).map_err(err)?;
        let body = vec![b'x'; 4096];
        rows.push((
            "write a 4 KiB file into a record (the lock's renewal; an earlier agentctl's begin facts and history)",
            measure(&rt, rounds, |_| async {
                d.write_record(&record, "file.json", &body).await.map_err(err)
            })?,
        ));
        rows.push((
            "read it back",
            measure(&rt, rounds, |_| async {
                d.read_record(&record, "file.json").await.map(drop).map_err(err)
            })?,
        ));
        rows.push((
            "stop, remove, create and start an agent container (the engine limit's work per target)",
            measure(&rt, rounds.min(10), |i| {
                let name = format!("{run}-cycle");
                let s = spec(&name);
                async move {
                    let s = s?;
                    if i > 0 {
                        d.stop_container(&name, Some(Duration::from_secs(10)))
                            .await
                            .map_err(err)?;
                        d.remove_container(&name).await.map_err(err)?;
                    }
                    d.create_container(&s).await.map_err(err)?;
                    d.start_container(&name).await.map_err(err)
                }
            })?,
        ));
        Ok(rows)
    })();
    let _ = agentctl_benches::sh(&format!(
        "docker ps -aq --filter name={run} | xargs -r docker rm -f >/dev/null; docker rmi {tag} >/dev/null"
    ));
    let rows = result?;
    println!("| engine call | machine CPU per call (ms) | wall per call (ms) |\n|---|---|---|");
    for (what, (cpu, wall)) in rows {
        println!("| {what} | {cpu:.1} | {wall:.1} |");
    }
    Ok(())
}
