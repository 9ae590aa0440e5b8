//! Leases instead of lock files: a holder renews its lease while it works; a lease whose holder died (same
//! host, process gone) is taken over at once, and any other stale lease once it expires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{Lease, LeaseHolder, StateStore, StoreError};

use crate::engine_state::EngineLock;
use time::OffsetDateTime;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`), which together
/// with the pid identifies one process run even when pids are reused.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A holder identity for this process: `host:pid:start:nonce`.
pub fn holder_for_this_process(purpose: &str) -> LeaseHolder {
    let pid = std::process::id();
    let nonce = OffsetDateTime::now_utc().unix_timestamp_nanos() & 0xffff_ffff;
    LeaseHolder {
        id: format!("{}:{pid}:{}:{nonce:x}", hostname(), process_start(pid).unwrap_or(0)),
        hostname: hostname(),
        pid,
        purpose: purpose.to_owned(),
    }
}

tokio::task_local! {
    /// Who acts for the task under way, when it is not this process's user (a signed-in web user).
    static ACTOR: String;
}

/// Runs `work` with `actor` as who acts: the audit entries and revisions it records name them.
pub async fn as_actor<F: std::future::Future>(actor: String, work: F) -> F::Output {
    ACTOR.scope(actor, work).await
}

/// Who is acting: the actor of [`as_actor`], else `AGENTCTL_ACTOR`, else the OS user at this host.
pub fn actor() -> String {
    if let Ok(a) = ACTOR.try_with(Clone::clone) {
        return a;
    }
    if let Some(a) = std::env::var("AGENTCTL_ACTOR").ok().filter(|a| !a.trim().is_empty()) {
        return a.trim().to_owned();
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_this_process)
        .unwrap_or_else(|| "unknown".into());
    let host = hostname();
    format!("{user}@{host}")
}

/// The name of this process's user from `/etc/passwd` (a CI container often has no `USER`), else `uid N`.
fn user_of_this_process() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    Some(
        passwd
            .lines()
            .find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid.to_string()).then(|| name.to_owned())
            })
            .unwrap_or_else(|| format!("uid {uid}")),
    )
}

/// Whether the holder is known to be dead: it ran on this host and its process (pid + start time) is gone.
pub fn holder_is_dead(holder: &LeaseHolder) -> bool {
    if holder.hostname != hostname() {
        return false;
    }
    let start: Option<u64> = holder.id.split(':').nth(2).and_then(|s| s.parse().ok());
    match (process_start(holder.pid), start) {
        (None, _) => true,
        (Some(now), Some(then)) if then != 0 => now != then,
        _ => false,
    }
}

/// A held lease, renewed in the background until released. Dropping it without `release` stops renewal and
/// lets the lease expire.
pub struct LeaseGuard {
    store: Arc<dyn StateStore>,
    lease: Lease,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    taken_over: Option<Lease>,
    engine: Option<EngineLock>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// Acquires the lease on `key`, taking over one whose holder died.
    pub async fn acquire(
        store: Arc<dyn StateStore>,
        key: &str,
        holder: &LeaseHolder,
    ) -> Result<LeaseGuard, StoreError> {
        let now = OffsetDateTime::now_utc();
        let (lease, taken_over) = match store.acquire_lease(key, holder, now, LEASE_TTL).await {
            Ok(l) => (l, None),
            Err(StoreError::LeaseHeld { .. }) => {
                let Some(current) = store.lease(key).await? else {
                    return Box::pin(LeaseGuard::acquire(store, key, holder)).await;
                };
                if !holder_is_dead(&current.holder) {
                    return Err(StoreError::LeaseHeld {
                        key: key.to_owned(),
                        holder: current.holder.clone(),
                        since: current.acquired_at.to_string(),
                        until: current.expires_at.to_string(),
                    });
                }
                tracing::warn!(key, holder = %current.holder, "taking over the lease of a process that is gone");
                let l = store.take_over_lease(&current, holder, now, LEASE_TTL).await?;
                (l, Some(current))
            }
            Err(e) => return Err(e),
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let store = store.clone();
            let lost = lost.clone();
            let mut lease = lease.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    match store.renew_lease(&lease, OffsetDateTime::now_utc(), LEASE_TTL).await {
                        Ok(l) => lease = l,
                        Err(e) => {
                            tracing::error!(error = %e, "lease renewal failed");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        Ok(LeaseGuard {
            store,
            lease,
            lost,
            renewer,
            taken_over,
            engine: None,
        })
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The stale lease this guard took over from a dead holder, if any.
    pub fn taken_over(&self) -> Option<&Lease> {
        self.taken_over.as_ref()
    }

    /// Whether renewal failed (another holder may have it now), of the store's lease or the engine's lock.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.engine.as_ref().is_some_and(EngineLock::is_lost)
    }

    /// Adds the engine lock taken with this lease.
    pub(crate) fn with_engine_lock(mut self, lock: Option<EngineLock>) -> LeaseGuard {
        self.engine = lock;
        self
    }

    /// The engine lock held with this lease, if the runtime keeps one.
    pub(crate) fn engine_lock(&self) -> Option<&EngineLock> {
        self.engine.as_ref()
    }

    /// Stops renewal and releases the lease (and the engine lock, after copying the subject's history to the
    /// engine).
    pub async fn release(self) -> Result<(), StoreError> {
        self.renewer.abort();
        let engine = match &self.engine {
            Some(lock) => {
                lock.save_history_and_release(self.store.as_ref(), &self.lease.key)
                    .await
            }
            None => Ok(()),
        };
        let store = self.store.release_lease(&self.lease).await;
        engine.map_err(|e| StoreError::Io {
            location: "engine".into(),
            message: e.to_string(),
        })?;
        store
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::MemoryStore;

    #[tokio::test]
    async fn a_live_holder_blocks_and_a_dead_one_is_taken_over() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let me = holder_for_this_process("test");
        let g = LeaseGuard::acquire(store.clone(), "k", &me).await.unwrap();
        let other = holder_for_this_process("other");
        let err = LeaseGuard::acquire(store.clone(), "k", &other).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(g);
        // A holder whose process is gone (an impossible start time for our pid) is taken over at once.
        let mut ghost = holder_for_this_process("ghost");
        ghost.id = format!("{}:{}:1:dead", ghost.hostname, ghost.pid);
        let store2: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        store2
            .acquire_lease("k", &ghost, OffsetDateTime::now_utc(), LEASE_TTL)
            .await
            .unwrap();
        assert!(holder_is_dead(&ghost));
        let g = LeaseGuard::acquire(store2, "k", &me).await.unwrap();
        assert_eq!(g.taken_over().unwrap().holder.id, ghost.id);
    }

    /// Dead only when known dead: a pid that no longer runs here, or one that runs a process started at
    /// another time; alive when the start time is unknown (0) or the holder is on another host.
    #[test]
    fn a_holder_is_dead_only_when_its_process_is_known_gone() {
        let me = holder_for_this_process("me");
        assert!(!holder_is_dead(&me), "this process runs");
        let mut unknown_start = me.clone();
        unknown_start.id = format!("{}:{}:0:n", me.hostname, me.pid);
        assert!(!holder_is_dead(&unknown_start), "no start time: not known dead");
        let mut elsewhere = me.clone();
        elsewhere.hostname = "another-host".into();
        elsewhere.id = format!("another-host:{}:1:n", me.pid);
        assert!(
            !holder_is_dead(&elsewhere),
            "another host's process cannot be seen from here"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = child.id();
        child.wait().unwrap();
        let mut gone = me.clone();
        gone.pid = gone_pid;
        gone.id = format!("{}:{gone_pid}:0:n", me.hostname);
        assert!(holder_is_dead(&gone), "pid {gone_pid} no longer runs");
    }
}
