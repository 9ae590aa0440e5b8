//! Every single-target path through the one executor, and the one verdict rule on each of them.

use agent_core::UpdateMode;
use agent_health::{Observation, Probe, ProbeContext};

use super::*;

/// A signal source that cannot be asked (a control center or Prometheus down).
struct Unreachable;

#[async_trait::async_trait]
impl Probe for Unreachable {
    fn name(&self) -> &str {
        "prometheus"
    }

    async fn check(&self, _: &ProbeContext) -> Observation {
        Observation::Inconclusive("connection refused".into())
    }
}

/// A signal that says the version is broken.
struct Broken;

#[async_trait::async_trait]
impl Probe for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    async fn check(&self, _: &ProbeContext) -> Observation {
        Observation::Fatal("broken".into())
    }
}

fn inconclusive(mut r: UpdateRequest) -> UpdateRequest {
    r.extra_probes = Some(Arc::new(|| vec![Box::new(Unreachable) as Box<dyn Probe>]));
    r
}

fn inconclusive_undo() -> UndoRequest {
    UndoRequest::like("agent".parse().unwrap(), &inconclusive(req("acme/agent:1.0")))
}

async fn image_of(rt: &FakeRuntime, name: &str) -> String {
    rt.inspect_container(name).await.unwrap().spec.image.familiar()
}

#[tokio::test(start_paused = true)]
async fn start_first_switches_to_the_verified_preview() {
    let (rt, _, up) = setup();
    let mut r = req("acme/agent:2.0");
    r.mode = UpdateMode::StartFirst;
    let report = up.update(&r).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert_eq!(image_of(&rt, "agent").await, "acme/agent:2.0");
    let mut names = rt.container_names();
    names.sort();
    assert_eq!(names, ["agent", "agent.rev1"]);
    assert!(up.preview("agent").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_preview_leaves_the_old_container_untouched() {
    let (rt, _, up) = setup();
    let before = rt.inspect_container("agent").await.unwrap().id;
    let mut r = req("acme/agent:3.0");
    r.mode = UpdateMode::StartFirst;
    let report = up.update(&r).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    assert_eq!(rt.inspect_container("agent").await.unwrap().id, before);
    assert_eq!(rt.container_names(), ["agent"]);
    // The attempt is in the history, rolled back.
    let history = up.history(&"agent".parse().unwrap(), 10).await.unwrap();
    assert!(matches!(
        history.revisions().last().unwrap().outcome,
        Outcome::RolledBack { .. }
    ));
}

/// The rule of the README's table: an inconclusive verification never reverts. On every path the new
/// version ends up serving (or staged), marked unverified, exit 4, with the old one retained.
#[tokio::test(start_paused = true)]
async fn an_inconclusive_verification_keeps_the_new_version_on_every_path() {
    for mode in [UpdateMode::StopFirst, UpdateMode::StartFirst] {
        let (rt, _, up) = setup();
        let mut r = inconclusive(req("acme/agent:2.0"));
        r.mode = mode;
        let report = up.update(&r).await.unwrap();
        assert_eq!(report.status, UpdateStatus::Unverified, "{mode:?}: {:?}", report.reason);
        assert_eq!(report.status.exit_code(), 4);
        assert!(
            matches!(report.revision.outcome, Outcome::Unverified { .. }),
            "{mode:?}"
        );
        assert_eq!(image_of(&rt, "agent").await, "acme/agent:2.0", "{mode:?}");
        assert_eq!(
            image_of(&rt, "agent.rev1").await,
            "acme/agent:1.0",
            "{mode:?}: the old one retained"
        );
        assert!(up.preview("agent").await.unwrap().is_none(), "{mode:?}");
    }

    // Blue-green: the preview stays staged, unverified, for a human to promote or discard.
    let (rt, _, up) = setup();
    let report = up.stage(&inconclusive(req("acme/agent:2.0"))).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Staged);
    assert!(report.reason.unwrap().contains("inconclusive"));
    assert_eq!(image_of(&rt, "agent.preview").await, "acme/agent:2.0");
    assert_eq!(image_of(&rt, "agent").await, "acme/agent:1.0");
    let promoted = up.promote(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(promoted.status, UpdateStatus::Unverified, "{:?}", promoted.reason);
    assert_eq!(image_of(&rt, "agent").await, "acme/agent:2.0");

    // Install from a template: nothing ran before, the new container stays.
    let (rt, _, up) = setup();
    let spec = ContainerSpec::new("fresh".parse().unwrap(), img("acme/agent:2.0"));
    let mut r = inconclusive(req("acme/agent:2.0"));
    r.container = "fresh".parse().unwrap();
    let report = up.install(&spec, &r).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Unverified, "{:?}", report.reason);
    assert_eq!(image_of(&rt, "fresh").await, "acme/agent:2.0");

    // Undo, from the retained container: the earlier version stays, unverified.
    let (rt, _, up) = setup();
    assert_eq!(
        up.update(&req("acme/agent:2.0")).await.unwrap().status,
        UpdateStatus::Updated
    );
    let back = up.undo(&inconclusive_undo()).await.unwrap();
    assert_eq!(back.status, UpdateStatus::Unverified, "{:?}", back.reason);
    assert_eq!(image_of(&rt, "agent").await, "acme/agent:1.0");
    assert_eq!(image_of(&rt, "agent.rev2").await, "acme/agent:2.0");
}

/// The begin facts of a stop-first update of the running `agent` (id `old_id`) from revision 1 to 2.
fn update_begin(old_id: &str) -> crate::plan::Begin {
    crate::plan::Begin {
        kind: crate::plan::OpKind::Update,
        container: "agent".into(),
        old_id: old_id.to_owned(),
        old_running: true,
        old_restart: RestartPolicy::UnlessStopped,
        old_revision: 1,
        new_revision: 2,
        retained_name: "agent.rev1".into(),
        from_retained: None,
    }
}

/// A killed start-first switch is repaired by the inverses of the steps it reached, as a live revert would.
#[tokio::test(start_paused = true)]
async fn recovery_runs_the_inverses_of_the_reached_steps() {
    use crate::plan::Step;
    let (rt, store, up) = setup();
    let old = rt.inspect_container("agent").await.unwrap();
    // What a process killed right after renaming the old container left behind.
    rt.stop_container("agent", None).await.unwrap();
    rt.rename_container("agent", "agent.rev1").await.unwrap();
    let subject = subject_key(rt.endpoint(), "agent");
    let begin = update_begin(&old.id);
    let records = [Step::Begin(begin), Step::StopOld, Step::RenameOld]
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    write_journal(&*store, &subject, records).await;
    let recovered = up.recover(&"agent".parse().unwrap()).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].interrupted_at, "rename-old");
    assert_eq!(recovered[0].action, RecoveryAction::Reverted);
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old.id);
    assert!(now.state.is_running());
    assert_eq!(rt.container_names(), ["agent"]);
}

/// An undo that fails its verification puts the revision it brought back where it was: retained, stopped,
/// and with restart policy `no`, so that no daemon restart runs it beside the current one.
#[tokio::test(start_paused = true)]
async fn a_failed_undo_retains_its_revision_again_with_no_restart_policy() {
    let (rt, _store, up) = setup();
    let first = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(first.status, UpdateStatus::Updated);
    let current = rt.inspect_container("agent").await.unwrap().id;
    let retained = rt.inspect_container("agent.rev1").await.unwrap();
    assert_eq!(retained.spec.restart_policy, RestartPolicy::No);
    let mut undo = UndoRequest::like("agent".parse().unwrap(), &req("acme/agent:1.0"));
    undo.extra_probes = Some(Arc::new(|| vec![Box::new(Broken) as Box<dyn Probe>]));
    let report = up.undo(&undo).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack, "{:?}", report.reason);
    assert_eq!(rt.inspect_container("agent").await.unwrap().id, current);
    let back = rt.inspect_container("agent.rev1").await.unwrap();
    assert_eq!(back.id, retained.id);
    assert!(!back.state.is_running());
    assert_eq!(back.spec.restart_policy, RestartPolicy::No);
}

/// A journal from an engine lock takes every act as reached; when the kill came right after the begin, the
/// old container still runs under its name, and the inverses leave it alone: never stopped, not even for a
/// moment.
#[tokio::test(start_paused = true)]
async fn recovery_from_the_begin_alone_never_stops_the_old_container() {
    use crate::plan::Step;
    let (rt, store, up) = setup();
    let old = rt.inspect_container("agent").await.unwrap();
    let subject = subject_key(rt.endpoint(), "agent");
    let begin = update_begin(&old.id);
    let records = [Step::Begin(begin), Step::AfterBegin]
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    write_journal(&*store, &subject, records).await;
    let before = rt.operations().len();
    let recovered = up.recover(&"agent".parse().unwrap()).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].action, RecoveryAction::Reverted);
    let ops = rt.operations()[before..].to_vec();
    assert!(
        !ops.iter()
            .any(|o| o.starts_with("stop ") || o.starts_with("rename ") || o.starts_with("remove ")),
        "the running old container was touched: {ops:?}"
    );
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old.id);
    assert!(now.state.is_running());
    assert_eq!(now.state.restart_count, old.state.restart_count);
}

/// A `VOLUME` the new image declares where the old container mounted nothing gets a new anonymous volume
/// from the engine: the new image's default, no difference; the old container's own bind and anonymous
/// volume are still compared, and kept.
#[tokio::test(start_paused = true)]
async fn a_volume_the_new_image_declares_is_no_difference_and_the_old_mounts_still_count() {
    use agent_core::{Mount, MountKind};
    let rt = Arc::new(FakeRuntime::default());
    rt.add_local_image(
        &img("acme/agent:1.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    let declares = ImageDefaults {
        volumes: vec!["/data".into()],
        ..Default::default()
    };
    rt.publish_image(&img("acme/agent:2.0"), declares, ImageBehaviour::default());
    let mut spec = ContainerSpec::new("agent".parse().unwrap(), img("acme/agent:1.0"));
    let cache = format!("{:064x}", 0xcac4e);
    spec.mounts = vec![
        Mount {
            target: "/etc/agent".into(),
            kind: MountKind::Bind {
                source: "/srv/agent".into(),
            },
            read_only: true,
        },
        Mount {
            target: "/cache".into(),
            kind: MountKind::Volume {
                name: cache.clone(),
                anonymous: true,
            },
            read_only: false,
        },
    ];
    rt.run(spec).unwrap();
    let up = Updater::new(rt.clone(), Arc::new(MemoryStore::default()), Arc::new(Silent));
    let report = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert!(report.unexpected_changes.is_empty(), "{:?}", report.unexpected_changes);
    let mounts = rt.inspect_container("agent").await.unwrap().spec.mounts;
    let at = |path: &str| mounts.iter().find(|m| m.target == path).map(|m| m.kind.clone());
    assert!(
        matches!(at("/data"), Some(MountKind::Volume { anonymous: true, .. })),
        "{mounts:?}"
    );
    assert_eq!(
        at("/cache"),
        Some(MountKind::Volume {
            name: cache,
            anonymous: true
        })
    );
    assert!(matches!(at("/etc/agent"), Some(MountKind::Bind { .. })));
}

/// A stopped agent whose update fails is put back stopped, as it was: a revert starts only what ran.
#[tokio::test(start_paused = true)]
async fn a_failed_update_of_a_stopped_agent_leaves_it_stopped() {
    let (rt, _store, up) = setup();
    rt.stop_container("agent", None).await.unwrap();
    let old = rt.inspect_container("agent").await.unwrap();
    let report = up.update(&req("acme/agent:3.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack, "{:?}", report.reason);
    let now = rt.inspect_container("agent").await.unwrap();
    assert_eq!(now.id, old.id);
    assert!(!now.state.is_running(), "the revert started a stopped agent");
}

/// The README's headline safety claim, on every path that recreates: when what the engine made differs
/// from what was asked (here an engine that adds an env variable), the update rolls back and names the
/// field, even with every probe healthy.
#[tokio::test(start_paused = true)]
async fn a_configuration_difference_after_the_recreate_rolls_back_and_names_the_field() {
    for mode in [UpdateMode::StopFirst, UpdateMode::StartFirst] {
        let (rt, _, up) = setup();
        let before = rt.inspect_container("agent").await.unwrap().id;
        rt.inject(Fault::AlterCreate {
            env: "INJECTED_BY_ENGINE=1".into(),
        });
        let mut r = req("acme/agent:2.0");
        r.mode = mode;
        let report = up.update(&r).await.unwrap();
        assert_eq!(report.status, UpdateStatus::RolledBack, "{mode:?}: {:?}", report.reason);
        let reason = report.reason.unwrap_or_default();
        assert!(
            reason.contains("configuration differs") && reason.contains("INJECTED_BY_ENGINE"),
            "{mode:?}: {reason}"
        );
        assert!(!report.unexpected_changes.is_empty(), "{mode:?}");
        assert_eq!(rt.inspect_container("agent").await.unwrap().id, before, "{mode:?}");
    }
    // An undo that recreates a revision from its snapshot is held to it the same way.
    let (rt, _, up) = setup();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    rt.stop_container("agent.rev1", None).await.unwrap();
    rt.remove_container("agent.rev1").await.unwrap();
    rt.inject(Fault::AlterCreate {
        env: "INJECTED_BY_ENGINE=1".into(),
    });
    let report = up.undo(&undo_req(None)).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack, "{:?}", report.reason);
    assert!(report.reason.unwrap_or_default().contains("INJECTED_BY_ENGINE"));
    assert_eq!(image_of(&rt, "agent").await, "acme/agent:2.0");
}
