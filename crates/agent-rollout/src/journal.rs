//! The journal of one operation: every step is durable in the store before it is carried out.

use std::sync::Arc;

use agent_core::{JournalEntry, StateStore};
use time::OffsetDateTime;

use crate::engine_state::EngineLock;
use crate::error::Error;
use crate::plan::{OpKind, Step};

/// Environment variable naming a journal step at which the process aborts right after journaling it (as a
/// `kill -9` would): the crash-safety tests use it. `STEP` matches that step of any operation, `KIND:STEP`
/// only of one kind (`update`, `undo`, `stage`, `promote`, `install`). Read only when agent-rollout is built
/// with the `testing` feature.
pub const CRASH_AT_ENV: &str = "AGENTCTL_CRASH_AT";

/// Environment variable naming a journal step (`STEP` or `KIND:STEP`) at which the process holds, right
/// after journaling it, until the file named by [`HOLD_FILE_ENV`] exists (at most two minutes); it creates
/// `FILE.held` when it starts holding. The fault tests use it to change the engine mid-update. Read only
/// when agent-rollout is built with the `testing` feature.
pub const HOLD_AT_ENV: &str = "AGENTCTL_HOLD_AT";

/// The release file of [`HOLD_AT_ENV`].
pub const HOLD_FILE_ENV: &str = "AGENTCTL_HOLD_FILE";

/// The journal of one operation on one subject.
pub(crate) struct Journal {
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    kind: OpKind,
    store: Arc<dyn StateStore>,
    /// The operation's id.
    pub(crate) operation: String,
    subject: String,
    seq: u32,
    mirror: Option<EngineLock>,
}

impl Journal {
    /// A new operation of `kind` on `subject` (its id names the kind, the container and the time), copied
    /// into the engine lock `mirror` when there is one.
    pub(crate) fn open(
        kind: OpKind,
        store: Arc<dyn StateStore>,
        subject: &str,
        container: &str,
        mirror: Option<EngineLock>,
    ) -> Journal {
        Journal {
            kind,
            store,
            operation: format!(
                "{}-{container}-{}",
                kind.name(),
                OffsetDateTime::now_utc().unix_timestamp_nanos()
            ),
            subject: subject.to_owned(),
            seq: 0,
            mirror,
        }
    }

    /// Makes `step` durable.
    pub(crate) async fn record(&mut self, step: &Step) -> Result<(), Error> {
        let record = serde_json::to_value(step).map_err(|e| Error::InvalidInput {
            what: "journal record".into(),
            message: e.to_string(),
        })?;
        let entry = JournalEntry {
            operation: self.operation.clone(),
            subject: self.subject.clone(),
            seq: self.seq,
            at: OffsetDateTime::now_utc(),
            record,
        };
        self.store.append_journal(&entry).await?;
        if let Some(lock) = &self.mirror {
            lock.record(&entry).await?;
        }
        self.seq += 1;
        #[cfg(feature = "testing")]
        self.test_hooks(step).await;
        Ok(())
    }

    /// Ends the operation: nothing is left for recovery.
    pub(crate) async fn close(self, outcome: &str) -> Result<(), Error> {
        let mut this = self;
        this.record(&Step::Done {
            outcome: outcome.to_owned(),
        })
        .await?;
        this.store.close_operation(&this.operation).await?;
        Ok(())
    }

    #[cfg(feature = "testing")]
    async fn test_hooks(&self, step: &Step) {
        use std::time::{Duration, Instant};
        let at = |var: &str| {
            std::env::var(var).is_ok_and(|s| s == step.name() || s == format!("{}:{}", self.kind.name(), step.name()))
        };
        if at(CRASH_AT_ENV) {
            // Die as `kill -9` would, right after the intent is durable.
            std::process::abort();
        }
        if at(HOLD_AT_ENV) {
            if let Ok(file) = std::env::var(HOLD_FILE_ENV) {
                // Let a fault test change the engine between this step and the next.
                let _ = std::fs::write(format!("{file}.held"), step.name());
                let deadline = Instant::now() + Duration::from_secs(120);
                while !std::path::Path::new(&file).exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
