//! The [`Probe`] trait, probe timing, and the [`HealthGate`] that runs probes to a [`Verdict`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{duration_text, format_duration, ContainerInfo, ContainerRuntime};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What one probe check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "kebab-case")]
pub enum Observation {
    /// Passing.
    Pass(String),
    /// Not passing yet, and not a failure (still starting): does not count toward the failure threshold.
    Pending(String),
    /// Failing; counts toward the failure threshold.
    Fail(String),
    /// Failing in a way no retry can fix (the container exited, a fatal log line): unhealthy at once.
    Fatal(String),
    /// The signal's source could not be asked (Prometheus down, no data): neither pass nor fail.
    Inconclusive(String),
}

impl Observation {
    /// The same observation with every control character in its detail escaped (`\u{1b}`, `\n`): details
    /// carry text from agents (a log line, an HTTP body, an error the agent reports), which must not move
    /// the operator's terminal, hide text or print a line that looks like agentctl's.
    pub fn inert(self) -> Observation {
        let clean = |d: String| -> String {
            if d.chars().any(char::is_control) {
                d.chars()
                    .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
                        if c.is_control() {
                            Box::new(c.escape_default())
                        } else {
                            Box::new(std::iter::once(c))
                        }
                    })
                    .collect()
            } else {
                d
            }
        };
        match self {
            Observation::Pass(d) => Observation::Pass(clean(d)),
            Observation::Pending(d) => Observation::Pending(clean(d)),
            Observation::Fail(d) => Observation::Fail(clean(d)),
            Observation::Fatal(d) => Observation::Fatal(clean(d)),
            Observation::Inconclusive(d) => Observation::Inconclusive(clean(d)),
        }
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        match self {
            Observation::Pass(d)
            | Observation::Pending(d)
            | Observation::Fail(d)
            | Observation::Fatal(d)
            | Observation::Inconclusive(d) => d,
        }
    }
}

/// What a probe is checking: the container and the revision it should run.
#[derive(Clone)]
pub struct ProbeContext {
    /// The engine the container runs on.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The container's name.
    pub container: String,
    /// When the container was started for this verification (log scans start here).
    pub started_at: OffsetDateTime,
    /// The restart count when verification began (an increase is a crash).
    pub baseline_restarts: u64,
    /// The version the new container should report (heartbeats, metrics), when known.
    pub expected_version: Option<String>,
    /// The container id of the instance under test (heartbeats from another instance do not count).
    pub container_id: Option<String>,
}

impl fmt::Debug for ProbeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeContext")
            .field("endpoint", &self.runtime.endpoint())
            .field("container", &self.container)
            .field("started_at", &self.started_at)
            .field("expected_version", &self.expected_version)
            .finish()
    }
}

/// One signal of health. Implementations must return within the gate's per-check timeout (the gate cancels a
/// check that takes longer and records it as a failure) and never panic on odd input.
#[async_trait]
pub trait Probe: Send + Sync {
    /// A short name for evidence (`container`, `healthcheck`, `http`, `logs`).
    fn name(&self) -> &str;

    /// Checks once.
    async fn check(&self, ctx: &ProbeContext) -> Observation;

    /// Whether the check reads the container's inspection. A [`HealthGate`] then inspects the container once
    /// per round for every probe that does and calls [`Probe::check_inspected`]: one engine call per round
    /// instead of one per probe. [`Probe::check`] stays the whole check of a probe run on its own.
    fn reads_inspection(&self) -> bool {
        false
    }

    /// Checks once with this round's inspection of the container, `info` (called only when
    /// [`Probe::reads_inspection`]); by default the probe's own [`Probe::check`].
    async fn check_inspected(&self, ctx: &ProbeContext, info: &ContainerInfo) -> Observation {
        let _ = info;
        self.check(ctx).await
    }
}

/// Timing shared by a gate's probes, as in Kubernetes probes and Nomad's `update` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Timing {
    /// Wait before the first check.
    #[serde(with = "duration_text")]
    pub initial_delay: Duration,
    /// Time between checks.
    #[serde(with = "duration_text")]
    pub period: Duration,
    /// Time one check may take.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive passes before a probe counts as passing.
    pub success_threshold: u32,
    /// Consecutive failures before a probe fails the gate.
    pub failure_threshold: u32,
    /// How long every probe must pass without interruption before the verdict is healthy.
    #[serde(with = "duration_text")]
    pub min_healthy_time: Duration,
    /// Give up (unhealthy, or inconclusive when only inconclusive probes remain) after this long.
    #[serde(with = "duration_text")]
    pub deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            min_healthy_time: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every {}, timeout {}, healthy after {} passes held {}, unhealthy after {} failures, deadline {}",
            format_duration(self.period),
            format_duration(self.timeout),
            self.success_threshold,
            format_duration(self.min_healthy_time),
            self.failure_threshold,
            format_duration(self.deadline)
        )
    }
}

/// The gate's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictOutcome {
    /// Every probe passed for the minimum healthy time.
    Healthy,
    /// A probe failed.
    Unhealthy,
    /// A signal could not be read before the deadline; neither proven good nor bad.
    Inconclusive,
}

impl fmt::Display for VerdictOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictOutcome::Healthy => "healthy",
            VerdictOutcome::Unhealthy => "unhealthy",
            VerdictOutcome::Inconclusive => "inconclusive",
        })
    }
}

/// What one probe showed over a gate run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeEvidence {
    /// The probe's name.
    pub probe: String,
    /// Checks made.
    pub checks: u32,
    /// Of which passed.
    pub passes: u32,
    /// Of which failed (fatal included).
    pub failures: u32,
    /// Of which were inconclusive.
    pub inconclusive: u32,
    /// The last observation.
    pub last: Observation,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

/// The gap after the first round while not every probe has passed yet; it doubles each round up to the period.
const FIRST_ROUND_GAP: Duration = Duration::from_millis(50);

/// When the gate's next round starts. Until every probe has passed once, the gap starts at
/// [`FIRST_ROUND_GAP`] and doubles up to the period: a just-started agent is seen healthy within tens of
/// milliseconds of becoming so, not a whole period later, with a handful of extra checks. Once every probe
/// passes, rounds come every period, and one comes exactly when `minHealthyTime` is reached, so the verdict
/// does not wait for the rest of a period.
fn next_round(
    t: &Timing,
    round_start: tokio::time::Instant,
    first_rounds: &mut Option<Duration>,
    healthy_since: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    if let Some(since) = healthy_since {
        *first_rounds = None;
        return (round_start + t.period).min(since + t.min_healthy_time);
    }
    match first_rounds {
        Some(gap) if *gap < t.period => {
            let next = round_start + *gap;
            *gap *= 2;
            next
        }
        _ => {
            *first_rounds = None;
            round_start + t.period
        }
    }
}

/// A verdict with the evidence of each probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The decision.
    pub outcome: VerdictOutcome,
    /// Why, in one sentence.
    pub reason: String,
    /// How long verification took.
    #[serde(with = "duration_text")]
    pub elapsed: Duration,
    /// Each probe's evidence.
    pub evidence: Vec<ProbeEvidence>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verdict: {} after {} ({})",
            self.outcome,
            format_duration(self.elapsed),
            self.reason
        )?;
        for e in &self.evidence {
            let word = match e.last {
                Observation::Pass(_) => "pass",
                Observation::Pending(_) => "pending",
                Observation::Fail(_) => "FAIL",
                Observation::Fatal(_) => "FATAL",
                Observation::Inconclusive(_) => "inconclusive",
            };
            writeln!(
                f,
                "  {:<12} {:<12} {}/{} checks passed; last: {}",
                e.probe,
                word,
                e.passes,
                e.checks,
                e.last.detail()
            )?;
        }
        Ok(())
    }
}

/// Progress while a gate runs, for a spinner or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateProgress {
    /// Time since the gate started.
    pub elapsed: Duration,
    /// Probes not yet passing, with their last detail.
    pub waiting_on: Vec<(String, String)>,
}

/// Runs a set of probes with shared timing to a [`Verdict`].
pub struct HealthGate {
    probes: Vec<Box<dyn Probe>>,
    timing: Timing,
}

impl fmt::Debug for HealthGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthGate")
            .field("probes", &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field("timing", &self.timing)
            .finish()
    }
}

struct Track {
    consecutive_pass: u32,
    consecutive_fail: u32,
    /// When the last pass or failure counted toward a threshold: the early rounds come faster than the
    /// period, and only results a period apart count, so thresholds keep their meaning in time.
    last_counted: Option<tokio::time::Instant>,
    evidence: Option<ProbeEvidence>,
}

impl Track {
    /// Whether a result at `now` counts toward the consecutive passes or failures.
    fn counts(&mut self, now: tokio::time::Instant, period: Duration) -> bool {
        let counts = self.last_counted.is_none_or(|t| now.duration_since(t) >= period);
        if counts {
            self.last_counted = Some(now);
        }
        counts
    }
}

impl HealthGate {
    /// A gate with `timing` and no probes.
    pub fn new(timing: Timing) -> HealthGate {
        HealthGate {
            probes: Vec::new(),
            timing,
        }
    }

    /// Adds a probe.
    pub fn with_probe(mut self, probe: impl Probe + 'static) -> HealthGate {
        self.probes.push(Box::new(probe));
        self
    }

    /// Adds a boxed probe.
    pub fn push(&mut self, probe: Box<dyn Probe>) {
        self.probes.push(probe);
    }

    /// The timing.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The probes' names.
    pub fn probe_names(&self) -> Vec<&str> {
        self.probes.iter().map(|p| p.name()).collect()
    }

    /// Runs every probe each period until all have passed for the minimum healthy time (healthy), one fails
    /// (unhealthy), or the deadline passes. Uses `tokio::time`, so tests can run it with paused time.
    pub async fn run(&self, ctx: &ProbeContext, progress: &(dyn Fn(GateProgress) + Send + Sync)) -> Verdict {
        let t = &self.timing;
        let start = tokio::time::Instant::now();
        let deadline = start + t.deadline;
        let mut tracks: Vec<Track> = self
            .probes
            .iter()
            .map(|_| Track {
                consecutive_pass: 0,
                consecutive_fail: 0,
                last_counted: None,
                evidence: None,
            })
            .collect();
        let mut healthy_since: Option<tokio::time::Instant> = None;
        let mut first_rounds = Some(FIRST_ROUND_GAP);
        tokio::time::sleep(t.initial_delay).await;
        loop {
            let round_start = tokio::time::Instant::now();
            let late = || Observation::Fail(format!("no answer within {}", format_duration(t.timeout)));
            // One inspection per round, shared by the probes that read it.
            let inspection = match self.probes.iter().any(|p| p.reads_inspection()) {
                true => match tokio::time::timeout(t.timeout, ctx.runtime.inspect_container(&ctx.container)).await {
                    Ok(Ok(info)) => Some(Ok(info)),
                    Ok(Err(e)) => Some(Err(crate::probes::engine_error(&e))),
                    Err(_) => Some(Err(late())),
                },
                false => None,
            };
            let checks = self.probes.iter().map(|p| {
                let inspection = inspection.as_ref().filter(|_| p.reads_inspection());
                async move {
                    let check = async {
                        match inspection {
                            Some(Ok(info)) => p.check_inspected(ctx, info).await,
                            Some(Err(o)) => o.clone(),
                            None => p.check(ctx).await,
                        }
                    };
                    tokio::time::timeout(t.timeout, check).await.unwrap_or_else(|_| late())
                }
            });
            let results = futures_util::future::join_all(checks).await;
            let now = OffsetDateTime::now_utc();
            let mut fatal: Option<String> = None;
            let mut all_passing = true;
            for ((probe, track), obs) in self.probes.iter().zip(tracks.iter_mut()).zip(results) {
                let obs = obs.inert();
                let ev = track.evidence.get_or_insert_with(|| ProbeEvidence {
                    probe: probe.name().to_owned(),
                    checks: 0,
                    passes: 0,
                    failures: 0,
                    inconclusive: 0,
                    last: obs.clone(),
                    last_at: now,
                });
                ev.checks += 1;
                ev.last = obs.clone();
                ev.last_at = now;
                match &obs {
                    Observation::Pass(_) => {
                        ev.passes += 1;
                        // The first pass after anything else (a failure, a pending or inconclusive
                        // result; a failure always leaves `consecutive_pass` at 0) counts at once.
                        if track.consecutive_pass == 0 {
                            track.last_counted = None;
                        }
                        if track.counts(round_start, t.period) {
                            track.consecutive_pass += 1;
                        }
                        track.consecutive_fail = 0;
                    }
                    Observation::Pending(_) => {
                        track.consecutive_pass = 0;
                    }
                    Observation::Fail(d) => {
                        ev.failures += 1;
                        if track.consecutive_pass > 0 {
                            track.last_counted = None;
                        }
                        track.consecutive_pass = 0;
                        if track.counts(round_start, t.period) {
                            track.consecutive_fail += 1;
                        }
                        if track.consecutive_fail >= t.failure_threshold.max(1) && fatal.is_none() {
                            fatal = Some(format!(
                                "{} failed {} times in a row: {d}",
                                probe.name(),
                                track.consecutive_fail
                            ));
                        }
                    }
                    Observation::Fatal(d) => {
                        ev.failures += 1;
                        track.consecutive_pass = 0;
                        if fatal.is_none() {
                            fatal = Some(format!("{}: {d}", probe.name()));
                        }
                    }
                    Observation::Inconclusive(_) => {
                        ev.inconclusive += 1;
                        track.consecutive_pass = 0;
                    }
                }
                if track.consecutive_pass < t.success_threshold.max(1) {
                    all_passing = false;
                }
            }
            let elapsed = start.elapsed();
            let evidence = || tracks.iter().filter_map(|t| t.evidence.clone()).collect::<Vec<_>>();
            if let Some(reason) = fatal {
                return Verdict {
                    outcome: VerdictOutcome::Unhealthy,
                    reason,
                    elapsed,
                    evidence: evidence(),
                };
            }
            if all_passing {
                let since = *healthy_since.get_or_insert(round_start);
                if since.elapsed() >= t.min_healthy_time {
                    return Verdict {
                        outcome: VerdictOutcome::Healthy,
                        reason: format!(
                            "every probe passed for {} ({} probes)",
                            format_duration(t.min_healthy_time),
                            self.probes.len()
                        ),
                        elapsed,
                        evidence: evidence(),
                    };
                }
            } else {
                healthy_since = None;
            }
            let waiting_on: Vec<(String, String)> = self
                .probes
                .iter()
                .zip(&tracks)
                .filter(|(_, tr)| tr.consecutive_pass < t.success_threshold.max(1))
                .map(|(p, tr)| {
                    let detail = tr
                        .evidence
                        .as_ref()
                        .map(|e| e.last.detail().to_owned())
                        .unwrap_or_default();
                    (p.name().to_owned(), detail)
                })
                .collect();
            if tokio::time::Instant::now() + t.period > deadline {
                let inconclusive_only = tracks.iter().all(|tr| {
                    tr.consecutive_pass >= t.success_threshold.max(1)
                        || matches!(
                            tr.evidence.as_ref().map(|e| &e.last),
                            Some(Observation::Inconclusive(_))
                        )
                });
                let waiting = if waiting_on.is_empty() {
                    format!(
                        "the minimum healthy time of {} was not reached",
                        format_duration(t.min_healthy_time)
                    )
                } else {
                    waiting_on
                        .iter()
                        .map(|(n, d)| format!("{n} ({d})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Verdict {
                    outcome: if inconclusive_only && !waiting_on.is_empty() {
                        VerdictOutcome::Inconclusive
                    } else {
                        VerdictOutcome::Unhealthy
                    },
                    reason: format!(
                        "deadline of {} passed waiting on {waiting}",
                        format_duration(t.deadline)
                    ),
                    elapsed,
                    evidence: evidence(),
                };
            }
            progress(GateProgress { elapsed, waiting_on });
            tokio::time::sleep_until(next_round(t, round_start, &mut first_rounds, healthy_since)).await;
        }
    }
}
