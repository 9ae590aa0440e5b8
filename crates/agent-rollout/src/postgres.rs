//! [`PostgresStore`]: the shared [`StateStore`] for teams and CI (`--state postgres://…`), so every operator
//! and every runner sees one journal, one history, one set of leases and rollouts.
//!
//! Leases are read and written in one transaction under a transaction-scoped advisory lock on the key, so
//! two machines can never both win; journal appends and the opening of their operation are one
//! transaction; PostgreSQL's commit is durable before the call returns (with its default
//! `synchronous_commit`). The schema is created and migrated under a session advisory lock, so runners that
//! start at once migrate it once.
//!
//! TLS follows the URL's `sslmode` (`disable`, `prefer`, the default, or `require`), verifying the server
//! against the system's roots and the PEM file named by `PGSSLROOTCERT`, as libpq does.

use std::time::Duration;

use agent_core::{
    async_trait, lease_rules, DumpedDocument, DumpedOperation, DumpedRevision, ImportSummary, JournalEntry, Lease,
    LeaseHolder, Revision, RevisionNumber, StateDump, StateStore, StoreError,
};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, GenericClient};

/// The schema version this agentctl writes.
const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: migration N takes the schema from version N-1 to N.
const MIGRATIONS: &[&str] = &["
CREATE TABLE agentctl_revisions (
    subject TEXT NOT NULL, number BIGINT NOT NULL, body JSONB NOT NULL, PRIMARY KEY (subject, number));
CREATE TABLE agentctl_operations (
    operation TEXT PRIMARY KEY, subject TEXT NOT NULL, opened_at TIMESTAMPTZ NOT NULL, closed_at TIMESTAMPTZ,
    position BIGSERIAL);
CREATE INDEX agentctl_operations_open ON agentctl_operations (subject) WHERE closed_at IS NULL;
CREATE TABLE agentctl_journal (
    operation TEXT NOT NULL, seq INTEGER NOT NULL, subject TEXT NOT NULL, at TIMESTAMPTZ NOT NULL,
    record JSONB NOT NULL, PRIMARY KEY (operation, seq));
CREATE TABLE agentctl_leases (key TEXT PRIMARY KEY, body JSONB NOT NULL);
CREATE TABLE agentctl_documents (
    kind TEXT NOT NULL, key TEXT NOT NULL, body JSONB NOT NULL, PRIMARY KEY (kind, key));
"];

/// The advisory lock id migrations run under (`agentctl` in ASCII).
const MIGRATION_LOCK: i64 = 0x6167_656e_7463_746c;

/// The PostgreSQL state store.
pub struct PostgresStore {
    config: Config,
    /// The URL without its password, for messages.
    location: String,
    client: Mutex<Client>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Whether `location` names a PostgreSQL store (`postgres://…` or `postgresql://…`).
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = std::env::var_os("PGSSLROOTCERT").filter(|p| !p.is_empty()) {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("PGSSLROOTCERT {}: {e}", path.to_string_lossy()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("PGSSLROOTCERT {}: {e}", path.to_string_lossy()))?;
            roots
                .add(cert)
                .map_err(|e| format!("PGSSLROOTCERT {}: {e}", path.to_string_lossy()))?;
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    agent_core::redact_url_credentials(url)
}

impl PostgresStore {
    /// Connects to the database at `url`, creates or migrates the schema, and checks that it was not
    /// written by a newer agentctl.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let mut config: Config = url.parse().map_err(|e| StoreError::Io {
            location: location.clone(),
            message: format!(
                "not a PostgreSQL URL ({e}); the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=require]"
            ),
        })?;
        // As libpq: a password not in the URL comes from PGPASSWORD (kept out of process listings).
        if config.get_password().is_none() {
            if let Some(p) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
                config.password(p.as_encoded_bytes());
            }
        }
        let client = PostgresStore::open(&config, &location).await?;
        let store = PostgresStore {
            config,
            location,
            client: Mutex::new(client),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn open(config: &Config, location: &str) -> Result<Client, StoreError> {
        let io = |message: String| StoreError::Io {
            location: location.to_owned(),
            message,
        };
        let mut config = config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let (client, connection) = config.connect(tls().map_err(io)?).await.map_err(|e| io(describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// The client, reconnected when the connection was lost (a server restart, an idle timeout).
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.is_closed() {
            *guard = PostgresStore::open(&self.config, &self.location).await?;
        }
        Ok(guard)
    }

    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        StoreError::Io {
            location: self.location.clone(),
            message: describe(&e),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(e))?;
        let result = async {
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS agentctl_schema (version INTEGER NOT NULL)")
                .await?;
            let version: Option<i32> = client
                .query_opt("SELECT max(version) FROM agentctl_schema", &[])
                .await?
                .and_then(|r| r.get(0));
            let version = version.unwrap_or(0);
            if version > SCHEMA_VERSION {
                return Ok(Err(StoreError::Io {
                    location: self.location.clone(),
                    message: format!(
                        "it was written by a newer agentctl (schema {version}, this one knows {SCHEMA_VERSION}); upgrade agentctl"
                    ),
                }));
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO agentctl_schema (version) VALUES ($1)", &[&(n as i32 + 1)])
                    .await?;
                tx.commit().await?;
            }
            Ok(Ok(()))
        }
        .await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result.map_err(|e| self.err(e))??;
        unlocked.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reads the lease on `key` and writes what `decide` returns, in one transaction under an advisory lock
    /// on the key (so two machines cannot both win); `decide`'s error leaves the lease as it was.
    async fn swap_lease(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Lease>) -> Result<Lease, StoreError>,
    ) -> Result<Lease, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&key])
            .await
            .map_err(|e| self.err(e))?;
        let current = tx
            .query_opt("SELECT body FROM agentctl_leases WHERE key = $1", &[&key])
            .await
            .map_err(|e| self.err(e))?
            .map(|r| self.parse::<Lease>(r.get(0)))
            .transpose()?;
        let decided = decide(current)?;
        tx.execute(
            "INSERT INTO agentctl_leases (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = $2",
            &[&key, &self.json(&decided)?],
        )
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(decided)
    }

    fn json<T: serde::Serialize>(&self, v: &T) -> Result<serde_json::Value, StoreError> {
        serde_json::to_value(v).map_err(|e| StoreError::Io {
            location: self.location.clone(),
            message: e.to_string(),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, v: serde_json::Value) -> Result<T, StoreError> {
        serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
            location: self.location.clone(),
            message: e.to_string(),
            recovery: "a row was changed outside agentctl; fix or delete it with psql".into(),
        })
    }

    async fn query_bodies<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(|e| self.err(e))?;
        rows.into_iter().map(|r| self.parse(r.get(0))).collect()
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute(sql, params).await.map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// The server's message and hint when there is one (tokio-postgres's display says only `db error`).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                source = cause.source();
            }
            s
        }
    }
}

async fn open_operations_of(
    client: &impl GenericClient,
    subject: Option<&str>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = match subject {
        Some(s) => {
            client
                .query(
                    "SELECT operation FROM agentctl_operations WHERE subject = $1 AND closed_at IS NULL ORDER BY opened_at, position",
                    &[&s],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT DISTINCT subject FROM agentctl_operations WHERE closed_at IS NULL ORDER BY subject",
                    &[],
                )
                .await?
        }
    };
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn revisions(&self, subject: &str) -> Result<Vec<Revision>, StoreError> {
        self.query_bodies(
            "SELECT body FROM agentctl_revisions WHERE subject = $1 ORDER BY number",
            &[&subject],
        )
        .await
    }

    async fn put_revision(&self, subject: &str, revision: &Revision) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO agentctl_revisions (subject, number, body) VALUES ($1, $2, $3) ON CONFLICT (subject, number) DO UPDATE SET body = $3",
            &[&subject, &(revision.number.get() as i64), &self.json(revision)?],
        )
        .await
    }

    async fn delete_revision(&self, subject: &str, number: RevisionNumber) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM agentctl_revisions WHERE subject = $1 AND number = $2",
            &[&subject, &(number.get() as i64)],
        )
        .await
    }

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let run = async {
            let tx = client.transaction().await?;
            if entry.seq == 0 {
                tx.execute(
                    "INSERT INTO agentctl_operations (operation, subject, opened_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&entry.operation, &entry.subject, &entry.at],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO agentctl_journal (operation, seq, subject, at, record) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &entry.operation,
                    &(entry.seq as i32),
                    &entry.subject,
                    &entry.at,
                    &entry.record,
                ],
            )
            .await?;
            tx.commit().await
        };
        run.await.map_err(|e| self.err(e))
    }

    async fn journal(&self, operation: &str) -> Result<Vec<JournalEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT operation, seq, subject, at, record FROM agentctl_journal WHERE operation = $1 ORDER BY seq",
                &[&operation],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|r| JournalEntry {
                operation: r.get(0),
                seq: r.get::<_, i32>(1) as u32,
                subject: r.get(2),
                at: r.get(3),
                record: r.get(4),
            })
            .collect())
    }

    async fn open_operations(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        open_operations_of(&*client, Some(subject))
            .await
            .map_err(|e| self.err(e))
    }

    async fn subjects_with_open_operations(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        open_operations_of(&*client, None).await.map_err(|e| self.err(e))
    }

    async fn close_operation(&self, operation: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE agentctl_operations SET closed_at = now() WHERE operation = $1 AND closed_at IS NULL",
            &[&operation],
        )
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.swap_lease(key, |current| lease_rules::acquire(current, key, holder, now, ttl))
            .await
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
        .await
    }

    async fn renew_lease(&self, lease: &Lease, now: OffsetDateTime, ttl: Duration) -> Result<Lease, StoreError> {
        self.swap_lease(&lease.key, |current| lease_rules::renew(current, lease, now, ttl))
            .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM agentctl_leases WHERE key = $1 AND body->'holder'->>'id' = $2",
            &[&lease.key, &lease.holder.id],
        )
        .await
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self
            .query_bodies("SELECT body FROM agentctl_leases WHERE key = $1", &[&key])
            .await?
            .into_iter()
            .next())
    }

    async fn put_document(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO agentctl_documents (kind, key, body) VALUES ($1, $2, $3) ON CONFLICT (kind, key) DO UPDATE SET body = $3",
            &[&kind, &key, value],
        )
        .await
    }

    async fn put_documents(&self, kind: &str, docs: &[(String, serde_json::Value)]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let run = async {
            let tx = client.transaction().await?;
            let st = tx
                .prepare("INSERT INTO agentctl_documents (kind, key, body) VALUES ($1, $2, $3) ON CONFLICT (kind, key) DO UPDATE SET body = $3")
                .await?;
            for (key, value) in docs {
                tx.execute(&st, &[&kind, key, value]).await?;
            }
            tx.commit().await
        };
        run.await.map_err(|e| self.err(e))
    }

    async fn document(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT body FROM agentctl_documents WHERE kind = $1 AND key = $2",
                &[&kind, &key],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn documents(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, body FROM agentctl_documents WHERE kind = $1 ORDER BY key",
                &[&kind],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn export(&self) -> Result<StateDump, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let dump = export_in(&tx).await.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        dump.map_err(|e| StoreError::Corrupt {
            location: self.location.clone(),
            message: e,
            recovery: "a row was changed outside agentctl; fix or delete it with psql".into(),
        })
    }

    async fn import(&self, dump: &StateDump) -> Result<ImportSummary, StoreError> {
        let mut client = self.client().await?;
        // Serializable: the comparison and the writes see one state, and a concurrent writer makes the
        // commit fail rather than the import half-apply.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::Serializable)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let existing = export_in(&tx)
            .await
            .map_err(|e| self.err(e))?
            .map_err(|e| StoreError::Corrupt {
                location: self.location.clone(),
                message: e,
                recovery: "a row was changed outside agentctl; fix or delete it with psql".into(),
            })?;
        let (add, unchanged) = dump.additions(&existing)?;
        let write = async {
            for r in &add.revisions {
                let body = serde_json::to_value(&r.revision).unwrap_or_default();
                tx.execute(
                    "INSERT INTO agentctl_revisions (subject, number, body) VALUES ($1, $2, $3)",
                    &[&r.subject, &(r.revision.number.get() as i64), &body],
                )
                .await?;
            }
            for o in &add.operations {
                tx.execute(
                    "INSERT INTO agentctl_operations (operation, subject, opened_at, closed_at) VALUES ($1, $2, $3, $4)",
                    &[&o.operation, &o.subject, &o.opened_at, &o.closed_at],
                )
                .await?;
                for e in &o.journal {
                    tx.execute(
                        "INSERT INTO agentctl_journal (operation, seq, subject, at, record) VALUES ($1, $2, $3, $4, $5)",
                        &[&e.operation, &(e.seq as i32), &e.subject, &e.at, &e.record],
                    )
                    .await?;
                }
            }
            for d in &add.documents {
                tx.execute(
                    "INSERT INTO agentctl_documents (kind, key, body) VALUES ($1, $2, $3)",
                    &[&d.kind, &d.key, &d.value],
                )
                .await?;
            }
            tx.commit().await
        };
        write.await.map_err(|e| self.err(e))?;
        Ok(ImportSummary {
            revisions: add.revisions.len(),
            operations: add.operations.len(),
            documents: add.documents.len(),
            unchanged,
        })
    }
}

/// Everything but the leases, read in the transaction `c` (the outer error is the database's, the inner
/// a row that does not parse).
async fn export_in(c: &impl GenericClient) -> Result<Result<StateDump, String>, tokio_postgres::Error> {
    let mut dump = StateDump::new();
    for r in c
        .query(
            "SELECT subject, body FROM agentctl_revisions ORDER BY subject, number",
            &[],
        )
        .await?
    {
        let revision = match serde_json::from_value(r.get(1)) {
            Ok(rev) => rev,
            Err(e) => {
                return Ok(Err(format!(
                    "a revision of {} does not parse: {e}",
                    r.get::<_, String>(0)
                )))
            }
        };
        dump.revisions.push(DumpedRevision {
            subject: r.get(0),
            revision,
        });
    }
    let ops = c
        .query(
            "SELECT operation, subject, opened_at, closed_at FROM agentctl_operations ORDER BY opened_at, position",
            &[],
        )
        .await?;
    let journal = c
        .prepare("SELECT operation, seq, subject, at, record FROM agentctl_journal WHERE operation = $1 ORDER BY seq")
        .await?;
    for o in ops {
        let operation: String = o.get(0);
        let entries = c
            .query(&journal, &[&operation])
            .await?
            .into_iter()
            .map(|r| JournalEntry {
                operation: r.get(0),
                seq: r.get::<_, i32>(1) as u32,
                subject: r.get(2),
                at: r.get(3),
                record: r.get(4),
            })
            .collect();
        dump.operations.push(DumpedOperation {
            operation,
            subject: o.get(1),
            opened_at: o.get(2),
            closed_at: o.get(3),
            journal: entries,
        });
    }
    for r in c
        .query("SELECT kind, key, body FROM agentctl_documents ORDER BY kind, key", &[])
        .await?
    {
        dump.documents.push(DumpedDocument {
            kind: r.get(0),
            key: r.get(1),
            value: r.get(2),
        });
    }
    Ok(Ok(dump))
}
