//! State that lives with the fleet: a lock on the engine itself for every target agentctl changes, the open
//! operation's journal inside that lock, and a copy of each target's revision history in a record on the
//! engine, so that every agentctl sees the lock whatever its state store, and a runner with an empty state
//! directory can repair an interrupted operation and undo to a retained revision.
//!
//! Both are engine records (see [`ContainerRuntime::create_record`]): on Docker, containers that never run.
//! - The lock of container `NAME` is the record `NAME.agentctl-lock`. The engine's name uniqueness makes
//!   its creation atomic. Its labels name the holder (id, host, pid, purpose, who) and when it was taken;
//!   its file `lease.json` holds the expiry, renewed by the holder; its file `journal.json` holds the begin
//!   facts of the operation under way, written before its first step. A lock whose holder died (same host,
//!   process gone) is taken over at once, any other once it expired; before it is removed its journal is
//!   copied into the taker's store, so the taker's recovery repairs the operation.
//! - The history of every agent on the engine is the record `agentctl-history`, one file `NAME.json` per
//!   container: the revisions as the store holds them (secrets redacted), rewritten when an operation
//!   records its outcome (before it closes its journal) and whenever else they changed under the lock, and
//!   read back when the store has no history for the container.
//!
//! Each archive write costs the engine about 90 ms (it mounts the container's filesystem), so the engine
//! keeps what repair needs and no more: the begin facts, not each step (every act is then taken as reached:
//! their inverses are safe from any state), and no separate commit mark: the history written at the
//! decision is it (the operation's new revision recorded as succeeded means the update was committed).
//!
//! A runtime without records (an SDK user's own) keeps the store's lease alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::{
    ContainerRuntime, JournalEntry, LeaseHolder, Outcome, Revision, RuntimeError, StateStore, StoreError, RECORD_LABEL,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::lease::{actor, holder_is_dead, LEASE_TTL};
use crate::plan::Step;

/// The suffix of a lock record's name: the lock of `NAME` is `NAME.agentctl-lock`.
pub const LOCK_SUFFIX: &str = ".agentctl-lock";

/// The name of the record that holds the history of every agent on an engine.
pub const HISTORY_RECORD: &str = "agentctl-history";

const LEASE_FILE: &str = "lease.json";
const JOURNAL_FILE: &str = "journal.json";

/// The lock record's name for `container`.
pub fn lock_name(container: &str) -> String {
    format!("{container}{LOCK_SUFFIX}")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The renewable part of a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseFile {
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// A lock found on the engine, as another agentctl sees it.
#[derive(Debug, Clone)]
pub struct EngineLockInfo {
    /// The record's id.
    pub id: String,
    /// Who holds it.
    pub holder: LeaseHolder,
    /// Who runs the holder (`AGENTCTL_ACTOR` or `user@host`).
    pub by: String,
    /// Since when.
    pub acquired_at: OffsetDateTime,
    /// Until when, unless renewed.
    pub expires_at: OffsetDateTime,
}

fn labels_of(container: &str, holder: &LeaseHolder, now: OffsetDateTime) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RECORD_LABEL.to_owned(), "lock".to_owned()),
        ("io.agentctl.lock.container".to_owned(), container.to_owned()),
        ("io.agentctl.lock.holder".to_owned(), holder.id.clone()),
        ("io.agentctl.lock.host".to_owned(), holder.hostname.clone()),
        ("io.agentctl.lock.pid".to_owned(), holder.pid.to_string()),
        ("io.agentctl.lock.purpose".to_owned(), holder.purpose.clone()),
        ("io.agentctl.lock.by".to_owned(), actor()),
        ("io.agentctl.lock.acquired".to_owned(), rfc3339(now)),
        ("io.agentctl.lock.ttl".to_owned(), LEASE_TTL.as_secs().to_string()),
    ])
}

fn runtime_err(name: &str) -> impl Fn(RuntimeError) -> Error + '_ {
    move |e| {
        Error::Store(StoreError::Io {
            location: format!("engine record {name}"),
            message: e.to_string(),
        })
    }
}

/// Reads the lock of `container` on `runtime`, if any; an error when a container agentctl did not make
/// has the lock's name.
pub async fn read_lock(runtime: &dyn ContainerRuntime, container: &str) -> Result<Option<EngineLockInfo>, Error> {
    let name = lock_name(container);
    let Some(info) = runtime.record(&name).await.map_err(runtime_err(&name))? else {
        return Ok(None);
    };
    if info.labels.get(RECORD_LABEL).map(String::as_str) != Some("lock") {
        return Err(Error::InvalidInput {
            what: format!("the container {name}"),
            message: format!(
                "agentctl keeps the engine lock of {container} under that name, and this container is not one of its locks; rename or remove it"
            ),
        });
    }
    let label = |k: &str| {
        info.labels
            .get(&format!("io.agentctl.lock.{k}"))
            .cloned()
            .unwrap_or_default()
    };
    let acquired_at = parse_time(&label("acquired")).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let ttl = label("ttl").parse::<u64>().unwrap_or(LEASE_TTL.as_secs());
    let renewed = runtime
        .read_record(&info.id, LEASE_FILE)
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok());
    let expires_at = renewed
        .map(|l| l.expires_at)
        .unwrap_or(acquired_at + std::time::Duration::from_secs(ttl));
    Ok(Some(EngineLockInfo {
        id: info.id.clone(),
        holder: LeaseHolder {
            id: label("holder"),
            hostname: label("host"),
            pid: label("pid").parse().unwrap_or(0),
            purpose: label("purpose"),
        },
        by: label("by"),
        acquired_at,
        expires_at,
    }))
}

/// A held engine lock, renewed in the background until released; clones share it.
#[derive(Clone)]
pub(crate) struct EngineLock {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
    name: String,
    id: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    /// The revisions last written to the engine's history record, as written.
    saved: tokio::sync::Mutex<Option<Vec<u8>>>,
    released: Mutex<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl EngineLock {
    /// Takes the engine lock of `container`, taking over one whose holder died or whose lease expired (its
    /// journal copied into `store` first). `Ok(None)` when the runtime keeps no records.
    pub(crate) async fn acquire(
        runtime: Arc<dyn ContainerRuntime>,
        store: &Arc<dyn StateStore>,
        container: &str,
        holder: &LeaseHolder,
    ) -> Result<Option<EngineLock>, Error> {
        if !runtime.supports_records() {
            return Ok(None);
        }
        let name = lock_name(container);
        for _ in 0..5 {
            let now = OffsetDateTime::now_utc();
            match runtime.create_record(&name, &labels_of(container, holder, now)).await {
                Ok(id) => return Ok(Some(EngineLock::hold(runtime, container, name, id))),
                Err(RuntimeError::Conflict { .. }) => {}
                Err(e) => return Err(runtime_err(&name)(e)),
            }
            let Some(current) = read_lock(runtime.as_ref(), container).await? else {
                continue;
            };
            let dead = holder_is_dead(&current.holder);
            if !dead && current.expires_at > now {
                return Err(Error::Busy {
                    message: format!(
                        "{container} on {} is locked on the engine by {} (run by {}) since {}, until {} unless renewed; another agentctl is changing it: wait for it, or if that process is gone the lock is taken over once it expires",
                        runtime.endpoint(),
                        current.holder,
                        current.by,
                        rfc3339(current.acquired_at),
                        rfc3339(current.expires_at),
                    ),
                });
            }
            tracing::warn!(
                container,
                holder = %current.holder,
                "taking over the engine lock of a holder that is gone or expired"
            );
            adopt_journal(runtime.as_ref(), store, container, &current.id).await?;
            match runtime.remove_record(&current.id).await {
                Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => {}
                Err(e) => return Err(runtime_err(&name)(e)),
            }
        }
        Err(Error::Busy {
            message: format!(
                "the engine lock of {container} on {} changed hands five times while this agentctl tried to take it; run the command again",
                runtime.endpoint()
            ),
        })
    }

    fn hold(runtime: Arc<dyn ContainerRuntime>, container: &str, name: String, id: String) -> EngineLock {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (runtime, id, lost) = (runtime.clone(), id.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    // The labels give the first expiry; the file extends it.
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    let lease = LeaseFile {
                        expires_at: OffsetDateTime::now_utc() + LEASE_TTL,
                    };
                    let body = serde_json::to_vec(&lease).unwrap_or_default();
                    if let Err(e) = runtime.write_record(&id, LEASE_FILE, &body).await {
                        tracing::error!(error = %e, "engine lock renewal failed");
                        if matches!(e, RuntimeError::ContainerNotFound { .. }) {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        EngineLock {
            inner: Arc::new(Inner {
                runtime,
                container: container.to_owned(),
                name,
                id,
                lost,
                renewer,
                saved: tokio::sync::Mutex::new(None),
                released: Mutex::new(false),
            }),
        }
    }

    /// Whether the lock was lost (removed or taken by someone else).
    pub(crate) fn is_lost(&self) -> bool {
        self.inner.lost.load(Ordering::SeqCst)
    }

    /// Writes the begin facts of an operation to the lock before its first step is carried out (the other
    /// steps are not written: see the module's documentation).
    pub(crate) async fn record(&self, entry: &JournalEntry) -> Result<(), Error> {
        if !matches!(serde_json::from_value::<Step>(entry.record.clone()), Ok(Step::Begin(_))) {
            return Ok(());
        }
        let body = serde_json::to_vec(&[entry]).unwrap_or_default();
        self.inner
            .runtime
            .write_record(&self.inner.id, JOURNAL_FILE, &body)
            .await
            .map_err(runtime_err(&self.inner.name))
    }

    /// Copies the revisions stored under `subject` to the engine's history record, unless they are what
    /// this lock wrote last.
    pub(crate) async fn save_history(&self, store: &dyn StateStore, subject: &str) -> Result<(), Error> {
        let revisions = store.revisions(subject).await?;
        if revisions.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&revisions).unwrap_or_default();
        let mut saved = self.inner.saved.lock().await;
        if saved.as_deref() == Some(body.as_slice()) {
            return Ok(());
        }
        write_history(self.inner.runtime.as_ref(), &self.inner.container, &body).await?;
        *saved = Some(body);
        Ok(())
    }

    /// Copies the history to the engine if it changed, then releases the lock.
    pub(crate) async fn save_history_and_release(&self, store: &dyn StateStore, subject: &str) -> Result<(), Error> {
        let saved = self.save_history(store, subject).await;
        let released = self.release().await;
        saved.and(released)
    }

    /// Stops renewal and removes the lock.
    pub(crate) async fn release(&self) -> Result<(), Error> {
        {
            let mut released = self.inner.released.lock().unwrap_or_else(|p| p.into_inner());
            if *released {
                return Ok(());
            }
            *released = true;
        }
        self.inner.renewer.abort();
        match self.inner.runtime.remove_record(&self.inner.id).await {
            Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
            Err(e) => Err(runtime_err(&self.inner.name)(e)),
        }
    }
}

impl std::fmt::Debug for EngineLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineLock")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// Copies the journal of a stale lock into `store` unless the store has that operation already (the same
/// runner's store, or one shared with it), so that recovery finds the operation there: its begin facts,
/// then [`Step::AfterBegin`] (every act taken as reached), and a commit when the engine's history records
/// the operation's new revision as succeeded (the decision was to keep it).
async fn adopt_journal(
    runtime: &dyn ContainerRuntime,
    store: &Arc<dyn StateStore>,
    container: &str,
    lock_id: &str,
) -> Result<(), Error> {
    let Some(body) = runtime
        .read_record(lock_id, JOURNAL_FILE)
        .await
        .map_err(runtime_err(lock_id))?
    else {
        return Ok(());
    };
    let entries: Vec<JournalEntry> = serde_json::from_slice(&body).map_err(|e| {
        Error::Store(StoreError::Corrupt {
            location: format!("engine lock {lock_id}"),
            message: format!("its journal does not parse: {e}"),
            recovery: "remove the lock container after checking the target by hand".into(),
        })
    })?;
    let Some(first) = entries.into_iter().next() else {
        return Ok(());
    };
    let Ok(Step::Begin(begin)) = serde_json::from_value::<Step>(first.record.clone()) else {
        return Ok(());
    };
    if !store.journal(&first.operation).await?.is_empty() {
        return Ok(());
    }
    tracing::warn!(operation = %first.operation, "adopting the journal of an interrupted operation from the engine");
    let committed = load_history(runtime, container)
        .await?
        .into_iter()
        .find(|r| r.number.get() == begin.new_revision && begin.new_revision > 0)
        .and_then(|r| match r.outcome {
            Outcome::Succeeded => Some(None),
            Outcome::Unverified { reason } => Some(Some(reason)),
            _ => None,
        });
    let mut steps = vec![Step::AfterBegin];
    if let Some(unverified) = committed {
        steps.push(Step::Commit { unverified });
    }
    store.append_journal(&first).await?;
    for (i, step) in steps.iter().enumerate() {
        store
            .append_journal(&JournalEntry {
                seq: first.seq + 1 + i as u32,
                at: OffsetDateTime::now_utc(),
                record: serde_json::to_value(step).unwrap_or_default(),
                ..first.clone()
            })
            .await?;
    }
    Ok(())
}

/// Writes `body` (the revisions of `container`) to the engine's history record, creating it on first use.
async fn write_history(runtime: &dyn ContainerRuntime, container: &str, body: &[u8]) -> Result<(), Error> {
    let file = format!("{container}.json");
    // The record exists after the first write on an engine: write first, create it only when it is missing.
    match runtime.write_record(HISTORY_RECORD, &file, body).await {
        Err(RuntimeError::ContainerNotFound { .. }) => {}
        other => return other.map_err(runtime_err(HISTORY_RECORD)),
    }
    let labels = BTreeMap::from([(RECORD_LABEL.to_owned(), "history".to_owned())]);
    match runtime.create_record(HISTORY_RECORD, &labels).await {
        Ok(_) | Err(RuntimeError::Conflict { .. }) => {}
        Err(e) => return Err(runtime_err(HISTORY_RECORD)(e)),
    }
    runtime
        .write_record(HISTORY_RECORD, &file, body)
        .await
        .map_err(runtime_err(HISTORY_RECORD))
}

/// The revisions of `container` kept on the engine, oldest first (empty when none are).
pub(crate) async fn load_history(runtime: &dyn ContainerRuntime, container: &str) -> Result<Vec<Revision>, Error> {
    if !runtime.supports_records() {
        return Ok(Vec::new());
    }
    match runtime
        .record(HISTORY_RECORD)
        .await
        .map_err(runtime_err(HISTORY_RECORD))?
    {
        Some(r) if r.labels.get(RECORD_LABEL).map(String::as_str) == Some("history") => {}
        _ => return Ok(Vec::new()),
    }
    let Some(body) = runtime
        .read_record(HISTORY_RECORD, &format!("{container}.json"))
        .await
        .map_err(runtime_err(HISTORY_RECORD))?
    else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&body).map_err(|e| {
        Error::Store(StoreError::Corrupt {
            location: format!("engine record {HISTORY_RECORD}/{container}.json"),
            message: e.to_string(),
            recovery: "the state store's history is unaffected; run an update to rewrite the engine's copy".into(),
        })
    })
}
