//! What the engine keeps beside each agent, on the in-memory runtime: one whole history record at rest
//! (rewritten into the other slot, the older removed after), the newest read back, and the begin facts of an
//! interrupted operation adopted by a runner with another store unless the history says it was reverted.

use super::*;
use crate::plan::{Begin, OpKind, Step};

const SUBJECT: &str = "container:fake://local/agent";

fn history_slots(rt: &FakeRuntime) -> Vec<String> {
    rt.operations()
        .iter()
        .filter(|o| o.starts_with("record-create agent.agentctl-history"))
        .cloned()
        .collect()
}

async fn existing(rt: &FakeRuntime, names: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for n in names {
        if rt.record(n).await.unwrap().is_some() {
            found.push(n.clone());
        }
    }
    found
}

#[tokio::test(start_paused = true)]
async fn each_write_goes_to_the_other_slot_and_one_whole_history_stays() {
    let (rt, store, up) = setup();
    let names = history_names("agent");
    up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(existing(&rt, &names).await, [names[0].clone()]);
    up.update(&req("acme/agent:4.0")).await.unwrap();
    // The new record was created before the old one was removed.
    assert_eq!(existing(&rt, &names).await, [names[1].clone()]);
    let ops = rt.operations();
    let created = ops
        .iter()
        .rposition(|o| o == &format!("record-create {}", names[1]))
        .unwrap();
    let removed = ops.iter().rposition(|o| o.starts_with("record-remove")).unwrap();
    assert!(created < removed, "{ops:?}");
    assert_eq!(history_slots(&rt).len(), 2, "{ops:?}");
    // A fresh runner reads the newest: revision 3, rolled back.
    let fresh = Updater::new(rt.clone(), Arc::new(MemoryStore::default()), Arc::new(Silent));
    let history = fresh.history(&"agent".parse().unwrap(), 10).await.unwrap();
    assert_eq!(
        serde_json::to_value(history.revisions()).unwrap(),
        serde_json::to_value(store.revisions(SUBJECT).await.unwrap()).unwrap()
    );
    assert!(matches!(
        history.revisions().last().unwrap().outcome,
        Outcome::RolledBack { .. }
    ));
    // Nothing left once removed for good.
    assert_eq!(remove_history_records(rt.as_ref(), "agent").await.unwrap(), 1);
    assert!(existing(&rt, &names).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_kill_between_the_two_writes_leaves_both_and_the_newer_is_read() {
    let (rt, _store, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    let names = history_names("agent");
    let current = rt.record(&names[0]).await.unwrap().unwrap();
    // The other slot as a kill after its creation leaves it: a newer sequence number, one revision more.
    let mut revisions: Vec<serde_json::Value> = serde_json::from_str(&current.labels["io.agentctl.history"]).unwrap();
    let mut third = revisions[1].clone();
    third["number"] = 3.into();
    revisions.push(third);
    let mut labels = current.labels.clone();
    labels.insert("io.agentctl.history.seq".into(), "2".into());
    labels.insert("io.agentctl.history".into(), serde_json::to_string(&revisions).unwrap());
    rt.create_record(&names[1], &labels).await.unwrap();
    let fresh = Updater::new(rt.clone(), Arc::new(MemoryStore::default()), Arc::new(Silent));
    let history = fresh.history(&"agent".parse().unwrap(), 10).await.unwrap();
    assert_eq!(history.revisions().len(), 3);
    // The next write replaces the older (slot 0) and then removes the newer it superseded.
    fresh.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(existing(&rt, &names).await, [names[0].clone()]);
    let seq = &rt.record(&names[0]).await.unwrap().unwrap().labels["io.agentctl.history.seq"];
    assert_eq!(seq, "3");
}

/// The journal record an operation with `new_revision` leaves when its process dies.
async fn leave_journal(rt: &FakeRuntime, operation: &str, new_revision: u64) {
    let old_id = rt.inspect_container("agent").await.unwrap().id;
    let begin = Begin {
        kind: OpKind::Update,
        container: "agent".into(),
        old_id,
        old_running: true,
        old_restart: RestartPolicy::UnlessStopped,
        old_revision: new_revision - 1,
        new_revision,
        retained_name: format!("agent.rev{}", new_revision - 1),
        from_retained: None,
    };
    let entry = JournalEntry {
        operation: operation.into(),
        subject: SUBJECT.into(),
        seq: 0,
        at: OffsetDateTime::now_utc(),
        record: serde_json::to_value(Step::Begin(begin)).unwrap(),
    };
    let labels = std::collections::BTreeMap::from([
        ("io.agentctl.record".to_owned(), "journal".to_owned()),
        ("io.agentctl.journal.lock".to_owned(), "gone".to_owned()),
        (
            "io.agentctl.journal".to_owned(),
            serde_json::to_string(&[entry]).unwrap(),
        ),
    ]);
    rt.create_record(&journal_name("agent"), &labels).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_next_lock_holder_adopts_a_left_journal_unless_the_history_says_it_was_reverted() {
    let (rt, _store, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    up.update(&req("acme/agent:3.0")).await.unwrap();
    // Revision 2 succeeded: the operation that made it is adopted as committed.
    leave_journal(&rt, "op-decided", 2).await;
    let fresh = Arc::new(MemoryStore::default());
    let other = Updater::new(rt.clone(), fresh.clone(), Arc::new(Silent));
    let lease = other.lease("agent", "update").await.unwrap();
    let steps: Vec<String> = fresh
        .journal("op-decided")
        .await
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::from_value::<Step>(e.record.clone())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert_eq!(steps, ["begin", "after-begin", "commit"]);
    assert!(rt.record(&journal_name("agent")).await.unwrap().is_none());
    lease.release().await.unwrap();
    // Revision 3 was rolled back to the end: nothing to repair, nothing adopted, the record removed.
    leave_journal(&rt, "op-reverted", 3).await;
    let lease = other.lease("agent", "update").await.unwrap();
    assert!(fresh.journal("op-reverted").await.unwrap().is_empty());
    assert!(rt.record(&journal_name("agent")).await.unwrap().is_none());
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_journal_of_an_operation_is_removed_with_its_lock() {
    let (rt, _store, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    let ops = rt.operations();
    let at = |prefix: &str| {
        ops.iter()
            .position(|o| o.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {ops:?}"))
    };
    assert!(at("record-create agent.agentctl-lock") < at("record-create agent.agentctl-journal"));
    assert!(at("record-create agent.agentctl-journal") < at("stop"));
    assert!(rt.record(&journal_name("agent")).await.unwrap().is_none());
    assert!(rt.record(&lock_name("agent")).await.unwrap().is_none());
    assert!(
        !ops.iter().any(|o| o.starts_with("record-write agent.agentctl-history")),
        "{ops:?}"
    );
}
