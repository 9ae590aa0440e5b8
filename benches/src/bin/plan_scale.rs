//! Planning and bookkeeping alone, at a scale no test machine has engines for: a whole canary rollout of
//! N targets (10,000 by default) spread over in-memory engines, with virtual time (the health gate's
//! `minHealthyTime` and the canary's pauses pass at once), so what is measured is agentctl's own work:
//! the plan, the per-target journal and revision records, the gate's bookkeeping, the rollout state that is
//! written after every target, and the events.
//!
//! ```text
//! cargo build --release -p agentctl-benches
//! target/release/plan-scale --targets 10000 --hosts 20 --parallelism 50
//! ```
//!
//! It prints one Markdown table: CPU time (user + system) and wall time of the rollout, the process's peak
//! RSS before and after it (the in-memory engines and their 10,000 containers are set up first, so the
//! difference is the rollout's own), the state size, and the time of one `status` read at the end. The
//! in-memory engine keeps a log of every call for assertions; its size is part of the peak and is shown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use agent_core::{
    ContainerRuntime, ContainerSpec, FakeRuntime, ImageBehaviour, ImageDefaults, ImageRef, MemoryStore, Phase,
};
use agent_rollout::{Connector, Fleet, FleetEvent, FleetReporter, RolloutSpec, Silent};

use agentctl_benches::Result;

struct Args {
    targets: usize,
    hosts: usize,
    parallelism: usize,
    write: Option<std::path::PathBuf>,
}

const BEGIN: &str = "<!-- plan-scale:begin -->";
const END: &str = "<!-- plan-scale:end -->";

fn args() -> Result<Args> {
    let mut a = Args {
        targets: 10_000,
        hosts: 20,
        parallelism: 50,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |what: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| format!("{what} takes a number of at least 1, like 10000"))
        };
        match flag.as_str() {
            "--targets" => a.targets = number("--targets")?,
            "--hosts" => a.hosts = number("--hosts")?,
            "--parallelism" => a.parallelism = number("--parallelism")?,
            "--write" => a.write = Some(it.next().ok_or("--write needs a file, like BENCHMARKS.md")?.into()),
            "-h" | "--help" => {
                println!("usage: plan-scale [--targets 10000] [--hosts 20] [--parallelism 50] [--write BENCHMARKS.md]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    Ok(a)
}

/// CPU seconds (user + system) and peak RSS (KiB) of this process so far.
fn usage() -> (f64, u64) {
    // SAFETY: getrusage writes into the struct we own.
    #[allow(unsafe_code)]
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as u64)
}

fn main() {
    agentctl_benches::exit_on_error(run());
}

fn run() -> Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    let table = rt.block_on(rollout(&a))?;
    println!("{table}");
    if let Some(path) = &a.write {
        let report = format!(
            "Measured {} on {} cores. Reproduce: `cargo build --release -p agentctl-benches && target/release/plan-scale --targets {} --hosts {} --parallelism {} --write BENCHMARKS.md`.\n\n{table}",
            agentctl_benches::sh("date -u +%Y-%m-%d")?,
            agentctl_benches::sh("nproc")?,
            a.targets,
            a.hosts,
            a.parallelism
        );
        agentctl_benches::write_between_markers(path, BEGIN, END, "## Planning at scale", &report)?;
        eprintln!("== wrote {}", path.display());
    }
    Ok(())
}

async fn rollout(a: &Args) -> Result<String> {
    let v1: ImageRef = "registry.local/acme/agent:1.0.0".parse().map_err(|e| format!("{e}"))?;
    let v2: ImageRef = "registry.local/acme/agent:2.0.0".parse().map_err(|e| format!("{e}"))?;
    let mut engines: HashMap<String, Arc<dyn ContainerRuntime>> = HashMap::new();
    let mut targets = String::new();
    for h in 0..a.hosts {
        let endpoint = format!("tcp://10.0.{}.{}:2376", h / 250, h % 250 + 1);
        let fake = Arc::new(FakeRuntime::new(&endpoint));
        fake.add_local_image(&v1, ImageDefaults::default(), ImageBehaviour::default());
        fake.publish_image(&v2, ImageDefaults::default(), ImageBehaviour::default());
        for i in (h..a.targets).step_by(a.hosts) {
            let name = format!("agent-{i}");
            fake.run(ContainerSpec::new(
                name.parse().map_err(|e| format!("{e}"))?,
                v1.clone(),
            ))
            .map_err(|e| e.to_string())?;
            targets.push_str(&format!("  - {{host: '{endpoint}', container: {name}}}\n"));
        }
        engines.insert(endpoint, fake);
    }
    let connect: Connector = Arc::new(move |host: String| {
        let found = engines.get(&host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| agent_core::RuntimeError::Unavailable {
                endpoint: host,
                message: "no such in-memory engine".into(),
            })
        })
    });
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = events.clone();
    let sink: FleetReporter = Arc::new(move |_: &FleetEvent| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let store = Arc::new(MemoryStore::default());
    let fleet = Fleet::new(store.clone(), connect, sink, Arc::new(Silent));
    let spec = format!(
        "name: scale\nimage: {v2}\ntargets:\n{targets}strategy:\n  canary:\n    steps: [{{setWeight: 1}}, {{pause: {{duration: 10m}}}}, {{setWeight: 10}}, {{pause: {{duration: 10m}}}}, {{setWeight: 50}}, {{setWeight: 100}}]\nparallelism: {}\nhealth: {{minHealthyTime: 5s, deadline: 60s, period: 1s}}\n",
        a.parallelism
    );
    let spec = RolloutSpec::parse(&spec, "plan-scale").map_err(|e| e.to_string())?;
    let (cpu0, rss0) = usage();
    let wall = Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let state = fleet.apply(spec).await.map_err(|e| e.to_string())?;
    let (wall, virtual_time) = (wall.elapsed(), virtual_start.elapsed());
    let (cpu1, rss1) = usage();
    if state.phase() != Phase::Succeeded {
        return Err(format!("the rollout ended {:?}: {:?}", state.phase(), state.reason));
    }
    let t = Instant::now();
    let read = fleet.state("scale").await.map_err(|e| e.to_string())?;
    let status_ms = t.elapsed().as_secs_f64() * 1000.0;
    let state_bytes = serde_json::to_vec(&read).map_err(|e| e.to_string())?.len();
    let n = a.targets as f64;
    let cpu = cpu1 - cpu0;
    Ok(format!(
        "| targets | hosts | parallelism | CPU (s) | CPU per target (ms) | wall (s) | virtual time of the rollout | peak RSS before (MiB) | peak RSS after (MiB) | per target (KiB) | rollout state (KiB) | status read (ms) | events |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {cpu:.2} | {:.3} | {:.2} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {status_ms:.1} | {} |",
        a.targets,
        a.hosts,
        a.parallelism,
        cpu * 1000.0 / n,
        wall.as_secs_f64(),
        agent_core::format_duration(virtual_time),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss1.saturating_sub(rss0) as f64 / n,
        state_bytes as f64 / 1024.0,
        events.load(std::sync::atomic::Ordering::Relaxed),
    ))
}
