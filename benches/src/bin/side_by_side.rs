//! The side-by-side harness: agentctl next to what users would use instead, on the real engine, in one run.
//!
//! ```text
//! cargo build --release -p agent-cli -p agentctl-benches
//! target/release/side-by-side --runs 5 --fleet 50 --write BENCHMARKS.md
//! ```
//!
//! Scenarios (each run alternates the contenders, medians are reported):
//! 1. update downtime: the longest gap between the demo agent's heartbeats (sent every 50 ms to a receiver
//!    in this process) while it is updated from 1.0.0 to 2.0.0;
//! 2. rollback time: from the decision to roll back (agentctl's `rolling back` line; the start of the
//!    peer's command) until the previous version heartbeats again;
//! 3. fleet wall time for N agents at parallelism 5, and agentctl's peak RSS during it;
//! 4. the engine's own limit: create+start and start of a stopped container through the API;
//! 5. the control center's heartbeat ingestion and memory per agent (the `heartbeat-load` program).
//!
//! It needs Debian's `docker-registry` and `docker-compose`; Swarm is initialised on the engine for the
//! run (and left again) when the engine is not in a swarm already.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::{ContainerRuntime, ContainerSpec, EnvVar, ImageRef};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, LocalRegistry, RUN_LABEL};
use agent_docker::DockerRuntime;
use agentctl_benches::{
    agent_healthcheck, machine_cpu_s, median, sh, sibling, steps, wait_rusage, write_between_markers, Result,
    FLEET_HEALTHCHECK_INTERVAL,
};

const INTERVAL_MS: u64 = 50;
/// The `minHealthyTime` of the time-to-verdict scenario.
const VERDICT_MIN_HEALTHY_S: f64 = 1.0;
/// Parallelism and `minHealthyTime` (s) of the fleet scenario.
const FLEET_PARALLELISM: usize = 5;
const FLEET_MIN_HEALTHY_S: f64 = 1.0;
const BEGIN: &str = "<!-- side-by-side:begin -->";
const END: &str = "<!-- side-by-side:end -->";

/// One heartbeat as received: when, from which agent id, which version, from which container and with
/// which sequence number (each agent process counts its own from 1).
#[derive(Clone)]
struct Beat {
    at: Instant,
    agent: String,
    version: String,
    container: String,
    seq: u64,
}

/// A minimal heartbeat receiver: every POST is recorded and answered 204.
#[derive(Clone)]
struct Sink {
    beats: Arc<Mutex<Vec<Beat>>>,
    port: u16,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let beats = Arc::new(Mutex::new(Vec::new()));
        let b = beats.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let b = b.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &b);
                });
            }
        });
        Ok(Sink { beats, port })
    }

    fn beats(&self, agent: &str, since: Instant) -> Vec<Beat> {
        let all = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|b| b.agent == agent && b.at >= since)
            .cloned()
            .collect()
    }

    /// Waits for a heartbeat of `version` from `agent` after `since`; returns its arrival.
    fn wait_for(&self, agent: &str, version: &str, since: Instant, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(b) = self.beats(agent, since).into_iter().find(|b| b.version == version) {
                return Ok(b.at);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("no heartbeat of {version} from {agent} within {timeout:?}"))
    }

    /// Heartbeats of `agent` lost in `[from, to]`, counted: those a process numbered but that never came
    /// (gaps in its sequence), and the intervals in which no process sent one (no instance ran): each gap
    /// between consecutive arrivals longer than one and a half intervals counts as the intervals it spans,
    /// less one.
    fn lost(&self, agent: &str, from: Instant, to: Instant) -> u64 {
        let beats: Vec<Beat> = self.beats(agent, from).into_iter().filter(|b| b.at <= to).collect();
        let mut by_process: HashMap<&str, Vec<u64>> = HashMap::new();
        for b in &beats {
            by_process.entry(b.container.as_str()).or_default().push(b.seq);
        }
        let unreceived: u64 = by_process
            .values()
            .map(|seqs| {
                let (lo, hi) = (
                    seqs.iter().min().copied().unwrap_or(0),
                    seqs.iter().max().copied().unwrap_or(0),
                );
                (hi - lo + 1).saturating_sub(seqs.len() as u64)
            })
            .sum();
        let interval = INTERVAL_MS as f64 / 1000.0;
        let unsent: u64 = beats
            .windows(2)
            .map(|w| {
                let slots = (w[1].at - w[0].at).as_secs_f64() / interval;
                if slots > 1.5 {
                    slots.round() as u64 - 1
                } else {
                    0
                }
            })
            .sum();
        unreceived + unsent
    }

    /// The longest gap between consecutive heartbeats of `agent` in `[from, to]`.
    fn max_gap(&self, agent: &str, from: Instant, to: Instant) -> Duration {
        let times: Vec<Instant> = self
            .beats(agent, from)
            .into_iter()
            .map(|b| b.at)
            .filter(|t| *t <= to)
            .collect();
        let mut gap = times.first().map(|t| *t - from).unwrap_or(to - from);
        for w in times.windows(2) {
            gap = gap.max(w[1] - w[0]);
        }
        gap
    }
}

fn serve(stream: TcpStream, beats: &Mutex<Vec<Beat>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    let at = Instant::now();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        beats.lock().unwrap_or_else(|p| p.into_inner()).push(Beat {
            at,
            agent: field("agentId"),
            version: field("version"),
            container: field("container"),
            seq: v["seq"].as_u64().unwrap_or(0),
        });
    }
    let mut s = stream;
    s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

struct Harness {
    rt: tokio::runtime::Runtime,
    docker: Arc<DockerRuntime>,
    sink: Sink,
    host_ip: String,
    images: HashMap<&'static str, String>,
    agentctl: PathBuf,
    state: tempfile::TempDir,
    run: String,
    label: String,
}

impl Harness {
    fn env_args(&self, agent: &str) -> String {
        format!(
            "-e CONTROL_CENTER_URL=http://{}:{} -e HEARTBEAT_INTERVAL_MS={INTERVAL_MS} -e AGENT_ID={agent}",
            self.host_ip, self.sink.port
        )
    }

    fn docker_run(&self, name: &str, agent: &str, image: &str) -> Result<String> {
        sh(&format!(
            "docker run -d --name {name} --label {} --restart unless-stopped {} {image}",
            self.label,
            self.env_args(agent)
        ))
    }

    fn agentctl(&self, args: &str) -> Result<String> {
        sh(&format!(
            "{} --state-dir {} --no-progress {args}",
            self.agentctl.display(),
            self.state.path().display()
        ))
    }

    fn cleanup(&self) {
        // agentctl's records beside the agents (their history) carry no run label: found by name.
        let _ = sh(&format!(
            "docker ps -aq --filter label={} | xargs -r docker rm -f >/dev/null; docker ps -aq --filter label=io.agentctl.record --filter name={}- | xargs -r docker rm -f >/dev/null",
            self.label, self.run
        ));
    }
}

/// Scenario 1: one update per contender, the gap in heartbeats and the time until 2.0.0 heartbeats.
fn downtime(h: &Harness, contender: &str, k: usize) -> Result<(f64, f64, u64)> {
    let agent = format!("{}-dt-{contender}-{k}", h.run);
    let name = agent.clone();
    let (v1, v2) = (&h.images["v1"], &h.images["v2"]);
    let compose_dir = h.state.path().join(&agent);
    let compose = |image: &str| -> Result<()> {
        std::fs::create_dir_all(&compose_dir).map_err(|e| e.to_string())?;
        let file = format!(
            "version: '3'\nservices:\n  agent:\n    image: {image}\n    restart: unless-stopped\n    labels: ['{}']\n    environment:\n      CONTROL_CENTER_URL: http://{}:{}\n      HEARTBEAT_INTERVAL_MS: '{INTERVAL_MS}'\n      AGENT_ID: {agent}\n",
            h.label, h.host_ip, h.sink.port
        );
        std::fs::write(compose_dir.join("docker-compose.yml"), file).map_err(|e| e.to_string())?;
        sh(&format!(
            "cd {} && docker-compose -p {} up -d 2>&1",
            compose_dir.display(),
            agent.replace('-', "")
        ))
        .map(drop)
    };
    let swarm_create = || {
        sh(&format!(
            "docker service create -d -q --name {name} {} {v1}",
            h.env_args(&agent)
        ))
    };
    // Set up 1.0.0.
    let t_setup = Instant::now();
    match contender {
        "compose" => compose(v1)?,
        "swarm" | "swarm-start-first" => drop(swarm_create()?),
        _ => drop(h.docker_run(&name, &agent, v1)?),
    }
    h.sink.wait_for(&agent, "1.0.0", t_setup, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    // Update to 2.0.0.
    let t0 = Instant::now();
    let verify = "--min-healthy-time 1s --deadline 30s --period 200ms";
    match contender {
        "agentctl" => drop(h.agentctl(&format!("update {name} --image {v2} {verify}"))?),
        "agentctl-start-first" => drop(h.agentctl(&format!(
            "update {name} --image {v2} {verify} --strategy start-first"
        ))?),
        "manual" => drop(sh(&format!(
            "docker stop {name} >/dev/null && docker pull -q {v2} >/dev/null && docker rm {name} >/dev/null && docker run -d --name {name} --label {} --restart unless-stopped {} {v2}",
            h.label,
            h.env_args(&agent)
        ))?),
        "compose" => compose(v2)?,
        "swarm" => drop(sh(&format!("docker service update -q --image {v2} {name}"))?),
        "swarm-start-first" => drop(sh(&format!(
            "docker service update -q --update-order start-first --image {v2} {name}"
        ))?),
        other => return Err(format!("unknown contender {other}")),
    }
    let first_v2 = h.sink.wait_for(&agent, "2.0.0", t0, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    let gap = h.sink.max_gap(&agent, t0, Instant::now());
    let lost = h.sink.lost(&agent, t0, Instant::now());
    // Tear down.
    match contender {
        "compose" => drop(sh(&format!(
            "cd {} && docker-compose -p {} down 2>&1",
            compose_dir.display(),
            agent.replace('-', "")
        ))),
        "swarm" | "swarm-start-first" => drop(sh(&format!("docker service rm {name}"))),
        _ => h.cleanup(),
    }
    Ok((gap.as_secs_f64() * 1000.0, (first_v2 - t0).as_secs_f64() * 1000.0, lost))
}

/// Scenario 1b: from the new container's start to the verdict, for an agent whose HEALTHCHECK passes at once
/// but whose interval is 30 s (on this engine the first result of its own would come after 30 s). The verdict's
/// `elapsed` (the gate starts right after the start) from `agentctl update -o json`, in seconds.
fn verdict_time(h: &Harness, strategy: &str, k: usize) -> Result<f64> {
    let agent = format!("{}-vt-{strategy}-{k}", h.run);
    let (v1, v2) = (&h.images["v1"], &h.images["v2"]);
    let t = Instant::now();
    sh(&format!(
        "docker run -d --name {agent} --label {} --restart unless-stopped --health-interval 30s {} {v1}",
        h.label,
        h.env_args(&agent)
    ))?;
    h.sink.wait_for(&agent, "1.0.0", t, Duration::from_secs(60))?;
    let out = h.agentctl(&format!(
        "update {agent} --image {v2} --strategy {strategy} --min-healthy-time {VERDICT_MIN_HEALTHY_S}s --deadline 30s -o json"
    ));
    h.cleanup();
    let report: serde_json::Value = serde_json::from_str(&out?).map_err(|e| format!("agentctl's JSON: {e}"))?;
    if report["status"] != "updated" {
        return Err(format!("the update ended {}: {}", report["status"], report["reason"]));
    }
    let elapsed = report["verdict"]["elapsed"]
        .as_str()
        .ok_or("the report has no verdict.elapsed")?;
    Ok(agent_core::parse_duration(elapsed)?.as_secs_f64())
}

/// Scenario 2: a bad 3.0.0 (it runs, but logs fatal lines) is deployed; from the decision to roll back until
/// 1.0.0 heartbeats again.
fn rollback(h: &Harness, contender: &str, k: usize) -> Result<f64> {
    let agent = format!("{}-rb-{contender}-{k}", h.run);
    let name = agent.clone();
    let (v1, bad) = (&h.images["v1"], &h.images["fatal"]);
    let t_setup = Instant::now();
    let result = match contender {
        "agentctl" => {
            h.docker_run(&name, &agent, v1)?;
            h.sink.wait_for(&agent, "1.0.0", t_setup, Duration::from_secs(60))?;
            // agentctl detects the fatal lines itself; the clock starts at its `rolling back` line.
            let mut child = Command::new(&h.agentctl)
                .args(["--state-dir", &h.state.path().display().to_string(), "--no-progress"])
                .args(["update", &name, "--image", bad])
                .args(["--min-healthy-time", "1s", "--deadline", "30s", "--period", "200ms"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut decided = None;
            for line in BufReader::new(child.stderr.take().ok_or("no stderr")?).lines() {
                let line = line.map_err(|e| e.to_string())?;
                if decided.is_none() && line.contains("rolling back") {
                    decided = Some(Instant::now());
                }
            }
            let status = child.wait().map_err(|e| e.to_string())?;
            if status.code() != Some(3) {
                return Err(format!("agentctl exited {status} instead of 3 (rolled back)"));
            }
            let t0 = decided.ok_or("agentctl never printed `rolling back`")?;
            let back = h.sink.wait_for(&agent, "1.0.0", t0, Duration::from_secs(60))?;
            (back - t0).as_secs_f64() * 1000.0
        }
        "manual" => {
            h.docker_run(&name, &agent, bad)?;
            h.sink.wait_for(&agent, "3.0.0", t_setup, Duration::from_secs(60))?;
            let t0 = Instant::now();
            sh(&format!(
                "docker stop {name} >/dev/null && docker rm {name} >/dev/null && docker run -d --name {name} --label {} --restart unless-stopped {} {v1}",
                h.label,
                h.env_args(&agent)
            ))?;
            let back = h.sink.wait_for(&agent, "1.0.0", t0, Duration::from_secs(60))?;
            (back - t0).as_secs_f64() * 1000.0
        }
        "swarm" => {
            sh(&format!(
                "docker service create -d -q --name {name} {} {v1}",
                h.env_args(&agent)
            ))?;
            h.sink.wait_for(&agent, "1.0.0", t_setup, Duration::from_secs(60))?;
            sh(&format!("docker service update -q --image {bad} {name}"))?;
            h.sink.wait_for(&agent, "3.0.0", t_setup, Duration::from_secs(60))?;
            let t0 = Instant::now();
            sh(&format!("docker service rollback -q {name}"))?;
            let back = h.sink.wait_for(&agent, "1.0.0", t0, Duration::from_secs(60))?;
            (back - t0).as_secs_f64() * 1000.0
        }
        other => return Err(format!("unknown contender {other}")),
    };
    match contender {
        "swarm" => drop(sh(&format!("docker service rm {name}"))),
        _ => h.cleanup(),
    }
    Ok(result)
}

/// Scenario 3: N agents (no heartbeats) from 1.0.0 to 2.0.0 at parallelism 5. Returns seconds and, for
/// agentctl, its peak RSS in KiB.
/// One fleet run of a contender: wall time (s), agentctl's peak RSS (KiB) and breakdown, the machine's CPU
/// time over the run and agentctl's own (s).
#[derive(Debug, Default)]
struct FleetRun {
    secs: f64,
    rss: Option<u64>,
    profile: Option<steps::Breakdown>,
    machine_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

fn fleet(h: &Harness, contender: &str, n: usize, k: usize) -> Result<FleetRun> {
    let prefix = format!("{}-fl{k}-{}", h.run, contender.replace('-', ""));
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let (v1, v2) = (&h.images["v1"], &h.images["v2"]);
    if contender == "swarm" {
        sh(&format!(
            "docker service create -q --name {prefix} --replicas {n} --health-interval {}s --update-parallelism 5 --update-delay 0s --update-monitor 1s {v1}",
            FLEET_HEALTHCHECK_INTERVAL.as_secs()
        ))?;
    } else {
        // Set up in parallel through the API (not timed).
        h.rt.block_on(async {
            let mut tasks = Vec::new();
            for name in &names {
                let docker = h.docker.clone();
                let mut spec = ContainerSpec::new(
                    name.parse().map_err(|e| format!("{e}"))?,
                    v1.parse::<ImageRef>().map_err(|e| e.to_string())?,
                );
                spec.labels.insert(RUN_LABEL.into(), h.run.clone());
                spec.restart_policy = agent_core::RestartPolicy::UnlessStopped;
                spec.healthcheck = Some(agent_healthcheck(FLEET_HEALTHCHECK_INTERVAL));
                let name = name.clone();
                tasks.push(async move {
                    docker.create_container(&spec).await?;
                    docker.start_container(&name).await
                });
            }
            for r in futures_util::future::join_all(tasks).await {
                r.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })?;
    }
    let cpu0 = machine_cpu_s();
    let t0 = Instant::now();
    let mut run = FleetRun::default();
    match contender {
        "agentctl" | "agentctl-pipelined" | "agentctl-handoff" | "agentctl-min0" => {
            let (strategy, min, unverified) = match contender {
                "agentctl" => (
                    format!("rolling: {{maxUnavailable: {FLEET_PARALLELISM}}}"),
                    FLEET_MIN_HEALTHY_S,
                    0,
                ),
                "agentctl-pipelined" => ("recreate: {}".to_owned(), FLEET_MIN_HEALTHY_S, 0),
                "agentctl-handoff" => ("recreate: {}".to_owned(), FLEET_MIN_HEALTHY_S, 10),
                _ => ("recreate: {}".to_owned(), 0.0, 0),
            };
            let targets: String = names
                .iter()
                .map(|c| format!("  - {{host: 'unix:///var/run/docker.sock', container: {c}}}\n"))
                .collect();
            let spec = format!(
                "name: {prefix}\nimage: {v2}\ntargets:\n{targets}strategy:\n  {strategy}\nparallelism: {FLEET_PARALLELISM}\nmaxUnverified: {unverified}\nhealth: {{minHealthyTime: {min}s, deadline: 30s}}\n"
            );
            let file = h.state.path().join(format!("{prefix}.yaml"));
            std::fs::write(&file, spec).map_err(|e| e.to_string())?;
            let mut child = Command::new(&h.agentctl)
                .args(["--state-dir", &h.state.path().display().to_string(), "--no-progress"])
                .args(["apply", "-f", &file.display().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let lines = steps::follow(child.stderr.take().ok_or("no stderr")?, t0);
            let (code, maxrss, cpu) = wait_rusage(child.id())?;
            let lines = lines.join().map_err(|_| "the line reader panicked")?;
            if code != 0 {
                return Err(format!("agentctl apply exited {code}"));
            }
            run.rss = Some(maxrss);
            run.own_cpu = Some(cpu);
            run.profile = Some(steps::breakdown(
                &lines,
                &names,
                FLEET_PARALLELISM,
                t0.elapsed().as_secs_f64(),
            ));
        }
        "shell-loop" => {
            let list = names.join(" ");
            sh(&format!(
                "printf '%s\\n' {list} | xargs -P 5 -I{{}} sh -c 'docker stop {{}} >/dev/null && docker rm {{}} >/dev/null && docker run -d --name {{}} --label {} --restart unless-stopped --health-interval {}s {v2} >/dev/null'",
                h.label,
                FLEET_HEALTHCHECK_INTERVAL.as_secs()
            ))?;
        }
        "swarm" => drop(sh(&format!("docker service update -q --image {v2} {prefix}"))?),
        "engine-limit" => {
            // stop, remove, create, start through the API, 5 at a time, no verification: the floor.
            h.rt.block_on(async {
                let sem = Arc::new(tokio::sync::Semaphore::new(5));
                let mut tasks = Vec::new();
                for name in &names {
                    let docker = h.docker.clone();
                    let sem = sem.clone();
                    let mut spec = ContainerSpec::new(
                        name.parse().map_err(|e| format!("{e}"))?,
                        v2.parse::<ImageRef>().map_err(|e| e.to_string())?,
                    );
                    spec.labels.insert(RUN_LABEL.into(), h.run.clone());
                    spec.restart_policy = agent_core::RestartPolicy::UnlessStopped;
                    spec.healthcheck = Some(agent_healthcheck(FLEET_HEALTHCHECK_INTERVAL));
                    let name = name.clone();
                    tasks.push(async move {
                        let _p = sem.acquire().await;
                        docker.stop_container(&name, Some(Duration::from_secs(10))).await?;
                        docker.remove_container(&name).await?;
                        docker.create_container(&spec).await?;
                        docker.start_container(&name).await
                    });
                }
                for r in futures_util::future::join_all(tasks).await {
                    r.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            })?;
        }
        other => return Err(format!("unknown contender {other}")),
    }
    run.secs = t0.elapsed().as_secs_f64();
    run.machine_cpu = cpu0.zip(machine_cpu_s()).map(|(a, b)| b - a);
    if contender == "swarm" {
        sh(&format!("docker service rm {prefix}"))?;
        // Wait until the service's containers are gone before the next run.
        let _ = sh(&format!(
            "for i in $(seq 1 100); do [ -z \"$(docker ps -aq --filter label=com.docker.swarm.service.name={prefix})\" ] && break; sleep 0.2; done"
        ));
    } else {
        h.cleanup();
        let _ = sh(&format!(
            "docker ps -aq --filter name={prefix} | xargs -r docker rm -f >/dev/null"
        ));
    }
    Ok(run)
}

/// Scenario 4: create+start of a new container and start of a stopped one, through the API.
fn engine_limit(h: &Harness, runs: usize) -> Result<(f64, f64)> {
    let mut create_start = Vec::new();
    let mut start_stopped = Vec::new();
    for k in 0..runs {
        let name = format!("{}-eng-{k}", h.run);
        let mut spec = ContainerSpec::new(
            name.parse().map_err(|e| format!("{e}"))?,
            h.images["v1"].parse::<ImageRef>().map_err(|e| e.to_string())?,
        );
        spec.labels.insert(RUN_LABEL.into(), h.run.clone());
        spec.env.push(EnvVar::plain("HEARTBEAT_INTERVAL_MS", "1000"));
        h.rt.block_on(async {
            let t = Instant::now();
            h.docker.create_container(&spec).await?;
            h.docker.start_container(&name).await?;
            create_start.push(t.elapsed().as_secs_f64() * 1000.0);
            h.docker.stop_container(&name, Some(Duration::from_secs(10))).await?;
            let t = Instant::now();
            h.docker.start_container(&name).await?;
            start_stopped.push(t.elapsed().as_secs_f64() * 1000.0);
            h.docker.stop_container(&name, Some(Duration::from_secs(10))).await?;
            h.docker.remove_container(&name).await
        })
        .map_err(|e| e.to_string())?;
    }
    Ok((median(&mut create_start), median(&mut start_stopped)))
}

struct Args {
    /// The scenarios to run (`downtime`, `verdict`, `rollback`, `fleet`, `load`, and `swarm` for Swarm's rows);
    /// all when empty.
    only: Vec<String>,
    runs: usize,
    fleet_runs: usize,
    fleet: usize,
    write: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        only: Vec::new(),
        runs: 5,
        fleet_runs: 3,
        fleet: 50,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{what} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value("--runs")?.parse().map_err(|_| "--runs takes a number like 5")?,
            "--fleet-runs" => {
                a.fleet_runs = value("--fleet-runs")?
                    .parse()
                    .map_err(|_| "--fleet-runs takes a number like 3")?
            }
            "--fleet" => {
                a.fleet = value("--fleet")?
                    .parse()
                    .map_err(|_| "--fleet takes a number like 50")?
            }
            "--write" => a.write = Some(PathBuf::from(value("--write")?)),
            "--only" => a.only = value("--only")?.split(',').map(str::to_owned).collect(),
            "-h" | "--help" => {
                println!(
                    "usage: side-by-side [--runs 5] [--fleet-runs 3] [--fleet 50] [--only downtime,verdict,rollback,fleet,load,swarm] [--write BENCHMARKS.md]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    if a.runs == 0 || a.fleet_runs == 0 || a.fleet == 0 {
        return Err("--runs, --fleet-runs and --fleet must be at least 1".into());
    }
    Ok(a)
}

fn main() {
    agentctl_benches::exit_on_error(run());
}

fn run() -> Result<()> {
    let args = args()?;
    let agentctl = sibling("agentctl")?;
    let load = sibling("heartbeat-load")?;
    let rt = agentctl_benches::runtime()?;
    let docker = Arc::new(
        rt.block_on(DockerRuntime::connect(None))
            .map_err(|e| format!("connect to the engine: {e}"))?,
    );
    let registry = LocalRegistry::start().map_err(|e| e.to_string())?;
    let run = run_id("sbs");
    let label = format!("{RUN_LABEL}={run}");
    eprintln!("== building the demo images");
    let binary = demo_agent_binary().map_err(|e| e.to_string())?;
    let mut images = HashMap::new();
    for (key, version, failure) in [
        ("v1", "1.0.0", None),
        ("v2", "2.0.0", None),
        ("fatal", "3.0.0", Some("fatal-logs")),
    ] {
        let mut img = DemoImage::new(version);
        img.failure = failure.map(str::to_owned);
        let tag = format!("{}/sbs/agent:{version}", registry.address());
        let labels = HashMap::from([(RUN_LABEL.to_owned(), run.clone())]);
        rt.block_on(async {
            img.build(&docker, &binary, &tag, &labels).await?;
            docker.push_image(&tag).await
        })
        .map_err(|e| format!("build {tag}: {e}"))?;
        images.insert(key, tag);
    }
    // The default bridge's gateway: every container can reach the host there. Docker 20.10 leaves it out
    // of the network's IPAM config, so ask the interface when the engine does not say.
    let host_ip = match rt
        .block_on(docker.network_gateway("bridge"))
        .map_err(|e| e.to_string())?
    {
        Some(ip) => ip,
        None => sh("ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1")?,
    };
    if host_ip.is_empty() {
        return Err("cannot find the default bridge's gateway (no docker0 address)".into());
    }
    let sink = Sink::start()?;
    let swarm_was = sh("docker info --format '{{.Swarm.LocalNodeState}}'")?;
    let swarm_ok = args.runs_scenario("swarm")
        && (swarm_was == "active" || sh("docker swarm init --advertise-addr 127.0.0.1").is_ok());
    let h = Harness {
        rt,
        docker,
        sink,
        host_ip,
        images,
        agentctl,
        state: tempfile::tempdir().map_err(|e| e.to_string())?,
        run: run.clone(),
        label,
    };
    let result = measure(&h, &args, swarm_ok, &load);
    h.cleanup();
    if swarm_was != "active" && swarm_ok {
        let _ = sh("docker swarm leave --force");
    }
    let _ = sh(&format!(
        "docker images -q --filter label={RUN_LABEL}={run} | xargs -r docker rmi -f >/dev/null"
    ));
    drop(registry);
    let report = result?;
    println!("{report}");
    if let Some(path) = &args.write {
        write_between_markers(path, BEGIN, END, "## Side by side", &report)?;
        eprintln!("== wrote {}", path.display());
    }
    Ok(())
}

fn measure(h: &Harness, args: &Args, swarm: bool, load: &Path) -> Result<String> {
    let mut out = String::new();
    let machine = format!(
        "{} cores ({}), kernel {}, Docker {} (API {}), {}",
        sh("nproc")?,
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")?.trim(),
        sh("uname -r")?,
        sh("docker version --format '{{.Server.Version}}'")?,
        sh("docker version --format '{{.Server.APIVersion}}'")?,
        sh("docker info --format '{{.Driver}}'")?,
    );
    out.push_str(&format!(
        "Measured {} on {machine}; {} runs per contender (fleet: {}), alternating, medians. Reproduce: \
         `cargo build --release -p agent-cli -p agentctl-benches && target/release/side-by-side --write BENCHMARKS.md`.\n\n",
        sh("date -u +%Y-%m-%d")?,
        args.runs,
        args.fleet_runs
    ));
    if !swarm {
        out.push_str(
            "Swarm was not run (left out with `--only`, or it could not be initialised): its rows are missing.\n\n",
        );
    }

    // 4 first: the floor the others are compared with.
    eprintln!("== engine limit");
    let (create_start, start_stopped) = engine_limit(h, args.runs.max(10))?;

    let runs_of = |scenario: &str, runs: usize| if args.runs_scenario(scenario) { runs } else { 0 };
    eprintln!("== update downtime");
    let mut contenders = vec!["agentctl", "agentctl-start-first", "manual", "compose"];
    if swarm {
        contenders.extend(["swarm", "swarm-start-first"]);
    }
    let mut gaps: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut ttu: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut lost_counts: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut failures = Vec::new();
    for k in 0..runs_of("downtime", args.runs) {
        for c in &contenders {
            match downtime(h, c, k) {
                Ok((gap, t, lost)) => {
                    eprintln!("   {c} run {k}: gap {gap:.0} ms, {lost} heartbeat(s) lost, 2.0.0 after {t:.0} ms");
                    gaps.entry(c).or_default().push(gap);
                    ttu.entry(c).or_default().push(t);
                    lost_counts.entry(c).or_default().push(lost);
                }
                Err(e) => {
                    eprintln!("   {c} run {k}: {e}");
                    failures.push(format!("{c}: {e}"));
                    h.cleanup();
                }
            }
        }
    }
    out.push_str(&format!(
        "### 1. Single-agent update downtime\n\nThe longest gap between heartbeats (sent every {INTERVAL_MS} ms) while the agent goes from 1.0.0 to 2.0.0 (median of the runs). Heartbeats lost are counted, not derived: every heartbeat carries its process's sequence number, and a lost one is a number that never arrived or an interval in which no instance sent one; the column gives the worst run. \"2.0.0 after\" is from the start of the command to the first 2.0.0 heartbeat.\n\n| contender | max heartbeat gap (ms) | heartbeats lost (worst run) | 2.0.0 after (ms) | gap vs agentctl start-first |\n|---|---|---|---|---|\n"
    ));
    let base = gaps.get("agentctl-start-first").cloned().map(|mut v| median(&mut v));
    for c in &contenders {
        let (Some(g), Some(t)) = (gaps.get(c), ttu.get(c)) else {
            out.push_str(&format!("| {} | failed | | | |\n", label_of(c)));
            continue;
        };
        let g = median(&mut g.clone());
        let t = median(&mut t.clone());
        let lost = lost_counts.get(c).and_then(|v| v.iter().max().copied()).unwrap_or(0);
        let ratio = base.map(|b| format!("{:.1}x", g / b)).unwrap_or_default();
        out.push_str(&format!("| {} | {g:.0} | {lost} | {t:.0} | {ratio} |\n", label_of(c)));
    }

    eprintln!("== time to verdict");
    let mut verdicts: HashMap<&str, Vec<f64>> = HashMap::new();
    for k in 0..runs_of("verdict", args.runs) {
        for strategy in ["stop-first", "start-first"] {
            match verdict_time(h, strategy, k) {
                Ok(secs) => {
                    eprintln!("   {strategy} run {k}: verdict after {secs:.2} s");
                    verdicts.entry(strategy).or_default().push(secs);
                }
                Err(e) => {
                    eprintln!("   {strategy} run {k}: {e}");
                    failures.push(format!("verdict {strategy}: {e}"));
                    h.cleanup();
                }
            }
        }
    }
    out.push_str(&format!(
        "\n### 1b. Time to verdict\n\nAn agent whose HEALTHCHECK passes at once but whose interval is 30 s (`docker run --health-interval 30s`; this engine has no start interval, so its own first result comes after 30 s) is updated with `--min-healthy-time {VERDICT_MIN_HEALTHY_S}s` and the default probe period (500 ms). The verdict's `elapsed` from `agentctl update -o json`: from right after the new container's start to the verdict.\n\n| strategy | verdict after (s) | over minHealthyTime (s) |\n|---|---|---|\n"
    ));
    let mut verdict_over = Vec::new();
    for strategy in ["stop-first", "start-first"] {
        match verdicts.get(strategy) {
            Some(v) => {
                let m = median(&mut v.clone());
                verdict_over.push((strategy, m - VERDICT_MIN_HEALTHY_S));
                out.push_str(&format!(
                    "| {strategy} | {m:.2} | +{:.2} |\n",
                    m - VERDICT_MIN_HEALTHY_S
                ));
            }
            None => out.push_str(&format!("| {strategy} | failed | |\n")),
        }
    }

    eprintln!("== rollback time");
    let mut rb_contenders = vec!["agentctl", "manual"];
    if swarm {
        rb_contenders.push("swarm");
    }
    let mut rb: HashMap<&str, Vec<f64>> = HashMap::new();
    for k in 0..runs_of("rollback", args.runs) {
        for c in &rb_contenders {
            match rollback(h, c, k) {
                Ok(ms) => {
                    eprintln!("   {c} run {k}: {ms:.0} ms");
                    rb.entry(c).or_default().push(ms);
                }
                Err(e) => {
                    eprintln!("   {c} run {k}: {e}");
                    failures.push(format!("rollback {c}: {e}"));
                    h.cleanup();
                }
            }
        }
    }
    out.push_str(&format!(
        "\n### 2. Rollback time\n\nA bad 3.0.0 (it runs but logs fatal lines) replaced 1.0.0. From the decision to roll back (agentctl: its own `rolling back` line after the log scan caught the fatal line; the others: the start of the command) until 1.0.0 heartbeats again. The engine's start of a stopped container: {start_stopped:.0} ms.\n\n| contender | rollback (ms) | vs the engine's start-of-stopped | vs Swarm |\n|---|---|---|---|\n"
    ));
    let swarm_rb = rb.get("swarm").cloned().map(|mut v| median(&mut v));
    for c in &rb_contenders {
        let Some(v) = rb.get(c) else {
            out.push_str(&format!("| {c} | failed | | |\n"));
            continue;
        };
        let m = median(&mut v.clone());
        let label = match *c {
            "agentctl" => "agentctl (retained container started again)",
            "manual" => "manual: docker stop; docker rm; docker run (old tag)",
            _ => "docker service rollback",
        };
        out.push_str(&format!(
            "| {label} | {m:.0} | +{:.0} ms | {} |\n",
            m - start_stopped,
            swarm_rb.map(|s| format!("{:.2}x", m / s)).unwrap_or_default()
        ));
    }

    eprintln!("== fleet of {}", args.fleet);
    let mut fl_contenders = vec![
        "agentctl",
        "agentctl-pipelined",
        "agentctl-handoff",
        "agentctl-min0",
        "shell-loop",
        "engine-limit",
    ];
    if swarm {
        fl_contenders.push("swarm");
    }
    let mut fl: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut profiles: HashMap<&str, Vec<steps::Breakdown>> = HashMap::new();
    let mut rss = Vec::new();
    let mut cpu: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for k in 0..runs_of("fleet", args.fleet_runs) {
        for c in &fl_contenders {
            match fleet(h, c, args.fleet, k) {
                Ok(run) => {
                    eprintln!(
                        "   {c} run {k}: {:.1} s, machine CPU {:.1} s",
                        run.secs,
                        run.machine_cpu.unwrap_or(f64::NAN)
                    );
                    fl.entry(c).or_default().push(run.secs);
                    rss.extend(run.rss);
                    profiles.entry(c).or_default().extend(run.profile);
                    let e = cpu.entry(c).or_default();
                    e.0.extend(run.machine_cpu);
                    e.1.extend(run.own_cpu);
                }
                Err(e) => {
                    eprintln!("   {c} run {k}: {e}");
                    failures.push(format!("fleet {c}: {e}"));
                    h.cleanup();
                }
            }
        }
    }
    out.push_str(&format!(
        "\n### 3. Fleet rollout wall time, {} agents at parallelism 5\n\nagentctl: `parallelism: 5`, each target verified by the default gate (container state, HEALTHCHECK, log scan; the default period, 500 ms), in batches (`rolling`) or as a pipeline (`recreate`); agentctl's peak RSS is taken over all its runs; Swarm: `--update-parallelism 5 --update-delay 0s --update-monitor 1s`; the shell loop and the engine limit verify nothing. Every contender's agents have their HEALTHCHECK every {}s (`--health-interval`; see `FLEET_HEALTHCHECK_INTERVAL`).\n\n| contender | wall time (s) | vs engine limit |\n|---|---|---|\n",
        args.fleet,
        FLEET_HEALTHCHECK_INTERVAL.as_secs()
    ));
    let floor = fl.get("engine-limit").cloned().map(|mut v| median(&mut v));
    for c in &fl_contenders {
        let Some(v) = fl.get(c) else {
            out.push_str(&format!("| {} | failed | |\n", label_of(c)));
            continue;
        };
        let m = median(&mut v.clone());
        let label = match *c {
            "agentctl" => "agentctl apply: rolling, batches of 5, minHealthyTime 1s",
            "agentctl-pipelined" => "agentctl apply: recreate, 5 at a time, minHealthyTime 1s",
            "agentctl-handoff" => {
                "agentctl apply: recreate, 5 at a time, minHealthyTime 1s, `maxUnverified: 10` (slot handed on once started)"
            }
            "agentctl-min0" => "agentctl apply: recreate, 5 at a time, minHealthyTime 0s",
            other => label_of(other),
        };
        out.push_str(&format!(
            "| {label} | {m:.1} | {} |\n",
            floor.map(|f| format!("{:.2}x", m / f)).unwrap_or_default()
        ));
    }

    out.push_str(&profile_table(&fl_contenders, &profiles, floor));
    out.push_str(&cpu_table(&fl_contenders, &cpu, &fl, args.fleet));

    out.push_str(&format!(
        "\n### 4. The engine's own limit (through the API)\n\n| operation | median (ms) |\n|---|---|\n| create + start a container | {create_start:.0} |\n| start a stopped container | {start_stopped:.0} |\n"
    ));

    eprintln!("== control center load");
    let mut rss_v: Vec<f64> = rss.iter().map(|&k| k as f64).collect();
    let load_table = match args.runs_scenario("load") {
        true => sh(&format!("{} 10000 64 10", load.display()))?,
        false => "(not run)".to_owned(),
    };
    out.push_str(&format!(
        "\n### 5. Resources\n\nagentctl peak RSS during the {}-agent rollout: **{:.1} MiB** (median of {} runs, the kernel's `ru_maxrss`).\n\nThe control center under `heartbeat-load 10000 64 10` (10,000 agents, 64 keep-alive connections, 10 s, a separate process over loopback):\n\n{load_table}\n",
        args.fleet,
        median(&mut rss_v.clone()) / 1024.0,
        rss.len()
    ));
    let rss_mib = median(&mut rss_v) / 1024.0;
    let per_second: Option<f64> = load_table
        .lines()
        .find(|l| l.contains("heartbeats per second"))
        .and_then(|l| l.rsplit('|').nth(1))
        .and_then(|v| v.trim().trim_matches('*').parse().ok());
    let goals = Goals {
        fleet: args.fleet,
        fl: fl.iter().map(|(c, v)| (*c, median(&mut v.clone()))).collect(),
        verdict_over,
        rollback: rb.iter().map(|(c, v)| (*c, median(&mut v.clone()))).collect(),
        start_stopped_ms: start_stopped,
        start_first_gap_ms: gaps.get("agentctl-start-first").map(|v| median(&mut v.clone())),
        start_first_lost: lost_counts
            .get("agentctl-start-first")
            .and_then(|v| v.iter().max().copied()),
        rss_mib,
        per_second,
    };
    out.push_str(&goals.table());
    if !failures.is_empty() {
        out.push_str("\nRuns that failed (left out of the medians):\n\n");
        for f in &failures {
            out.push_str(&format!("- {f}\n"));
        }
    }
    Ok(out)
}

fn label_of(c: &str) -> &str {
    match c {
        "agentctl" => "agentctl update (stop-first, verified)",
        "agentctl-start-first" => "agentctl update --strategy start-first",
        "manual" => "manual: docker stop; docker pull; docker rm; docker run",
        "compose" => "docker-compose up -d with a changed tag",
        "swarm" => "docker service update (stop-first)",
        "swarm-start-first" => "docker service update --update-order start-first",
        "shell-loop" => "shell loop: xargs -P 5 docker stop/rm/run",
        "engine-limit" => "engine limit: stop/remove/create/start via the API, 5 at a time",
        other => other,
    }
}

/// The medians of one run, judged against the goals of the issues.
struct Goals<'a> {
    fleet: usize,
    fl: HashMap<&'a str, f64>,
    verdict_over: Vec<(&'a str, f64)>,
    rollback: HashMap<&'a str, f64>,
    start_stopped_ms: f64,
    start_first_gap_ms: Option<f64>,
    /// Heartbeats lost in the worst start-first run, counted by sequence number.
    start_first_lost: Option<u64>,
    rss_mib: f64,
    per_second: Option<f64>,
}

impl Goals<'_> {
    fn table(&self) -> String {
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        let mut rows: Vec<(String, String, &str)> = Vec::new();
        let floor = self.fl.get("engine-limit").copied();
        // A target holds its slot until proven: every slot proves fleet/parallelism targets in turn, each
        // for at least minHealthyTime.
        let waves = self.fleet.div_ceil(FLEET_PARALLELISM);
        let required = waves as f64 * FLEET_MIN_HEALTHY_S;
        for (c, what) in [
            ("agentctl", "rolling (default)"),
            ("agentctl-pipelined", "recreate, slot held until proven (default)"),
        ] {
            if let (Some(&wall), Some(floor)) = (self.fl.get(c), floor) {
                let bound = floor + required;
                rows.push((
                    format!("{what}: within 1.15x of the engine limit + {waves} waves x minHealthyTime"),
                    format!(
                        "{wall:.1} s = engine limit {floor:.1} s + verification {required:.1} s + rest {:.1} s: **{:.2}x** of {bound:.1} s",
                        wall - bound,
                        wall / bound
                    ),
                    met(wall / bound <= 1.15),
                ));
            }
        }
        if let (Some(&wall), Some(floor)) = (self.fl.get("agentctl-handoff"), floor) {
            rows.push((
                "pipelined (`maxUnverified: 10`): within 1.2x of the engine limit".into(),
                format!("{wall:.1} s vs {floor:.1} s: **{:.2}x**", wall / floor),
                met(wall / floor <= 1.2),
            ));
            if let Some(&shell) = self.fl.get("shell-loop") {
                rows.push((
                    "pipelined: no slower than the unverified shell loop".into(),
                    format!("{wall:.1} s vs {shell:.1} s: **{:.2}x**", wall / shell),
                    met(wall <= shell),
                ));
            }
        }
        for (strategy, over) in &self.verdict_over {
            rows.push((
                format!("single update ({strategy}): verdict within 0.3 s of minHealthyTime"),
                format!("+{over:.2} s"),
                met(*over <= 0.3),
            ));
        }
        if let (Some(&ours), Some(&swarm)) = (self.rollback.get("agentctl"), self.rollback.get("swarm")) {
            rows.push((
                "rollback at most half of Swarm's".into(),
                format!("{ours:.0} ms vs {swarm:.0} ms ({:.2}x)", ours / swarm),
                met(ours <= swarm / 2.0),
            ));
        }
        if let Some(&ours) = self.rollback.get("agentctl") {
            rows.push((
                "rollback within 1.5 s of the engine's start of a stopped container".into(),
                format!("+{:.0} ms", ours - self.start_stopped_ms),
                met(ours - self.start_stopped_ms <= 1500.0),
            ));
        }
        if let (Some(gap), Some(lost)) = (self.start_first_gap_ms, self.start_first_lost) {
            rows.push((
                "start-first: zero heartbeats lost (worst run, counted)".into(),
                format!("{lost} lost; median max gap {gap:.0} ms at a {INTERVAL_MS} ms interval"),
                met(lost == 0),
            ));
        }
        rows.push((
            format!("agentctl under 64 MB RSS for {} agents", self.fleet),
            format!("{:.1} MiB", self.rss_mib),
            met(self.rss_mib < 64.0),
        ));
        if let Some(p) = self.per_second {
            rows.push((
                "control center at least 20,000 heartbeats/s".into(),
                format!("{p:.0}/s"),
                met(p >= 20_000.0),
            ));
        }
        let mut t = String::from(
            "\n### Against the goals (computed from the tables above)\n\n| goal | measured | met |\n|---|---|---|\n",
        );
        for (goal, measured, ok) in rows {
            t.push_str(&format!("| {goal} | {measured} | {ok} |\n"));
        }
        t
    }
}

impl Args {
    /// Whether `scenario` is to be run.
    fn runs_scenario(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// What each fleet contender cost the machine: CPU time of every process over the timed run (the engine's
/// daemons and shims, the agents, the contender), and of it agentctl's own.
fn cpu_table(
    contenders: &[&str],
    cpu: &HashMap<&str, (Vec<f64>, Vec<f64>)>,
    wall: &HashMap<&str, Vec<f64>>,
    n: usize,
) -> String {
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let mut t = format!(
        "\nWhat each contender cost the machine (CPU time of every process during the timed run, from `/proc/stat`: the engine's daemons and shims, the agents, the contender itself; agentctl's own from its rusage; medians over the runs; the busy share is the machine CPU over {cores} cores times the wall time):\n\n| contender | machine CPU (s) | per target (ms) | busy share of the cores | agentctl's own CPU (s) | machine CPU vs engine limit |\n|---|---|---|---|---|---|\n",
    );
    let med = |v: &[f64]| (!v.is_empty()).then(|| median(&mut v.to_vec()));
    let floor = cpu.get("engine-limit").and_then(|(m, _)| med(m));
    for c in contenders {
        let Some((machine, own)) = cpu.get(c) else { continue };
        let Some(m) = med(machine) else { continue };
        let busy = wall.get(c).and_then(|w| med(w)).map(|w| m / (w * cores as f64));
        t.push_str(&format!(
            "| {c} | {m:.1} | {:.0} | {} | {} | {} |\n",
            m * 1000.0 / n.max(1) as f64,
            busy.map_or(String::new(), |b| format!("{:.0} %", b * 100.0)),
            med(own).map_or(String::new(), |o| format!("{o:.1}")),
            floor.map_or(String::new(), |f| format!("{:.2}x", m / f)),
        ));
    }
    t
}

/// Where agentctl's fleet time went in this run: per-target phase medians and the slot time of the engine
/// phases, from its own step lines (medians over the runs).
fn profile_table(contenders: &[&str], profiles: &HashMap<&str, Vec<steps::Breakdown>>, floor: Option<f64>) -> String {
    let mut t = String::from(
        "\nWhere agentctl's time went (its `--no-progress` step lines timestamped as they arrive; per-target medians; `preflight` is from `preflight ok` to the target's turn (its `[slot]` line: the journal's begin facts and the wait for a slot while earlier targets hold them); the engine phases' slot time is the sum over targets from its turn to `verifying`, divided by the parallelism; medians over the runs):\n\n| contender | preflight → turn (ms) | stop (ms) | rename + restart policy (ms) | create (ms) | start, inspect, journal (ms) | engine phases' slot time (s) | engine limit (s) | last verification begins (s) | end (s) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in contenders {
        let Some(ps) = profiles.get(c).filter(|p| !p.is_empty()) else {
            continue;
        };
        let med = |f: &dyn Fn(&steps::Breakdown) -> f64| median(&mut ps.iter().map(f).collect::<Vec<_>>());
        let phases: Vec<String> = (0..5).map(|i| format!("{:.0}", med(&|b| b.phase_ms[i]))).collect();
        t.push_str(&format!(
            "| {c} | {} | {:.1} | {} | {:.1} | {:.1} |\n",
            phases.join(" | "),
            med(&|b| b.engine_slot_s),
            floor.map_or("".into(), |f| format!("{f:.1}")),
            med(&|b| b.last_verifying_s),
            med(&|b| b.end_s),
        ));
    }
    t
}
