//! State that lives with the fleet: a lock on the engine itself for every target agentctl changes, the open
//! operation's begin facts beside that lock, and a copy of each target's revision history on the engine, so
//! that every agentctl sees the lock whatever its state store, and a runner with an empty state directory
//! can repair an interrupted operation and undo to a retained revision.
//!
//! All are engine records (see [`ContainerRuntime::create_record`]): on Docker, containers that never run.
//! - The lock of container `NAME` is the record `NAME.agentctl-lock`. The engine's name uniqueness makes
//!   its creation atomic. Its labels name the holder (id, host, pid, purpose, who) and when it was taken;
//!   its file `lease.json` holds the expiry, renewed by the holder. A lock whose holder died (same host,
//!   process gone) is taken over at once, any other once it expired.
//! - The begin facts of the operation under way on `NAME` are the labels of the record
//!   `NAME.agentctl-journal`, created before its first step and removed before the lock is released. The
//!   taker of a lock copies a journal it finds into its own store, so its recovery repairs the operation.
//! - The history of `NAME` is the label of the record `NAME.agentctl-history.0` or `.1`, whichever is newer
//!   (its `io.agentctl.history.seq`): the revisions as the store holds them (secrets redacted). It is
//!   rewritten when an operation records its outcome (before it closes its journal) and whenever else the
//!   revisions changed under the lock: into the other slot, and only then is the older one removed, so a
//!   kill at any point leaves a whole copy. It is read back when the store has no history for the
//!   container. An engine an earlier agentctl wrote holds it as a file of the record `agentctl-history`,
//!   which is still read when neither slot exists.
//!
//! Labels are fixed when a record is created, so every fact but the renewed expiry is written by creating a
//! record (25–30 ms of the engine's CPU with its removal, measured with `engine-calls`) and read by
//! inspecting one (1–3 ms), where a file costs 70–90 ms either way (the engine mounts the record's
//! filesystem for every archive call). The engine keeps what repair needs and no more: the begin facts, not
//! each step (every act is then taken as reached: their inverses are safe from any state), and no separate
//! commit mark: the history written at the decision is it (the operation's new revision recorded as
//! succeeded means the update was committed; recorded as rolled back, that it was reverted).
//!
//! A runtime without records (an SDK user's own) keeps the store's lease alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agent_core::{
    ContainerRuntime, JournalEntry, LeaseHolder, Outcome, RecordInfo, Revision, RuntimeError, StateStore, StoreError,
    RECORD_LABEL,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::lease::{actor, holder_is_dead, LEASE_TTL};
use crate::plan::Step;

/// The suffix of a lock record's name: the lock of `NAME` is `NAME.agentctl-lock`.
pub const LOCK_SUFFIX: &str = ".agentctl-lock";

/// The suffix of the record that holds the begin facts of the operation under way on `NAME`:
/// `NAME.agentctl-journal`.
pub const JOURNAL_SUFFIX: &str = ".agentctl-journal";

/// The suffix of the two records that hold the history of `NAME`: `NAME.agentctl-history.0` and `.1`.
pub const HISTORY_SUFFIX: &str = ".agentctl-history";

/// The record in which an earlier agentctl kept the history of every agent on an engine, one file per agent;
/// read when an agent's own history records are missing.
pub const HISTORY_RECORD: &str = "agentctl-history";

const LEASE_FILE: &str = "lease.json";
/// The journal record's labels: the lock it was written under, and the journal (a JSON list of entries).
const JOURNAL_LOCK_LABEL: &str = "io.agentctl.journal.lock";
const JOURNAL_LABEL: &str = "io.agentctl.journal";
/// A history record's labels: whose, its sequence number (the higher one is current), the revisions.
const HISTORY_CONTAINER_LABEL: &str = "io.agentctl.history.container";
const HISTORY_SEQ_LABEL: &str = "io.agentctl.history.seq";
const HISTORY_LABEL: &str = "io.agentctl.history";

/// The lock record's name for `container`.
pub fn lock_name(container: &str) -> String {
    format!("{container}{LOCK_SUFFIX}")
}

/// The journal record's name for `container`.
pub fn journal_name(container: &str) -> String {
    format!("{container}{JOURNAL_SUFFIX}")
}

/// The names of the two history records of `container`.
pub fn history_names(container: &str) -> [String; 2] {
    [0, 1].map(|slot| format!("{container}{HISTORY_SUFFIX}.{slot}"))
}

/// The record `name` if it exists and is agentctl's record of kind `kind`; an error naming it when a
/// container agentctl did not make has the name.
async fn own_record(
    runtime: &dyn ContainerRuntime,
    name: &str,
    kind: &str,
    whose: &str,
) -> Result<Option<RecordInfo>, Error> {
    let Some(info) = runtime.record(name).await.map_err(runtime_err(name))? else {
        return Ok(None);
    };
    if info.labels.get(RECORD_LABEL).map(String::as_str) != Some(kind) {
        return Err(Error::InvalidInput {
            what: format!("the container {name}"),
            message: format!(
                "agentctl keeps the {kind} record of {whose} under that name, and this container is not one; rename or remove it"
            ),
        });
    }
    Ok(Some(info))
}

/// How far in the future a time a record holds may lie (another machine's clock runs ahead) before the
/// record is taken as implausible.
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The longest time-to-live a lock record may declare (agentctl writes [`LEASE_TTL`]).
const MAX_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The error for the record `record` of `container` that does not hold what agentctl writes.
fn unreadable(runtime: &dyn ContainerRuntime, record: &str, container: &str, problem: String) -> Error {
    Error::UnreadableRecord {
        record: record.to_owned(),
        endpoint: runtime.endpoint().to_owned(),
        problem,
        fix: format!(
            "agentctl did not write it so; if no agentctl is changing {container} now, remove it with `docker rm {record}` and run the command again"
        ),
    }
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
/// has the lock's name, or when the record's facts are not what agentctl writes (a time in the future, a
/// time-to-live beyond an hour): such a record is reported, never trusted and never a panic.
pub async fn read_lock(runtime: &dyn ContainerRuntime, container: &str) -> Result<Option<EngineLockInfo>, Error> {
    let name = lock_name(container);
    let Some(info) = own_record(runtime, &name, "lock", container).await? else {
        return Ok(None);
    };
    let label = |k: &str| {
        info.labels
            .get(&format!("io.agentctl.lock.{k}"))
            .cloned()
            .unwrap_or_default()
    };
    let bad = |problem: String| unreadable(runtime, &name, container, problem);
    let now = OffsetDateTime::now_utc();
    let acquired_at = parse_time(&label("acquired")).ok_or_else(|| {
        bad(format!(
            "its label io.agentctl.lock.acquired ({:?}) is not an RFC 3339 time",
            label("acquired")
        ))
    })?;
    if acquired_at > now + CLOCK_SKEW {
        return Err(bad(format!(
            "it says it was taken at {}, in the future (now {})",
            rfc3339(acquired_at),
            rfc3339(now)
        )));
    }
    let ttl = label("ttl")
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_secs)
        .filter(|t| *t <= MAX_LOCK_TTL)
        .ok_or_else(|| {
            bad(format!(
                "its label io.agentctl.lock.ttl ({:?}) is not a number of seconds up to {}",
                label("ttl"),
                MAX_LOCK_TTL.as_secs()
            ))
        })?;
    let renewed = runtime
        .read_record(&info.id, LEASE_FILE)
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok());
    let expires_at = match renewed {
        Some(l) if l.expires_at > now + MAX_LOCK_TTL + CLOCK_SKEW => {
            return Err(bad(format!(
                "its file {LEASE_FILE} says it holds until {}, longer than a lock is ever renewed for",
                rfc3339(l.expires_at)
            )))
        }
        Some(l) => l.expires_at,
        None => acquired_at + ttl,
    };
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
    held: Arc<Held>,
    renewer: tokio::task::JoinHandle<()>,
    /// The revisions last written to the engine's history record, as written.
    saved: tokio::sync::Mutex<Option<String>>,
    released: Mutex<bool>,
}

/// What the holder and its renewal share: the record (its id changes when it is taken again), and the
/// journal record written under it.
struct Held {
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
    name: String,
    holder: LeaseHolder,
    /// The lock record's id now, and every id it had (a record taken again after it was removed).
    ids: Mutex<Vec<String>>,
    lost: AtomicBool,
    /// The id of the journal record this lock created, until it is removed.
    journal: tokio::sync::Mutex<Option<String>>,
    /// The begin facts written there, to write them again if the record is removed under the operation.
    begin: Mutex<Option<JournalEntry>>,
}

impl Held {
    fn id(&self) -> String {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn is_ours(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|i| i == id)
    }

    /// Takes the lock again after its record was removed under the operation (`docker container prune`
    /// removes records like any stopped container), and writes the operation's begin facts again when their
    /// record went with it. An error when another agentctl took the lock meanwhile.
    async fn retake(&self) -> Result<(), Error> {
        let runtime = self.runtime.as_ref();
        let now = OffsetDateTime::now_utc();
        let id = runtime
            .create_record(&self.name, &labels_of(&self.container, &self.holder, now))
            .await
            .map_err(runtime_err(&self.name))?;
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        let mut journal = self.journal.lock().await;
        let Some(journal_id) = journal.clone() else {
            return Ok(());
        };
        let name = journal_name(&self.container);
        let present = runtime.record(&name).await.map_err(runtime_err(&name))?;
        if present.is_some_and(|r| r.id == journal_id) {
            return Ok(());
        }
        let begin = self.begin.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(entry) = begin {
            *journal = Some(
                runtime
                    .create_record(&name, &journal_labels(&self.id(), &entry))
                    .await
                    .map_err(runtime_err(&name))?,
            );
        }
        Ok(())
    }
}

fn journal_labels(lock_id: &str, entry: &JournalEntry) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RECORD_LABEL.to_owned(), "journal".to_owned()),
        (JOURNAL_LOCK_LABEL.to_owned(), lock_id.to_owned()),
        (
            JOURNAL_LABEL.to_owned(),
            serde_json::to_string(&[entry]).unwrap_or_default(),
        ),
    ])
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
                Ok(id) => {
                    let lock = EngineLock::hold(runtime, container, name, id, holder.clone());
                    // The journal of an operation whose holder is gone (taken over below, or released
                    // half-way): into the store before this process's recovery reads it.
                    if let Err(e) = adopt_journal(lock.inner.held.runtime.as_ref(), store, container).await {
                        let _ = lock.release().await;
                        return Err(e);
                    }
                    return Ok(Some(lock));
                }
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
                        "{container} on {} is locked on the engine by {} (run by {}) since {}, until {} unless renewed (record {name}); another agentctl is changing it: wait for it, or if that process is gone the lock is taken over once it expires",
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
            // Its journal record stays until the new lock is held, and is adopted then.
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

    fn hold(
        runtime: Arc<dyn ContainerRuntime>,
        container: &str,
        name: String,
        id: String,
        holder: LeaseHolder,
    ) -> EngineLock {
        let held = Arc::new(Held {
            runtime,
            container: container.to_owned(),
            name,
            holder,
            ids: Mutex::new(vec![id]),
            lost: AtomicBool::new(false),
            journal: tokio::sync::Mutex::new(None),
            begin: Mutex::new(None),
        });
        let renewer = {
            let held = held.clone();
            tokio::spawn(async move {
                loop {
                    // The labels give the first expiry; the file extends it.
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    let lease = LeaseFile {
                        expires_at: OffsetDateTime::now_utc() + LEASE_TTL,
                    };
                    let body = serde_json::to_vec(&lease).unwrap_or_default();
                    match held.runtime.write_record(&held.id(), LEASE_FILE, &body).await {
                        Ok(()) => {}
                        Err(RuntimeError::ContainerNotFound { .. }) => match held.retake().await {
                            Ok(()) => tracing::warn!(
                                container = %held.container,
                                record = %held.name,
                                "the engine lock record was removed under the operation (a prune?); taken again"
                            ),
                            Err(e) => {
                                tracing::error!(error = %e, record = %held.name, "the engine lock record was removed and could not be taken again; the operation stops before its next step");
                                held.lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        },
                        Err(e) => tracing::error!(error = %e, "engine lock renewal failed"),
                    }
                }
            })
        };
        EngineLock {
            inner: Arc::new(Inner {
                held,
                renewer,
                saved: tokio::sync::Mutex::new(None),
                released: Mutex::new(false),
            }),
        }
    }

    /// Whether the lock was lost (removed and taken by someone else before this process could take it
    /// again).
    pub(crate) fn is_lost(&self) -> bool {
        self.inner.held.lost.load(Ordering::SeqCst)
    }

    /// Writes the begin facts of an operation to the engine before its first step is carried out (the other
    /// steps are not written: see the module's documentation).
    pub(crate) async fn record(&self, entry: &JournalEntry) -> Result<(), Error> {
        if !matches!(serde_json::from_value::<Step>(entry.record.clone()), Ok(Step::Begin(_))) {
            return Ok(());
        }
        let held = &self.inner.held;
        let runtime = held.runtime.as_ref();
        let name = journal_name(&held.container);
        let labels = journal_labels(&held.id(), entry);
        let mut journal = held.journal.lock().await;
        for _ in 0..2 {
            match runtime.create_record(&name, &labels).await {
                Ok(id) => {
                    *journal = Some(id);
                    *held.begin.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
                    return Ok(());
                }
                Err(RuntimeError::Conflict { .. }) => {}
                Err(e) => return Err(runtime_err(&name)(e)),
            }
            // An earlier operation's journal under this same lock is over: replace it. Any other is an
            // operation this process does not hold the lock of.
            let existing = own_record(runtime, &name, "journal", &held.container).await?;
            match existing {
                Some(r) if r.labels.get(JOURNAL_LOCK_LABEL).is_some_and(|l| held.is_ours(l)) => {
                    remove_record(runtime, &name, &r.id).await?;
                }
                Some(r) => {
                    return Err(Error::Busy {
                        message: format!(
                            "the journal of another operation on {} is on the engine ({name}, written under the lock {}): its agentctl held this target's lock until lately; run the command again to take it over and repair that operation",
                            held.container,
                            r.labels.get(JOURNAL_LOCK_LABEL).map(String::as_str).unwrap_or("?"),
                        ),
                    })
                }
                None => {}
            }
        }
        Err(Error::Busy {
            message: format!(
                "the journal record {name} changed twice while this agentctl wrote it; run the command again"
            ),
        })
    }

    /// Copies the revisions stored under `subject` to the engine's history records, unless they are what
    /// this lock wrote last.
    pub(crate) async fn save_history(&self, store: &dyn StateStore, subject: &str) -> Result<(), Error> {
        let revisions = store.revisions(subject).await?;
        if revisions.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_string(&revisions).unwrap_or_default();
        let mut saved = self.inner.saved.lock().await;
        if saved.as_deref() == Some(body.as_str()) {
            return Ok(());
        }
        let held = &self.inner.held;
        write_history(held.runtime.as_ref(), &held.container, &body).await?;
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
        let held = &self.inner.held;
        // The journal goes first: a lock left without one (a kill in between) has nothing to repair.
        if let Some(id) = held.journal.lock().await.take() {
            remove_record(held.runtime.as_ref(), &journal_name(&held.container), &id).await?;
        }
        remove_record(held.runtime.as_ref(), &held.name, &held.id()).await
    }
}

impl std::fmt::Debug for EngineLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineLock")
            .field("name", &self.inner.held.name)
            .field("id", &self.inner.held.id())
            .finish_non_exhaustive()
    }
}

/// Removes the record `id` (named `name` in errors); one already gone is fine.
async fn remove_record(runtime: &dyn ContainerRuntime, name: &str, id: &str) -> Result<(), Error> {
    match runtime.remove_record(id).await {
        Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => Ok(()),
        Err(e) => Err(runtime_err(name)(e)),
    }
}

/// Copies the journal record of `container`, which an operation whose lock is gone left, into `store`
/// unless the store has that operation already (the same runner's store, or one shared with it), then
/// removes the record. Recovery then finds the operation in the store: its begin facts, then
/// [`Step::AfterBegin`] (every act taken as reached), and a commit when the engine's history records the
/// operation's new revision as succeeded (the decision was to keep it). An operation the history records as
/// rolled back was reverted to the end, and there is nothing to repair.
async fn adopt_journal(
    runtime: &dyn ContainerRuntime,
    store: &Arc<dyn StateStore>,
    container: &str,
) -> Result<(), Error> {
    let name = journal_name(container);
    let Some(record) = own_record(runtime, &name, "journal", container).await? else {
        return Ok(());
    };
    let entries: Vec<JournalEntry> = serde_json::from_str(record.labels.get(JOURNAL_LABEL).map_or("", String::as_str))
        .map_err(|e| {
            Error::Store(StoreError::Corrupt {
                location: format!("engine record {name}"),
                message: format!("its journal does not parse: {e}"),
                recovery: format!("check {container} by hand, then remove {name}"),
            })
        })?;
    if let Some(first) = entries.into_iter().next() {
        adopt_entry(runtime, store, container, first).await?;
    }
    remove_record(runtime, &name, &record.id).await
}

async fn adopt_entry(
    runtime: &dyn ContainerRuntime,
    store: &Arc<dyn StateStore>,
    container: &str,
    first: JournalEntry,
) -> Result<(), Error> {
    let Ok(Step::Begin(begin)) = serde_json::from_value::<Step>(first.record.clone()) else {
        return Ok(());
    };
    if !store.journal(&first.operation).await?.is_empty() {
        return Ok(());
    }
    let decided = load_history(runtime, container)
        .await?
        .into_iter()
        .find(|r| r.number.get() == begin.new_revision && begin.new_revision > 0)
        .map(|r| r.outcome);
    let mut steps = vec![Step::AfterBegin];
    match decided {
        Some(Outcome::RolledBack { .. }) => return Ok(()),
        Some(Outcome::Succeeded) => steps.push(Step::Commit { unverified: None }),
        Some(Outcome::Unverified { reason }) => steps.push(Step::Commit {
            unverified: Some(reason),
        }),
        _ => {}
    }
    tracing::warn!(operation = %first.operation, "adopting the journal of an interrupted operation from the engine");
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

/// The history records of `container` that exist, by slot, with their sequence numbers.
async fn history_slots(
    runtime: &dyn ContainerRuntime,
    container: &str,
) -> Result<[Option<(RecordInfo, u64)>; 2], Error> {
    let [a, b] = history_names(container);
    let read = |name: String| async move {
        Ok::<_, Error>(own_record(runtime, &name, "history", container).await?.map(|r| {
            let seq = r
                .labels
                .get(HISTORY_SEQ_LABEL)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (r, seq)
        }))
    };
    Ok([read(a).await?, read(b).await?])
}

/// Writes `body` (the revisions of `container`) to the engine: a new history record in the slot that does
/// not hold the current one, then the current one removed.
async fn write_history(runtime: &dyn ContainerRuntime, container: &str, body: &str) -> Result<(), Error> {
    let slots = history_slots(runtime, container).await?;
    let names = history_names(container);
    let current = match (&slots[0], &slots[1]) {
        (Some((_, a)), Some((_, b))) => Some(usize::from(b > a)),
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    };
    let target = current.map_or(0, |c| 1 - c);
    if let Some((stale, _)) = &slots[target] {
        remove_record(runtime, &names[target], &stale.id).await?;
    }
    let seq = slots.iter().flatten().map(|(_, s)| *s).max().unwrap_or(0) + 1;
    let labels = BTreeMap::from([
        (RECORD_LABEL.to_owned(), "history".to_owned()),
        (HISTORY_CONTAINER_LABEL.to_owned(), container.to_owned()),
        (HISTORY_SEQ_LABEL.to_owned(), seq.to_string()),
        (HISTORY_LABEL.to_owned(), body.to_owned()),
    ]);
    runtime
        .create_record(&names[target], &labels)
        .await
        .map_err(runtime_err(&names[target]))?;
    if let Some(c) = current {
        if let Some((old, _)) = &slots[c] {
            remove_record(runtime, &names[c], &old.id).await?;
        }
    }
    Ok(())
}

/// Removes the history records of `container` from the engine (for a container removed for good: a demo's,
/// a test's); the number removed. The state store's history is unaffected.
pub async fn remove_history_records(runtime: &dyn ContainerRuntime, container: &str) -> Result<usize, Error> {
    if !runtime.supports_records() {
        return Ok(0);
    }
    let slots = history_slots(runtime, container).await?;
    let names = history_names(container);
    let mut removed = 0;
    for (name, (record, _)) in names.iter().zip(&slots).filter_map(|(n, s)| Some((n, s.as_ref()?))) {
        remove_record(runtime, name, &record.id).await?;
        removed += 1;
    }
    Ok(removed)
}

/// The revisions of `container` kept on the engine, oldest first (empty when none are).
pub(crate) async fn load_history(runtime: &dyn ContainerRuntime, container: &str) -> Result<Vec<Revision>, Error> {
    Ok(engine_history(runtime, container)
        .await?
        .map(|(_, r)| r)
        .unwrap_or_default())
}

/// The revisions of `container` kept on the engine, oldest first, with the name of the record they came
/// from; `None` when the engine keeps none. Checked before they are trusted: every revision is this
/// container's, numbered once, with a retained container of its own name and times that are not in the
/// future; a record that fails is an error naming it.
pub(crate) async fn engine_history(
    runtime: &dyn ContainerRuntime,
    container: &str,
) -> Result<Option<(String, Vec<Revision>)>, Error> {
    if !runtime.supports_records() {
        return Ok(None);
    }
    let slots = history_slots(runtime, container).await?;
    let (record, revisions) = match slots.iter().flatten().max_by_key(|(_, seq)| *seq) {
        Some((newest, _)) => {
            let body = newest.labels.get(HISTORY_LABEL).map_or("", String::as_str);
            let revisions: Vec<Revision> = serde_json::from_str(body).map_err(|e| {
                unreadable(
                    runtime,
                    &newest.name,
                    container,
                    format!("its label {HISTORY_LABEL} is not a list of revisions: {e}"),
                )
            })?;
            (newest.name.clone(), revisions)
        }
        None => {
            let revisions = legacy_history(runtime, container).await?;
            if revisions.is_empty() {
                return Ok(None);
            }
            (format!("{HISTORY_RECORD}/{container}.json"), revisions)
        }
    };
    if let Some(problem) = implausible_history(container, &revisions) {
        return Err(unreadable(runtime, &record, container, problem));
    }
    Ok(Some((record, revisions)))
}

/// Why `revisions` cannot be the history agentctl wrote for `container`, if they cannot.
fn implausible_history(container: &str, revisions: &[Revision]) -> Option<String> {
    let latest = OffsetDateTime::now_utc() + CLOCK_SKEW;
    let mut seen = std::collections::BTreeSet::new();
    for r in revisions {
        let n = r.number;
        if !seen.insert(n) {
            return Some(format!("revision {n} is there twice"));
        }
        if r.spec.name.as_str() != container {
            return Some(format!(
                "revision {n} is of the container {}, not {container}",
                r.spec.name
            ));
        }
        if r.created_at > latest || r.finished_at.is_some_and(|f| f > latest) {
            return Some(format!(
                "revision {n} is dated in the future ({})",
                rfc3339(r.created_at)
            ));
        }
        if r.finished_at.is_some_and(|f| f < r.created_at) {
            return Some(format!("revision {n} finished before it was created"));
        }
        let retained = format!("{container}.rev{n}");
        if r.retained_container.as_ref().is_some_and(|c| *c != retained) {
            return Some(format!(
                "revision {n} names {} as its retained container, where agentctl retains it as {retained}",
                r.retained_container.as_deref().unwrap_or_default()
            ));
        }
    }
    None
}

/// The revisions of `container` in the record an earlier agentctl kept every agent's history in.
async fn legacy_history(runtime: &dyn ContainerRuntime, container: &str) -> Result<Vec<Revision>, Error> {
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
        unreadable(
            runtime,
            &format!("{HISTORY_RECORD}/{container}.json"),
            container,
            format!("it is not a list of revisions: {e}"),
        )
    })
}
