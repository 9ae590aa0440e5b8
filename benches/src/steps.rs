//! Where a fleet rollout's time goes, from the lines `agentctl --no-progress` prints as it works: each line is
//! timestamped when it arrives, and a target's phases are the gaps between its own lines (`preflight ok`,
//! `[slot]` when its turn came, `[stop-old]`, `[rename-old]`, `[create-new]`, `[start-new]`, `verifying`).
//! The verification itself has no line per target at its end, so it is seen as the tail after the last
//! `verifying`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::median;

/// The engine phases, in order, as the lines name them, between `preflight ok` and `verifying`.
const PHASES: [&str; 4] = ["stop-old", "rename-old", "create-new", "start-new"];

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
    /// Median ms per target: preflight → its turn (the `[slot]` line; the stop when there is none: the
    /// journal's begin facts and the wait for a slot), stop, rename + restart policy, create, start (+
    /// inspect and journal) until verification begins.
    pub phase_ms: [f64; 5],
    /// Sum over targets of its turn → verifying, divided by the parallelism (s).
    pub engine_slot_s: f64,
    /// When the last target's verification began, and when the run ended (s since the start).
    pub last_verifying_s: f64,
    /// The run's end (s since the start).
    pub end_s: f64,
}

/// The breakdown of `lines` for the targets `names` at `parallelism`, for a run that took `end_s`.
pub fn breakdown(lines: &[(f64, String)], names: &[String], parallelism: usize, end_s: f64) -> Breakdown {
    // Per target: preflight, slot, the four engine phases, verifying.
    let mut seen: HashMap<&str, [Option<f64>; 7]> = HashMap::new();
    for (t, line) in lines {
        let phase = match line.split_whitespace().next() {
            Some("preflight") => 0,
            Some("[slot]") => 1,
            Some("verifying") => 6,
            Some(step) => match PHASES.iter().position(|p| step == format!("[{p}]")) {
                Some(i) => i + 2,
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
    // A target's turn: its `[slot]` line, else its stop.
    let turn = |p: &[Option<f64>; 7]| p[1].or(p[2]);
    let mut b = Breakdown {
        end_s,
        ..Breakdown::default()
    };
    for (i, ms) in b.phase_ms.iter_mut().enumerate() {
        let mut gaps: Vec<f64> = seen
            .values()
            .filter_map(|p| {
                let (from, to) = match i {
                    0 => (p[0]?, turn(p)?),
                    _ => (p[i + 1]?, p[i + 2]?),
                };
                Some((to - from) * 1000.0)
            })
            .collect();
        *ms = median(&mut gaps);
    }
    let engine: f64 = seen.values().filter_map(|p| Some(p[6]? - turn(p)?)).sum();
    b.engine_slot_s = engine / parallelism.max(1) as f64;
    b.last_verifying_s = seen.values().filter_map(|p| p[6]).fold(0.0, f64::max);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_s_turn_is_its_slot_line_else_its_stop() {
        let lines: Vec<(f64, String)> = [
            (0.0, "preflight ok: a1 acme:1 -> acme:2"),
            (0.1, "preflight ok: a2 acme:1 -> acme:2"),
            (0.2, "[slot] a1: its turn, prepared and waiting for 150 ms"),
            (0.3, "[stop-old] stopping a1"),
            (0.5, "[rename-old] a1 -> a1.rev1"),
            (0.6, "[create-new] creating a1 from acme:2"),
            (0.7, "[start-new] starting a1"),
            (1.0, "verifying a1 with container, docker-health, logs"),
            (2.1, "[stop-old] stopping a2"),
            (2.3, "[rename-old] a2 -> a2.rev1"),
            (2.4, "[create-new] creating a2 from acme:2"),
            (2.5, "[start-new] starting a2"),
            (2.9, "verifying a2 with container, docker-health, logs"),
        ]
        .into_iter()
        .map(|(t, l)| (t, l.to_owned()))
        .collect();
        let names = vec!["a1".to_owned(), "a2".to_owned()];
        let b = breakdown(&lines, &names, 1, 3.5);
        let round = |x: f64| (x * 10.0).round() / 10.0;
        // preflight → turn: a1 200 ms (its slot line), a2 2000 ms (no slot line: its stop); the median of two.
        assert_eq!(round(b.phase_ms[0]), 1100.0);
        assert_eq!(round(b.phase_ms[1]), 200.0);
        // Slot time: a1 from its turn (0.2) to verifying (1.0), a2 from its stop (2.1) to verifying (2.9).
        assert_eq!(round(b.engine_slot_s), 1.6);
        assert_eq!(b.last_verifying_s, 2.9);
    }
}
