//! Gate logic against the fake runtime, with paused time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{
    ContainerRuntime, ContainerSpec, FakeRuntime, ImageBehaviour, ImageDefaults, ImageRef, OffsetDateTime,
};
use async_trait::async_trait;

use crate::*;

fn ctx(rt: Arc<FakeRuntime>, container: &str) -> ProbeContext {
    ProbeContext {
        runtime: rt,
        container: container.into(),
        // As the updater gives it: a second before the container's start (the fake honours `since`).
        started_at: OffsetDateTime::now_utc() - Duration::from_secs(1),
        baseline_restarts: 0,
        expected_version: None,
        container_id: None,
    }
}

fn running(behaviour: ImageBehaviour) -> Arc<FakeRuntime> {
    let rt = Arc::new(FakeRuntime::default());
    let img: ImageRef = "acme/agent:1.0".parse().unwrap();
    rt.add_local_image(&img, ImageDefaults::default(), behaviour);
    rt.run(ContainerSpec::new("a".parse().unwrap(), img)).unwrap();
    rt
}

struct Scripted {
    calls: AtomicU32,
    script: Vec<Observation>,
}

#[async_trait]
impl Probe for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn check(&self, _: &ProbeContext) -> Observation {
        let i = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        self.script[i.min(self.script.len() - 1)].clone()
    }
}

fn timing() -> Timing {
    Timing {
        period: Duration::from_secs(1),
        min_healthy_time: Duration::from_secs(3),
        deadline: Duration::from_secs(20),
        failure_threshold: 2,
        ..Timing::default()
    }
}

#[tokio::test(start_paused = true)]
async fn healthy_after_min_healthy_time() {
    let rt = running(ImageBehaviour {
        health: Some(agent_core::HealthStatus::Healthy),
        ..Default::default()
    });
    let gate = HealthGate::new(timing())
        .with_probe(ContainerStateProbe)
        .with_probe(DockerHealthProbe::new());
    let v = gate.run(&ctx(rt, "a"), &|_| {}).await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    assert!(v.elapsed >= Duration::from_secs(3));
    assert_eq!(v.evidence.len(), 2);
    assert!(v.evidence.iter().all(|e| e.checks >= 4), "{v:?}");
}

#[tokio::test(start_paused = true)]
async fn the_probes_that_read_the_container_share_one_inspection_per_round() {
    let rt = running(ImageBehaviour {
        health: Some(agent_core::HealthStatus::Healthy),
        ..Default::default()
    });
    let gate = HealthGate::new(timing())
        .with_probe(ContainerStateProbe)
        .with_probe(DockerHealthProbe::new())
        .with_probe(LogScanProbe::new(vec!["FATAL".to_owned()]).unwrap());
    let before = rt.operations().len();
    let v = gate.run(&ctx(rt.clone(), "a"), &|_| {}).await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    let ops = &rt.operations()[before..];
    let count = |op: &str| ops.iter().filter(|o| o.as_str() == op).count();
    // Each round: one inspection for the state and the HEALTHCHECK, one log read.
    let rounds = v.evidence[0].checks as usize;
    assert!(rounds >= 4, "{v:?}");
    assert_eq!(count("inspect a"), rounds, "{ops:?}");
    assert_eq!(count("logs a"), rounds, "{ops:?}");
    assert!(v.evidence.iter().all(|e| e.checks as usize == rounds), "{v:?}");
}

#[tokio::test(start_paused = true)]
async fn exit_at_start_is_fatal_at_once() {
    let rt = running(ImageBehaviour {
        exit_on_start: Some(3),
        ..Default::default()
    });
    let v = HealthGate::new(timing())
        .with_probe(ContainerStateProbe)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy);
    assert!(v.reason.contains("exit code 3"), "{}", v.reason);
    assert!(v.elapsed < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn fatal_log_lines_fail_with_excerpts() {
    let rt = running(ImageBehaviour {
        logs: vec!["starting".into(), "FATAL: no backend".into()],
        ..Default::default()
    });
    let v = HealthGate::new(timing())
        .with_probe(LogScanProbe::default())
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy);
    assert!(v.reason.contains("FATAL: no backend"), "{}", v.reason);
}

#[tokio::test(start_paused = true)]
async fn failures_need_the_threshold_and_a_flap_resets_the_healthy_clock() {
    use Observation::*;
    let script = vec![
        Pass("".into()),
        Pass("".into()),
        Fail("x".into()),
        Pass("".into()),
        Pass("".into()),
        Pass("".into()),
        Pass("".into()),
        Pass("".into()),
    ];
    let probe = Scripted {
        calls: AtomicU32::new(0),
        script,
    };
    let rt = running(ImageBehaviour::default());
    let v = HealthGate::new(timing())
        .with_probe(probe)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    // One failure below the threshold of 2 does not fail; the healthy clock restarts after it (check 4 + 3 s).
    assert!(v.elapsed >= Duration::from_secs(6), "{:?}", v.elapsed);
    let two = Scripted {
        calls: AtomicU32::new(0),
        script: vec![Fail("a".into()), Fail("b".into())],
    };
    let rt = running(ImageBehaviour::default());
    let v = HealthGate::new(timing())
        .with_probe(two)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy);
    assert!(v.reason.contains("2 times in a row"), "{}", v.reason);
}

/// A just-started agent passes between two periods: the first rounds come faster than the period (50 ms, then
/// doubling), so the pass is seen at 350 ms rather than at the next whole period, and the verdict comes exactly
/// `minHealthyTime` after it instead of at the first period boundary past it.
#[tokio::test(start_paused = true)]
async fn a_first_pass_between_periods_is_seen_at_once_and_the_verdict_waits_exactly_min_healthy_time() {
    use Observation::*;
    let probe = Scripted {
        calls: AtomicU32::new(0),
        script: vec![
            Pending("starting".into()),
            Pending("starting".into()),
            Pending("starting".into()),
            Pass("".into()),
        ],
    };
    let v = HealthGate::new(timing())
        .with_probe(probe)
        .run(&ctx(running(ImageBehaviour::default()), "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    // Rounds at 0, 50, 150 ms (pending), 350 ms (pass), then 1.35 s, 2.35 s and 3.35 s = 350 ms + 3 s.
    assert_eq!(v.elapsed, Duration::from_millis(3350));
}

/// The fast first rounds do not make the failure threshold shorter in time: failures count a period apart.
#[tokio::test(start_paused = true)]
async fn failures_in_the_fast_first_rounds_count_a_period_apart() {
    let probe = Scripted {
        calls: AtomicU32::new(0),
        script: vec![Observation::Fail("connection refused".into())],
    };
    let v = HealthGate::new(timing())
        .with_probe(probe)
        .run(&ctx(running(ImageBehaviour::default()), "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy);
    assert!(v.reason.contains("2 times in a row"), "{}", v.reason);
    // Threshold 2 at a 1 s period: not before 1 s, although rounds came at 0, 50, 150, 350 and 750 ms.
    assert!(v.elapsed >= Duration::from_secs(1), "{:?}", v.elapsed);
    assert!(v.evidence[0].checks >= 5, "{:?}", v.evidence);
}

#[tokio::test(start_paused = true)]
async fn inconclusive_until_deadline_is_inconclusive_not_unhealthy() {
    let probe = Scripted {
        calls: AtomicU32::new(0),
        script: vec![Observation::Inconclusive("prometheus down".into())],
    };
    let rt = running(ImageBehaviour::default());
    let v = HealthGate::new(timing())
        .with_probe(ContainerStateProbe)
        .with_probe(probe)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Inconclusive, "{v}");
    assert!(v.reason.contains("prometheus down"), "{}", v.reason);
    let pending = Scripted {
        calls: AtomicU32::new(0),
        script: vec![Observation::Pending("starting".into())],
    };
    let rt = running(ImageBehaviour::default());
    let v = HealthGate::new(timing())
        .with_probe(pending)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(
        v.outcome,
        VerdictOutcome::Unhealthy,
        "never healthy before the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn resource_limits() {
    let rt = running(ImageBehaviour::default());
    rt.set_usage(
        "a",
        agent_core::ResourceUsage {
            cpu_percent: 92.0,
            memory_bytes: 64 << 20,
            memory_limit: 1 << 30,
        },
    );
    let busy = ResourceProbe {
        max_cpu_percent: Some(85.0),
        max_memory_bytes: None,
    };
    assert!(matches!(busy.check(&ctx(rt.clone(), "a")).await, Observation::Fail(d) if d.contains("CPU above 85%")));
    let mem = ResourceProbe {
        max_cpu_percent: None,
        max_memory_bytes: Some(32 << 20),
    };
    assert!(
        matches!(mem.check(&ctx(rt.clone(), "a")).await, Observation::Fail(d) if d.contains("memory above 32.0 MiB"))
    );
    let fine = ResourceProbe {
        max_cpu_percent: Some(95.0),
        max_memory_bytes: Some(128 << 20),
    };
    assert!(matches!(fine.check(&ctx(rt, "a")).await, Observation::Pass(_)));
}

/// A control center in this process and the heartbeat probe reading it, with the container under test.
async fn heard(records: &[(&str, &str, Option<bool>)]) -> Observation {
    let cc = ControlCenter::new("0123456789abcdef".into(), ControlCenterConfig::default(), None)
        .await
        .unwrap();
    let container = "d2f4f6e1c37a".to_owned() + &"0".repeat(52);
    for (agent, version, healthy) in records {
        cc.record(Heartbeat {
            agent_id: (*agent).into(),
            container: container[..12].into(),
            host: "h".into(),
            version: (*version).into(),
            revision: String::new(),
            status: "ok".into(),
            protocol: String::new(),
            health: healthy.map(|healthy| SelfHealth {
                healthy,
                status: String::new(),
                last_error: if healthy { String::new() } else { "exporter down".into() },
                components: Default::default(),
            }),
        });
    }
    let probe = HeartbeatProbe::new(cc, Duration::from_secs(10));
    let mut c = ctx(running(ImageBehaviour::default()), "a");
    c.container_id = Some(container);
    c.expected_version = Some("2.0.0".into());
    probe.check(&c).await
}

#[tokio::test]
async fn every_agent_reporting_for_a_container_must_agree_whoever_spoke_last() {
    // Two OpAMP instances claim one container, one on the old version: never a coin toss.
    for order in [
        [("a", "2.0.0", None), ("b", "1.0.0", None)],
        [("b", "1.0.0", None), ("a", "2.0.0", None)],
    ] {
        let obs = heard(&order).await;
        assert!(matches!(obs, Observation::Fail(_)), "{order:?}: {obs:?}");
        assert!(obs.detail().contains("one of 2 agents"), "{}", obs.detail());
    }
    // One of them unhealthy by its own report: a failure too.
    let obs = heard(&[("a", "2.0.0", Some(true)), ("b", "2.0.0", Some(false))]).await;
    assert!(
        matches!(obs, Observation::Fail(_)) && obs.detail().contains("exporter down"),
        "{obs:?}"
    );
    let obs = heard(&[("a", "2.0.0", Some(true)), ("b", "2.0.0", None)]).await;
    assert!(matches!(obs, Observation::Pass(_)), "{obs:?}");
    assert!(obs.detail().contains("all 2 agents"), "{}", obs.detail());
}

#[tokio::test]
async fn what_an_agent_says_of_itself_is_bounded_and_inert() {
    let cc = ControlCenter::new("0123456789abcdef".into(), ControlCenterConfig::default(), None)
        .await
        .unwrap();
    let huge = "x".repeat(15_000);
    let components = (0..100)
        .map(|i| {
            (
                format!("receiver-{i}\u{1b}[8m"),
                ComponentStatus {
                    healthy: i % 2 == 0,
                    status: huge.clone(),
                    last_error: "a\nupdated agent (revision 9)".into(),
                },
            )
        })
        .collect();
    cc.record(Heartbeat {
        agent_id: "a".into(),
        container: "c".into(),
        host: String::new(),
        version: "1.0.0".into(),
        revision: String::new(),
        status: "ok".into(),
        protocol: String::new(),
        health: Some(SelfHealth {
            healthy: false,
            status: huge.clone(),
            last_error: "\u{1b}[8mhidden\n\u{1b}[0mupdated agent (revision 9)".into(),
            components,
        }),
    });
    let h = cc.agent("a").unwrap().last.health.unwrap();
    assert!(h.status.len() <= MAX_AGENT_TEXT, "{}", h.status.len());
    // At most MAX_COMPONENTS components and MAX_HEALTH_TEXT bytes of text, the rest summed up in one entry.
    let kept = h.components.len() - 1;
    assert!(kept <= MAX_COMPONENTS, "{kept}");
    assert_eq!(
        h.components["…"].status,
        format!("{} more components not kept", 100 - kept),
        "the rest summed up in one entry"
    );
    let text: usize = h.status.len()
        + h.last_error.len()
        + h.components
            .iter()
            .filter(|(k, _)| *k != "…")
            .map(|(k, c)| k.len() + c.status.len() + c.last_error.len())
            .sum::<usize>();
    assert!(text <= MAX_HEALTH_TEXT, "{text}");
    let texts: Vec<&str> = [h.status.as_str(), h.last_error.as_str()]
        .into_iter()
        .chain(
            h.components
                .iter()
                .flat_map(|(k, c)| [k.as_str(), c.status.as_str(), c.last_error.as_str()]),
        )
        .collect();
    assert!(texts.iter().all(|t| !t.chars().any(char::is_control)), "{texts:?}");
    assert!(h.last_error.contains("\\u{1b}[8mhidden\\n"), "{}", h.last_error);
    let mut twice = h.clone();
    twice.bound();
    assert_eq!(twice, h, "bounding twice changes nothing");
    // The unhealthy components are the ones kept.
    assert_eq!(h.components.values().filter(|c| !c.healthy).count(), kept);
    // What the control center keeps of an OpAMP agent between messages is bounded the same way, not the
    // message as it came (an outside probe's 20,000 agents with 15 KB errors took 558 MB).
    use crate::opamp::{AgentDescription, AgentToServer, AnyValue, ComponentHealth, KeyValue, Value};
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::String(v.into())),
        }),
    };
    cc.opamp(AgentToServer {
        instance_uid: vec![7; 16],
        sequence_num: 0,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![kv("service.name", "agent"), kv("service.version", "1.0.0")],
            non_identifying_attributes: vec![kv("host.name", "c2")],
        }),
        health: Some(ComponentHealth {
            healthy: false,
            last_error: huge.clone(),
            component_health_map: (0..100)
                .map(|i| (format!("c{i}\n"), ComponentHealth::default()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let kept = cc.agent("agent@c2").map(|r| r.last.health);
    let kept = kept.flatten().unwrap_or_else(|| panic!("{:?}", cc.agents()));
    assert!(kept.last_error.len() <= MAX_AGENT_TEXT, "{}", kept.last_error.len());
    assert_eq!(
        kept.components.len(),
        MAX_COMPONENTS + 1,
        "32 short names fit the text budget"
    );
    // And a compressed message (no health, no message lost) carries that health over, kept once.
    cc.opamp(AgentToServer {
        instance_uid: vec![7; 16],
        sequence_num: 1,
        ..Default::default()
    })
    .unwrap();
    let again = cc.agent("agent@c2").and_then(|r| r.last.health);
    assert_eq!(again.as_ref(), Some(&kept));
    // Evidence from any probe is inert too: a line break or an escape an agent sends is shown, not obeyed.
    let obs = Observation::Fail("agent says: \u{1b}[8mgone\nupdated (revision 9)".into()).inert();
    assert_eq!(obs.detail(), "agent says: \\u{1b}[8mgone\\nupdated (revision 9)");
}

#[tokio::test]
async fn the_agents_list_comes_in_pages() {
    let cc = ControlCenter::new("0123456789abcdef".into(), ControlCenterConfig::default(), None)
        .await
        .unwrap();
    for i in 0..2_500 {
        cc.record(Heartbeat {
            agent_id: format!("agent-{i:05}"),
            container: String::new(),
            host: String::new(),
            version: "1.0.0".into(),
            revision: String::new(),
            status: "ok".into(),
            protocol: String::new(),
            health: None,
        });
    }
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let (page, next) = cc.agents_page(after.as_deref(), AGENTS_PAGE);
        assert!(page.len() <= AGENTS_PAGE);
        seen.extend(page.into_iter().map(|r| r.last.agent_id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2_500);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "sorted, none twice");
}

#[tokio::test(start_paused = true)]
async fn a_container_its_policy_restarted_fails_the_container_probe_though_it_runs() {
    let rt = Arc::new(FakeRuntime::default());
    let img: ImageRef = "acme/agent:1.0".parse().unwrap();
    rt.add_local_image(&img, ImageDefaults::default(), ImageBehaviour::default());
    let mut spec = ContainerSpec::new("a".parse().unwrap(), img);
    spec.restart_policy = agent_core::RestartPolicy::UnlessStopped;
    rt.run(spec).unwrap();
    let c = ctx(rt.clone(), "a");
    assert!(matches!(ContainerStateProbe.check(&c).await, Observation::Pass(_)));
    // It crashes; the engine starts it again at once: running, one restart.
    rt.crash("a", 1);
    let info = rt.inspect_container("a").await.unwrap();
    assert!(info.state.is_running() && info.state.restart_count == 1);
    let obs = ContainerStateProbe.check(&c).await;
    assert!(matches!(obs, Observation::Fatal(_)), "{obs:?}");
    assert!(obs.detail().contains("restarted 1 time"), "{}", obs.detail());
}

fn scripted(script: Vec<Observation>) -> Scripted {
    Scripted {
        calls: AtomicU32::new(0),
        script,
    }
}

/// The evidence a verdict carries counts each kind of result, under the probe's own name.
#[tokio::test(start_paused = true)]
async fn the_evidence_counts_every_kind_of_result_under_the_probes_name() {
    use Observation::*;
    let probe = scripted(vec![
        Pass("".into()),
        Fail("x".into()),
        Inconclusive("y".into()),
        Pending("z".into()),
        Pass("".into()),
    ]);
    let rt = running(ImageBehaviour::default());
    let v = HealthGate::new(timing())
        .with_probe(probe)
        .with_probe(ContainerStateProbe)
        .run(&ctx(rt, "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    let e = &v.evidence[0];
    assert_eq!(e.probe, "scripted");
    assert_eq!((e.failures, e.inconclusive, e.passes + 3), (1, 1, e.checks), "{e:?}");
    assert!(e.passes >= 4, "{e:?}");
    assert_eq!(v.evidence[1].probe, "container");
    assert_eq!(v.evidence[1].passes, v.evidence[1].checks);

    let fatal = scripted(vec![Pass("".into()), Fatal("exited".into())]);
    let v = HealthGate::new(timing())
        .with_probe(fatal)
        .run(&ctx(running(ImageBehaviour::default()), "a"), &|_| {})
        .await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy, "{v}");
    let e = &v.evidence[0];
    assert_eq!((e.checks, e.passes, e.failures, e.inconclusive), (2, 1, 1, 0), "{e:?}");
}

/// Results count toward a threshold a period apart, except the first of a kind after another kind, which
/// counts at once. Until every probe passes, rounds come at 0, 50, 150, 350, 750 and 1550 ms, then a period
/// (1 s) apart; with two passes needed, one pass does not end the fast rounds.
#[tokio::test(start_paused = true)]
async fn the_first_result_of_a_kind_counts_at_once_and_the_rest_a_period_apart() {
    use Observation::*;
    let run = |script: Vec<Observation>, timing: Timing| async move {
        HealthGate::new(timing)
            .with_probe(scripted(script))
            .run(&ctx(running(ImageBehaviour::default()), "a"), &|_| {})
            .await
    };
    let two = Timing {
        success_threshold: 2,
        ..timing()
    };
    // A pass after a pending result counts at once (at 150 ms), though a pass counted at 0 ms; the second
    // counts at 1.55 s, the first round a period after it: healthy from 1.55 s, the verdict 3 s later.
    let v = run(vec![Pass("".into()), Pending("".into()), Pass("".into())], two.clone()).await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    assert_eq!(v.elapsed, Duration::from_millis(4550), "{v}");
    // A failure after a pass counts at once (at 50 ms); the second counts at 1.55 s.
    let v = run(vec![Pass("".into()), Fail("x".into())], two).await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy, "{v}");
    assert_eq!(v.elapsed, Duration::from_millis(1550), "{v}");
    // Three passes in a row need two periods, however fast the first rounds come: counted at 0 ms, 1.55 s
    // and 2.55 s; held 1 s, the verdict at 3.55 s.
    let three = Timing {
        success_threshold: 3,
        min_healthy_time: Duration::from_secs(1),
        ..timing()
    };
    let v = run(vec![Pass("".into())], three).await;
    assert_eq!(v.outcome, VerdictOutcome::Healthy, "{v}");
    assert_eq!(v.elapsed, Duration::from_millis(3550), "{v}");
}

/// The deadline ends the gate at the last round that fits before it, and the reason names only the probes
/// that were not passing.
#[tokio::test(start_paused = true)]
async fn the_deadline_ends_at_the_last_round_before_it_naming_what_did_not_pass() {
    let run = |deadline: Duration| async move {
        HealthGate::new(Timing {
            deadline,
            success_threshold: 3,
            ..timing()
        })
        .with_probe(ContainerStateProbe)
        .with_probe(scripted(vec![Observation::Pending("starting".into())]))
        .run(&ctx(running(ImageBehaviour::default()), "a"), &|_| {})
        .await
    };
    // Three passes needed: the container probe has exactly three (at 0, 1.55 and 2.55 s) when a 3 s
    // deadline ends the gate at 2.55 s, and is not named.
    let v = run(Duration::from_secs(3)).await;
    assert_eq!(v.elapsed, Duration::from_millis(2550), "{v}");
    assert!(v.reason.contains("waiting on scripted (starting)"), "{}", v.reason);
    assert!(
        !v.reason.contains("container"),
        "the container probe passed: {}",
        v.reason
    );
    let v = run(Duration::from_secs(20)).await;
    assert_eq!(v.outcome, VerdictOutcome::Unhealthy, "{v}");
    assert_eq!(v.elapsed, Duration::from_millis(19_550), "{v}");
    assert!(v.reason.contains("waiting on scripted (starting)"), "{}", v.reason);
    assert!(
        !v.reason.contains("container"),
        "the container probe passed: {}",
        v.reason
    );
    // A round that ends exactly a period before the deadline is not the last: one more fits.
    let v = run(Duration::from_millis(20_550)).await;
    assert_eq!(v.elapsed, Duration::from_millis(20_550), "{v}");
}

/// One agent's failure says nothing of other agents, and an agent unhealthy by its own report is named
/// with its unhealthy components only.
#[tokio::test]
async fn a_heartbeat_failure_names_its_agent_and_only_its_broken_components() {
    let obs = heard(&[("a", "1.0.0", None)]).await;
    assert!(matches!(obs, Observation::Fail(_)), "{obs:?}");
    assert!(
        obs.detail().contains("reports version 1.0.0, expected 2.0.0") && !obs.detail().contains("one of"),
        "{}",
        obs.detail()
    );

    let cc = ControlCenter::new("0123456789abcdef".into(), ControlCenterConfig::default(), None)
        .await
        .unwrap();
    let container = "d2f4f6e1c37a".to_owned() + &"0".repeat(52);
    let component = |healthy: bool, last_error: &str| ComponentStatus {
        healthy,
        status: "running".into(),
        last_error: last_error.into(),
    };
    cc.record(Heartbeat {
        agent_id: "a".into(),
        container: container[..12].into(),
        host: "h".into(),
        version: "2.0.0".into(),
        revision: String::new(),
        status: "ok".into(),
        protocol: String::new(),
        health: Some(SelfHealth {
            healthy: false,
            status: "degraded".into(),
            last_error: String::new(),
            components: [
                ("exporter".to_owned(), component(false, "connection refused")),
                ("receiver".to_owned(), component(true, "")),
            ]
            .into(),
        }),
    });
    let probe = HeartbeatProbe::new(cc, Duration::from_secs(10));
    assert!(format!("{probe:?}").contains("max_age: 10s"), "{probe:?}");
    assert_eq!(probe.name(), "heartbeat");
    let mut c = ctx(running(ImageBehaviour::default()), "a");
    c.container_id = Some(container);
    let obs = probe.check(&c).await;
    assert_eq!(
        obs.detail(),
        "agent a in container d2f4f6e1c37a reports itself unhealthy: degraded (exporter: connection refused)",
        "{obs:?}"
    );
}
