//! Fleet rollouts against in-memory engines.

use super::*;
use std::collections::HashMap;

fn host_with(name: &str, broken: bool, containers: &[&str]) -> Arc<FakeRuntime> {
    let rt = Arc::new(FakeRuntime::new(name));
    rt.add_local_image(
        &img("acme/agent:1.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    let behaviour = ImageBehaviour {
        exit_on_start: broken.then_some(1),
        ..Default::default()
    };
    rt.publish_image(&img("acme/agent:2.0"), ImageDefaults::default(), behaviour);
    for c in containers {
        rt.run(ContainerSpec::new(c.parse().unwrap(), img("acme/agent:1.0")))
            .unwrap();
    }
    rt
}

fn fleet(hosts: Vec<Arc<FakeRuntime>>, events: Arc<std::sync::Mutex<Vec<String>>>) -> (Fleet, Arc<MemoryStore>) {
    let map: HashMap<String, Arc<dyn ContainerRuntime>> = hosts
        .into_iter()
        .map(|h| (h.endpoint().to_owned(), h as Arc<dyn ContainerRuntime>))
        .collect();
    let connect: Connector = Arc::new(move |host: String| {
        let r = map.get(&host).cloned().ok_or_else(|| format!("no engine at {host}"));
        Box::pin(async move {
            r.map_err(|message| agent_core::RuntimeError::Unavailable {
                endpoint: String::new(),
                message,
            })
        })
    });
    let store = Arc::new(MemoryStore::default());
    let sink: FleetReporter = Arc::new(move |e: &FleetEvent| {
        let v = serde_json::to_value(e).unwrap();
        events.lock().unwrap().push(v["event"].as_str().unwrap().to_owned());
    });
    (Fleet::new(store.clone(), connect, sink, Arc::new(Silent)), store)
}

fn spec(yaml: &str) -> RolloutSpec {
    RolloutSpec::parse(yaml, "test").unwrap()
}

const TARGETS: &str = "targets:\n  - {host: 'tcp://127.0.0.1:1', container: a1}\n  - {host: 'tcp://127.0.0.1:1', container: a2}\n  - {host: 'tcp://127.0.0.1:2', container: b1}\n  - {host: 'tcp://127.0.0.1:2', container: b2}\n";

fn hosts(b_broken: bool) -> Vec<Arc<FakeRuntime>> {
    vec![
        host_with("tcp://127.0.0.1:1", false, &["a1", "a2"]),
        host_with("tcp://127.0.0.1:2", b_broken, &["b1", "b2"]),
    ]
}

const HEALTH: &str = "health: {minHealthyTime: 200ms, deadline: 5s, period: 100ms}\n";

#[tokio::test(start_paused = true)]
async fn a_canary_pauses_until_promoted_then_completes() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs = hosts(false);
    let (f, _store) = fleet(hs.clone(), events.clone());
    let s = spec(&format!("name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  canary:\n    steps: [{{setWeight: 25}}, {{pause: {{}}}}, {{setWeight: 100}}]\n{HEALTH}"));
    let st = f.apply(s.clone()).await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Paused, 4));
    let updated: Vec<&str> = st
        .targets
        .iter()
        .filter(|t| t.status == TargetStatus::Updated)
        .map(|t| t.container.as_str())
        .collect();
    assert_eq!(updated, ["a1"], "25 % of 4 is one target");
    let err = f.apply(s).await.unwrap_err();
    assert!(err.to_string().contains("rollout promote"), "{err}");
    let st = f.promote("fleet").await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Succeeded, 0));
    assert!(st.pinned.digest().is_some() && st.pinned.tag().unwrap().as_str() == "2.0");
    assert!(st.targets.iter().all(|t| t.status == TargetStatus::Updated));
    for h in &hs {
        for c in h.container_names().iter().filter(|c| !c.contains(".rev")) {
            // The tag was resolved to a digest once and that digest runs everywhere.
            assert_eq!(h.inspect_container(c).await.unwrap().spec.image, st.pinned, "{c}");
        }
    }
    let ev = events.lock().unwrap().clone();
    assert!(
        ev.contains(&"paused".to_owned()) && ev.last().unwrap() == "finished",
        "{ev:?}"
    );
}

/// `maxFailureRatio: 0.5` over four targets allows two failures: both of host b's fail, the rollout goes on
/// to its end without reverting the two that work, and says which failed (never stops at the first).
#[tokio::test(start_paused = true)]
async fn failures_within_the_ratio_let_the_rollout_finish() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs = hosts(true);
    let (f, _store) = fleet(hs.clone(), events.clone());
    let s = spec(&format!("name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  rolling: {{maxUnavailable: 1}}\nrollback: {{maxFailureRatio: 0.5}}\n{HEALTH}"));
    let st = f.apply(s).await.unwrap();
    let by: Vec<(&str, TargetStatus)> = st.targets.iter().map(|t| (t.container.as_str(), t.status)).collect();
    assert_eq!(
        by,
        [
            ("a1", TargetStatus::Updated),
            ("a2", TargetStatus::Updated),
            ("b1", TargetStatus::Failed),
            ("b2", TargetStatus::Failed)
        ],
        "{:?}",
        st.reason
    );
    assert_ne!(st.phase(), agent_core::Phase::RolledBack, "{:?}", st.reason);
    for c in ["a1", "a2"] {
        let info = hs[0].inspect_container(c).await.unwrap();
        assert!(
            info.spec.image.familiar().starts_with("acme/agent:2.0@sha256:"),
            "{c} kept 2.0, pinned"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_past_the_ratio_reverts_every_touched_target() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs = hosts(true);
    let (f, _store) = fleet(hs.clone(), events.clone());
    let s = spec(&format!("name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  rolling: {{maxUnavailable: 2}}\nrollback: {{maxFailureRatio: 0.2}}\n{HEALTH}"));
    let st = f.apply(s).await.unwrap();
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::RolledBack, 3),
        "{:?}",
        st.reason
    );
    let by: Vec<(&str, TargetStatus)> = st.targets.iter().map(|t| (t.container.as_str(), t.status)).collect();
    assert_eq!(
        by,
        [
            ("a1", TargetStatus::Reverted),
            ("a2", TargetStatus::Reverted),
            ("b1", TargetStatus::Failed),
            // The fake engine fails b1 before b2's turn comes: b2 is never touched.
            ("b2", TargetStatus::Pending)
        ]
    );
    assert!(st.reason.unwrap().contains("above maxFailureRatio 20 %"));
    for (h, names) in hs.iter().zip([["a1", "a2"], ["b1", "b2"]]) {
        for c in names {
            let info = h.inspect_container(c).await.unwrap();
            assert_eq!(info.spec.image, img("acme/agent:1.0"), "{c} is back on 1.0");
            assert!(info.state.is_running());
        }
    }
    assert!(events.lock().unwrap().contains(&"rolling-back".to_owned()));
}

const EIGHT: &str = "targets:\n  - {host: 'tcp://127.0.0.1:1', container: a1}\n  - {host: 'tcp://127.0.0.1:1', container: a2}\n  - {host: 'tcp://127.0.0.1:1', container: a3}\n  - {host: 'tcp://127.0.0.1:1', container: a4}\n  - {host: 'tcp://127.0.0.1:2', container: b1}\n  - {host: 'tcp://127.0.0.1:2', container: b2}\n  - {host: 'tcp://127.0.0.1:2', container: b3}\n  - {host: 'tcp://127.0.0.1:2', container: b4}\n";

/// The virtual time a recreate of eight targets takes at parallelism 2 with `maxUnverified`.
async fn recreate_eight(max_unverified: usize) -> Duration {
    let hs = vec![
        host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3", "a4"]),
        host_with("tcp://127.0.0.1:2", false, &["b1", "b2", "b3", "b4"]),
    ];
    let (f, _store) = fleet(hs, Arc::new(std::sync::Mutex::new(Vec::new())));
    let s = spec(&format!("name: fleet\nimage: acme/agent:2.0\n{EIGHT}strategy: {{recreate: {{}}}}\nparallelism: 2\nmaxUnverified: {max_unverified}\n{HEALTH}"));
    let start = tokio::time::Instant::now();
    let st = f.apply(s).await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Succeeded, 0));
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn max_unverified_hands_the_slot_on_once_a_target_has_started() {
    // The fake engine works instantly, so the time is the verification (at least minHealthyTime):
    // held slots verify two at a time, handed-on slots let all eight verify at once.
    let held = recreate_eight(0).await;
    let handed_on = recreate_eight(6).await;
    assert!(held >= Duration::from_millis(800), "four rounds of two: {held:?}");
    assert!(handed_on < held / 2, "{handed_on:?} vs {held:?}");
}

#[tokio::test(start_paused = true)]
async fn the_next_target_is_prepared_while_the_slot_is_held_but_changed_only_after() {
    let h = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3"]);
    let (f, _store) = fleet(vec![h.clone()], Arc::new(std::sync::Mutex::new(Vec::new())));
    let targets = "targets:\n  - {host: 'tcp://127.0.0.1:1', container: a1}\n  - {host: 'tcp://127.0.0.1:1', container: a2}\n  - {host: 'tcp://127.0.0.1:1', container: a3}\n";
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{targets}strategy: {{recreate: {{}}}}\nparallelism: 1\n{HEALTH}"
    ));
    let st = f.apply(s).await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Succeeded, 0));
    let ops = h.operations();
    let at = |op: &str| {
        ops.iter()
            .position(|o| o == op)
            .unwrap_or_else(|| panic!("no {op} in {ops:?}"))
    };
    // a2 was prepared (its engine lock taken) while a1 was being verified, and stopped only once a1 was
    // proven: a1's last probe comes before a2's stop.
    let a1_verified = ops[..at("stop a2")].iter().rposition(|o| o == "inspect a1").unwrap();
    assert!(a1_verified > at("start a1"), "{ops:?}");
    assert!(at("record-create a2.agentctl-lock") < a1_verified, "{ops:?}");
    // (The rollout's final read-back of every target comes after all of it.)
    let read_back = ops
        .iter()
        .rposition(|o| o.starts_with("inspect-image docker.io/acme/agent@"))
        .unwrap();
    assert!(
        !ops[at("stop a2")..read_back].iter().any(|o| o == "inspect a1"),
        "a1 was still being verified when a2 stopped: {ops:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_new_target_starts_once_the_failures_are_past_the_ratio() {
    let hs = hosts(true);
    let (f, _store) = fleet(hs.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy: {{recreate: {{}}}}\nparallelism: 1\n{HEALTH}"
    ));
    let st = f.apply(s).await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::RolledBack, 3));
    let by: Vec<(&str, TargetStatus)> = st.targets.iter().map(|t| (t.container.as_str(), t.status)).collect();
    assert_eq!(
        by,
        [
            ("a1", TargetStatus::Reverted),
            ("a2", TargetStatus::Reverted),
            ("b1", TargetStatus::Failed),
            ("b2", TargetStatus::Pending)
        ]
    );
    // b2 was never touched: not stopped, still its first container.
    assert!(
        !hs[1].operations().iter().any(|op| op == "stop b2"),
        "{:?}",
        hs[1].operations()
    );
    assert!(hs[1].inspect_container("b2").await.unwrap().state.is_running());
    // Prepared ahead (locked, journaled), then withheld: nothing of it is left open or locked.
    let subject = crate::subject_key("tcp://127.0.0.1:2", "b2");
    assert!(_store.open_operations(&subject).await.unwrap().is_empty());
    assert!(hs[1].record("b2.agentctl-lock").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_rollback_walks_back_past_a_previous_revision_that_fails_too() {
    let hs = hosts(true);
    let a = hs[0].clone();
    a.publish_image(
        &img("acme/agent:1.5"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    let map: HashMap<String, Arc<dyn ContainerRuntime>> = hs
        .iter()
        .map(|h| (h.endpoint().to_owned(), h.clone() as Arc<dyn ContainerRuntime>))
        .collect();
    let connect: Connector = Arc::new(move |host: String| {
        let r = map.get(&host).cloned().ok_or_else(|| format!("no engine at {host}"));
        Box::pin(async move {
            r.map_err(|message| agent_core::RuntimeError::Unavailable {
                endpoint: String::new(),
                message,
            })
        })
    });
    let store = Arc::new(MemoryStore::default());
    // The moment the rollout starts reverting, the next container start on engine A fails once: the
    // restore of a1's previous revision.
    let injector = a.clone();
    let sink: FleetReporter = Arc::new(move |e: &FleetEvent| {
        if matches!(e, FleetEvent::RollingBack { .. }) {
            injector.inject(Fault::FailOperation {
                operation: "start",
                times: 1,
            });
        }
    });
    let f = Fleet::new(store.clone(), connect, sink, Arc::new(Silent));
    // a1 went from 1.0 (revision 1) to 1.5 (revision 2) before the rollout.
    let mut r = UpdateRequest::new("a1".parse().unwrap(), img("acme/agent:1.5"));
    r.verify.timing = Timing {
        period: Duration::from_millis(100),
        min_healthy_time: Duration::from_millis(200),
        deadline: Duration::from_secs(5),
        ..Timing::default()
    };
    let up = Updater::new(a.clone(), store.clone(), Arc::new(Silent));
    assert_eq!(up.update(&r).await.unwrap().status, UpdateStatus::Updated);
    let s = spec(&format!("name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  rolling: {{maxUnavailable: 2}}\nrollback: {{maxFailureRatio: 0.2}}\n{HEALTH}"));
    let st = f.apply(s).await.unwrap();
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::RolledBack, 3),
        "{:?}",
        st.targets
    );
    let a1 = st.targets.iter().find(|t| t.container == "a1").unwrap();
    assert_eq!(a1.status, TargetStatus::Reverted);
    let msg = a1.message.clone().unwrap();
    assert!(msg.contains("(revision 1, after revision 2 failed"), "{msg}");
    let info = a.inspect_container("a1").await.unwrap();
    assert_eq!(info.spec.image, img("acme/agent:1.0"));
    assert!(info.state.is_running());
    // a2 had no trouble: back on the revision it ran before.
    let a2 = st.targets.iter().find(|t| t.container == "a2").unwrap();
    assert_eq!(
        (a2.status, a.inspect_container("a2").await.unwrap().spec.image),
        (TargetStatus::Reverted, img("acme/agent:1.0"))
    );
}

#[test]
fn the_traffic_example_is_a_valid_spec() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/traffic/relay.yaml");
    let spec = RolloutSpec::parse(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    let steps = spec.plan().unwrap().steps;
    assert_eq!(steps[1], agent_core::PlanStep::Traffic { weight: 10 }, "{steps:?}");
}

#[test]
fn bad_specs_name_the_line_and_what_is_expected() {
    let err = RolloutSpec::parse(
        "name: f\nimage: acme/agent:2.0\ntargets: []\nstrategy: {recreate: {}}\nrollback: {maxFailureRatio: lots}\n",
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 5") && err.contains("s.yaml"), "{err}");
    let err = RolloutSpec::parse(
        "name: f\nimage: acme/Agent:2\ntargets: []\nstrategy: {recreate: {}}\n",
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 2") && err.contains("position 5"), "{err}");
    let err = RolloutSpec::parse(
        &format!("name: f\nimage: a:1\n{TARGETS}strategy: {{recreate: {{}}}}\nextra: 1\n"),
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `extra`"), "{err}");
    let err = RolloutSpec::parse("name: f\nimage: a:1\ntargets: []\nstrategy: {recreate: {}}\n", "s.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no targets"), "{err}");
    let err = RolloutSpec::parse(
        &format!("name: f\nimage: a:1\n{TARGETS}strategy: {{canary: {{steps: [{{analysis: nope}}]}}}}\n"),
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"nope\" is not defined"), "{err}");
    let traffic = |strategy: &str, haproxy: &str| {
        RolloutSpec::parse(
            &format!("name: f\nimage: a:1\n{TARGETS}strategy: {strategy}\ntraffic: {{haproxy: {haproxy}}}\n"),
            "s.yaml",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let good = "{socket: /run/haproxy.sock, backend: relays, port: 8080}";
    assert_eq!(traffic("{canary: {steps: [{setWeight: 10}]}}", good), Ok(()));
    let err = traffic("{rolling: {}}", good).unwrap_err();
    assert!(
        err.contains("strategy rolling replaces each container in place"),
        "{err}"
    );
    let err = traffic("{blueGreen: {}}", "{socket: '', backend: relays, port: 0}").unwrap_err();
    assert!(err.contains("traffic.haproxy"), "{err}");
    let json = r#"{"name": "f", "image": "a:1", "targets": [], "strategy": {"recreate": {}}, "parallelism": "x"}"#;
    let err = RolloutSpec::parse(json, "s.json").unwrap_err().to_string();
    assert!(err.contains("line 1 column"), "{err}");
}

/// Accepts HTTP requests and records their bodies; or, with `black_hole`, accepts and never answers.
fn receiver(black_hole: bool) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            if black_hole {
                held.push(stream);
                continue;
            }
            let mut s = stream;
            let mut data = Vec::new();
            let mut buf = vec![0u8; 65536];
            // Read the headers, then Content-Length bytes of body.
            let body = loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body.to_owned());
                    }
                }
            };
            if let Some(body) = body {
                sink.lock().unwrap().push(body);
            }
            let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
        }
    });
    (url, got)
}

#[tokio::test]
async fn webhooks_get_every_event_and_a_dead_one_does_not_hold_the_rollout() {
    let (good, got) = receiver(false);
    let (hole, _) = receiver(true);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (f, _store) = fleet(hosts(false), events.clone());
    // The good receiver's URL comes from a file: only its path is stored with the rollout.
    let url_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(url_file.path(), format!("{good}\n")).unwrap();
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy: {{recreate: {{}}}}\n{HEALTH}notify:\n  - {{webhookFile: '{}'}}\n  - {{webhook: '{hole}'}}\n  - {{webhook: 'http://127.0.0.1:1/refused'}}\n",
        url_file.path().display()
    ));
    // The same rollout without webhooks, for the time the rollout itself takes here.
    let (plain, _) = fleet(hosts(false), Arc::new(std::sync::Mutex::new(Vec::new())));
    let start = std::time::Instant::now();
    let st = plain
        .apply(spec(&format!(
            "name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy: {{recreate: {{}}}}\n{HEALTH}"
        )))
        .await
        .unwrap();
    assert_eq!(st.phase(), agent_core::Phase::Succeeded);
    let alone = start.elapsed();
    let start = std::time::Instant::now();
    let st = f.apply(s).await.unwrap();
    assert_eq!(st.phase(), agent_core::Phase::Succeeded);
    // Deliveries to the black hole time out; the end of the rollout waits for them at most 5 s.
    let held = start.elapsed().saturating_sub(alone);
    assert!(
        held <= Duration::from_millis(5_500),
        "a dead webhook held the rollout {held:?}"
    );
    let bodies = got.lock().unwrap().clone();
    let kinds: Vec<String> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds.len(),
        events.lock().unwrap().len(),
        "every event reached the webhook: {kinds:?}"
    );
    assert!(kinds.contains(&"started".to_owned()) && kinds.contains(&"finished".to_owned()));
    let bad = RolloutSpec::parse(
        &format!("name: f\nimage: a:1\n{TARGETS}strategy: {{recreate: {{}}}}\nnotify: [{{webhook: 'ftp://x'}}]\n"),
        "s",
    )
    .unwrap_err();
    assert!(bad.to_string().contains("http:// URL"), "{bad}");
    // A password in a webhook URL would be stored with the rollout's state: refused, with the fix.
    let secret = RolloutSpec::parse(
        &format!("name: f\nimage: a:1\n{TARGETS}strategy: {{recreate: {{}}}}\nnotify: [{{webhook: 'http://ops:hunter2@127.0.0.1:9/x'}}]\n"),
        "s",
    )
    .unwrap_err()
    .to_string();
    assert!(
        secret.contains("webhookFile") && !secret.contains("hunter2"),
        "{secret}"
    );
}

#[test]
fn a_target_is_a_container_or_a_service_and_services_refuse_what_they_cannot_do() {
    let base = "name: f\nimage: a:1.0.0\nstrategy: {canary: {steps: [{setWeight: 50}]}}\n";
    let mixed = spec(&format!(
        "{base}targets:\n  - {{host: 'unix:///a.sock', container: c1}}\n  - {{host: 'tcp://10.0.0.2:2375', service: relay}}\n"
    ));
    assert_eq!(mixed.targets[1].service.as_ref().map(|s| s.as_str()), Some("relay"));
    // One unit per target before the rollout counts a service's tasks.
    let units: usize = mixed
        .plan()
        .unwrap()
        .steps
        .iter()
        .map(|s| match s {
            agent_core::PlanStep::Update { targets, .. } => targets.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(units, 2);
    for (targets, says) in [
        ("[{host: 'unix:///a.sock'}]", "exactly one of `container` and `service`"),
        (
            "[{host: 'unix:///a.sock', container: c, service: s}]",
            "exactly one of `container` and `service`",
        ),
    ] {
        let err = RolloutSpec::parse(&format!("{base}targets: {targets}\n"), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
    let err = RolloutSpec::parse(
        "name: f\nimage: a:1.0.0\nstrategy: {blueGreen: {}}\ntargets: [{host: 'unix:///a.sock', service: s}]\n",
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("service targets cannot be rolled out with blue-green"),
        "{err}"
    );
}

#[test]
fn the_swarm_example_is_a_valid_spec() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/swarm/node-agent.yaml");
    let spec = RolloutSpec::parse(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    assert_eq!(spec.targets[0].service.as_ref().map(|s| s.as_str()), Some("node-agent"));
    assert_eq!(
        spec.targets[1].container.as_ref().map(|s| s.as_str()),
        Some("node-agent")
    );
}

const FOUR_ON_ONE: &str = "targets:\n  - {host: 'tcp://127.0.0.1:1', container: a1}\n  - {host: 'tcp://127.0.0.1:1', container: a2}\n  - {host: 'tcp://127.0.0.1:1', container: a3}\n  - {host: 'tcp://127.0.0.1:1', container: a4}\n";

#[tokio::test(start_paused = true)]
async fn a_rolling_wave_is_prepared_during_the_one_before_and_changed_only_once_all_of_it_is_proven() {
    let h = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3", "a4"]);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (f, _store) = fleet(vec![h.clone()], events.clone());
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{FOUR_ON_ONE}strategy: {{rolling: {{maxUnavailable: 2}}}}\nparallelism: 2\n{HEALTH}"
    ));
    let st = f.apply(s).await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Succeeded, 0));
    assert_eq!(st.next_step, st.plan.steps.len());
    let ops = h.operations();
    let at = |op: &str| {
        ops.iter()
            .position(|o| o == op)
            .unwrap_or_else(|| panic!("no {op} in {ops:?}"))
    };
    let second_wave = at("stop a3").min(at("stop a4"));
    // The second wave's locks were taken while the first wave was still being verified...
    let first_verified = ops[..second_wave]
        .iter()
        .rposition(|o| o == "inspect a1" || o == "inspect a2")
        .unwrap();
    assert!(at("record-create a3.agentctl-lock") < first_verified, "{ops:?}");
    assert!(at("record-create a4.agentctl-lock") < first_verified, "{ops:?}");
    // ...and neither target of it was stopped before both of the first had their verdict.
    // (The rollout's final read-back of every target comes after all of it.)
    let read_back = ops
        .iter()
        .rposition(|o| o.starts_with("inspect-image docker.io/acme/agent@"))
        .unwrap();
    assert!(
        !ops[second_wave..read_back]
            .iter()
            .any(|o| o == "inspect a1" || o == "inspect a2"),
        "{ops:?}"
    );
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.iter().filter(|e| *e == "step-started").count(), 2, "{ev:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pause_asked_for_during_a_wave_holds_the_next_one_untouched_and_promote_goes_on() {
    let h = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3", "a4"]);
    let (f, _store) = fleet(vec![h.clone()], Arc::new(std::sync::Mutex::new(Vec::new())));
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{FOUR_ON_ONE}strategy: {{rolling: {{maxUnavailable: 2}}}}\nparallelism: 2\n{HEALTH}"
    ));
    let pause = async {
        // During the first wave's verification (minHealthyTime 200 ms).
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.pause("fleet", "look at the canaries").await.unwrap();
    };
    let (st, ()) = tokio::join!(f.apply(s), pause);
    let st = st.unwrap();
    assert_eq!(st.phase(), agent_core::Phase::Paused, "{:?}", st.reason);
    let by: Vec<TargetStatus> = st.targets.iter().map(|t| t.status).collect();
    assert_eq!(
        by,
        [
            TargetStatus::Updated,
            TargetStatus::Updated,
            TargetStatus::Pending,
            TargetStatus::Pending
        ]
    );
    // Prepared ahead, then held: not stopped, nothing left open or locked.
    assert!(!h.operations().iter().any(|o| o == "stop a3" || o == "stop a4"));
    assert!(h.record("a3.agentctl-lock").await.unwrap().is_none());
    assert!(h.record("a3.agentctl-journal").await.unwrap().is_none());
    let st = f.promote("fleet").await.unwrap();
    assert_eq!((st.phase(), st.exit_code()), (agent_core::Phase::Succeeded, 0));
    assert!(st.targets.iter().all(|t| t.status == TargetStatus::Updated));
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_verdict_holds_the_next_wave_untouched() {
    let h = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3", "a4"]);
    let (f, _store) = fleet(vec![h.clone()], Arc::new(std::sync::Mutex::new(Vec::new())));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef-fleet").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The control center does not answer: the first wave's verification is inconclusive.
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{FOUR_ON_ONE}strategy: {{rolling: {{maxUnavailable: 2}}}}\nparallelism: 2\nhealth: {{minHealthyTime: 200ms, deadline: 5s, period: 100ms, heartbeat: {{url: 'http://127.0.0.1:1', tokenFile: '{}', timeout: 1s}}}}\n",
        token.display()
    ));
    let st = f.apply(s).await.unwrap();
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::Paused, 4),
        "{:?}",
        st.reason
    );
    assert!(
        st.reason.as_deref().unwrap_or_default().contains("inconclusive"),
        "{:?}",
        st.reason
    );
    let by: Vec<TargetStatus> = st.targets.iter().map(|t| t.status).collect();
    assert_eq!(
        by,
        [
            TargetStatus::Updated,
            TargetStatus::Updated,
            TargetStatus::Pending,
            TargetStatus::Pending
        ]
    );
    // Prepared ahead, then held: not stopped. (The fake engine's bookkeeping takes no time, so here the
    // verdicts and the results come in together; `it/fleet.rs` checks the gate on a real engine, where
    // the verdict comes first.)
    assert!(!h.operations().iter().any(|o| o == "stop a3" || o == "stop a4"));
}

/// A store with one connection, as [`crate::PostgresStore`] has: each call holds it across a round trip,
/// so a caller suspended mid-call keeps every other caller waiting.
struct OneConnection {
    inner: MemoryStore,
    connection: tokio::sync::Mutex<()>,
}

impl OneConnection {
    async fn call<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let _held = self.connection.lock().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        f.await
    }
}

#[async_trait::async_trait]
impl StateStore for OneConnection {
    async fn revisions(&self, subject: &str) -> Result<Vec<agent_core::Revision>, agent_core::StoreError> {
        self.call(self.inner.revisions(subject)).await
    }
    async fn put_revision(&self, subject: &str, revision: &agent_core::Revision) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.put_revision(subject, revision)).await
    }
    async fn delete_revision(
        &self,
        subject: &str,
        number: agent_core::RevisionNumber,
    ) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.delete_revision(subject, number)).await
    }
    async fn append_journal(&self, entry: &agent_core::JournalEntry) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.append_journal(entry)).await
    }
    async fn journal(&self, operation: &str) -> Result<Vec<agent_core::JournalEntry>, agent_core::StoreError> {
        self.call(self.inner.journal(operation)).await
    }
    async fn open_operations(&self, subject: &str) -> Result<Vec<String>, agent_core::StoreError> {
        self.call(self.inner.open_operations(subject)).await
    }
    async fn subjects_with_open_operations(&self) -> Result<Vec<String>, agent_core::StoreError> {
        self.call(self.inner.subjects_with_open_operations()).await
    }
    async fn close_operation(&self, operation: &str) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.close_operation(operation)).await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &agent_core::LeaseHolder,
        now: agent_core::OffsetDateTime,
        ttl: Duration,
    ) -> Result<agent_core::Lease, agent_core::StoreError> {
        self.call(self.inner.acquire_lease(key, holder, now, ttl)).await
    }
    async fn take_over_lease(
        &self,
        stale: &agent_core::Lease,
        holder: &agent_core::LeaseHolder,
        now: agent_core::OffsetDateTime,
        ttl: Duration,
    ) -> Result<agent_core::Lease, agent_core::StoreError> {
        self.call(self.inner.take_over_lease(stale, holder, now, ttl)).await
    }
    async fn renew_lease(
        &self,
        lease: &agent_core::Lease,
        now: agent_core::OffsetDateTime,
        ttl: Duration,
    ) -> Result<agent_core::Lease, agent_core::StoreError> {
        self.call(self.inner.renew_lease(lease, now, ttl)).await
    }
    async fn release_lease(&self, lease: &agent_core::Lease) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.release_lease(lease)).await
    }
    async fn lease(&self, key: &str) -> Result<Option<agent_core::Lease>, agent_core::StoreError> {
        self.call(self.inner.lease(key)).await
    }
    async fn put_document(
        &self,
        kind: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), agent_core::StoreError> {
        self.call(self.inner.put_document(kind, key, value)).await
    }
    async fn document(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, agent_core::StoreError> {
        self.call(self.inner.document(kind, key)).await
    }
    async fn documents(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, agent_core::StoreError> {
        self.call(self.inner.documents(kind)).await
    }
}

/// The batch saves the state and reads the pause at each wave's end while the next wave's targets are
/// mid-call: with a store of one connection (PostgreSQL's), a target suspended holding it would hang the
/// rollout for good. The targets' work must go on while the batch waits for the store.
#[tokio::test(start_paused = true)]
async fn chained_waves_do_not_hang_on_a_store_with_one_connection() {
    let h = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3", "a4", "a5", "a6"]);
    let store = Arc::new(OneConnection {
        inner: MemoryStore::default(),
        connection: tokio::sync::Mutex::new(()),
    });
    let connect: Connector = {
        let h = h.clone() as Arc<dyn ContainerRuntime>;
        Arc::new(move |_host: String| {
            let h = h.clone();
            Box::pin(async move { Ok(h) })
        })
    };
    let sink: FleetReporter = Arc::new(|_: &FleetEvent| {});
    let f = Fleet::new(store, connect, sink, Arc::new(Silent));
    let targets: String = (1..=6)
        .map(|i| format!("  - {{host: 'tcp://127.0.0.1:1', container: a{i}}}\n"))
        .collect();
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\ntargets:\n{targets}strategy: {{rolling: {{maxUnavailable: 2}}}}\nparallelism: 2\n{HEALTH}"
    ));
    // Virtual time: an hour passes at once when nothing else can run.
    let st = tokio::time::timeout(Duration::from_secs(3600), f.apply(s))
        .await
        .expect("the rollout hung on the store")
        .unwrap();
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::Succeeded, 0),
        "{:?}",
        st.reason
    );
    assert!(st.targets.iter().all(|t| t.status == TargetStatus::Updated));
}

/// A second runner on the same store: another `agentctl` process, as the lease sees it.
fn second_fleet(store: &Arc<MemoryStore>, hs: &[Arc<FakeRuntime>]) -> Fleet {
    let map: HashMap<String, Arc<dyn ContainerRuntime>> = hs
        .iter()
        .map(|h| (h.endpoint().to_owned(), h.clone() as Arc<dyn ContainerRuntime>))
        .collect();
    let connect: Connector = Arc::new(move |host: String| {
        let r = map.get(&host).cloned();
        Box::pin(async move {
            r.ok_or_else(|| agent_core::RuntimeError::Unavailable {
                endpoint: host,
                message: "no such engine".into(),
            })
        })
    });
    Fleet::new(store.clone(), connect, Arc::new(|_: &FleetEvent| {}), Arc::new(Silent))
}

const TIMED_CANARY: &str = "strategy:\n  canary:\n    steps: [{setWeight: 25}, {pause: 10m}, {setWeight: 100}]\n";

#[tokio::test(start_paused = true)]
async fn an_abort_from_another_process_acts_during_a_timed_pause() {
    let hs = hosts(false);
    let (f, store) = fleet(hs.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}{TIMED_CANARY}{HEALTH}"
    ));
    let other = second_fleet(&store, &hs);
    // Boxed: two whole rollouts' futures side by side overflow a test thread's stack in a debug build.
    let (applied, (st, took)) = tokio::join!(
        Box::pin(f.apply(s)),
        Box::pin(async {
            // Into the 10-minute pause (the canary's target verified in well under a minute).
            tokio::time::sleep(Duration::from_secs(60)).await;
            let asked = tokio::time::Instant::now();
            let st = other.abort("fleet", "bad canary").await.unwrap();
            (st, asked.elapsed())
        })
    );
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::RolledBack, 3),
        "{:?}",
        st.reason
    );
    assert!(
        took < Duration::from_secs(30),
        "the abort acted after {took:?}, not during the pause"
    );
    let applied = applied.unwrap();
    assert_eq!(applied.phase(), agent_core::Phase::RolledBack);
    assert!(
        applied
            .audit
            .iter()
            .any(|a| a.action.contains("abort: bad canary (taken by the running apply)")),
        "{:?}",
        applied.audit
    );
    for h in &hs {
        for c in h.container_names().iter().filter(|c| !c.contains(".rev")) {
            assert_eq!(
                h.inspect_container(c).await.unwrap().spec.image,
                img("acme/agent:1.0"),
                "{c}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_promotion_from_another_process_ends_a_timed_pause() {
    let hs = hosts(false);
    let (f, store) = fleet(hs.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let s = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}{TIMED_CANARY}{HEALTH}"
    ));
    let started = tokio::time::Instant::now();
    let other = second_fleet(&store, &hs);
    let (done, st) = tokio::join!(
        Box::pin(f.apply(s)),
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            other.promote("fleet").await.unwrap()
        })
    );
    assert_eq!(
        st.phase(),
        agent_core::Phase::Progressing,
        "handed to the running apply"
    );
    let done = done.unwrap();
    assert_eq!((done.phase(), done.exit_code()), (agent_core::Phase::Succeeded, 0));
    assert!(started.elapsed() < Duration::from_secs(300), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_different_spec_under_an_unfinished_rollouts_name_is_refused_until_replaced() {
    let hs = hosts(false);
    let (f, _store) = fleet(hs.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let canary = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  canary:\n    steps: [{{setWeight: 25}}, {{pause: {{}}}}, {{setWeight: 100}}]\n{HEALTH}"
    ));
    assert_eq!(f.apply(canary).await.unwrap().phase(), agent_core::Phase::Paused);
    let blue_green = spec(&format!(
        "name: fleet\nimage: acme/agent:2.0\n{TARGETS}strategy:\n  blueGreen: {{autoPromote: true}}\n{HEALTH}"
    ));
    let err = f.apply(blue_green.clone()).await.unwrap_err();
    assert!(matches!(err, Error::RolloutConflict { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("strategy") && text.contains("--replace"), "{text}");
    // Nothing changed: a1 still runs the canary's version, the rest 1.0.
    assert_eq!(
        hs[0]
            .inspect_container("a1")
            .await
            .unwrap()
            .spec
            .image
            .tag()
            .unwrap()
            .as_str(),
        "2.0"
    );
    let st = f.replace(blue_green).await.unwrap();
    assert_eq!(
        (st.phase(), st.exit_code()),
        (agent_core::Phase::Succeeded, 0),
        "{:?}",
        st.reason
    );
    assert!(matches!(st.spec.strategy, agent_core::Strategy::BlueGreen { .. }));
}

/// An engine that panics (a bug) in the middle of one container's update.
struct Panicking {
    inner: Arc<FakeRuntime>,
    on: &'static str,
}

#[async_trait::async_trait]
impl ContainerRuntime for Panicking {
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    async fn engine_info(&self) -> Result<agent_core::EngineInfo, RuntimeError> {
        self.inner.engine_info().await
    }
    async fn inspect_container(&self, c: &str) -> Result<agent_core::ContainerInfo, RuntimeError> {
        self.inner.inspect_container(c).await
    }
    async fn inspect_image(&self, i: &str) -> Result<agent_core::ImageInfo, RuntimeError> {
        self.inner.inspect_image(i).await
    }
    async fn pull_image(
        &self,
        i: &ImageRef,
        p: agent_core::ProgressFn<'_>,
    ) -> Result<agent_core::ImageInfo, RuntimeError> {
        self.inner.pull_image(i, p).await
    }
    async fn create_container(&self, s: &ContainerSpec) -> Result<String, RuntimeError> {
        self.inner.create_container(s).await
    }
    async fn start_container(&self, c: &str) -> Result<(), RuntimeError> {
        assert!(c != self.on, "overflow when adding duration to instant");
        self.inner.start_container(c).await
    }
    async fn stop_container(&self, c: &str, t: Option<Duration>) -> Result<(), RuntimeError> {
        self.inner.stop_container(c, t).await
    }
    async fn rename_container(&self, c: &str, n: &str) -> Result<(), RuntimeError> {
        self.inner.rename_container(c, n).await
    }
    async fn set_restart_policy(&self, c: &str, p: RestartPolicy) -> Result<(), RuntimeError> {
        self.inner.set_restart_policy(c, p).await
    }
    async fn remove_container(&self, c: &str) -> Result<(), RuntimeError> {
        self.inner.remove_container(c).await
    }
    async fn logs(
        &self,
        c: &str,
        s: Option<OffsetDateTime>,
        t: Option<usize>,
    ) -> Result<Vec<agent_core::LogLine>, RuntimeError> {
        self.inner.logs(c, s, t).await
    }
    async fn list_containers(&self, l: &[String]) -> Result<Vec<agent_core::ContainerSummary>, RuntimeError> {
        self.inner.list_containers(l).await
    }
    async fn remove_image(&self, i: &str) -> Result<(), RuntimeError> {
        self.inner.remove_image(i).await
    }
    async fn export_path(&self, c: &str, p: &str) -> Result<Vec<u8>, RuntimeError> {
        self.inner.export_path(c, p).await
    }
    async fn stats(&self, c: &str) -> Result<agent_core::ResourceUsage, RuntimeError> {
        self.inner.stats(c).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_whose_work_panics_fails_and_the_rollout_does_not_succeed() {
    let inner = host_with("tcp://127.0.0.1:1", false, &["a1", "a2", "a3"]);
    let rt: Arc<dyn ContainerRuntime> = Arc::new(Panicking { inner, on: "a2" });
    let connect: Connector = Arc::new(move |_| {
        let rt = rt.clone();
        Box::pin(async move { Ok(rt) })
    });
    let f = Fleet::new(
        Arc::new(MemoryStore::default()),
        connect,
        Arc::new(|_: &FleetEvent| {}),
        Arc::new(Silent),
    );
    let targets = "targets:\n  - {host: 'tcp://127.0.0.1:1', container: a1}\n  - {host: 'tcp://127.0.0.1:1', container: a2}\n  - {host: 'tcp://127.0.0.1:1', container: a3}\n";
    let st = f
        .apply(spec(&format!(
            "name: fleet\nimage: acme/agent:2.0\n{targets}strategy: {{recreate: {{}}}}\nparallelism: 1\nrollback: {{automatic: false, maxFailureRatio: 0.5}}\n{HEALTH}"
        )))
        .await
        .unwrap();
    let a2 = st.targets.iter().find(|t| t.container == "a2").unwrap();
    assert_eq!(a2.status, TargetStatus::Failed, "{:?}", a2.message);
    assert!(
        a2.message
            .as_deref()
            .unwrap_or_default()
            .contains("overflow when adding duration"),
        "{:?}",
        a2.message
    );
    // One failure of three is within the ratio; the engine read back shows a2 not on 2.0, and a2 is not
    // counted as updated.
    assert!(st.targets.iter().filter(|t| t.status == TargetStatus::Updated).count() == 2);
}
