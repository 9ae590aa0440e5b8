//! Criterion microbenchmarks over realistic inputs: image-reference parsing, spec diff, planning a rollout
//! over 100,000 targets, history pruning, log scanning, Prometheus text parsing, heartbeat ingestion in
//! process, and durable journal append and replay.

use std::hint::black_box;
use std::time::Duration;

use agent_core::{
    plan, CanaryStep, ContainerSpec, Count, EnvVar, ImageRef, LogLine, LogStream, Mount, MountKind, Outcome, Pause,
    Revision, RevisionHistory, RevisionNumber, Strategy, Target,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const REFS: &[&str] = &[
    "agent",
    "acme/node-agent:1.4.2",
    "127.0.0.1:5000/acme/node-agent:1.4.2",
    "registry.example.com/team/platform/log-shipper:v2.3.4-rc.1",
    "ghcr.io/acme/agent@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
];

fn rich_spec() -> ContainerSpec {
    let mut s = ContainerSpec::new("node-agent".parse().unwrap(), REFS[2].parse().unwrap());
    s.env = (0..40)
        .map(|i| EnvVar::plain(format!("VAR_{i}"), format!("value-{i}")))
        .collect();
    s.env.push(EnvVar::secret("API_TOKEN", "s3cret"));
    s.labels = (0..20).map(|i| (format!("label.{i}"), format!("v{i}"))).collect();
    s.mounts = (0..6)
        .map(|i| Mount {
            target: format!("/data/{i}"),
            kind: MountKind::Volume {
                name: format!("vol-{i}"),
                anonymous: false,
            },
            read_only: false,
        })
        .collect();
    s
}

fn targets(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            host: format!("tcp://10.0.{}.{}:2376", i / 250, i % 250),
            container: format!("agent-{i}").parse().unwrap(),
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("image_ref");
    g.throughput(Throughput::Elements(REFS.len() as u64));
    g.bench_function("parse_5", |b| {
        b.iter(|| {
            REFS.iter()
                .map(|r| black_box(r).parse::<ImageRef>().unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.finish();

    let a = rich_spec();
    let mut b2 = rich_spec();
    b2.env[3] = EnvVar::plain("VAR_3", "changed");
    c.bench_function("spec_diff_rich", |b| b.iter(|| black_box(&a).diff(black_box(&b2))));

    let t = targets(100_000);
    let rolling = Strategy::Rolling {
        max_unavailable: Count::Percent(5),
        max_surge: Count::Absolute(0),
        batch_delay: Duration::ZERO,
    };
    let canary = Strategy::Canary {
        steps: vec![
            CanaryStep::SetWeight(1),
            CanaryStep::Pause(Pause::For(Duration::from_secs(30))),
            CanaryStep::SetWeight(10),
            CanaryStep::SetWeight(50),
            CanaryStep::SetWeight(100),
        ],
    };
    let mut g = c.benchmark_group("plan_100k_targets");
    g.sample_size(20);
    g.bench_function("rolling_5pct", |b| {
        b.iter(|| plan(black_box(&t), &rolling, &[]).unwrap())
    });
    g.bench_function("canary", |b| b.iter(|| plan(black_box(&t), &canary, &[]).unwrap()));
    g.finish();

    let revisions: Vec<Revision> = (1..=200)
        .map(|n| Revision {
            number: RevisionNumber::new(n).unwrap(),
            image: REFS[1].parse().unwrap(),
            image_id: None,
            digest: None,
            spec: a.clone(),
            cause: "bench".into(),
            by: None,
            created_at: agent_core::OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
            outcome: if n % 7 == 0 {
                Outcome::RolledBack { reason: "x".into() }
            } else {
                Outcome::Succeeded
            },
            protected: n % 50 == 0,
            retained_container: None,
            retained_container_id: None,
        })
        .collect();
    c.bench_function("history_prune_200_to_5", |b| {
        b.iter(|| {
            let mut h = RevisionHistory::from_revisions(5, revisions.clone());
            h.prune().len()
        })
    });

    let lines: Vec<LogLine> = (0..20_000)
        .map(|i| LogLine {
            stream: LogStream::Stdout,
            text: format!(
                "2026-11-24T10:00:{:02}Z level=info msg=\"shipped batch {i}\" bytes=4096 dest=collector-3",
                i % 60
            ),
        })
        .collect();
    let bytes: usize = lines.iter().map(|l| l.text.len() + 1).sum();
    let scan = agent_health::LogScanProbe::default();
    let mut g = c.benchmark_group("log_scan");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("20k_lines", |b| b.iter(|| scan.matches(black_box(&lines)).count()));
    g.finish();
}

fn health_and_store(c: &mut Criterion) {
    // A realistic /metrics page: 200 series with labels, escapes included.
    let mut page = String::new();
    for i in 0..200 {
        page.push_str(&format!(
            "# HELP m{i} help\n# TYPE m{i} counter\nhttp_requests_total{{method=\"GET\",path=\"/api/v1/items/{i}\",code=\"200\",note=\"a \\\"quoted\\\" value, with commas\"}} {}.5 1700000000000\n",
            i * 17
        ));
    }
    let mut g = c.benchmark_group("prometheus_text");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function("parse_200_series", |b| {
        b.iter(|| agent_health::parse_text(black_box(&page)).unwrap().len())
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cc = rt
        .block_on(agent_health::ControlCenter::new(
            "bench-token-0123456789".into(),
            Default::default(),
            None,
        ))
        .unwrap();
    let beats: Vec<agent_health::Heartbeat> = (0..10_000)
        .map(|i| agent_health::Heartbeat {
            agent_id: format!("agent-{i:05}"),
            container: format!("{i:012x}"),
            host: format!("host-{}", i % 50),
            version: "2.0.0".into(),
            revision: "7".into(),
            status: "ok".into(),
            protocol: "1.0".into(),
            health: None,
        })
        .collect();
    let mut g = c.benchmark_group("control_center");
    g.throughput(Throughput::Elements(beats.len() as u64));
    g.bench_function("record_10k_heartbeats_in_process", |b| {
        b.iter(|| {
            for hb in &beats {
                cc.record(hb.clone());
            }
        })
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let store = agent_rollout::SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    let record = serde_json::json!({"step": "stop-old", "detail": "a realistic small journal record"});
    let mut seq = 0u32;
    let mut g = c.benchmark_group("journal");
    g.sample_size(20);
    g.bench_function("append_durable", |b| {
        b.iter(|| {
            seq += 1;
            rt.block_on(agent_core::StateStore::append_journal(
                &store,
                &agent_core::JournalEntry {
                    operation: format!("op-{}", seq / 10),
                    subject: "container:unix:///var/run/docker.sock/agent".into(),
                    seq: seq % 10,
                    at: time::OffsetDateTime::now_utc(),
                    record: record.clone(),
                },
            ))
            .unwrap()
        })
    });
    g.bench_function("replay_10_entries", |b| {
        b.iter(|| {
            rt.block_on(agent_core::StateStore::journal(&store, "op-1"))
                .unwrap()
                .len()
        })
    });
    g.finish();
}

criterion_group!(core, benches, health_and_store);
criterion_main!(core);
