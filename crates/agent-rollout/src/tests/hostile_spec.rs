//! No spec value reaches a panic: any spec the parser accepts is planned and run to its end on the
//! in-memory engines (paused time), and any it refuses is refused with an error. Durations are drawn across
//! their whole range (a deadline of 2^64-1 seconds once panicked a worker), counts and shares too.

use proptest::prelude::*;

use super::*;

fn host(name: &str) -> Arc<FakeRuntime> {
    let rt = Arc::new(FakeRuntime::new(name));
    rt.add_local_image(
        &img("acme/agent:1.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    rt.publish_image(
        &img("acme/agent:2.0"),
        ImageDefaults::default(),
        ImageBehaviour::default(),
    );
    for c in ["a1", "a2", "a3"] {
        rt.run(ContainerSpec::new(c.parse().unwrap(), img("acme/agent:1.0")))
            .unwrap();
    }
    rt
}

fn runner(rt: Arc<FakeRuntime>) -> Fleet {
    let connect: Connector = Arc::new(move |_| {
        let rt = rt.clone() as Arc<dyn ContainerRuntime>;
        Box::pin(async move { Ok(rt) })
    });
    Fleet::new(
        Arc::new(MemoryStore::default()),
        connect,
        Arc::new(|_: &FleetEvent| {}),
        Arc::new(Silent),
    )
}

/// A duration as a spec writes it: mostly a usable one, sometimes seconds of any size, a number of any size
/// with a unit, up to and past the year agentctl takes, or a negative one.
fn duration(usable: std::ops::Range<u64>) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<u64>().prop_map(|s| s.to_string()),
        1 => (any::<u64>(), prop::sample::select(vec!["ms", "s", "m", "h", "d"])).prop_map(|(n, u)| format!("{n}{u}")),
        1 => (360u64..=370).prop_map(|n| format!("{n}d")),
        24 => usable.prop_map(|ms| format!("{ms}ms")),
        1 => Just("-1s".to_owned()),
    ]
}

/// A count or a share as a spec writes it: mostly small, sometimes any size, a percentage past 100, or a
/// number no integer holds.
fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        20 => (0u64..10).prop_map(|n| n.to_string()),
        3 => (0u64..300).prop_map(|n| format!("\"{n}%\"")),
        1 => Just("1e400".to_owned()),
    ]
}

fn strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{recreate: {}}".to_owned()),
        (count(), count(), duration(0..5_000))
            .prop_map(|(u, s, d)| format!("{{rolling: {{maxUnavailable: {u}, maxSurge: {s}, batchDelay: {d}}}}}")),
        (any::<bool>(), duration(0..5_000))
            .prop_map(|(a, d)| format!("{{blueGreen: {{autoPromote: {a}, scaleDownDelay: {d}}}}}")),
        (count(), duration(0..3_600_000), count()).prop_map(|(w1, d, w2)| format!(
            "{{canary: {{steps: [{{setWeight: {w1}}}, {{pause: {d}}}, {{setWeight: {w2}}}]}}}}"
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_spec_value_reaches_a_panic(
        strategy in strategy(),
        min_healthy in duration(0..2_000),
        deadline in duration(2_000..60_000),
        period in duration(0..1_000),
        parallelism in count(),
        max_unverified in count(),
        ratio in prop_oneof![1 => any::<f64>().prop_map(|f| f.to_string()), 9 => (0u32..=10).prop_map(|n| format!("0.{n}"))],
        history in prop_oneof![9 => (2u64..10).prop_map(|n| n.to_string()), 1 => count()],
    ) {
        let yaml = format!(
            "name: fleet\nimage: acme/agent:2.0\ntargets:\n  - {{host: 'tcp://127.0.0.1:1', container: a1}}\n  - {{host: 'tcp://127.0.0.1:1', container: a2}}\n  - {{host: 'tcp://127.0.0.1:1', container: a3}}\nstrategy: {strategy}\nhealth: {{minHealthyTime: {min_healthy}, deadline: {deadline}, period: {period}}}\nparallelism: {parallelism}\nmaxUnverified: {max_unverified}\nrollback: {{maxFailureRatio: {ratio}}}\nhistory: {{limit: {history}}}\n"
        );
        let parsed = RolloutSpec::parse(&yaml, "proptest");
        let Ok(spec) = parsed else {
            // Refused with an error: nothing ran.
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let engine = host("tcp://127.0.0.1:1");
        let fleet = runner(engine.clone());
        let state = rt.block_on(async {
            // A pause of up to a year is polled for operators' requests every 200 ms of virtual time: a case
            // still running after ten virtual minutes has shown what it would (the pause's end was computed at its
            // start) and is cut short.
            let run = async {
                match fleet.apply(spec).await {
                    Ok(mut st) if st.phase() == agent_core::Phase::Paused => {
                        let _ = fleet.promote("fleet").await.map(|s| st = s);
                        Some(st)
                    }
                    Ok(st) => Some(st),
                    Err(_) => None,
                }
            };
            tokio::time::timeout(Duration::from_secs(600), run).await.ok().flatten()
        });
        if let Some(st) = state {
            for t in &st.targets {
                let msg = t.message.clone().unwrap_or_default();
                prop_assert!(!msg.contains("a bug"), "{}: {msg}\n{yaml}", t.container);
            }
        }
    }
}
