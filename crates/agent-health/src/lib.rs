//! Health verification for agentctl: an agent is not a web server, so "the container is up" says little.
//!
//! A [`HealthGate`] runs a set of [`Probe`]s with Kubernetes/Nomad-style [`Timing`] (initial delay, period,
//! timeout, success and failure thresholds, minimum healthy time, deadline) and returns a [`Verdict`]
//! (healthy, unhealthy or inconclusive) with the [`ProbeEvidence`] of each probe. Built-in probes:
//! [`ContainerStateProbe`] (running, restart count), [`DockerHealthProbe`] (HEALTHCHECK with its last output),
//! [`LogScanProbe`] (fatal lines since start), [`HttpProbe`]. Users add their own through the trait.
//!
//! ```no_run
//! # async fn demo(runtime: std::sync::Arc<dyn agent_core::ContainerRuntime>) {
//! use agent_health::*;
//! let gate = HealthGate::new(Timing::default())
//!     .with_probe(ContainerStateProbe)
//!     .with_probe(DockerHealthProbe::new())
//!     .with_probe(LogScanProbe::default());
//! let ctx = ProbeContext {
//!     runtime,
//!     container: "node-agent".into(),
//!     started_at: agent_core::OffsetDateTime::now_utc(),
//!     baseline_restarts: 0,
//!     expected_version: None,
//!     container_id: None,
//! };
//! let verdict = gate.run(&ctx, &|_| {}).await;
//! println!("{verdict}");
//! # }
//! ```
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod control_center;
mod gate;
mod heartbeat;
pub mod http;
pub mod judge;
mod listener;
pub mod opamp;
mod probation;
mod probes;
mod prom;
pub mod web;

pub use control_center::{
    inert, AgentRecord, AgentState, ComponentStatus, ControlCenter, ControlCenterConfig, ControlCenterError, Heartbeat,
    SelfHealth, AGENTS_PAGE, MAX_AGENT_TEXT, MAX_COMPONENTS, MAX_HEALTH_TEXT, NEXT_PAGE_HEADER,
};
pub use gate::{
    GateProgress, HealthGate, Observation, Probe, ProbeContext, ProbeEvidence, Timing, Verdict, VerdictOutcome,
};
pub use heartbeat::{HeartbeatProbe, HeartbeatSource, RemoteControlCenter};
pub use judge::{JudgeMetric, JudgeSpec};
pub use probation::{Alert, AlertRule, Probation, ProbationOutcome};
pub use probes::{
    plain_text, ContainerStateProbe, DockerHealthProbe, HttpProbe, HttpProbeConfig, LogScanProbe, ResourceProbe,
    DEFAULT_FATAL_PATTERNS,
};
pub use prom::{
    parse_text, AnalysisOutcome, AnalysisRun, AnalysisSpec, Condition, Measurement, MeasurementPhase, MetricSource,
    ParseError, PromQueryProbe, Prometheus, Sample, ScrapeProbe, Series,
};

#[cfg(test)]
mod tests;
