//! [`SqliteStore`]: the default [`StateStore`], one SQLite file (bundled SQLite, WAL, `synchronous=FULL`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use agent_core::{
    async_trait, lease_rules, DumpedDocument, DumpedOperation, DumpedRevision, ImportSummary, JournalEntry, Lease,
    LeaseHolder, Revision, RevisionNumber, StateDump, StateStore, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revisions (
    subject TEXT NOT NULL, number INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (subject, number));
CREATE TABLE IF NOT EXISTS operations (
    operation TEXT PRIMARY KEY, subject TEXT NOT NULL, opened_at TEXT NOT NULL, closed_at TEXT);
CREATE INDEX IF NOT EXISTS operations_open ON operations (subject) WHERE closed_at IS NULL;
CREATE TABLE IF NOT EXISTS journal (
    operation TEXT NOT NULL, seq INTEGER NOT NULL, subject TEXT NOT NULL, at TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (operation, seq));
CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, key));
";

/// Opens the state store at `location`: a PostgreSQL URL (`postgres://…`, `postgresql://…`), else a SQLite
/// file (`sqlite://PATH` or a plain path).
pub async fn open_state(location: &str) -> Result<std::sync::Arc<dyn StateStore>, StoreError> {
    if crate::postgres::is_postgres_url(location) {
        return Ok(std::sync::Arc::new(crate::PostgresStore::connect(location).await?));
    }
    let path = location.strip_prefix("sqlite://").unwrap_or(location);
    Ok(std::sync::Arc::new(SqliteStore::open(Path::new(path))?))
}

/// The SQLite state store. Safe to share between tasks and between processes (SQLite's locking, a busy
/// timeout, and immediate transactions for read-modify-write of leases).
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, checks its integrity, and migrates its schema, keeping a copy
    /// of the file as `PATH.bak-vN` before any migration of an existing store.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // Another process opening the store at the same moment can hold the lock that switching to WAL or
        // creating the schema needs, and SQLite's busy handler does not cover those: retry for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(10);
        loop {
            match SqliteStore::open_once(path) {
                Err(StoreError::Io { message, .. })
                    if (message.contains("locked") || message.contains("busy"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<SqliteStore, StoreError> {
        let location = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            location: location.clone(),
            message: e.to_string(),
        };
        let corrupt = |message: String| {
            StoreError::Corrupt {
            location: location.clone(),
            message,
            recovery: format!(
                "move it aside (`mv {0} {0}.broken`) and run the command again to start a new store; copies made before migrations are next to it as {0}.bak-v*",
                location
            ),
        }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::files::private_dir(dir).map_err(|e| io(&e))?;
        }
        let existed = path.exists() && std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
        let conn = Connection::open(path).map_err(|e| io(&e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| io(&e))?;
        let check: Result<String, _> = conn.query_row("PRAGMA quick_check", [], |r| r.get(0));
        match check {
            Ok(s) if s == "ok" => {}
            Ok(s) => return Err(corrupt(format!("the integrity check reports: {s}"))),
            Err(e) => return Err(corrupt(e.to_string())),
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| corrupt(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Io {
                location: location.clone(),
                message: format!(
                    "it was written by a newer agentctl (schema {version}, this one knows {SCHEMA_VERSION}); upgrade agentctl or use another --state-dir"
                ),
            });
        }
        // Copy before migrating a schema that exists (version 0 is a store being created, possibly by another
        // process right now: nothing to keep). Through SQLite, never with a file copy: closing another handle
        // on the file drops this process's locks, after which another process's WAL writes can be lost from
        // sight (a concurrent `rollout status` did exactly that to a running `apply`).
        if existed && version >= 1 && version < SCHEMA_VERSION {
            let backup = format!("{location}.bak-v{version}");
            conn.execute("VACUUM INTO ?1", [&backup]).map_err(|e| io(&e))?;
            crate::files::make_private(Path::new(&backup)).map_err(|e| io(&e))?;
        }
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(|e| io(&e))?;
        // The store holds history, journals and specs: the owner's only, whatever the umask.
        for suffix in ["", "-wal", "-shm"] {
            crate::files::make_private(Path::new(&format!("{location}{suffix}"))).map_err(|e| io(&e))?;
        }
        if version < SCHEMA_VERSION {
            conn.execute_batch(SCHEMA).map_err(|e| corrupt(e.to_string()))?;
            conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| io(&e))?;
        }
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// Reads the lease on `key` and writes what `decide` returns, in one immediate transaction (so two
    /// processes cannot both win); `decide`'s error leaves the lease as it was.
    fn swap_lease(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Lease>) -> Result<Lease, StoreError>,
    ) -> Result<Lease, StoreError> {
        let mut outcome: Option<Result<Lease, StoreError>> = None;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Lease> = tx
                .query_row("SELECT body FROM leases WHERE key = ?1", [key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .map(|b| parse(&b))
                .transpose()?;
            let decided = decide(current);
            if let Ok(lease) = &decided {
                tx.execute(
                    "INSERT OR REPLACE INTO leases (key, body) VALUES (?1, ?2)",
                    params![key, json(lease)?],
                )?;
                tx.commit()?;
            }
            outcome = Some(decided);
            Ok(())
        })?;
        outcome.unwrap_or_else(|| Err(StoreError::LeaseLost { key: key.to_owned() }))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(code, msg)
                if matches!(
                    code.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                StoreError::Corrupt {
                    location: self.path.display().to_string(),
                    message: msg.unwrap_or_else(|| code.to_string()),
                    recovery: "move the file aside and run the command again".into(),
                }
            }
            other => StoreError::Io {
                location: self.path.display().to_string(),
                message: other.to_string(),
            },
        })
    }
}

fn json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn revisions(&self, subject: &str) -> Result<Vec<Revision>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT body FROM revisions WHERE subject = ?1 ORDER BY number")?;
            let rows = st.query_map([subject], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.and_then(|s| parse(&s))).collect()
        })
    }

    async fn put_revision(&self, subject: &str, revision: &Revision) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO revisions (subject, number, body) VALUES (?1, ?2, ?3)",
                params![subject, revision.number.get() as i64, json(revision)?],
            )
            .map(|_| ())
        })
    }

    async fn delete_revision(&self, subject: &str, number: RevisionNumber) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revisions WHERE subject = ?1 AND number = ?2",
                params![subject, number.get() as i64],
            )
            .map(|_| ())
        })
    }

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if entry.seq == 0 {
                tx.execute(
                    "INSERT OR IGNORE INTO operations (operation, subject, opened_at) VALUES (?1, ?2, ?3)",
                    params![entry.operation, entry.subject, rfc3339(entry.at)],
                )?;
            }
            tx.execute(
                "INSERT INTO journal (operation, seq, subject, at, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    entry.operation,
                    entry.seq,
                    entry.subject,
                    rfc3339(entry.at),
                    json(&entry.record)?
                ],
            )?;
            tx.commit()
        })
    }

    async fn journal(&self, operation: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT operation, seq, subject, at, record FROM journal WHERE operation = ?1 ORDER BY seq")?;
            let rows = st.query_map([operation], |r| {
                let at: String = r.get(3)?;
                let record: String = r.get(4)?;
                Ok(JournalEntry {
                    operation: r.get(0)?,
                    seq: r.get(1)?,
                    subject: r.get(2)?,
                    at: OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    record: parse(&record)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn open_operations(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT operation FROM operations WHERE subject = ?1 AND closed_at IS NULL ORDER BY opened_at, rowid",
            )?;
            let rows = st.query_map([subject], |r| r.get(0))?;
            rows.collect()
        })
    }

    async fn subjects_with_open_operations(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT DISTINCT subject FROM operations WHERE closed_at IS NULL ORDER BY subject")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    async fn close_operation(&self, operation: &str) -> Result<(), StoreError> {
        let now = rfc3339(OffsetDateTime::now_utc());
        self.with(|c| {
            c.execute(
                "UPDATE operations SET closed_at = ?2 WHERE operation = ?1 AND closed_at IS NULL",
                params![operation, now],
            )
            .map(|_| ())
        })
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.swap_lease(key, |current| lease_rules::acquire(current, key, holder, now, ttl))
    }

    async fn take_over_lease(
        &self,
        stale: &Lease,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.swap_lease(&stale.key, |current| {
            lease_rules::take_over(current, stale, holder, now, ttl)
        })
    }

    async fn renew_lease(&self, lease: &Lease, now: OffsetDateTime, ttl: Duration) -> Result<Lease, StoreError> {
        self.swap_lease(&lease.key, |current| lease_rules::renew(current, lease, now, ttl))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .query_row("SELECT body FROM leases WHERE key = ?1", [&lease.key], |r| r.get(0))
                .optional()?;
            if let Some(l) = current.map(|b| parse::<Lease>(&b)).transpose()? {
                if l.holder.id == lease.holder.id {
                    tx.execute("DELETE FROM leases WHERE key = ?1", [&lease.key])?;
                }
            }
            tx.commit()
        })
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT body FROM leases WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .map(|b| parse(&b))
            .transpose()
        })
    }

    async fn put_document(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind, key, json(value)?],
            )
            .map(|_| ())
        })
    }

    async fn put_documents(&self, kind: &str, docs: &[(String, serde_json::Value)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare("INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?1, ?2, ?3)")?;
                for (key, value) in docs {
                    st.execute(params![kind, key, json(value)?])?;
                }
            }
            tx.commit()
        })
    }

    async fn document(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND key = ?2",
                [kind, key],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|b| parse(&b))
            .transpose()
        })
    }

    async fn documents(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT key, body FROM documents WHERE kind = ?1 ORDER BY key")?;
            let rows = st.query_map([kind], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            rows.map(|r| r.and_then(|(k, b)| Ok((k, parse(&b)?)))).collect()
        })
    }

    async fn export(&self) -> Result<StateDump, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let dump = export_in(&tx)?;
            tx.commit()?;
            Ok(dump)
        })
    }

    async fn import(&self, dump: &StateDump) -> Result<ImportSummary, StoreError> {
        let mut outcome = None;
        self.with(|c| {
            // One immediate transaction: the comparison and the writes see one state, and a failure leaves
            // the store as it was.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = export_in(&tx)?;
            let (add, unchanged) = match dump.additions(&existing) {
                Ok(a) => a,
                Err(e) => {
                    outcome = Some(Err(e));
                    return Ok(());
                }
            };
            for r in &add.revisions {
                tx.execute(
                    "INSERT INTO revisions (subject, number, body) VALUES (?1, ?2, ?3)",
                    params![r.subject, r.revision.number.get() as i64, json(&r.revision)?],
                )?;
            }
            for o in &add.operations {
                tx.execute(
                    "INSERT INTO operations (operation, subject, opened_at, closed_at) VALUES (?1, ?2, ?3, ?4)",
                    params![o.operation, o.subject, rfc3339(o.opened_at), o.closed_at.map(rfc3339)],
                )?;
                for e in &o.journal {
                    tx.execute(
                        "INSERT INTO journal (operation, seq, subject, at, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![e.operation, e.seq, e.subject, rfc3339(e.at), json(&e.record)?],
                    )?;
                }
            }
            for d in &add.documents {
                tx.execute(
                    "INSERT INTO documents (kind, key, body) VALUES (?1, ?2, ?3)",
                    params![d.kind, d.key, json(&d.value)?],
                )?;
            }
            tx.commit()?;
            outcome = Some(Ok(ImportSummary {
                revisions: add.revisions.len(),
                operations: add.operations.len(),
                documents: add.documents.len(),
                unchanged,
            }));
            Ok(())
        })?;
        outcome.unwrap_or_else(|| Ok(ImportSummary::default()))
    }
}

fn time_of(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Everything but the leases, read in the transaction `c`.
fn export_in(c: &Connection) -> rusqlite::Result<StateDump> {
    let mut dump = StateDump::new();
    let mut st = c.prepare("SELECT subject, body FROM revisions ORDER BY subject, number")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (subject, body) = row?;
        dump.revisions.push(DumpedRevision {
            subject,
            revision: parse(&body)?,
        });
    }
    let mut st =
        c.prepare("SELECT operation, subject, opened_at, closed_at FROM operations ORDER BY opened_at, rowid")?;
    let ops: Vec<(String, String, String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut st =
        c.prepare("SELECT operation, seq, subject, at, record FROM journal WHERE operation = ?1 ORDER BY seq")?;
    for (operation, subject, opened, closed) in ops {
        let journal = st
            .query_map([&operation], |r| {
                let at: String = r.get(3)?;
                let record: String = r.get(4)?;
                Ok(JournalEntry {
                    operation: r.get(0)?,
                    seq: r.get(1)?,
                    subject: r.get(2)?,
                    at: time_of(&at),
                    record: parse(&record)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        dump.operations.push(DumpedOperation {
            operation,
            subject,
            opened_at: time_of(&opened),
            closed_at: closed.as_deref().map(time_of),
            journal,
        });
    }
    let mut st = c.prepare("SELECT kind, key, body FROM documents ORDER BY kind, key")?;
    for row in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })? {
        let (kind, key, body) = row?;
        dump.documents.push(DumpedDocument {
            kind,
            key,
            value: parse(&body)?,
        });
    }
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str) -> LeaseHolder {
        LeaseHolder {
            id: id.into(),
            hostname: "h".into(),
            pid: 1,
            purpose: "test".into(),
        }
    }

    #[tokio::test]
    async fn journal_operations_and_leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = OffsetDateTime::now_utc();
        {
            let s = SqliteStore::open(&path).unwrap();
            for seq in 0..3 {
                s.append_journal(&JournalEntry {
                    operation: "op1".into(),
                    subject: "t".into(),
                    seq,
                    at: now,
                    record: serde_json::json!({"step": seq}),
                })
                .await
                .unwrap();
            }
            s.acquire_lease("t", &holder("a"), now, Duration::from_secs(30))
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.open_operations("t").await.unwrap(), ["op1"]);
        assert_eq!(s.journal("op1").await.unwrap().len(), 3);
        let err = s
            .acquire_lease("t", &holder("b"), now, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseHeld { .. }));
        s.close_operation("op1").await.unwrap();
        assert!(s.open_operations("t").await.unwrap().is_empty());
        let stale = s.lease("t").await.unwrap().unwrap();
        let taken = s
            .take_over_lease(&stale, &holder("b"), now, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(taken.holder.id, "b");
        assert!(s
            .take_over_lease(&stale, &holder("c"), now, Duration::from_secs(30))
            .await
            .is_err());
    }

    #[test]
    fn corrupt_files_are_reported_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(
            &path,
            b"this is not a database, just some bytes that are long enough to look like one....",
        )
        .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
        assert!(msg.contains("mv ") && msg.contains("state.db"), "{msg}");
    }

    #[tokio::test]
    async fn a_truncated_file_is_reported_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            for i in 0..200 {
                s.put_document("k", &format!("doc{i}"), &serde_json::json!({"pad": "x".repeat(200)}))
                    .await
                    .unwrap();
            }
            // Fold the WAL into the file so the cut below hits real pages.
            s.with(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let err = SqliteStore::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
        assert!(msg.contains("mv "), "{msg}");
    }
}
