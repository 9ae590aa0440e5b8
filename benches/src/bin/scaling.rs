//! How a verified fleet rollout's cost grows with the fleet, on real engines: fleets of 10, 50 and 200 demo
//! agents (up to 50 per engine, so 200 are spread over the local engine and three more `dockerd`s started
//! for the run) rolled from 1.0.0 to 2.0.0 with the default semantics (`rolling`, batches of
//! `parallelism`, each target proven by the default gate for `minHealthyTime`), next to the engine limit
//! (stop / remove / create / start through the API at the same parallelism, verifying nothing).
//!
//! ```text
//! cargo build --release -p agent-cli -p agentctl-benches
//! target/release/scaling --sizes 10,50,200 --write BENCHMARKS.md
//! ```
//!
//! For each size: agentctl's wall time and peak RSS (`ru_maxrss`), the state directory's size after the
//! rollout, the time of `agentctl rollout status` at the end (median of 5), and the engine limit's wall time.
//! Needs Debian's `docker-registry` (the extra engines pull the demo images from it) and iproute2.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::{ContainerRuntime, ContainerSpec, ImageRef, RestartPolicy};
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, LocalRegistry, SecondEngine, RUN_LABEL};
use agent_docker::DockerRuntime;
use agentctl_benches::{
    agent_healthcheck, median, sh, sibling, wait_rusage, write_between_markers, Result, FLEET_HEALTHCHECK_INTERVAL,
};

const BEGIN: &str = "<!-- scaling:begin -->";
const END: &str = "<!-- scaling:end -->";
const PER_ENGINE: usize = 50;
const PARALLELISM: usize = 5;
const MIN_HEALTHY: &str = "1s";

struct Args {
    sizes: Vec<usize>,
    engines: usize,
    write: Option<std::path::PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![10, 50, 200],
        engines: 4,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{what} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value("--sizes")?
                    .split(',')
                    .map(|n| n.trim().parse().ok().filter(|&n: &usize| n > 0))
                    .collect::<Option<_>>()
                    .ok_or("--sizes takes fleet sizes like 10,50,200")?
            }
            "--engines" => {
                a.engines = value("--engines")?
                    .parse()
                    .ok()
                    .filter(|&n: &usize| (1..=8).contains(&n))
                    .ok_or("--engines takes 1 to 8")?
            }
            "--write" => a.write = Some(value("--write")?.into()),
            "-h" | "--help" => {
                println!("usage: scaling [--sizes 10,50,200] [--engines 4] [--write BENCHMARKS.md]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    if let Some(&n) = a.sizes.iter().find(|&&n| n > a.engines * PER_ENGINE) {
        return Err(format!(
            "a fleet of {n} needs {} engines at {PER_ENGINE} agents each; pass --engines {}",
            n.div_ceil(PER_ENGINE),
            n.div_ceil(PER_ENGINE)
        ));
    }
    Ok(a)
}

struct Engine {
    endpoint: String,
    docker: Arc<DockerRuntime>,
}

fn main() {
    agentctl_benches::exit_on_error(run());
}

fn run() -> Result<()> {
    let args = args()?;
    let agentctl = sibling("agentctl")?;
    let rt = agentctl_benches::runtime()?;
    let registry = LocalRegistry::start().map_err(|e| e.to_string())?;
    let run = run_id("scale");
    let local = Arc::new(
        rt.block_on(DockerRuntime::connect(None))
            .map_err(|e| format!("connect to the engine: {e}"))?,
    );
    eprintln!("== building the demo images");
    let binary = demo_agent_binary().map_err(|e| e.to_string())?;
    let mut images = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let tag = format!("{}/scale/agent:{version}", registry.address());
        let labels = HashMap::from([(RUN_LABEL.to_owned(), run.clone())]);
        rt.block_on(async {
            DemoImage::new(version).build(&local, &binary, &tag, &labels).await?;
            local.push_image(&tag).await
        })
        .map_err(|e| format!("build {tag}: {e}"))?;
        images.push(tag);
    }
    let needed = args.sizes.iter().map(|n| n.div_ceil(PER_ENGINE)).max().unwrap_or(1);
    let mut extra = Vec::new();
    let mut engines = vec![Engine {
        endpoint: local.endpoint().to_owned(),
        docker: local.clone(),
    }];
    for i in 1..needed.min(args.engines) {
        eprintln!("== starting engine {i}");
        let second =
            SecondEngine::start(&format!("agsc{i}"), &format!("10.252.{i}.1/24")).map_err(|e| e.to_string())?;
        let endpoint = second.endpoint();
        for image in &images {
            sh(&format!("docker -H {endpoint} pull -q {image}"))?;
        }
        let docker = Arc::new(
            rt.block_on(DockerRuntime::connect(Some(&endpoint)))
                .map_err(|e| format!("connect to {endpoint}: {e}"))?,
        );
        engines.push(Engine { endpoint, docker });
        extra.push(second);
    }
    let scale = Scale {
        rt,
        engines,
        images,
        agentctl,
        run: run.clone(),
    };
    let result = measure(&scale, &args);
    for e in &scale.engines {
        scale.cleanup(e);
    }
    let _ = sh(&format!(
        "docker images -q --filter label={RUN_LABEL}={run} | xargs -r docker rmi -f >/dev/null"
    ));
    drop(extra);
    drop(registry);
    let report = result?;
    println!("{report}");
    if let Some(path) = &args.write {
        write_between_markers(path, BEGIN, END, "## Scaling", &report)?;
        eprintln!("== wrote {}", path.display());
    }
    Ok(())
}

struct Scale {
    rt: tokio::runtime::Runtime,
    engines: Vec<Engine>,
    images: Vec<String>,
    agentctl: std::path::PathBuf,
    run: String,
}

/// One fleet size's figures.
struct Row {
    agents: usize,
    engines: usize,
    wall: f64,
    limit: f64,
    rss_kib: u64,
    state_bytes: u64,
    status_ms: f64,
}

impl Scale {
    fn cleanup(&self, e: &Engine) {
        // agentctl's records beside the agents (their history) carry no run label: found by name.
        let _ = sh(&format!(
            "docker -H {0} ps -aq --filter label={RUN_LABEL}={1} | xargs -r docker -H {0} rm -f >/dev/null; docker -H {0} ps -aq --filter label=io.agentctl.record --filter name={1}- | xargs -r docker -H {0} rm -f >/dev/null",
            e.endpoint, self.run
        ));
    }

    /// `n` agents on 1.0.0, up to PER_ENGINE per engine: (engine index, name).
    fn set_up(&self, n: usize, tag: &str) -> Result<Vec<(usize, String)>> {
        let placed: Vec<(usize, String)> = (0..n)
            .map(|i| (i / PER_ENGINE, format!("{}-{tag}-{i}", self.run)))
            .collect();
        let v1: ImageRef = self.images[0].parse().map_err(|e| format!("{e}"))?;
        self.rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(8));
            let tasks = placed.iter().map(|(e, name)| {
                let (docker, sem) = (self.engines[*e].docker.clone(), sem.clone());
                let spec = self.spec(name, &v1);
                async move {
                    let _slot = sem.acquire().await;
                    let spec = spec?;
                    docker.create_container(&spec).await.map_err(|e| e.to_string())?;
                    docker
                        .start_container(spec.name.as_str())
                        .await
                        .map_err(|e| e.to_string())
                }
            });
            futures_util::future::join_all(tasks)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(placed)
    }

    fn spec(&self, name: &str, image: &ImageRef) -> Result<ContainerSpec> {
        let mut spec = ContainerSpec::new(name.parse().map_err(|e| format!("{e}"))?, image.clone());
        spec.labels.insert(RUN_LABEL.into(), self.run.clone());
        spec.restart_policy = RestartPolicy::UnlessStopped;
        spec.healthcheck = Some(agent_healthcheck(FLEET_HEALTHCHECK_INTERVAL));
        Ok(spec)
    }

    fn agentctl(&self, n: usize) -> Result<(f64, u64, u64, f64)> {
        let placed = self.set_up(n, &format!("a{n}"))?;
        let state = tempfile::tempdir().map_err(|e| e.to_string())?;
        let targets: String = placed
            .iter()
            .map(|(e, c)| format!("  - {{host: '{}', container: {c}}}\n", self.engines[*e].endpoint))
            .collect();
        let name = format!("scale{n}");
        let spec = format!(
            "name: {name}\nimage: {}\ntargets:\n{targets}strategy:\n  rolling: {{maxUnavailable: {PARALLELISM}}}\nparallelism: {PARALLELISM}\nhealth: {{minHealthyTime: {MIN_HEALTHY}, deadline: 60s}}\n",
            self.images[1]
        );
        let file = state.path().join("rollout.yaml");
        std::fs::write(&file, spec).map_err(|e| e.to_string())?;
        let dir = state.path().join("state");
        // agentctl's step lines go to a file, shown in part when the rollout does not succeed.
        let log_path = state.path().join("apply.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let child = Command::new(&self.agentctl)
            .arg("--state-dir")
            .arg(&dir)
            .args(["--no-progress", "apply", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let (code, rss, _) = wait_rusage(child.id())?;
        let wall = t0.elapsed().as_secs_f64();
        if code != 0 {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("fail") || l.contains("unhealthy") || l.contains("rolling back"))
                .take(10)
                .collect();
            return Err(format!(
                "agentctl apply of {n} agents exited {code} after {wall:.0} s; its first lines about failures:\n{}",
                why.join("\n")
            ));
        }
        let bytes: u64 = sh(&format!("du -sb {} | cut -f1", dir.display()))?
            .parse()
            .map_err(|e| format!("du: {e}"))?;
        let mut status = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let out = Command::new(&self.agentctl)
                .arg("--state-dir")
                .arg(&dir)
                .args(["rollout", "status", &name, "-o", "json"])
                .output()
                .map_err(|e| e.to_string())?;
            status.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                return Err(format!(
                    "rollout status: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        for e in &self.engines {
            self.cleanup(e);
        }
        Ok((wall, rss, bytes, median(&mut status)))
    }

    /// Stop, remove, create, start through the API, PARALLELISM at a time over all engines, no verification.
    fn engine_limit(&self, n: usize) -> Result<f64> {
        let placed = self.set_up(n, &format!("l{n}"))?;
        let v2: ImageRef = self.images[1].parse().map_err(|e| format!("{e}"))?;
        let t0 = Instant::now();
        self.rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(PARALLELISM));
            let tasks = placed.iter().map(|(e, name)| {
                let (docker, sem) = (self.engines[*e].docker.clone(), sem.clone());
                let spec = self.spec(name, &v2);
                async move {
                    let _slot = sem.acquire().await;
                    let spec = spec?;
                    let go = async {
                        docker.stop_container(name, Some(Duration::from_secs(10))).await?;
                        docker.remove_container(name).await?;
                        docker.create_container(&spec).await?;
                        docker.start_container(name).await
                    };
                    go.await.map_err(|e| e.to_string())
                }
            });
            futures_util::future::join_all(tasks)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()
        })?;
        let wall = t0.elapsed().as_secs_f64();
        for e in &self.engines {
            self.cleanup(e);
        }
        Ok(wall)
    }
}

fn measure(s: &Scale, args: &Args) -> Result<String> {
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!("== {n} agents: agentctl");
        let (wall, rss_kib, state_bytes, status_ms) = s.agentctl(n)?;
        eprintln!("   {wall:.1} s, {:.1} MiB", rss_kib as f64 / 1024.0);
        eprintln!("== {n} agents: engine limit");
        let limit = s.engine_limit(n)?;
        eprintln!("   {limit:.1} s");
        rows.push(Row {
            agents: n,
            engines: n.div_ceil(PER_ENGINE),
            wall,
            limit,
            rss_kib,
            state_bytes,
            status_ms,
        });
    }
    let mut out = format!(
        "Measured {} on {} cores, Docker {}; one run per size. `rolling: {{maxUnavailable: {PARALLELISM}}}`, `parallelism: {PARALLELISM}`, the default gate with `minHealthyTime: {MIN_HEALTHY}` and the default period (500 ms); the agents' HEALTHCHECK every {}s; at most {PER_ENGINE} agents per engine (the extra engines are `dockerd`s started for the run on this machine). The engine limit does stop / remove / create / start through the API at the same parallelism and verifies nothing. Reproduce: `cargo build --release -p agent-cli -p agentctl-benches && target/release/scaling --write BENCHMARKS.md`.\n\n\
         | agents | engines | agentctl wall (s) | engine limit (s) | vs engine limit | agentctl wall per agent (ms) | agentctl peak RSS (MiB) | state dir after (KiB) | `rollout status` (ms) |\n|---|---|---|---|---|---|---|---|---|\n",
        sh("date -u +%Y-%m-%d")?,
        sh("nproc")?,
        sh("docker version --format '{{.Server.Version}}'")?,
        FLEET_HEALTHCHECK_INTERVAL.as_secs(),
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.1} | {:.0} | {:.0} |\n",
            r.agents,
            r.engines,
            r.wall,
            r.limit,
            r.wall / r.limit,
            r.wall * 1000.0 / r.agents as f64,
            r.rss_kib as f64 / 1024.0,
            r.state_bytes as f64 / 1024.0,
            r.status_ms
        ));
    }
    Ok(out)
}
