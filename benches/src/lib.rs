//! Microbenchmarks of agentctl. The benchmarks are in `benches/`; run them with `cargo bench -p agentctl-benches`.
//! The programs in `src/bin` (the side-by-side harness, the scaling runs, the planning bench, the heartbeat
//! load) share the helpers below.

pub mod steps;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agent_core::Healthcheck;

/// The HEALTHCHECK interval of the fleet scenarios' agents. Real agents check every 10–30 s; the demo image's
/// own 1 s makes dozens of agents' HEALTHCHECK execs the engine's main load on a 2-core machine (60 agents:
/// the engine limit took 44.6 s at 1 s against 15.5 s at 10 s), which would measure that load instead of the
/// rollout. agentctl runs the command at once after a start, so its verification does not wait for it.
pub const FLEET_HEALTHCHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The demo image's HEALTHCHECK command at `interval`.
pub fn agent_healthcheck(interval: Duration) -> Healthcheck {
    Healthcheck {
        test: vec!["CMD".into(), "/agent".into(), "healthcheck".into()],
        interval: Some(interval),
        timeout: Some(Duration::from_secs(2)),
        start_period: None,
        retries: Some(2),
    }
}

/// The harness programs' error: a message for the terminal.
pub type Result<T> = std::result::Result<T, String>;

/// Runs `cmd` with `sh -c`; its trimmed standard output, or an error with its standard error.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Ends the program with `error: …` and exit code 1 when `result` is an error.
pub fn exit_on_error(result: Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// A multi-threaded tokio runtime for the harness programs.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Waits for the child `pid` and returns its exit code, peak RSS (KiB) and CPU time (user + system, s)
/// from the kernel's rusage.
pub fn wait_rusage(pid: u32) -> Result<(i32, u64, f64)> {
    let mut status = 0;
    // SAFETY: wait4 writes into the two out-parameters we own; the pid is our child.
    #[allow(unsafe_code)]
    let (r, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage);
        (r, usage)
    };
    if r < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        libc::WEXITSTATUS(status),
        usage.ru_maxrss as u64,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

/// The CPU time every process of the machine has used since boot (s): the busy fields of `/proc/stat`'s
/// `cpu` line (user, nice, system, irq, softirq, steal). The difference over a run is what the run cost the
/// machine: the engine's daemons, the agents, the tool under test. `None` off Linux.
pub fn machine_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| busy / ticks as f64)
}

/// A program built beside this one (`agentctl`, `heartbeat-load`), or an error saying how to build it.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        return Err(format!(
            "{} is missing; build it first: cargo build --release -p agent-cli -p agentctl-benches",
            p.display()
        ));
    }
    Ok(p)
}

/// Replaces the text between `begin` and `end` in the file at `path` with `report` (appends both markers
/// and the report under `heading` when they are not there yet).
pub fn write_between_markers(
    path: &std::path::Path,
    begin: &str,
    end: &str,
    heading: &str,
    report: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{report}\n{end}");
    let new = match (text.find(begin), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{text}\n{heading}\n\n{block}\n"),
    };
    std::fs::write(path, new).map_err(|e| format!("write {}: {e}", path.display()))
}
