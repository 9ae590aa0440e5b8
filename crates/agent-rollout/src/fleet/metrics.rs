//! The rollouts' Prometheus metrics.

use super::state::RolloutState;
use std::collections::BTreeMap;

use agent_core::Phase;

/// Prometheus text exposition of rollouts: how many are in each phase, and per rollout its current step,
/// duration and targets by status. Served by `agentctl … --metrics-listen ADDR`.
pub fn metrics_text(states: &[RolloutState]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let phases = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Verifying,
        Phase::Paused,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
        Phase::Aborted,
    ];
    out.push_str("# HELP agentctl_rollouts Rollouts by phase.\n# TYPE agentctl_rollouts gauge\n");
    for p in phases {
        let n = states.iter().filter(|s| s.phase() == p).count();
        let _ = writeln!(out, "agentctl_rollouts{{phase=\"{p}\"}} {n}");
    }
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    out.push_str("# HELP agentctl_rollout_step The step a rollout is at (0-based) and how many it has.\n# TYPE agentctl_rollout_step gauge\n");
    for s in states {
        let _ = writeln!(
            out,
            "agentctl_rollout_step{{rollout=\"{}\",phase=\"{}\",steps=\"{}\"}} {}",
            esc(s.spec.name.as_str()),
            s.phase(),
            s.plan.steps.len(),
            s.next_step
        );
    }
    out.push_str("# HELP agentctl_rollout_duration_seconds From the start to the last change.\n# TYPE agentctl_rollout_duration_seconds gauge\n");
    for s in states {
        let secs = (s.updated_at - s.started_at).as_seconds_f64().max(0.0);
        let _ = writeln!(
            out,
            "agentctl_rollout_duration_seconds{{rollout=\"{}\"}} {secs:.3}",
            esc(s.spec.name.as_str())
        );
    }
    out.push_str(
        "# HELP agentctl_rollout_targets Targets of a rollout by status.\n# TYPE agentctl_rollout_targets gauge\n",
    );
    for s in states {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for t in &s.targets {
            let k = serde_json::to_value(t.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *by.entry(k).or_default() += 1;
        }
        for (status, n) in by {
            let _ = writeln!(
                out,
                "agentctl_rollout_targets{{rollout=\"{}\",status=\"{status}\"}} {n}",
                esc(s.spec.name.as_str())
            );
        }
    }
    out
}
