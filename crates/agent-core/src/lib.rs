//! The domain model of agentctl: what an agent container is, which image it runs, how it changes from one
//! revision to the next, and the traits behind which engines and stores sit. This crate does no I/O: no
//! async runtime, no Docker client, no CLI parsing.
//!
//! Main types: [`ImageRef`] (with [`Tag`] and [`Digest`]), [`Version`] and [`TagPolicy`],
//! [`ContainerSpec`] (with [`ContainerSpec::diff`] and [`ContainerSpec::with_image`]), [`Revision`] and
//! [`RevisionHistory`], [`Strategy`] and the planner [`plan`], the rollout [`Phase`] state machine, and the
//! traits [`ContainerRuntime`] and [`StateStore`]. With the `fake` feature, `FakeRuntime` and `MemoryStore`
//! are in-memory implementations with fault injection.
//!
//! # The crates
//!
//! ```text
//!                 agent-core  (domain model, traits; no I/O)
//!                /     |      \
//!     agent-docker  agent-health  \
//!     (bollard)     (probes, control center, analysis)
//!            \         |          /
//!             \    agent-rollout (update flow, strategies, journal, history, SQLite store)
//!              \       |
//!               agent-cli (the `agentctl` binary: args -> one library call -> render)
//! ```
//!
//! # Example
//!
//! ```no_run
//! use agent_core::{plan, ContainerSpec, ImageRef, Strategy, Target, TagPolicy};
//!
//! let image: ImageRef = "127.0.0.1:5000/acme/node-agent:1.4.2".parse()?;
//! TagPolicy::default().check(&image, None, None)?;
//! let targets = vec![Target { host: "unix:///var/run/docker.sock".into(), container: "node-agent".parse()? }];
//! let plan = plan(&targets, &Strategy::Recreate {}, &[])?;
//! println!("{} steps", plan.steps.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod diff;
mod duration;
mod endpoint;
mod engine_config;
#[cfg(feature = "fake")]
mod fake;
mod image;
mod revision;
mod runtime;
mod secret;
mod service;
mod spec;
mod state;
mod store;
mod strategy;
mod version;

pub use diff::{FieldDiff, SpecDiff};
pub use duration::{
    bounded as bounded_duration, format_duration, parse_duration, serde_text as duration_text,
    serde_text_opt as duration_text_opt, MAX_DURATION,
};
pub use endpoint::{normalize_endpoint, DEFAULT_ENDPOINT};
pub use engine_config::EngineConfig;
#[cfg(feature = "fake")]
pub use fake::{FakeRuntime, Fault, ImageBehaviour, MemoryStore};
pub use image::{Digest, ImageRef, ImageRefError, RefPart, Tag, DEFAULT_REGISTRY};
pub use revision::{Outcome, Revision, RevisionHistory, RevisionNumber};
pub use runtime::{
    Connector, ContainerInfo, ContainerRuntime, ContainerState, ContainerStatus, ContainerSummary, EngineInfo,
    ExecOutput, HealthLogEntry, HealthState, HealthStatus, ImageInfo, LogLine, LogStream, ProgressFn, PullProgress,
    RecordInfo, ResourceUsage, RuntimeError, RECORD_LABEL,
};
pub use secret::{has_url_credentials, redact_url_credentials, secret_value_kind, strip_url_userinfo};
pub use service::{ServiceChange, ServiceInfo, ServiceMode, TaskInfo};
pub use spec::{
    ContainerName, ContainerNameError, ContainerSpec, EnvValue, EnvVar, Healthcheck, ImageDefaults, LogConfig, Mount,
    MountKind, NetworkAttachment, PortBinding, Resources, RestartPolicy, Secret, SecretPolicy, Ulimit, REDACTED,
};
pub use state::{Input, InvalidTransition, Phase, PhaseChanged, StateMachine};
pub use store::{
    lease_rules, DumpedDocument, DumpedOperation, DumpedRevision, ImportSummary, JournalEntry, Lease, LeaseHolder,
    StateDump, StateStore, StoreError,
};
pub use strategy::{
    canary_count, plan, plan_traffic, CanaryStep, Count, Pause, PlanError, PlanStep, RolloutPlan, Strategy, Target,
    UpdateMode,
};
pub use version::{PolicyViolation, TagPolicy, Version, VERSION_LABEL};

// Re-exported so users of the traits need not depend on these crates themselves.
pub use async_trait::async_trait;
pub use time::OffsetDateTime;
