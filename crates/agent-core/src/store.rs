//! The [`StateStore`] trait: revisions, the journal and leases, stored durably by an implementation.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::revision::{Revision, RevisionNumber};

/// Who holds (or asks for) a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseHolder {
    /// A unique id for this holder (one per process run).
    pub id: String,
    /// Host name of the holder.
    pub hostname: String,
    /// Process id of the holder.
    pub pid: u32,
    /// What it is doing (`update node-agent`).
    pub purpose: String,
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {} ({})", self.pid, self.hostname, self.purpose)
    }
}

/// A time-limited exclusive claim on a key (a target or a rollout). A holder renews it while it works; one
/// that stops renewing loses it when it expires, so a killed process never leaves a stale lock behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// What is claimed (`container:unix:///var/run/docker.sock/node-agent`).
    pub key: String,
    /// Who holds it.
    pub holder: LeaseHolder,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    /// Until when, unless renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One journal record: written before the step it names is carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// The operation it belongs to.
    pub operation: String,
    /// The key of what the operation changes (a target or a rollout).
    pub subject: String,
    /// Position within the operation, from 0.
    pub seq: u32,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The step and its data, as the operation's owner defines them.
    pub record: serde_json::Value,
}

/// Everything a store holds except leases (which belong to running processes): what `agentctl state
/// export` writes and `import` reads, to move history between stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDump {
    /// Always [`StateDump::FORMAT`].
    pub format: String,
    /// The format's version, [`StateDump::VERSION`].
    pub version: u32,
    /// Every revision, by subject.
    pub revisions: Vec<DumpedRevision>,
    /// Every operation (open or closed) with its journal.
    pub operations: Vec<DumpedOperation>,
    /// Every document.
    pub documents: Vec<DumpedDocument>,
}

impl StateDump {
    /// The format's name.
    pub const FORMAT: &'static str = "agentctl-state";
    /// The format's version.
    pub const VERSION: u32 = 1;

    /// An empty dump.
    pub fn new() -> StateDump {
        StateDump {
            format: StateDump::FORMAT.into(),
            version: StateDump::VERSION,
            revisions: Vec::new(),
            operations: Vec::new(),
            documents: Vec::new(),
        }
    }
}

impl StateDump {
    /// What of `self` a store holding `existing` lacks, and how many items it holds identical already; an
    /// item it holds with other contents is a [`StoreError::ImportConflict`]. Items compare as JSON.
    pub fn additions(&self, existing: &StateDump) -> Result<(StateDump, usize), StoreError> {
        fn same<T: Serialize>(a: &T, b: &T) -> bool {
            serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
        }
        if self.format != StateDump::FORMAT || self.version > StateDump::VERSION {
            return Err(StoreError::Io {
                location: "the import".into(),
                message: format!(
                    "it is not an agentctl state export of version {} or older (format {:?}, version {})",
                    StateDump::VERSION,
                    self.format,
                    self.version
                ),
            });
        }
        let mut add = StateDump::new();
        let mut unchanged = 0;
        for r in &self.revisions {
            let held = existing
                .revisions
                .iter()
                .find(|e| e.subject == r.subject && e.revision.number == r.revision.number);
            match held {
                None => add.revisions.push(r.clone()),
                Some(e) if same(&e.revision, &r.revision) => unchanged += 1,
                Some(_) => {
                    return Err(StoreError::ImportConflict {
                        item: format!("revision {} of {}", r.revision.number, r.subject),
                    })
                }
            }
        }
        for o in &self.operations {
            // Times are left out: a store may keep them at a coarser precision (PostgreSQL: microseconds).
            let same_op = |e: &DumpedOperation| {
                e.subject == o.subject
                    && e.closed_at.is_some() == o.closed_at.is_some()
                    && e.journal.len() == o.journal.len()
                    && e.journal
                        .iter()
                        .zip(&o.journal)
                        .all(|(a, b)| a.seq == b.seq && a.record == b.record)
            };
            match existing.operations.iter().find(|e| e.operation == o.operation) {
                None => add.operations.push(o.clone()),
                Some(e) if same_op(e) => unchanged += 1,
                Some(_) => {
                    return Err(StoreError::ImportConflict {
                        item: format!("operation {}", o.operation),
                    })
                }
            }
        }
        for d in &self.documents {
            match existing.documents.iter().find(|e| e.kind == d.kind && e.key == d.key) {
                None => add.documents.push(d.clone()),
                Some(e) if e.value == d.value => unchanged += 1,
                Some(_) => {
                    return Err(StoreError::ImportConflict {
                        item: format!("document {}/{}", d.kind, d.key),
                    })
                }
            }
        }
        Ok((add, unchanged))
    }
}

impl Default for StateDump {
    fn default() -> Self {
        StateDump::new()
    }
}

/// A revision and its subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpedRevision {
    /// The subject (`container:ENDPOINT/NAME`).
    pub subject: String,
    /// The revision.
    pub revision: Revision,
}

/// An operation and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpedOperation {
    /// Its id.
    pub operation: String,
    /// What it changes.
    pub subject: String,
    /// When it was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// When it was closed; `None` while open (an interrupted operation the next command repairs).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
    /// Its journal, in order.
    pub journal: Vec<JournalEntry>,
}

/// A document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpedDocument {
    /// Its kind (`rollout`, `delivery`, …).
    pub kind: String,
    /// Its key.
    pub key: String,
    /// Its body.
    pub value: serde_json::Value,
}

/// What an import added and what it found there already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportSummary {
    /// Revisions added.
    pub revisions: usize,
    /// Operations added.
    pub operations: usize,
    /// Documents added.
    pub documents: usize,
    /// Items the store held already, identical, and left as they were.
    pub unchanged: usize,
}

/// What went wrong in a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another holder has the lease.
    #[error("{key} is locked by {} since {}, until {} unless renewed; wait for it, or if that process is gone the lease is taken over once it expires", .holder, .since, .until)]
    LeaseHeld {
        /// The key.
        key: String,
        /// The holder.
        holder: LeaseHolder,
        /// Acquired at (RFC 3339).
        since: String,
        /// Expires at (RFC 3339).
        until: String,
    },
    /// The lease was lost (expired and taken by someone else) before it was renewed.
    #[error("lease on {key} was lost to another holder; stop and re-run the command")]
    LeaseLost {
        /// The key.
        key: String,
    },
    /// The store's files are damaged.
    #[error("state store {location} is damaged: {message}; {recovery}")]
    Corrupt {
        /// Where.
        location: String,
        /// What was found.
        message: String,
        /// How to recover.
        recovery: String,
    },
    /// An import found an item the store holds with other contents: nothing was imported.
    #[error("{item} is in the state store already with other contents, so nothing was imported; import into an empty store, or remove {item} from it first")]
    ImportConflict {
        /// What (`revision 3 of container:…/agent`, `operation update-agent-…`, `document rollout/r1`).
        item: String,
    },
    /// Any other storage failure.
    #[error("state store {location}: {message}")]
    Io {
        /// Where.
        location: String,
        /// What failed.
        message: String,
    },
}

/// The rules of leases, the same for every store: each takes the lease held now on the key (read in the
/// store's transaction) and returns the one to write, or the error that leaves it as it is.
pub mod lease_rules {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::{Lease, LeaseHolder, StoreError};

    fn rfc3339(t: OffsetDateTime) -> String {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// The error naming who holds `lease`.
    pub fn held(lease: &Lease) -> StoreError {
        StoreError::LeaseHeld {
            key: lease.key.clone(),
            holder: lease.holder.clone(),
            since: rfc3339(lease.acquired_at),
            until: rfc3339(lease.expires_at),
        }
    }

    fn new(key: &str, holder: &LeaseHolder, now: OffsetDateTime, ttl: Duration) -> Lease {
        Lease {
            key: key.to_owned(),
            holder: holder.clone(),
            acquired_at: now,
            expires_at: now + ttl,
        }
    }

    /// [`StateStore::acquire_lease`](super::StateStore::acquire_lease): free, expired or already `holder`'s.
    pub fn acquire(
        current: Option<Lease>,
        key: &str,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        match current {
            Some(l) if l.holder.id != holder.id && l.expires_at > now => Err(held(&l)),
            _ => Ok(new(key, holder, now, ttl)),
        }
    }

    /// [`StateStore::take_over_lease`](super::StateStore::take_over_lease): only if `stale` is still the
    /// lease.
    pub fn take_over(
        current: Option<Lease>,
        stale: &Lease,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        match current {
            Some(l) if &l != stale => Err(held(&l)),
            _ => Ok(new(&stale.key, holder, now, ttl)),
        }
    }

    /// [`StateStore::renew_lease`](super::StateStore::renew_lease): only while `lease`'s holder has it.
    pub fn renew(
        current: Option<Lease>,
        lease: &Lease,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        match current {
            Some(mut l) if l.holder.id == lease.holder.id => {
                l.expires_at = now + ttl;
                Ok(l)
            }
            _ => Err(StoreError::LeaseLost { key: lease.key.clone() }),
        }
    }
}

/// Durable storage for revisions, the journal and leases. Implementations must make each call atomic and
/// durable before returning (the journal is only useful if a crash right after an append keeps the entry).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every stored revision of `subject`, oldest first.
    async fn revisions(&self, subject: &str) -> Result<Vec<Revision>, StoreError>;

    /// Inserts or replaces a revision.
    async fn put_revision(&self, subject: &str, revision: &Revision) -> Result<(), StoreError>;

    /// Deletes a revision (after pruning).
    async fn delete_revision(&self, subject: &str, number: RevisionNumber) -> Result<(), StoreError>;

    /// Appends a journal entry.
    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StoreError>;

    /// The entries of `operation`, in order.
    async fn journal(&self, operation: &str) -> Result<Vec<JournalEntry>, StoreError>;

    /// The operations on `subject` that were started and never closed, oldest first.
    async fn open_operations(&self, subject: &str) -> Result<Vec<String>, StoreError>;

    /// Every subject with an open operation.
    async fn subjects_with_open_operations(&self) -> Result<Vec<String>, StoreError>;

    /// Marks `operation` closed (finished or reverted).
    async fn close_operation(&self, operation: &str) -> Result<(), StoreError>;

    /// Takes the lease on `key` for `ttl` if it is free, expired, or already held by `holder`.
    /// Otherwise [`StoreError::LeaseHeld`].
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<Lease, StoreError>;

    /// Takes over `stale` (whose holder is known to be dead) only if it is still the current lease.
    async fn take_over_lease(
        &self,
        stale: &Lease,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<Lease, StoreError>;

    /// Extends a held lease; [`StoreError::LeaseLost`] when someone else holds it now.
    async fn renew_lease(
        &self,
        lease: &Lease,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Result<Lease, StoreError>;

    /// Releases a held lease (a lease held by someone else is left alone).
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// The current lease on `key`, if any (expired or not).
    async fn lease(&self, key: &str) -> Result<Option<Lease>, StoreError>;

    /// Stores a JSON document under `(kind, key)` (rollout state, control-center agents, …).
    async fn put_document(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), StoreError>;

    /// Stores many documents of one kind at once (one transaction where the store has them).
    async fn put_documents(&self, kind: &str, docs: &[(String, serde_json::Value)]) -> Result<(), StoreError> {
        for (key, value) in docs {
            self.put_document(kind, key, value).await?;
        }
        Ok(())
    }

    /// Reads a JSON document.
    async fn document(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Every document of a kind, as `(key, value)`.
    async fn documents(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError>;

    /// Everything the store holds except leases. The default says the store cannot.
    async fn export(&self) -> Result<StateDump, StoreError> {
        Err(StoreError::Io {
            location: "this store".into(),
            message: "it cannot export its state".into(),
        })
    }

    /// Adds everything in `dump`, all or nothing: an item the store holds already is left alone when it is
    /// identical and is a [`StoreError::ImportConflict`] otherwise. The default says the store cannot.
    async fn import(&self, dump: &StateDump) -> Result<ImportSummary, StoreError> {
        let _ = dump;
        Err(StoreError::Io {
            location: "this store".into(),
            message: "it cannot import state".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;

    fn holder(id: &str) -> LeaseHolder {
        LeaseHolder {
            id: id.into(),
            hostname: "ci-7".into(),
            pid: 4242,
            purpose: "update agent".into(),
        }
    }

    /// The refusal names the holder and the lease's times as RFC 3339, which the operator compares with the
    /// clock to decide whether to wait.
    #[test]
    fn a_held_lease_is_refused_naming_its_holder_and_its_times() {
        let now = datetime!(2026-12-08 03:00:00 UTC);
        let lease = lease_rules::acquire(None, "agent", &holder("a"), now, Duration::from_secs(30)).unwrap();
        let err =
            lease_rules::acquire(Some(lease.clone()), "agent", &holder("b"), now, Duration::from_secs(30)).unwrap_err();
        assert_eq!(
            err,
            StoreError::LeaseHeld {
                key: "agent".into(),
                holder: holder("a"),
                since: "2026-12-08T03:00:00Z".into(),
                until: "2026-12-08T03:00:30Z".into(),
            }
        );
        // Its own holder takes it again with the new ttl.
        let again = lease_rules::acquire(Some(lease.clone()), "agent", &holder("a"), now, Duration::from_secs(60));
        assert_eq!(again.unwrap().expires_at, now + Duration::from_secs(60));
        // At its expiry it is free: held means it expires after now.
        let expiry = now + Duration::from_secs(30);
        let taken = lease_rules::acquire(Some(lease), "agent", &holder("b"), expiry, Duration::from_secs(30));
        assert_eq!(taken.unwrap().holder.id, "b");
    }
}
