//! Claim only what the engine shows: the read-back after every verdict and revert, the old revision
//! recreated from its configuration when its retained container is gone, and an agent removed by mistake
//! brought back by `undo`.

use agent_health::{Observation, Probe, ProbeContext};

use super::*;

/// What a probe does to the engine behind the update's back, the way `docker container prune` or
/// `docker system prune -a` would.
#[derive(Clone, Copy)]
enum Meddle {
    /// Removes the retained `agent.rev1`, then fails the new version.
    PruneRetained,
    /// Removes `agent.rev1` and the old image, then fails the new version.
    PruneRetainedAndImage,
    /// Removes `agent.rev1`, makes its image exit on start, then fails the new version.
    PruneRetainedAndBreakIt,
    /// Passes, but crashes the new container at the verdict.
    CrashAtVerdict,
    /// Passes, but stops the new container at the verdict (`docker stop`: no restart follows).
    StopAtVerdict,
    /// Passes, but replaces the new container at the verdict by another of the same name and spec.
    ReplaceAtVerdict,
}

struct Meddler {
    rt: Arc<FakeRuntime>,
    what: Meddle,
    first: std::sync::Mutex<Option<tokio::time::Instant>>,
}

#[async_trait::async_trait]
impl Probe for Meddler {
    fn name(&self) -> &str {
        "meddler"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        let prune = |image: bool| async move {
            let old_image = self.rt.inspect_container("agent.rev1").await.map(|i| i.image_id);
            let _ = self.rt.remove_container("agent.rev1").await;
            if let (true, Ok(id)) = (image, old_image) {
                self.rt.drop_image(&id);
            }
        };
        match self.what {
            Meddle::PruneRetained => {
                prune(false).await;
                Observation::Fatal("fails late".into())
            }
            Meddle::PruneRetainedAndImage => {
                prune(true).await;
                Observation::Fatal("fails late".into())
            }
            Meddle::PruneRetainedAndBreakIt => {
                prune(false).await;
                let exits = ImageBehaviour {
                    exit_on_start: Some(1),
                    ..Default::default()
                };
                self.rt.set_behaviour(&img("acme/agent:1.0").pull_ref(), exits);
                Observation::Fatal("fails late".into())
            }

            at_verdict => {
                let first = *self.first.lock().unwrap().get_or_insert_with(tokio::time::Instant::now);
                // The gate's last round is at minHealthyTime (300 ms here): the meddling happens right there.
                if first.elapsed() >= Duration::from_millis(300) {
                    let name = ctx.container.as_str();
                    match at_verdict {
                        Meddle::StopAtVerdict => self.rt.stop_container(name, None).await.unwrap(),
                        Meddle::ReplaceAtVerdict => {
                            let spec = self.rt.inspect_container(name).await.unwrap().spec;
                            self.rt.stop_container(name, None).await.unwrap();
                            self.rt.remove_container(name).await.unwrap();
                            self.rt.run(spec).unwrap();
                        }
                        _ => self.rt.crash(name, 137),
                    }
                }
                Observation::Pass("fine".into())
            }
        }
    }
}

fn meddled(rt: &Arc<FakeRuntime>, image: &str, what: Meddle) -> UpdateRequest {
    let mut r = req(image);
    let rt = rt.clone();
    r.extra_probes = Some(Arc::new(move || {
        vec![Box::new(Meddler {
            rt: rt.clone(),
            what,
            first: std::sync::Mutex::new(None),
        }) as Box<dyn Probe>]
    }));
    r
}

async fn secret_of(rt: &FakeRuntime, name: &str) -> Option<String> {
    let info = rt.inspect_container(name).await.unwrap();
    info.spec
        .env
        .iter()
        .find(|v| v.name == "API_TOKEN")
        .and_then(|v| v.expose())
        .map(str::to_owned)
}

#[tokio::test(start_paused = true)]
async fn a_retained_container_pruned_during_verification_is_recreated_from_its_configuration() {
    let (rt, _store, up) = setup();
    let report = up
        .update(&meddled(&rt, "acme/agent:2.0", Meddle::PruneRetained))
        .await
        .unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    let restored = report.restored.as_deref().unwrap_or_default();
    assert!(restored.contains("agent.rev1 was gone"), "{restored}");
    // Revision 1 runs again for real: its image, its configuration, its secret value.
    let now = rt.inspect_container("agent").await.unwrap();
    assert!(now.state.is_running());
    assert_eq!(now.spec.image, img("acme/agent:1.0"));
    assert_eq!(now.spec.restart_policy, RestartPolicy::UnlessStopped);
    assert_eq!(secret_of(&rt, "agent").await.as_deref(), Some("s3cret"));
    assert_eq!(rt.container_names(), ["agent"]);
}

#[tokio::test(start_paused = true)]
async fn a_pruned_old_image_is_pulled_back_by_its_recorded_digest() {
    let (rt, _store, up) = setup();
    let report = up
        .update(&meddled(&rt, "acme/agent:2.0", Meddle::PruneRetainedAndImage))
        .await
        .unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack, "{:?}", report.reason);
    let ops = rt.operations();
    assert!(
        ops.iter()
            .any(|o| o.starts_with("pull docker.io/acme/agent:1.0@sha256:")),
        "pulled by digest: {ops:?}"
    );
    let now = rt.inspect_container("agent").await.unwrap();
    assert!(now.state.is_running());
    assert_eq!(
        now.spec.image,
        img("acme/agent:1.0"),
        "created with the reference it had"
    );
}

#[tokio::test(start_paused = true)]
async fn an_old_image_that_was_only_local_is_named_never_claimed_back() {
    let rt = Arc::new(FakeRuntime::default());
    rt.add_built_image(
        &img("acme/agent:1.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    rt.publish_image(
        &img("acme/agent:2.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    rt.run(ContainerSpec::new("agent".parse().unwrap(), img("acme/agent:1.0")))
        .unwrap();
    let up = Updater::new(rt.clone(), Arc::new(MemoryStore::default()), Arc::new(Silent));
    let err = up
        .update(&meddled(&rt, "acme/agent:2.0", Meddle::PruneRetainedAndImage))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAsExpected { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("revision 1 runs again") && text.contains("only local") && text.contains("acme/agent:1.0"),
        "{text}"
    );
}

/// After a revert, the engine must show the old container itself under the name: another one put in its
/// place right after the revert's rename is named, never taken for revision 1.
#[tokio::test(start_paused = true)]
async fn another_container_in_the_old_ones_place_is_never_called_the_old_revision() {
    let (rt, _store, up) = setup();
    rt.inject(Fault::ReplaceAfterRename { to: "agent".into() });
    // 3.0 exits on start: the revert renames agent.rev1 back to agent, and someone is quicker.
    let err = up.update(&req("acme/agent:3.0")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NotAsExpected { .. }), "{text}");
    assert!(
        text.contains("revision 1 runs again") && text.contains("another container under the name"),
        "{text}"
    );
}

/// The old revision recreated from its configuration is read back too: one that exits at once is named
/// (exit 5), never reported as running again.
#[tokio::test(start_paused = true)]
async fn an_old_revision_recreated_but_not_running_is_named_never_claimed_back() {
    let (rt, _store, up) = setup();
    let err = up
        .update(&meddled(&rt, "acme/agent:2.0", Meddle::PruneRetainedAndBreakIt))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NotAsExpected { .. }), "{text}");
    assert!(
        text.contains("revision 1 runs again") && text.contains("was recreated from its configuration and"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_container_that_dies_at_the_verdict_is_not_called_updated() {
    let (rt, _store, up) = setup();
    let before = rt.inspect_container("agent").await.unwrap().id;
    let report = up
        .update(&meddled(&rt, "acme/agent:2.0", Meddle::CrashAtVerdict))
        .await
        .unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains("read back after the verdict") && reason.contains("restarted 1 time"),
        "{reason}"
    );
    assert_eq!(rt.inspect_container("agent").await.unwrap().id, before);
}

#[tokio::test(start_paused = true)]
async fn a_new_container_stopped_or_replaced_at_the_verdict_is_not_called_updated() {
    for (what, says) in [
        (Meddle::StopAtVerdict, "agent is exited"),
        (Meddle::ReplaceAtVerdict, "is another container"),
    ] {
        let (rt, _store, up) = setup();
        let before = rt.inspect_container("agent").await.unwrap().id;
        let report = up.update(&meddled(&rt, "acme/agent:2.0", what)).await.unwrap();
        assert_eq!(report.status, UpdateStatus::RolledBack);
        let reason = report.reason.unwrap_or_default();
        assert!(
            reason.contains("read back after the verdict") && reason.contains(says),
            "{says}: {reason}"
        );
        let now = rt.inspect_container("agent").await.unwrap();
        assert_eq!(now.id, before, "{says}");
        assert!(now.state.is_running(), "{says}");
    }
}

/// The tag moves between agentctl's pull and its create: the container runs an image nobody verified
/// the digest of, and the read-back names both.
#[tokio::test(start_paused = true)]
async fn a_tag_moved_between_pull_and_create_is_caught_by_the_image_read_back() {
    let (rt, _store, up) = setup();
    let before = rt.inspect_container("agent").await.unwrap().id;
    rt.inject(Fault::MoveTag {
        to: img("acme/agent:1.0").pull_ref(),
    });
    let report = up.update(&req("acme/agent:2.0")).await.unwrap();
    assert_eq!(report.status, UpdateStatus::RolledBack);
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains("read back after the verdict") && reason.contains("runs image"),
        "{reason}"
    );
    assert_eq!(rt.inspect_container("agent").await.unwrap().id, before);
}

#[tokio::test(start_paused = true)]
async fn undo_brings_back_an_agent_removed_by_mistake() {
    let (rt, _store, up) = setup();
    let original = rt.inspect_container("agent").await.unwrap().id;
    up.update(&req("acme/agent:2.0")).await.unwrap();
    rt.stop_container("agent", None).await.unwrap();
    rt.remove_container("agent").await.unwrap();
    // The current revision (2) from its recorded configuration, its secret from the retained revision 1.
    let report = up
        .undo(&undo_req(Some(agent_core::RevisionNumber::new(2).unwrap())))
        .await
        .unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert_eq!(report.previous, None, "nothing ran under the name");
    let now = rt.inspect_container("agent").await.unwrap();
    assert!(now.state.is_running());
    assert_eq!(now.spec.image, img("acme/agent:2.0"));
    assert_eq!(secret_of(&rt, "agent").await.as_deref(), Some("s3cret"));
    // Removed again: revision 1 comes back as the retained container itself.
    rt.stop_container("agent", None).await.unwrap();
    rt.remove_container("agent").await.unwrap();
    let report = up.undo(&undo_req(agent_core::RevisionNumber::new(1))).await.unwrap();
    assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
    assert_eq!(rt.inspect_container("agent").await.unwrap().id, original);
    assert_eq!(rt.container_names(), ["agent"]);
}

/// An agent removed with its data volume pruned after it: undo recreates it with a new, empty volume (the
/// engine's doing) and says so, naming the volume, instead of claiming the agent is back as it was.
#[tokio::test(start_paused = true)]
async fn undo_says_which_volume_came_back_empty() {
    let (rt, _store, up) = setup();
    let mut spec = rt.inspect_container("agent").await.unwrap().spec;
    rt.stop_container("agent", None).await.unwrap();
    rt.remove_container("agent").await.unwrap();
    let volume = format!("{:064x}", 0xda7a);
    spec.mounts.push(agent_core::Mount {
        target: "/data".into(),
        kind: agent_core::MountKind::Volume {
            name: volume.clone(),
            anonymous: true,
        },
        read_only: false,
    });
    rt.run(spec).unwrap();
    up.update(&req("acme/agent:2.0")).await.unwrap();
    for pruned in [false, true] {
        rt.stop_container("agent", None).await.unwrap();
        rt.remove_container("agent").await.unwrap();
        if pruned {
            rt.drop_volume(&volume);
        }
        let report = up
            .undo(&undo_req(Some(agent_core::RevisionNumber::new(2).unwrap())))
            .await
            .unwrap();
        assert_eq!(report.status, UpdateStatus::Updated, "{:?}", report.reason);
        if pruned {
            assert_eq!(
                report.notes,
                [format!(
                    "revision 2: its anonymous volume {} at /data was gone (pruned) and was created empty: the data it held is not there",
                    &volume[..12]
                )]
            );
        } else {
            assert_eq!(report.notes, Vec::<String>::new(), "the volume was there");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn undo_of_an_agent_nobody_knows_says_where_it_looked() {
    let (rt, _store, up) = setup();
    rt.stop_container("agent", None).await.unwrap();
    rt.remove_container("agent").await.unwrap();
    let err = up.undo(&undo_req(None)).await.unwrap_err();
    assert!(matches!(err, Error::NoHistory { .. }), "{err}");
    assert!(err.to_string().contains("agent.agentctl-history.0"), "{err}");
}
