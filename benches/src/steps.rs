//! Where a fleet rollout's time goes, from the lines `agentctl --no-progress` prints as it works: each line is
//! timestamped when it arrives, and a target's phases are the gaps between its own lines (`preflight ok`,
//! `[stop-old]`, `[rename-old]`, `[create-new]`, `[start-new]`, `verifying`). The verification itself has no
//! line per target at its end, so it is seen as the tail after the last `verifying`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::median;

/// The phases, in order, as the lines name them.
const PHASES: [&str; 6] = [
    "preflight",
    "stop-old",
    "rename-old",
    "create-new",
    "start-new",
    "verifying",
];

/// Reads `stream` line by line on a thread; each line with its time since `t0` in seconds.
pub fn follow(stream: impl Read + Send + 'static, t0: Instant) -> JoinHandle<Vec<(f64, String)>> {
    std::thread::spawn(move || {
        BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
            .map(|l| (t0.elapsed().as_secs_f64(), l))
            .collect()
    })
}

/// One run's breakdown: per-target medians of each engine phase, and the engine phases' slot time.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    /// Median ms per target: preflight → stop, stop, rename + restart policy, create, start (+ inspect and
    /// journal) until verification begins.
    pub phase_ms: [f64; 5],
    /// Sum over targets of preflight → verifying, divided by the parallelism (s).
    pub engine_slot_s: f64,
    /// When the last target's verification began, and when the run ended (s since the start).
    pub last_verifying_s: f64,
    /// The run's end (s since the start).
    pub end_s: f64,
}

/// The breakdown of `lines` for the targets `names` at `parallelism`, for a run that took `end_s`.
pub fn breakdown(lines: &[(f64, String)], names: &[String], parallelism: usize, end_s: f64) -> Breakdown {
    let mut seen: HashMap<&str, [Option<f64>; 6]> = HashMap::new();
    for (t, line) in lines {
        let phase = match line.split_whitespace().next() {
            Some("preflight") => 0,
            Some("verifying") => 5,
            Some(step) => match PHASES[1..5].iter().position(|p| step == format!("[{p}]")) {
                Some(i) => i + 1,
                None => continue,
            },
            None => continue,
        };
        let Some(name) = line
            .split_whitespace()
            .map(|w| w.trim_end_matches([':', ',']))
            .find_map(|w| names.iter().find(|n| n.as_str() == w))
        else {
            continue;
        };
        let slot = &mut seen.entry(name.as_str()).or_default()[phase];
        slot.get_or_insert(*t);
    }
    let mut b = Breakdown {
        end_s,
        ..Breakdown::default()
    };
    for (i, ms) in b.phase_ms.iter_mut().enumerate() {
        let mut gaps: Vec<f64> = seen
            .values()
            .filter_map(|p| Some((p[i + 1]? - p[i]?) * 1000.0))
            .collect();
        *ms = median(&mut gaps);
    }
    let engine: f64 = seen.values().filter_map(|p| Some(p[5]? - p[0]?)).sum();
    b.engine_slot_s = engine / parallelism.max(1) as f64;
    b.last_verifying_s = seen.values().filter_map(|p| p[5]).fold(0.0, f64::max);
    b
}
