//! Revisions of one target and the history that keeps them, with pruning that never drops a rollback target.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::image::{Digest, ImageRef};
use crate::spec::ContainerSpec;

/// A revision number: 1 for the first recorded revision of a target, then increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RevisionNumber(u64);

impl RevisionNumber {
    /// The first revision.
    pub const FIRST: RevisionNumber = RevisionNumber(1);

    /// A revision number; `None` for 0.
    pub fn new(n: u64) -> Option<RevisionNumber> {
        (n > 0).then_some(RevisionNumber(n))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The next number.
    pub fn next(self) -> RevisionNumber {
        RevisionNumber(self.0 + 1)
    }
}

impl TryFrom<u64> for RevisionNumber {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, Self::Error> {
        RevisionNumber::new(n).ok_or_else(|| "revision numbers start at 1".to_owned())
    }
}

impl From<RevisionNumber> for u64 {
    fn from(n: RevisionNumber) -> u64 {
        n.0
    }
}

impl FromStr for RevisionNumber {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>()
            .ok()
            .and_then(RevisionNumber::new)
            .ok_or_else(|| format!("invalid revision {s:?}: give a revision number from `agentctl history`, like 3"))
    }
}

impl fmt::Display for RevisionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a revision ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Being rolled out now.
    InProgress,
    /// Verified and running (or was, before a later revision replaced it).
    Succeeded,
    /// Failed, and what was there before could not be fully restored.
    Failed {
        /// Why.
        reason: String,
    },
    /// Failed verification; the previous revision was restored.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Runs, but its verification was inconclusive (a signal source such as the control center or
    /// Prometheus could not be asked): neither proven nor rolled back. It is current, never known-good.
    Unverified {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The short status word (`succeeded`, `rolled-back`, …).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::InProgress => "in-progress",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::RolledBack { .. } => "rolled-back",
            Outcome::Unverified { .. } => "unverified",
        }
    }
}

/// One revision of a target: the spec it ran with and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Its number.
    pub number: RevisionNumber,
    /// The image as requested.
    pub image: ImageRef,
    /// The engine's image id, when resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The registry digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The full spec (secrets redacted when stored).
    pub spec: ContainerSpec,
    /// Why this revision was made (`update to 1.4.2`, `undo to revision 3`).
    pub cause: String,
    /// Who made it: `AGENTCTL_ACTOR` (a CI job, a token's name) or `user@host`; `None` for a revision
    /// adopted from a container agentctl did not start, and for revisions recorded before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it ended.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
    /// How it went.
    pub outcome: Outcome,
    /// Never pruned.
    #[serde(default)]
    pub protected: bool,
    /// The name of the stopped container kept for a fast rollback to this revision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_container: Option<String>,
    /// The engine id of that container when it was retained: undo uses it only if the container under the
    /// name is still that one (a name alone proves nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_container_id: Option<String>,
}

/// The revisions of one target, newest last, with a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionHistory {
    limit: usize,
    revisions: Vec<Revision>,
}

impl RevisionHistory {
    /// The default number of revisions kept.
    pub const DEFAULT_LIMIT: usize = 5;

    /// An empty history keeping at most `limit` revisions (at least 2: the current and one to roll back to).
    pub fn new(limit: usize) -> RevisionHistory {
        RevisionHistory {
            limit: limit.max(2),
            revisions: Vec::new(),
        }
    }

    /// A history from stored revisions (sorted by number).
    pub fn from_revisions(limit: usize, mut revisions: Vec<Revision>) -> RevisionHistory {
        revisions.sort_by_key(|r| r.number);
        RevisionHistory {
            limit: limit.max(2),
            revisions,
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// All revisions, oldest first.
    pub fn revisions(&self) -> &[Revision] {
        &self.revisions
    }

    /// The revision with this number.
    pub fn get(&self, n: RevisionNumber) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == n)
    }

    /// A mutable reference to the revision with this number.
    pub fn get_mut(&mut self, n: RevisionNumber) -> Option<&mut Revision> {
        self.revisions.iter_mut().find(|r| r.number == n)
    }

    /// The number the next revision gets.
    pub fn next_number(&self) -> RevisionNumber {
        self.revisions
            .iter()
            .map(|r| r.number)
            .max()
            .map_or(RevisionNumber::FIRST, RevisionNumber::next)
    }

    /// The revision running now: the newest that succeeded.
    pub fn current(&self) -> Option<&Revision> {
        self.revisions
            .iter()
            .rev()
            .find(|r| matches!(r.outcome, Outcome::Succeeded | Outcome::Unverified { .. }))
    }

    /// The last known-good revision other than the current one: the target of a rollback.
    pub fn last_known_good(&self) -> Option<&Revision> {
        let current = self.current()?.number;
        self.revisions
            .iter()
            .rev()
            .find(|r| r.outcome == Outcome::Succeeded && r.number != current)
    }

    /// Adds a revision (its number must be new).
    pub fn push(&mut self, revision: Revision) {
        self.revisions.retain(|r| r.number != revision.number);
        self.revisions.push(revision);
        self.revisions.sort_by_key(|r| r.number);
    }

    /// Whether pruning must keep this revision.
    pub fn is_kept(&self, n: RevisionNumber) -> bool {
        let current = self.current().map(|r| r.number);
        let lkg = self.last_known_good().map(|r| r.number);
        self.get(n)
            .is_some_and(|r| r.protected || r.outcome == Outcome::InProgress || Some(n) == current || Some(n) == lkg)
    }

    /// Drops the oldest revisions beyond the limit, never the current, the last known-good, a protected or
    /// an in-progress one (so the history may exceed the limit when those alone do). Returns what it dropped,
    /// so the caller can remove their retained containers.
    pub fn prune(&mut self) -> Vec<Revision> {
        let mut dropped = Vec::new();
        while self.revisions.len() > self.limit {
            let Some(idx) = self.revisions.iter().position(|r| !self.is_kept(r.number)) else {
                break;
            };
            dropped.push(self.revisions.remove(idx));
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rev(n: u64, outcome: Outcome, protected: bool) -> Revision {
        Revision {
            number: RevisionNumber::new(n).unwrap(),
            image: format!("acme/agent:1.{n}").parse().unwrap(),
            image_id: None,
            digest: None,
            spec: ContainerSpec::new("a".parse().unwrap(), "acme/agent:1.0".parse().unwrap()),
            cause: format!("update {n}"),
            by: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
            outcome,
            protected,
            retained_container: None,
            retained_container_id: None,
        }
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            4 => Just(Outcome::Succeeded),
            1 => Just(Outcome::RolledBack { reason: "x".into() }),
            1 => Just(Outcome::Failed { reason: "x".into() }),
        ]
    }

    #[test]
    fn current_and_last_known_good() {
        let mut h = RevisionHistory::new(5);
        h.push(rev(1, Outcome::Succeeded, false));
        h.push(rev(2, Outcome::Succeeded, false));
        h.push(rev(3, Outcome::RolledBack { reason: "crash".into() }, false));
        assert_eq!(h.current().unwrap().number.get(), 2);
        assert_eq!(h.last_known_good().unwrap().number.get(), 1);
        assert_eq!(h.next_number().get(), 4);
    }

    #[test]
    fn revision_numbers_validate() {
        assert!("0".parse::<RevisionNumber>().is_err());
        assert!("x".parse::<RevisionNumber>().unwrap_err().contains("agentctl history"));
        assert_eq!("7".parse::<RevisionNumber>().unwrap().get(), 7);
        assert!(serde_json::from_str::<RevisionNumber>("0").is_err());
    }

    proptest! {
        #[test]
        fn pruning_keeps_current_lkg_and_protected(
            revs in prop::collection::vec((outcome(), prop::bool::weighted(0.15)), 1..40),
            limit in 0usize..8,
        ) {
            let mut h = RevisionHistory::new(limit);
            for (i, (o, p)) in revs.iter().enumerate() {
                h.push(rev(i as u64 + 1, o.clone(), *p));
            }
            let current = h.current().map(|r| r.number);
            let lkg = h.last_known_good().map(|r| r.number);
            let protected: Vec<_> = h.revisions().iter().filter(|r| r.protected).map(|r| r.number).collect();
            let before = h.revisions().len();
            let dropped = h.prune();
            prop_assert_eq!(before, dropped.len() + h.revisions().len());
            if let Some(c) = current { prop_assert!(h.get(c).is_some()); }
            if let Some(l) = lkg { prop_assert!(h.get(l).is_some()); }
            for p in protected { prop_assert!(h.get(p).is_some()); }
            // Either within the limit, or everything left is something pruning must keep.
            prop_assert!(h.revisions().len() <= h.limit() || h.revisions().iter().all(|r| h.is_kept(r.number)));
            // Pruning drops the oldest first: every dropped one is older than every kept unprotected one.
            for d in &dropped {
                prop_assert!(h.revisions().iter().filter(|r| !h.is_kept(r.number)).all(|r| r.number > d.number));
            }
            // Current and last known-good do not change by pruning.
            prop_assert_eq!(h.current().map(|r| r.number), current);
            prop_assert_eq!(h.last_known_good().map(|r| r.number), lkg);
        }
    }
}
