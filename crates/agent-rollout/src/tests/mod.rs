//! Update-flow logic against the in-memory runtime and store (the real-engine tests are in `tests/`).

use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ContainerRuntime, ContainerSpec, EnvVar, FakeRuntime, Fault, ImageBehaviour, ImageDefaults, ImageRef, JournalEntry,
    MemoryStore, OffsetDateTime, Outcome, RestartPolicy, RuntimeError, StateStore,
};
use agent_health::Timing;

use crate::*;

fn img(s: &str) -> ImageRef {
    s.parse().unwrap()
}

fn setup() -> (Arc<FakeRuntime>, Arc<MemoryStore>, Updater) {
    let rt = Arc::new(FakeRuntime::default());
    let defaults = ImageDefaults {
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    rt.add_local_image(&img("acme/agent:1.0"), defaults.clone(), ImageBehaviour::default());
    rt.publish_image(&img("acme/agent:2.0"), defaults.clone(), ImageBehaviour::default());
    rt.publish_image(
        &img("acme/agent:3.0"),
        defaults.clone(),
        ImageBehaviour {
            exit_on_start: Some(1),
            ..Default::default()
        },
    );
    rt.publish_image(
        &img("acme/agent:4.0"),
        defaults,
        ImageBehaviour {
            logs: vec!["panic: nil map".into()],
            ..Default::default()
        },
    );
    let mut spec = ContainerSpec::new("agent".parse().unwrap(), img("acme/agent:1.0"));
    spec.env = vec![
        EnvVar::plain("LOG_LEVEL", "debug"),
        EnvVar::secret("API_TOKEN", "s3cret"),
    ];
    spec.restart_policy = RestartPolicy::UnlessStopped;
    rt.run(spec).unwrap();
    let store = Arc::new(MemoryStore::default());
    let up = Updater::new(rt.clone(), store.clone(), Arc::new(Silent));
    (rt, store, up)
}

fn req(image: &str) -> UpdateRequest {
    let mut r = UpdateRequest::new("agent".parse().unwrap(), img(image));
    r.verify.timing = Timing {
        period: Duration::from_millis(100),
        min_healthy_time: Duration::from_millis(300),
        deadline: Duration::from_secs(5),
        ..Timing::default()
    };
    r
}

/// Writes `records` as the journal of one open operation on `subject`, as a process that was killed leaves it.
async fn write_journal(store: &dyn StateStore, subject: &str, records: Vec<serde_json::Value>) {
    for (seq, record) in records.into_iter().enumerate() {
        store
            .append_journal(&JournalEntry {
                operation: "op".into(),
                subject: subject.to_owned(),
                seq: seq as u32,
                at: OffsetDateTime::now_utc(),
                record,
            })
            .await
            .unwrap();
    }
}

fn undo_req(to: Option<agent_core::RevisionNumber>) -> UndoRequest {
    let mut r = UndoRequest::like("agent".parse().unwrap(), &req("acme/agent:1.0"));
    r.to = to;
    r
}

#[tokio::test(start_paused = true)]
async fn update_retains_the_old_container_and_records_revisions() {
    let (rt, _store, up) = setup();
    let report = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert_eq!(rt.container_names(), ["agent", "agent.rev1"]);
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.spec.image, img("acme/agent:2.0"));
    assert_eq!(now.spec.env.len(), 2, "user env kept");
    assert_eq!(now.spec.restart_policy, RestartPolicy::UnlessStopped);
    let retained = rt.inspect_container("agent.rev1").await.unwrap();
    assert_eq!(
        retained.spec.restart_policy,
        RestartPolicy::No,
        "a retained container never restarts by itself"
    );
    assert!(!retained.state.is_running());
    let h = up.history(&"agent".parse().unwrap(), 5).await.unwrap();
    let numbers: Vec<(u64, &str)> = h
        .revisions()
        .iter()
        .map(|r| (r.number.get(), r.outcome.status()))
        .collect();
    assert_eq!(numbers, [(1, "succeeded"), (2, "succeeded")]);
    assert_eq!(
        h.get(agent_core::RevisionNumber::FIRST)
            .unwrap()
            .retained_container
            .as_deref(),
        Some("agent.rev1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashing_version_rolls_back_to_the_same_container() {
    let (rt, _store, up) = setup();
    let before = rt.inspect_container("agent").await.unwrap();
    let report = up.update(&req("acme/agent:3.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    assert_eq!(report.status.exit_code(), 3);
    assert!(
        report.reason.as_ref().unwrap().contains("exit code 1"),
        "{:?}",
        report.reason
    );
    assert_eq!(rt.container_names(), ["agent"]);
    let after = rt.inspect_container("agent").await.unwrap();
    assert_eq!(after.id, before.id, "the very same container runs again");
    assert!(after.state.is_running());
    assert_eq!(after.spec.restart_policy, RestartPolicy::UnlessStopped);
    let h = up.history(&"agent".parse().unwrap(), 5).await.unwrap();
    assert!(matches!(h.revisions()[1].outcome, Outcome::RolledBack { .. }));
    assert_eq!(h.current().unwrap().number.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn fatal_log_lines_roll_back_with_evidence() {
    let (_rt, _store, up) = setup();
    let report = up.update(&req("acme/agent:4.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    let verdict = report.verdict.unwrap();
    assert!(verdict.reason.contains("panic: nil map"), "{}", verdict.reason);
    assert!(report.last_logs.iter().any(|l| l.contains("panic")));
}

#[tokio::test(start_paused = true)]
async fn bad_inputs_change_nothing() {
    let (rt, store, up) = setup();
    let ops_before = rt.operations().len();
    let err = up.update(&req("acme/agent:latest")).await.unwrap_err();
    assert!(matches!(err, Error::Policy(_)), "{err}");
    let err = up.update(&req("acme/agent:9.9")).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let mut r = req("acme/agent:2.0");
    r.container = "ghost".parse().unwrap();
    let err = up.update(&r).await.unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert!(
        matches!(&err, Error::Inspect { container, source: RuntimeError::ContainerNotFound { .. } } if container == "ghost"),
        "{err:?}"
    );
    let mutating: Vec<String> = rt.operations()[ops_before..]
        .iter()
        .filter(|o| !o.starts_with("inspect") && !o.starts_with("info") && !o.starts_with("pull"))
        // The engine lock each attempt takes and releases is bookkeeping, checked gone below.
        .filter(|o| !o.starts_with("record-"))
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
    assert_eq!(rt.container_names(), ["agent"]);
    for lock in ["agent.agentctl-lock", "ghost.agentctl-lock"] {
        assert!(rt.record(lock).await.unwrap().is_none(), "{lock} left behind");
    }
    assert!(store.subjects_with_open_operations().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_engine_error_mid_update_reverts() {
    let (rt, _store, up) = setup();
    rt.inject(Fault::FailOperation {
        operation: "create",
        times: 1,
    });
    let report = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    assert!(report.reason.unwrap().contains("injected fault"));
    assert_eq!(rt.container_names(), ["agent"]);
    assert!(rt.inspect_container("agent").await.unwrap().state.is_running());
}

#[tokio::test(start_paused = true)]
async fn a_failed_revert_names_its_step_and_the_next_command_repairs() {
    let (rt, store, up) = setup();
    let old_id = rt.inspect_container("agent").await.unwrap().id;
    rt.inject(Fault::FailOperation {
        operation: "create",
        times: 1,
    });
    rt.inject(Fault::FailOperation {
        operation: "start",
        times: 1,
    });
    let err = up.update(&req("acme/agent:2.0")).await.unwrap_err();
    match &err {
        Error::RevertFailed {
            container,
            step,
            source,
            ..
        } => {
            assert_eq!((container.as_str(), *step), ("agent", "restart-old"), "{err}");
            assert!(source.to_string().contains("injected fault"), "{err}");
        }
        other => panic!("expected RevertFailed, got {other:?}"),
    }
    assert!(err.runtime().is_some());
    // The journal stays open; the next command finishes putting the old container back.
    assert!(!store.subjects_with_open_operations().await.unwrap().is_empty());
    let status = up.status(&"agent".parse().unwrap(), 5).await.unwrap();
    assert_eq!(status.recovered.len(), 1);
    assert_eq!(status.recovered[0].action, RecoveryAction::Reverted);
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old_id);
    assert!(now.state.is_running());
    assert_eq!(rt.container_names(), ["agent"]);
}

#[tokio::test(start_paused = true)]
async fn undo_uses_the_retained_container_and_records_a_new_revision() {
    let (rt, _store, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    let v1_id = rt.inspect_container("agent.rev1").await.unwrap().id;
    let report = up.undo(&undo_req(None)).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert_eq!(report.revision.number.get(), 3);
    assert_eq!(report.revision.cause, "undo to revision 1");
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, v1_id, "the retained container came back");
    assert_eq!(now.spec.restart_policy, RestartPolicy::UnlessStopped);
    assert_eq!(rt.container_names(), ["agent", "agent.rev2"]);
    // And forward again to revision 2, from its retained container.
    let n2 = "2".parse().unwrap();
    let report = up.undo(&undo_req(Some(n2))).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated);
    assert_eq!(
        rt.inspect_container("agent").await.unwrap().spec.image,
        img("acme/agent:2.0")
    );
    let err = up.undo(&undo_req(Some("9".parse().unwrap()))).await.unwrap_err();
    assert!(err.to_string().contains("no revision 9"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_update_is_reverted_by_the_next_command() {
    let (rt, store, up) = setup();
    let old = rt.inspect_container("agent").await.unwrap();
    // Simulate a process killed after it stopped and renamed the old container and created the new one.
    let subject = subject_key(rt.endpoint(), "agent");
    let steps = [
        serde_json::json!({"step": "begin", "kind": "update", "container": "agent", "oldId": old.id, "old_id": old.id,
            "old_running": true, "old_restart": "unless-stopped", "old_revision": 1, "new_revision": 2,
            "retained_name": "agent.rev1", "from_retained": null}),
        serde_json::json!({"step": "stop-old"}),
        serde_json::json!({"step": "rename-old"}),
        serde_json::json!({"step": "disable-restart"}),
        serde_json::json!({"step": "create-new"}),
    ];
    write_journal(&*store, &subject, steps.to_vec()).await;
    rt.stop_container("agent", None).await.unwrap();
    rt.rename_container("agent", "agent.rev1").await.unwrap();
    rt.set_restart_policy("agent.rev1", RestartPolicy::No).await.unwrap();
    rt.pull_image(&img("acme/agent:2.0"), &|_| {}).await.unwrap();
    rt.create_container(&ContainerSpec::new("agent".parse().unwrap(), img("acme/agent:2.0")))
        .await
        .unwrap();

    let status = up.status(&"agent".parse().unwrap(), 5).await.unwrap();
    assert_eq!(status.recovered.len(), 1);
    assert_eq!(status.recovered[0].interrupted_at, "create-new");
    assert_eq!(status.recovered[0].action, RecoveryAction::Reverted);
    assert_eq!(rt.container_names(), ["agent"]);
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old.id);
    assert!(now.state.is_running());
    assert_eq!(now.spec.restart_policy, RestartPolicy::UnlessStopped);
    assert!(store.subjects_with_open_operations().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn history_is_pruned_to_the_limit_with_retained_containers() {
    let (rt, _store, up) = setup();
    let mut tags = Vec::new();
    for i in 5..12 {
        let tag = format!("acme/agent:{i}.0");
        rt.publish_image(&img(&tag), ImageDefaults::default(), ImageBehaviour::default());
        tags.push(tag);
    }
    for t in &tags {
        let mut r = req(t);
        r.history_limit = 3;
        assert_eq!(up.update(&r).await.unwrap().status, UpdateStatus::Updated);
    }
    let h = up.history(&"agent".parse().unwrap(), 3).await.unwrap();
    assert_eq!(
        h.revisions().len(),
        3,
        "{:?}",
        h.revisions().iter().map(|r| r.number.get()).collect::<Vec<_>>()
    );
    // Only kept revisions have retained containers left.
    let names = rt.container_names();
    assert_eq!(names.len(), 3, "{names:?}");
    for r in h.revisions() {
        if let Some(c) = &r.retained_container {
            assert!(names.contains(c), "{c} missing from {names:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_hiccup_is_retried_but_a_missing_image_is_not() {
    let (rt, _store, up) = setup();
    let hiccup = agent_core::RuntimeError::PullFailed {
        image: "acme/agent:2.0".into(),
        message: "502 Bad Gateway".into(),
    };
    rt.inject(Fault::Return {
        operation: "pull",
        error: hiccup,
        times: 2,
    });
    let report = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated);
    assert_eq!(
        rt.operations().iter().filter(|o| o.starts_with("pull")).count(),
        1,
        "the third try pulled"
    );
    let err = up.update(&req("acme/agent:8.8")).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(
        matches!(
            &err,
            Error::ResolveImage {
                source: RuntimeError::ImageNotFound { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let tries = rt
        .operations()
        .iter()
        .filter(|o| o.as_str() == "pull docker.io/acme/agent:8.8")
        .count();
    assert_eq!(tries, 1, "a missing image is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_probation_rolls_back_to_the_previous_container() {
    let (rt, _store, up) = setup();
    let old_id = rt.inspect_container("agent").await.unwrap().id;
    let mut r = req("acme/agent:2.0");
    r.watch = Some(WatchConfig {
        window: Duration::from_secs(30),
        alert_for: Duration::from_secs(5),
        period: Duration::from_secs(1),
    });
    let crasher = {
        let rt = rt.clone();
        tokio::spawn(async move {
            // Past verification (about 0.4 s) and into the watch.
            tokio::time::sleep(Duration::from_secs(3)).await;
            rt.crash("agent", 139);
        })
    };
    let report = up.update(&r).await.unwrap();
    crasher.await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack, "{:?}", report.reason);
    assert!(
        report
            .reason
            .as_ref()
            .unwrap()
            .starts_with("probation: rule container fired"),
        "{:?}",
        report.reason
    );
    // Under `unless-stopped` the engine starts it again: the restart is what gives it away.
    assert!(
        report.reason.as_ref().unwrap().contains("restarted 1 time"),
        "{:?}",
        report.reason
    );
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old_id, "the retained previous container runs again");
    assert!(now.state.is_running());
    let h = up.history(&"agent".parse().unwrap(), 5).await.unwrap();
    let outcomes: Vec<&str> = h.revisions().iter().map(|r| r.outcome.status()).collect();
    assert_eq!(outcomes, ["succeeded", "rolled-back", "succeeded"]);
    assert!(
        h.revisions()[2].cause.starts_with("rollback after probation"),
        "{}",
        h.revisions()[2].cause
    );
    assert_eq!(report.restored_by.unwrap().get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_probation_keeps_the_update() {
    let (_rt, _store, up) = setup();
    let mut r = req("acme/agent:2.0");
    r.watch = Some(WatchConfig {
        window: Duration::from_secs(10),
        alert_for: Duration::from_secs(3),
        period: Duration::from_secs(1),
    });
    let report = up.update(&r).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated);
    assert!(matches!(
        report.probation,
        Some(agent_health::ProbationOutcome::Quiet { .. })
    ));
}

mod engine;
mod fleet;
mod hostile_spec;
mod paths;
mod readback;
mod stores;

#[tokio::test(start_paused = true)]
async fn the_engine_lock_excludes_an_agentctl_with_another_store() {
    let (rt, _store, up) = setup();
    let other = Updater::new(rt.clone(), Arc::new(MemoryStore::default()), Arc::new(Silent));
    let held = up.lease("agent", "update").await.unwrap();
    let err = other.update(&req("acme/agent:2.0")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Busy { .. }), "{msg}");
    assert!(
        msg.contains("locked on the engine") && msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert_eq!(
        rt.inspect_container("agent").await.unwrap().spec.image,
        img("acme/agent:1.0")
    );
    held.release().await.unwrap();
    assert!(rt.record("agent.agentctl-lock").await.unwrap().is_none());
    let report = other.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated);
}

#[tokio::test(start_paused = true)]
async fn a_new_store_finds_the_history_on_the_engine_and_undoes() {
    let (rt, store, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    let kept = store.revisions("container:fake://local/agent").await.unwrap();
    assert_eq!(kept.len(), 2);
    // A runner with an empty store: the history comes from the engine, the undo uses the retained revision.
    let fresh = Arc::new(MemoryStore::default());
    let other = Updater::new(rt.clone(), fresh.clone(), Arc::new(Silent));
    let history = other.history(&"agent".parse().unwrap(), 10).await.unwrap();
    // As the store would hold them (secrets are redacted whenever a revision is written out).
    assert_eq!(
        serde_json::to_value(history.revisions()).unwrap(),
        serde_json::to_value(&kept).unwrap()
    );
    let mut undo = UndoRequest::new("agent".parse().unwrap());
    undo.verify = req("acme/agent:1.0").verify;
    let report = other.undo(&undo).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{report:?}");
    assert_eq!(
        rt.inspect_container("agent").await.unwrap().spec.image,
        img("acme/agent:1.0")
    );
    assert_eq!(fresh.revisions("container:fake://local/agent").await.unwrap().len(), 3);
}
