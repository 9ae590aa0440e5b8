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
    /// Any other storage failure.
    #[error("state store {location}: {message}")]
    Io {
        /// Where.
        location: String,
        /// What failed.
        message: String,
    },
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
}
