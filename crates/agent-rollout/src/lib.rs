//! Safe delivery of agent containers: the journaled in-place update with automatic rollback, undo, recovery
//! after a crash, revision history, leases, and the default SQLite state store.
//!
//! [`Updater::update`] preflights (tag policy, image present or pullable, platform), backs up, stops and
//! retains the old container under `NAME.revN` with restart policy `no`, creates the new one from the old
//! spec and the new image, verifies it with a [`HealthGate`](agent_health::HealthGate) and a check that its
//! configuration equals the old one beyond the image, then commits or rolls back by itself. Every step is
//! journaled before it runs; after a crash, the next command on the container reverts or completes it.
//!
//! Every single-target change (update, undo, blue-green stage and promote, install) is a plan: the facts it
//! starts from and an ordered list of engine steps, each with its inverse. One executor runs any plan and
//! applies one verdict rule: healthy commits; unhealthy, a failed step or a configuration difference
//! reverts by the inverses of the steps reached; inconclusive commits marked unverified and is never
//! reverted. Recovery rebuilds the plan from the journal and uses the same inverses.
//!
//! ```no_run
//! # async fn demo(runtime: std::sync::Arc<dyn agent_core::ContainerRuntime>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use agent_rollout::{SqliteStore, Updater, UpdateRequest, Silent};
//! let store = Arc::new(SqliteStore::open("state.db".as_ref())?);
//! let updater = Updater::new(runtime, store, Arc::new(Silent));
//! let req = UpdateRequest::new("node-agent".parse()?, "127.0.0.1:5000/acme/agent:1.4.2".parse()?);
//! let report = updater.update(&req).await?;
//! std::process::exit(report.status.exit_code());
//! # }
//! ```
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod contract;
pub mod delivery;
mod engine_state;
mod error;
mod events;
mod executor;
mod files;
mod fleet;
mod hooks;
mod journal;
mod lease;
mod notify;
mod ops;
mod plan;
mod postgres;
mod report;
mod request;
mod settings;
mod store;
mod target;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traffic;
mod undo;
mod update;
mod updater;

pub use agent_core::Connector;
pub use engine_state::{
    history_names, journal_name, lock_name, read_lock, remove_history_records, EngineLockInfo, HISTORY_RECORD,
    HISTORY_SUFFIX, JOURNAL_SUFFIX, LOCK_SUFFIX,
};
pub use error::Error;
pub use events::{Event, FleetEvent, FleetReporter, Reporter, Silent};
pub use fleet::WebActions;
pub use fleet::{
    metrics_text, AuditEntry, Fleet, HealthSpec, HeartbeatSpec, HistorySpec, RollbackSpec, RolloutSpec, RolloutState,
    ServiceRevision, TargetSpec, TargetState, TargetStatus, TrafficState, MAX_SPEC_BYTES, MAX_SPEC_NODES, MAX_TARGETS,
};
pub use hooks::{Hooks, SKIP_EXIT_CODE};
pub use journal::{CRASH_AT_ENV, HOLD_AT_ENV, HOLD_FILE_ENV};
pub use lease::{actor, as_actor, holder_for_this_process, holder_is_dead, LeaseGuard, LEASE_TTL};
pub use notify::{Notifier, NotifyError, NotifySpec, Webhook, DRAIN_TIMEOUT};
pub use plan::UPDATE_STEPS;
pub use postgres::{is_postgres_url, PostgresStore};
pub use report::{preview_name, Preview, Recovery, RecoveryAction, StatusReport, UpdateReport, UpdateStatus};
pub use request::{
    Decided, HeartbeatCheck, Pacer, ProbeFactory, PullPolicy, QueryCheck, ScrapeCheck, UndoRequest, UpdateRequest,
    VerifyConfig, WatchConfig,
};
pub use settings::{parse_metric_check, read_token, Token, TokenError};
pub use store::{open_state, SqliteStore};
pub use updater::{reserved_name_owner, subject_key, Updater};

#[cfg(test)]
mod tests;
