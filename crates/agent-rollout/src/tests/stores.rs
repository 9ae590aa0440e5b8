//! The same contract checked on every durable store: SQLite always, PostgreSQL on a throwaway server
//! (`scripts/postgres`, Debian's `postgresql`).

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ContainerSpec, JournalEntry, LeaseHolder, OffsetDateTime, Outcome, Revision, RevisionNumber, StateStore, StoreError,
};

use crate::SqliteStore;

fn holder(id: &str) -> LeaseHolder {
    LeaseHolder {
        id: id.into(),
        hostname: "h".into(),
        pid: 1,
        purpose: "test".into(),
    }
}

fn revision(n: u64) -> Revision {
    let image = "acme/agent:1.0".parse().unwrap();
    Revision {
        number: RevisionNumber::new(n).unwrap(),
        spec: ContainerSpec::new("agent".parse().unwrap(), image),
        image: "acme/agent:1.0".parse().unwrap(),
        image_id: Some("sha256:abc".into()),
        digest: None,
        cause: format!("update {n}"),
        by: Some("ci@runner".into()),
        created_at: OffsetDateTime::now_utc(),
        finished_at: None,
        outcome: Outcome::Succeeded,
        protected: false,
        retained_container: None,
        retained_container_id: None,
    }
}

/// What every store must do.
async fn contract(s: Arc<dyn StateStore>) {
    let now = OffsetDateTime::now_utc();
    let ttl = Duration::from_secs(30);
    // Journal and operations.
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
    let dup = s
        .append_journal(&JournalEntry {
            operation: "op1".into(),
            subject: "t".into(),
            seq: 2,
            at: now,
            record: serde_json::json!({}),
        })
        .await;
    assert!(dup.is_err(), "a journal position is written once");
    assert_eq!(s.open_operations("t").await.unwrap(), ["op1"]);
    assert_eq!(s.subjects_with_open_operations().await.unwrap(), ["t"]);
    let j = s.journal("op1").await.unwrap();
    assert_eq!(j.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(j[1].record, serde_json::json!({"step": 1}));
    s.close_operation("op1").await.unwrap();
    assert!(s.open_operations("t").await.unwrap().is_empty());
    // Revisions.
    for n in [2, 1, 3] {
        s.put_revision("t", &revision(n)).await.unwrap();
    }
    let mut r2 = revision(2);
    r2.protected = true;
    s.put_revision("t", &r2).await.unwrap();
    s.delete_revision("t", RevisionNumber::new(3).unwrap()).await.unwrap();
    let revs = s.revisions("t").await.unwrap();
    assert_eq!(revs.iter().map(|r| r.number.get()).collect::<Vec<_>>(), [1, 2]);
    assert!(revs[1].protected && revs[1].by.as_deref() == Some("ci@runner"));
    // Leases: held, refused, renewed, lost, taken over, released.
    let a = s.acquire_lease("k", &holder("a"), now, ttl).await.unwrap();
    let err = s.acquire_lease("k", &holder("b"), now, ttl).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseHeld { .. }), "{err}");
    let renewed = s.renew_lease(&a, now + Duration::from_secs(5), ttl).await.unwrap();
    assert_eq!(renewed.expires_at, now + Duration::from_secs(35));
    let later = now + Duration::from_secs(60);
    let b = s.acquire_lease("k", &holder("b"), later, ttl).await.unwrap();
    assert!(matches!(
        s.renew_lease(&a, later, ttl).await.unwrap_err(),
        StoreError::LeaseLost { .. }
    ));
    s.release_lease(&a).await.unwrap();
    assert_eq!(
        s.lease("k").await.unwrap().unwrap().holder.id,
        "b",
        "a release by a loser changes nothing"
    );
    let c = s.take_over_lease(&b, &holder("c"), later, ttl).await.unwrap();
    assert!(s.take_over_lease(&b, &holder("d"), later, ttl).await.is_err());
    s.release_lease(&c).await.unwrap();
    assert!(s.lease("k").await.unwrap().is_none());
    // Documents.
    s.put_document("rollout", "r1", &serde_json::json!({"phase": "paused"}))
        .await
        .unwrap();
    s.put_documents(
        "rollout",
        &[
            ("r2".into(), serde_json::json!({"phase": "done"})),
            ("r1".into(), serde_json::json!({"phase": "done"})),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        s.document("rollout", "r1").await.unwrap(),
        Some(serde_json::json!({"phase": "done"}))
    );
    assert_eq!(s.document("rollout", "nope").await.unwrap(), None);
    let keys: Vec<String> = s
        .documents("rollout")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["r1", "r2"]);
}

/// Exports `from` (after [`contract`] filled it, plus an open operation) into the empty `to`: the same
/// state arrives; importing again changes nothing; a conflicting item is refused and nothing is imported.
async fn export_import(from: Arc<dyn StateStore>, to: Arc<dyn StateStore>) {
    from.append_journal(&JournalEntry {
        operation: "open-op".into(),
        subject: "t2".into(),
        seq: 0,
        at: OffsetDateTime::now_utc(),
        record: serde_json::json!({"step": "begin"}),
    })
    .await
    .unwrap();
    let dump = from.export().await.unwrap();
    assert_eq!(
        (dump.revisions.len(), dump.operations.len(), dump.documents.len()),
        (2, 2, 2)
    );
    let summary = to.import(&dump).await.unwrap();
    assert_eq!(
        (
            summary.revisions,
            summary.operations,
            summary.documents,
            summary.unchanged
        ),
        (2, 2, 2, 0)
    );
    assert_eq!(
        serde_json::to_value(to.revisions("t").await.unwrap()).unwrap(),
        serde_json::to_value(from.revisions("t").await.unwrap()).unwrap()
    );
    assert_eq!(
        to.open_operations("t2").await.unwrap(),
        ["open-op"],
        "an open operation stays open"
    );
    assert!(to.open_operations("t").await.unwrap().is_empty());
    assert_eq!(to.journal("op1").await.unwrap().len(), 3);
    assert_eq!(
        to.documents("rollout").await.unwrap(),
        from.documents("rollout").await.unwrap()
    );
    let again = to.import(&dump).await.unwrap();
    assert_eq!(
        (again.revisions, again.operations, again.documents, again.unchanged),
        (0, 0, 0, 6)
    );
    // A dump whose revision 2 differs, with a new document: refused, and the new document is not added.
    let mut other = dump.clone();
    other.revisions[1].revision.cause = "something else".into();
    other.documents.push(agent_core::DumpedDocument {
        kind: "rollout".into(),
        key: "r3".into(),
        value: serde_json::json!({}),
    });
    let err = to.import(&other).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::ImportConflict { item } if item == "revision 2 of t"),
        "{err}"
    );
    assert_eq!(to.documents("rollout").await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    contract(store.clone()).await;
    let other = Arc::new(SqliteStore::open(&dir.path().join("other.db")).unwrap());
    export_import(store, other).await;
}

#[cfg(feature = "testing")]
mod postgres {
    use super::*;
    use crate::testing::TestPostgres;
    use crate::PostgresStore;

    #[tokio::test]
    async fn postgres_keeps_the_store_contract_and_one_lease_winner_across_connections() {
        let server = TestPostgres::start().expect("PostgreSQL (apt-get install postgresql)");
        let url = server.database("contract").unwrap();
        let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
        contract(store.clone()).await;
        // SQLite → PostgreSQL and back.
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
        contract(sqlite.clone()).await;
        let target = Arc::new(
            PostgresStore::connect(&server.database("imported").unwrap())
                .await
                .unwrap(),
        );
        export_import(sqlite, target.clone()).await;
        let back = Arc::new(SqliteStore::open(&dir.path().join("back.db")).unwrap());
        let summary = back.import(&target.export().await.unwrap()).await.unwrap();
        assert_eq!(summary.revisions + summary.operations + summary.documents, 6);
        // Ten stores (ten connections, as ten machines would have) race for one key, twenty rounds: each
        // round exactly one wins.
        let mut stores = Vec::new();
        for _ in 0..10 {
            stores.push(Arc::new(PostgresStore::connect(&url).await.unwrap()));
        }
        for round in 0..20 {
            let key = format!("race-{round}");
            let now = OffsetDateTime::now_utc();
            let tries = stores.iter().enumerate().map(|(i, s)| {
                let (s, key) = (s.clone(), key.clone());
                tokio::spawn(async move {
                    s.acquire_lease(&key, &holder(&format!("m{i}")), now, Duration::from_secs(30))
                        .await
                })
            });
            let results = futures_util::future::join_all(tries).await;
            let winners = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
            assert_eq!(winners, 1, "round {round}: {results:?}");
        }
        // A second connect migrates nothing and keeps the data; a schema from a newer agentctl is refused.
        let again = PostgresStore::connect(&url).await.unwrap();
        assert_eq!(again.revisions("t").await.unwrap().len(), 2);
        let out = std::process::Command::new("psql")
            .args([url.as_str(), "-q", "-c", "INSERT INTO agentctl_schema VALUES (99)"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = PostgresStore::connect(&url).await.unwrap_err().to_string();
        assert!(
            err.contains("newer agentctl") && !err.contains(server.password()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_wrong_password_or_server_is_named_without_the_password() {
        let server = TestPostgres::start().expect("PostgreSQL (apt-get install postgresql)");
        let wrong = server.url().replace(server.password(), "not-the-password");
        let err = PostgresStore::connect(&wrong).await.unwrap_err().to_string();
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");
        let err = PostgresStore::connect("postgres://u:secret@127.0.0.1:1/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("127.0.0.1:1") && !err.contains("secret"), "{err}");
        let err = PostgresStore::connect("postgres://u@[nonsense/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres://USER:PASSWORD@HOST"), "{err}");
    }
}
