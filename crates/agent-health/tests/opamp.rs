//! `POST /v1/opamp` against a real control center on loopback: the OpenTelemetry OpAMP client from PyPI
//! (`scripts/opamp-client.py`; `pip install opentelemetry-opamp-client`, which the test command does) as the
//! conformance test, then the edges with hand-made requests: gzip, size, token, content type, garbage, an
//! unknown instance, self-reported health, the shorter interval during a rollout.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_core::{MemoryStore, StateStore};
use agent_health::opamp::*;
use agent_health::{http, ControlCenter, ControlCenterConfig};
use prost::Message;

const TOKEN: &str = "opamp-test-token-0123456789";

async fn center(store: Option<Arc<dyn StateStore>>) -> (Arc<ControlCenter>, String) {
    let cc = ControlCenter::new(TOKEN.into(), ControlCenterConfig::default(), store)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let served = cc.clone();
    tokio::spawn(async move {
        served
            .serve(
                "127.0.0.1:0",
                move |a| {
                    let _ = tx.send(a);
                },
                std::future::pending(),
            )
            .await
            .unwrap();
    });
    let addr = rx.await.unwrap();
    (cc, format!("http://{addr}/v1/opamp"))
}

async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> http::Response {
    http::request("POST", url, headers, Some(body), Duration::from_secs(5))
        .await
        .unwrap()
}

const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Posts one authorised protobuf message and decodes the control center's answer (asserting 200).
async fn exchange(url: String, msg: AgentToServer) -> ServerToAgent {
    let r = post(&url, &[("Authorization", &bearer()), PROTOBUF], &msg.encode_to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    ServerToAgent::decode(&r.bytes[..]).unwrap()
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::String(value.into())),
        }),
    }
}

fn described(uid: u8, version: &str) -> AgentToServer {
    AgentToServer {
        instance_uid: vec![uid; 16],
        sequence_num: 0,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "collector"),
                kv("service.version", version),
                kv("service.instance.id", &format!("collector-{uid}")),
            ],
            non_identifying_attributes: vec![kv("host.name", "d2f4f6e1c37a")],
        }),
        capabilities: 1 | 2048,
        ..Default::default()
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/opamp-client.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_opamp_client_reports_to_the_control_center() {
    let (cc, url) = center(None).await;
    let out = tokio::process::Command::new("python3")
        .arg(script())
        .args([url.as_str(), TOKEN, "3.5", "gateway", "3.1.4", "gw-host-1"])
        .output()
        .await
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OpAMP client failed (pip install opentelemetry-opamp-client): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(answers.len() >= 4, "a connect, heartbeats and a disconnect: {stdout}");
    for a in &answers {
        assert!(a.get("error").is_none(), "{stdout}");
        assert_eq!(
            a["capabilities"],
            1 | 0x20,
            "AcceptsStatus | OffersConnectionSettings: {stdout}"
        );
        assert_eq!(a["heartbeatIntervalSeconds"], 30, "{stdout}");
        assert_eq!(
            a["flags"], 0,
            "the description was known from the first message on: {stdout}"
        );
    }
    // Only its first message carried the version; every heartbeat after it counts for the same agent.
    let agent = cc.agent("gateway@gw-host-1").expect("the client's agent is listed");
    assert_eq!(agent.last.version, "3.1.4");
    assert_eq!(agent.last.container, "gw-host-1");
    assert!(agent.heartbeats >= 3, "{agent:?}");
    // It reports no health: unknown, not a failure.
    assert_eq!(
        (agent.last.status.as_str(), agent.last.health.is_none()),
        ("unknown", true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason_and_change_nothing() {
    let (cc, url) = center(None).await;
    let auth = bearer();
    let good = described(1, "1.0.0").encode_to_vec();
    // No token, a wrong content type, garbage: refused, nothing recorded.
    let r = post(&url, &[PROTOBUF], &good).await;
    assert_eq!(r.status, 401);
    let r = post(
        &url,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &good,
    )
    .await;
    assert_eq!(r.status, 415);
    let r = post(
        &url,
        &[("Authorization", &auth), PROTOBUF],
        b"\xff\xff\xff\xff not protobuf",
    )
    .await;
    assert_eq!(r.status, 400);
    let answer = ServerToAgent::decode(&r.bytes[..]).unwrap();
    let why = answer.error_response.unwrap();
    assert_eq!(why.r#type, ERROR_BAD_REQUEST);
    assert!(
        why.error_message.contains("not an OpAMP AgentToServer"),
        "{}",
        why.error_message
    );
    let short_uid = AgentToServer {
        instance_uid: vec![1; 4],
        ..described(1, "1.0.0")
    };
    let r = post(&url, &[("Authorization", &auth), PROTOBUF], &short_uid.encode_to_vec()).await;
    assert_eq!(r.status, 400);
    assert!(cc.agents().is_empty());
    // Over the size limit (16 KiB), plain or inflated from a small gzip body: 413.
    let r = post(&url, &[("Authorization", &auth), PROTOBUF], &vec![0u8; 20_000]).await;
    assert_eq!(r.status, 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 1 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 16 * 1024);
    let r = post(
        &url,
        &[("Authorization", &auth), PROTOBUF, ("Content-Encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(cc.agents().is_empty());
    // A gzip body that is fine is read.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&good).unwrap();
    let r = post(
        &url,
        &[("Authorization", &auth), PROTOBUF, ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(cc.agent("collector-1").unwrap().last.version, "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_unknown_instances_and_the_interval_during_a_rollout() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let (cc, url) = center(Some(store.clone())).await;
    let send = |msg: AgentToServer| exchange(url.clone(), msg);
    // An instance the control center has not heard describe itself (its first message lost, or a restart):
    // not recorded, and asked for its full state.
    let unknown = AgentToServer {
        instance_uid: vec![9; 16],
        sequence_num: 7,
        ..Default::default()
    };
    let answer = send(unknown).await;
    assert_eq!(answer.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
    assert_eq!(answer.instance_uid, vec![9; 16]);
    assert!(cc.agents().is_empty());
    // Health as the agent reports it, remembered with its description.
    let mut msg = described(2, "2.0.0");
    msg.health = Some(ComponentHealth {
        healthy: false,
        last_error: "exporter otlp: connection refused".into(),
        status: "degraded".into(),
        ..Default::default()
    });
    assert_eq!(send(msg).await.flags, 0);
    let heartbeat_only = AgentToServer {
        instance_uid: vec![2; 16],
        sequence_num: 1,
        ..Default::default()
    };
    send(heartbeat_only.clone()).await;
    let agent = cc.agent("collector-2").unwrap();
    assert_eq!((agent.heartbeats, agent.last.version.as_str()), (2, "2.0.0"));
    assert_eq!(agent.last.status, "unhealthy");
    let health = agent.last.health.unwrap();
    assert!(!health.healthy && health.last_error.contains("connection refused"));
    assert_eq!(agent.last.container, "d2f4f6e1c37a");
    // A rollout under way in the store: the shorter interval is offered.
    assert_eq!(
        send(heartbeat_only.clone())
            .await
            .connection_settings
            .unwrap()
            .opamp
            .unwrap()
            .heartbeat_interval_seconds,
        30
    );
    store
        .put_document(
            "rollout",
            "edge",
            &serde_json::json!({"machine": {"phase": "progressing"}}),
        )
        .await
        .unwrap();
    cc.refresh_rollout_active().await;
    let offer = send(heartbeat_only.clone()).await.connection_settings.unwrap();
    assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 5);
    store
        .put_document(
            "rollout",
            "edge",
            &serde_json::json!({"machine": {"phase": "succeeded"}}),
        )
        .await
        .unwrap();
    cc.refresh_rollout_active().await;
    let offer = send(heartbeat_only).await.connection_settings.unwrap();
    assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_asks_for_the_full_state_and_forgets_health_that_may_be_stale() {
    let (cc, url) = center(None).await;
    let send = |msg: AgentToServer| exchange(url.clone(), msg);
    let health = |healthy: bool| ComponentHealth {
        healthy,
        last_error: if healthy {
            String::new()
        } else {
            "exporter otlp: connection refused".into()
        },
        ..Default::default()
    };
    let mut first = described(3, "2.0.0");
    first.health = Some(health(true));
    assert_eq!(send(first).await.flags, 0);
    assert_eq!(cc.agent("collector-3").unwrap().last.status, "ok");
    // Message 1 (healthy = false) is lost; message 2 says nothing of health: the control center no longer
    // vouches for the health it kept, and asks for the full state.
    let compressed = |seq: u64| AgentToServer {
        instance_uid: vec![3; 16],
        sequence_num: seq,
        ..Default::default()
    };
    let answer = send(compressed(2)).await;
    assert_eq!(answer.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
    let agent = cc.agent("collector-3").unwrap();
    assert_eq!(
        (agent.last.status.as_str(), agent.last.health.is_none()),
        ("unknown", true)
    );
    // The full state comes: unhealthy, as it is.
    let mut full = described(3, "2.0.0");
    full.sequence_num = 3;
    full.health = Some(health(false));
    assert_eq!(send(full).await.flags, 0);
    assert_eq!(cc.agent("collector-3").unwrap().last.status, "unhealthy");
    // In order: nothing asked. The same number again is a gap too.
    assert_eq!(send(compressed(4)).await.flags, 0);
    assert_eq!(send(compressed(4)).await.flags & REPORT_FULL_STATE, REPORT_FULL_STATE);
}
