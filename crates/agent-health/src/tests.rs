//! Gate logic against the fake runtime, with paused time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_core::{ContainerSpec, FakeRuntime, ImageBehaviour, ImageDefaults, ImageRef, OffsetDateTime};
use async_trait::async_trait;

use crate::*;

fn ctx(rt: Arc<FakeRuntime>, container: &str) -> ProbeContext {
    ProbeContext {
        runtime: rt,
        container: container.into(),
        started_at: OffsetDateTime::now_utc(),
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
