//! Verification with heartbeats (a real control center process), metrics scraped from the agent, and a real
//! Prometheus server; the control center under bad input; probation.

use std::process::{Command, Stdio};
use std::time::Duration;

use agent_docker::testing::free_port;
use agent_health::http;

use crate::support::*;

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

pub(crate) struct Center {
    _proc: Proc,
    pub(crate) url: String,
    pub(crate) token_file: tempfile::NamedTempFile,
    state: tempfile::TempDir,
    listen: String,
}

pub(crate) fn control_center(bind_ip: &str) -> Center {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), TOKEN).unwrap();
    let state = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let listen = format!("{bind_ip}:{port}");
    let proc = start_center(&listen, token_file.path(), state.path());
    let url = format!("http://{listen}");
    assert!(
        wait_http(&format!("{url}/healthz"), 10),
        "the control center did not start"
    );
    Center {
        _proc: proc,
        url,
        token_file,
        state,
        listen,
    }
}

fn start_center(listen: &str, token: &std::path::Path, state: &std::path::Path) -> Proc {
    Proc(
        agentctl_in(state)
            .args(["control-center", "--listen", listen, "--token-file"])
            .arg(token)
            .args(["--late-after", "2s", "--down-after", "4s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn req(method: &str, url: &str, token: Option<&str>, body: Option<&[u8]>) -> http::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    runtime()
        .block_on(http::request(method, url, &headers, body, Duration::from_secs(5)))
        .unwrap()
}

#[test]
fn the_heartbeat_gate_accepts_only_the_new_version_from_the_new_container() {
    let img = images();
    let w = World::new("hb");
    let net = w.network("net", "10.232.1.0/24");
    let cc = control_center(&gateway(&w, &net));
    let run_agent = |suffix: &str| {
        let name = w.name(suffix);
        let env_url = format!("CONTROL_CENTER_URL={}", cc.url);
        let env_token = format!("CONTROL_CENTER_TOKEN={TOKEN}");
        let env_id = format!("AGENT_ID={name}");
        w.docker_run(
            &name,
            &[
                "--network",
                &net,
                "-e",
                &env_url,
                "-e",
                &env_token,
                "-e",
                "HEARTBEAT_INTERVAL_MS=300",
                "-e",
                &env_id,
            ],
            &img.refs["v1"],
        );
        name
    };
    let hb_args = |name: &str, image: &str| -> Vec<String> {
        [
            "update",
            name,
            "--image",
            image,
            "-o",
            "json",
            "--heartbeat",
            &cc.url,
            "--heartbeat-token-file",
            cc.token_file.path().to_str().unwrap(),
            "--heartbeat-max-age",
            "3s",
            "--http-port",
            "8080",
            "--metric",
            "agent_up == 1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--min-healthy-time", "2s", "--deadline", "10s", "--period", "300ms"].map(String::from))
        .collect()
    };
    // The good version passes with heartbeat and metrics evidence.
    let good = run_agent("good");
    let args = hb_args(&good, &img.refs["v2"]);
    let out = w.agentctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    let evidence = report["verdict"]["evidence"].as_array().unwrap();
    let hb = evidence.iter().find(|e| e["probe"] == "heartbeat").unwrap();
    assert!(hb["last"]["detail"].as_str().unwrap().contains("reports 2.0.0"), "{hb}");
    assert!(
        evidence
            .iter()
            .any(|e| e["probe"] == "metrics" && e["last"]["result"] == "pass"),
        "{evidence:?}"
    );
    // Every configured gate ran together: container, HEALTHCHECK, logs, HTTP, heartbeat, metrics.
    let probes: Vec<&str> = evidence.iter().map(|e| e["probe"].as_str().unwrap()).collect();
    assert_eq!(
        probes,
        ["container", "healthcheck", "logs", "http", "heartbeat", "metrics"]
    );
    assert!(evidence.iter().all(|e| e["last"]["result"] == "pass"), "{evidence:?}");

    // A build tagged 9.6.0 that still reports 1.0.0, and one that sends no heartbeat, both roll back.
    for (suffix, key, expect) in [
        ("stale", "stale", "reports version 1.0.0, expected 9.6.0"),
        ("silent", "silent", "no heartbeat from container"),
    ] {
        let name = run_agent(suffix);
        let (id, _, _) = w.state(&name).unwrap();
        let args = hb_args(&name, &img.refs[key]);
        let out = w.agentctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code(&out), 3, "{suffix}: {}", stderr(&out));
        let reason = json(&out)["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(expect), "{suffix}: {reason}");
        assert_eq!(w.state(&name).unwrap().0, id, "{suffix}: the old container runs again");
    }

    // Heartbeats for containers `0`…`f` claiming the new version (a prefix of every id) are not the new
    // container's: matching is exact (full or 12-digit short id), so the silent image still rolls back.
    let name = run_agent("spoofed");
    let (id, _, _) = w.state(&name).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            let url = format!("{}/v1/heartbeats", cc.url);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for digit in "0123456789abcdef".chars() {
                    let body = format!(
                        r#"{{"agentId":"spoof-{digit}","container":"{digit}","host":"h","version":"9.7.0","revision":"","status":"ok"}}"#
                    );
                    req("POST", &url, Some(TOKEN), Some(body.as_bytes()));
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        });
        let args = hb_args(&name, &img.refs["silent"]);
        let out = w.agentctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    assert_eq!(code(&out), 3, "spoofed heartbeats must not pass: {}", stdout(&out));
    assert!(json(&out)["reason"]
        .as_str()
        .unwrap()
        .contains("no heartbeat from container"));
    assert_eq!(w.state(&name).unwrap().0, id, "the old container runs again");

    // `agentctl agents` lists them from the control center.
    let out = w.agentctl(&[
        "agents",
        "--control-center",
        &cc.url,
        "--token-file",
        cc.token_file.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let agents = json(&out);
    let good_agent = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentId"] == good.as_str())
        .unwrap();
    assert_eq!(good_agent["version"], "2.0.0");
    assert_eq!(good_agent["state"], "up");
}

#[test]
fn the_control_center_refuses_bad_input_and_remembers_across_restarts() {
    let w = World::new("cc");
    let mut cc = control_center("127.0.0.1");
    let hb = format!("{}/v1/heartbeats", cc.url);
    let good = br#"{"agentId":"a1","container":"abc","host":"h1","version":"1.2.3","revision":"4","status":"ok"}"#;
    assert_eq!(req("POST", &hb, None, Some(good)).status, 401, "no token");
    assert_eq!(
        req("POST", &hb, Some("wrong-token-0123456789"), Some(good)).status,
        401,
        "wrong token"
    );
    let r = req("POST", &hb, Some(TOKEN), Some(b"{not json"));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("malformed heartbeat"), "{}", r.body);
    let r = req("POST", &hb, Some(TOKEN), Some(br#"{"agentId":"a1"}"#));
    assert_eq!(r.status, 400, "missing version");
    let r = req("POST", &hb, Some(TOKEN), Some(br#"{"agentId":"","version":"1"}"#));
    assert!(r.status == 400 && r.body.contains("agentId"), "{}", r.body);
    let big = vec![b'x'; 64 * 1024];
    assert_eq!(req("POST", &hb, Some(TOKEN), Some(&big)).status, 413);
    assert_eq!(req("GET", &format!("{}/v1/agents", cc.url), None, None).status, 401);
    assert_eq!(req("POST", &hb, Some(TOKEN), Some(good)).status, 204);
    let one = req("GET", &format!("{}/v1/agents/a1", cc.url), Some(TOKEN), None);
    assert_eq!(one.status, 200);
    assert!(one.body.contains("\"version\":\"1.2.3\""), "{}", one.body);
    assert_eq!(
        req("GET", &format!("{}/v1/agents/nobody", cc.url), Some(TOKEN), None).status,
        404
    );
    // The metrics name every agent: not without the token.
    assert_eq!(req("GET", &format!("{}/metrics", cc.url), None, None).status, 401);
    let metrics = req("GET", &format!("{}/metrics", cc.url), Some(TOKEN), None);
    assert!(
        metrics.body.contains("agentctl_cc_heartbeats_accepted_total 1"),
        "{}",
        metrics.body
    );
    assert!(agent_health::parse_text(&metrics.body).is_ok());
    // Late, then down, as time passes without heartbeats.
    std::thread::sleep(Duration::from_millis(2200));
    assert!(req("GET", &format!("{}/v1/agents/a1", cc.url), Some(TOKEN), None)
        .body
        .contains("\"state\":\"late\""));
    std::thread::sleep(Duration::from_millis(2200));
    let down = req("GET", &format!("{}/v1/agents/a1", cc.url), Some(TOKEN), None).body;
    assert!(down.contains("\"state\":\"down\""), "down after --down-after: {down}");
    // Restart: the agent is still known (state is flushed every second and at shutdown).
    let _ = Command::new("kill")
        .args(["-INT", &cc._proc.0.id().to_string()])
        .status();
    let _ = cc._proc.0.wait();
    cc._proc = start_center(&cc.listen, cc.token_file.path(), cc.state.path());
    assert!(wait_http(&format!("{}/healthz", cc.url), 10));
    let again = req("GET", &format!("{}/v1/agents/a1", cc.url), Some(TOKEN), None);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.contains("\"version\":\"1.2.3\""));

    // SIGTERM (what `docker stop` and systemd send) right after a heartbeat, with an idle client connected
    // that never sends a request: the process ends after a bounded drain and the heartbeat is kept.
    let newer = br#"{"agentId":"a1","container":"abc","host":"h1","version":"1.2.4","revision":"5","status":"ok"}"#;
    assert_eq!(req("POST", &hb, Some(TOKEN), Some(newer)).status, 204);
    let idle = std::net::TcpStream::connect(cc.listen.as_str()).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &cc._proc.0.id().to_string()])
        .status();
    let asked = std::time::Instant::now();
    let mut exited = None;
    for _ in 0..300 {
        if let Some(status) = cc._proc.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The drain is 5 s; the final flush and the exit take well under a second more.
    let took = asked.elapsed();
    assert!(
        exited.is_some() && took < Duration::from_secs(6),
        "the control center did not end within its 5 s drain after SIGTERM (an idle client held it): {took:?}"
    );
    drop(idle);
    cc._proc = start_center(&cc.listen, cc.token_file.path(), cc.state.path());
    assert!(wait_http(&format!("{}/healthz", cc.url), 10));
    let again = req("GET", &format!("{}/v1/agents/a1", cc.url), Some(TOKEN), None);
    assert!(
        again.body.contains("\"version\":\"1.2.4\""),
        "the last heartbeat survived SIGTERM: {}",
        again.body
    );
    drop(w);
}

/// Waits (at most 40 s) until the Prometheus at `url` has scraped `targets` targets up.
pub(crate) fn wait_scraped(url: &str, targets: usize) {
    let rt = runtime();
    let source = agent_health::Prometheus::new(url);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while rt
        .block_on(agent_health::MetricSource::query(&source, "count(up == 1)"))
        .ok()
        .flatten()
        != Some(targets as f64)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus never scraped the agents"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn prometheus(targets: &[String]) -> (Proc, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: agents\n    static_configs:\n      - targets: [{list}]\n"),
    )
    .unwrap();
    let proc = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (apt-get install prometheus)"),
    );
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        wait_http(&format!("{url}/-/ready"), 30),
        "prometheus did not become ready"
    );
    (proc, url, dir)
}

#[test]
fn prometheus_analysis_passes_a_good_version_and_rolls_back_a_bad_one() {
    let img = images();
    let w = World::new("prom");
    let net = w.network("net", "10.233.1.0/24");
    let agents = [
        ("good", "10.233.1.10"),
        ("bad", "10.233.1.11"),
        ("nodata", "10.233.1.12"),
    ];
    for (suffix, ip) in agents {
        w.docker_run(&w.name(suffix), &["--network", &net, "--ip", ip], &img.refs["v1"]);
    }
    let (_prom, url, _dir) = prometheus(&agents.iter().map(|(_, ip)| format!("{ip}:8080")).collect::<Vec<_>>());
    // Wait for the first samples (about 6 s after start on this machine).
    wait_scraped(&url, 3);
    let analysis = |name: &str, image: &str, ip: &str, prometheus: &str| {
        let query = format!(
            "sum(rate(agent_requests_total{{instance=\"{ip}:8080\",code=\"500\"}}[5s])) / sum(rate(agent_requests_total{{instance=\"{ip}:8080\"}}[5s]))"
        );
        w.agentctl(&[
            "update",
            name,
            "--image",
            image,
            "-o",
            "json",
            "--prometheus",
            prometheus,
            "--query",
            &query,
            "--success-condition",
            "result < 0.05",
            "--min-healthy-time",
            "4s",
            "--deadline",
            "20s",
            "--period",
            "1s",
            "--failure-threshold",
            "2",
        ])
    };
    let out = analysis(&w.name("good"), &img.refs["v2"], "10.233.1.10", &url);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = analysis(&w.name("bad"), &img.refs["errors"], "10.233.1.11", &url);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("prometheus failed") && reason.contains("fails `result < 0.05`"),
        "{reason}"
    );
    // Prometheus unreachable: the verdict is inconclusive (never "unhealthy") and says why; the update
    // pauses (exit 4) with the new version running and the old one retained, never a rollback.
    let nodata = w.name("nodata");
    let out = analysis(&nodata, &img.refs["v2"], "10.233.1.12", "http://127.0.0.1:1");
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["status"], "unverified", "{report}");
    assert_eq!(report["verdict"]["outcome"], "inconclusive", "{report}");
    assert!(report["reason"].as_str().unwrap().contains("127.0.0.1:1"), "{report}");
    assert_eq!(w.state(&nodata).unwrap().2, img.refs["v2"]);
    assert!(
        w.state(&format!("{nodata}.rev1")).is_some(),
        "the old version is retained"
    );
    let hist = json(&w.agentctl(&["history", &nodata, "-o", "json"]));
    assert_eq!(
        hist.as_array().unwrap().last().unwrap()["status"],
        "unverified",
        "{hist}"
    );
    // The decision: undo goes back to the last known-good revision, from the retained container.
    let out = w.agentctl(&[&["undo", &nodata], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(w.state(&nodata).unwrap().2, img.refs["v1"]);

    // The same verdict rule on the start-first path: Prometheus down leaves the new version running,
    // unverified (exit 4), and the old one retained; before, the preview was removed (exit 3).
    let starting = w.name("start-first");
    w.docker_run(&starting, &[], &img.refs["v1"]);
    let out = w.agentctl(&[
        "update",
        &starting,
        "--image",
        &img.refs["v2"],
        "--strategy",
        "start-first",
        "-o",
        "json",
        "--prometheus",
        "http://127.0.0.1:1",
        "--query",
        "up",
        "--success-condition",
        "result == 1",
        "--min-healthy-time",
        "2s",
        "--deadline",
        "8s",
        "--period",
        "500ms",
    ]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(json(&out)["status"], "unverified");
    assert_eq!(w.state(&starting).unwrap().2, img.refs["v2"]);
    assert!(
        w.state(&format!("{starting}.rev1")).is_some(),
        "the old version is retained"
    );
    // And on the undo path: going back with Prometheus down leaves the earlier version running, unverified
    // (exit 4), the undone one retained.
    let out = w.agentctl(&[
        "undo",
        &starting,
        "-o",
        "json",
        "--prometheus",
        "http://127.0.0.1:1",
        "--query",
        "up",
        "--success-condition",
        "result == 1",
        "--min-healthy-time",
        "2s",
        "--deadline",
        "8s",
        "--period",
        "500ms",
    ]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(json(&out)["status"], "unverified");
    assert_eq!(w.state(&starting).unwrap().2, img.refs["v1"]);
    assert_eq!(w.state(&format!("{starting}.rev2")).unwrap().2, img.refs["v2"]);
}

#[test]
fn probation_rolls_back_when_the_new_version_crashes_after_going_live() {
    let img = images();
    let w = World::new("probation");
    let name = w.name("agent");
    let id = w.docker_run(&name, &[], &img.refs["v1"]);
    // crash-after:6 passes verification (about 2 s) and exits 6 s after start, inside the watch window.
    let out = w.agentctl(&[
        "update",
        &name,
        "--image",
        &img.refs["late-crash"],
        "-o",
        "json",
        "--min-healthy-time",
        "500ms",
        "--deadline",
        "10s",
        "--period",
        "200ms",
        "--watch",
        "10s",
        "--alert-for",
        "2s",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report = json(&out);
    // The crash prints a panic and exits: whichever of the two rules sees it first fires (both at once).
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("probation: rule container fired") || reason.starts_with("probation: rule logs fired"),
        "{report}"
    );
    assert_eq!(report["probation"]["outcome"], "fired");
    let (now, running, image) = w.state(&name).unwrap();
    assert_eq!(
        (now.as_str(), running, image.as_str()),
        (id.as_str(), true, img.refs["v1"].as_str())
    );
    let hist = json(&w.agentctl(&["history", &name, "-o", "json"]));
    let statuses: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "rolled-back", "succeeded"]);
}

#[test]
fn resource_limits_come_from_the_engines_stats() {
    let img = images();
    let w = World::new("stats");
    let name = w.name("agent");
    let id = w.docker_run(&name, &[], &img.refs["v1"]);
    let out = w.agentctl(&[
        "update",
        &name,
        "--image",
        &img.refs["v2"],
        "-o",
        "json",
        "--max-memory",
        "1KiB",
        "--min-healthy-time",
        "1s",
        "--deadline",
        "10s",
        "--failure-threshold",
        "2",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("resources failed") && reason.contains("memory above"),
        "{reason}"
    );
    assert_eq!(w.state(&name).unwrap().0, id);
    let out = w.agentctl(&[
        "update",
        &name,
        "--image",
        &img.refs["v2"],
        "-o",
        "json",
        "--max-cpu",
        "400",
        "--max-memory",
        "512MiB",
        "--min-healthy-time",
        "1s",
        "--deadline",
        "15s",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evidence = json(&out)["verdict"]["evidence"].as_array().unwrap().clone();
    let r = evidence.iter().find(|e| e["probe"] == "resources").unwrap();
    assert!(r["last"]["detail"].as_str().unwrap().contains("MiB"), "{r}");
    // The CPU gate on the real engine: a version that keeps a CPU busy goes over --max-cpu 50.
    let busy = w.name("busy");
    let id = w.docker_run(&busy, &["-e", "AGENT_BUSY_ON=3.0.0"], &img.refs["v1"]);
    let out = w.agentctl(&[
        "update",
        &busy,
        "--image",
        &img.refs["v3"],
        "-o",
        "json",
        "--max-cpu",
        "50",
        "--min-healthy-time",
        "4s",
        "--deadline",
        "20s",
        "--failure-threshold",
        "2",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("resources failed") && reason.contains("cpu"),
        "{reason}"
    );
    assert_eq!(w.state(&busy).unwrap().0, id);
}

#[test]
fn http_and_metric_probes_fail_with_their_evidence() {
    let img = images();
    let w = World::new("httpfail");
    let name = w.name("agent");
    let id = w.docker_run(&name, &[], &img.refs["v1"]);
    // never-healthy answers /health with 503; agent_up is 1, so `agent_up == 2` can never hold.
    let out = w.agentctl(&[
        "update",
        &name,
        "--image",
        &img.refs["never-healthy"],
        "-o",
        "json",
        "--http-port",
        "8080",
        "--metric",
        "agent_up == 2",
        "--min-healthy-time",
        "1s",
        "--deadline",
        "6s",
        "--period",
        "300ms",
        "--failure-threshold",
        "100",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report = json(&out);
    let evidence = report["verdict"]["evidence"].as_array().unwrap();
    let http = evidence.iter().find(|e| e["probe"] == "http").unwrap();
    assert!(http["last"]["detail"].as_str().unwrap().contains("-> 503"), "{http}");
    assert_eq!(http["last"]["result"], "fail");
    let metrics = evidence.iter().find(|e| e["probe"] == "metrics").unwrap();
    assert!(
        metrics["last"]["detail"]
            .as_str()
            .unwrap()
            .contains("agent_up = 1, which fails `result == 2`"),
        "{metrics}"
    );
    assert_eq!(w.state(&name).unwrap().0, id);
}

#[test]
fn the_http_probe_can_use_the_published_port_and_an_expected_status() {
    let img = images();
    let w = World::new("hostport");
    let port = agent_docker::testing::free_port().unwrap().to_string();
    let name = w.name("agent");
    let id = w.docker_run(&name, &["-p", &format!("127.0.0.1:{port}:8080")], &img.refs["v1"]);
    let probe = ["--http-port", "8080", "--http-host-port", port.as_str()];
    // The demo agent answers 200: expecting 204 fails and rolls back, with the address in the evidence.
    let out = w.agentctl(
        &[
            &["update", &name, "--image", &img.refs["v2"], "-o", "json"],
            &probe[..],
            &["--http-status", "204"],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report = json(&out);
    let http = report["verdict"]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["probe"] == "http")
        .unwrap()
        .clone();
    let detail = http["last"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("127.0.0.1:{port}")) && detail.contains("200"),
        "{http}"
    );
    assert_eq!(w.state(&name).unwrap().0, id);
    let out = w.agentctl(
        &[
            &["update", &name, "--image", &img.refs["v2"], "-o", "json"],
            &probe[..],
            &["--http-status", "200"],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The engine (API 1.41, no HEALTHCHECK start interval) runs a container's HEALTHCHECK first after a whole
/// interval. agentctl runs the same command through exec at once and counts its result as HEALTHCHECK
/// evidence until the engine's own first run: with a 30 s interval the update is verified in about
/// `minHealthyTime` instead of failing its 15 s deadline while the engine still says `starting`.
#[test]
fn the_healthcheck_command_is_run_at_once_instead_of_after_the_first_interval() {
    let img = images();
    let w = World::new("hcnow");
    let name = w.name("agent");
    w.docker_run(&name, &["--health-interval", "30s"], &img.refs["v1"]);
    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"], "-o", "json"], FAST].concat());
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    let report = json(&out);
    eprintln!(
        "verified in {} (minHealthyTime 2s, HEALTHCHECK interval 30s)",
        report["verdict"]["elapsed"]
    );
    let hc = report["verdict"]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["probe"] == "healthcheck")
        .cloned()
        .unwrap_or_else(|| panic!("no healthcheck evidence: {report}"));
    // Its pass stands for the 30 s interval, as the engine's own result would: the later checks within
    // minHealthyTime report that pass instead of running the command again.
    assert!(
        hc["last"]["detail"]
            .as_str()
            .unwrap()
            .contains("run by agentctl at once; the result stands for its interval of 30s"),
        "{hc}"
    );
    // The engine itself has not run it yet: still `starting`, with no result.
    let status = stdout(&w.docker(&[
        "inspect",
        "-f",
        "{{.State.Health.Status}} {{len .State.Health.Log}}",
        &name,
    ]));
    assert_eq!(status.trim(), "starting 0", "{report}");
    // The user's interval was carried to the new container.
    let interval = stdout(&w.docker(&["inspect", "-f", "{{.Config.Healthcheck.Interval}}", &name]));
    assert_eq!(interval.trim(), "30s");
}

/// Agents that speak OpAMP to the control center: the gate takes the version from the description the
/// agent sent once, counts each message as a heartbeat, and shows the agent's own health; an agent that
/// reports itself unhealthy (a broken exporter) is rolled back with its error as the evidence.
#[test]
fn opamp_agents_pass_the_heartbeat_gate_and_one_reporting_itself_unhealthy_rolls_back() {
    let img = images();
    let w = World::new("opamp");
    let net = w.network("net", "10.235.1.0/24");
    let cc = control_center(&gateway(&w, &net));
    let run_agent = |suffix: &str, extra: &[&str]| {
        let name = w.name(suffix);
        let env_url = format!("CONTROL_CENTER_URL={}", cc.url);
        let env_token = format!("CONTROL_CENTER_TOKEN={TOKEN}");
        let mut args = vec![
            "--network",
            &net,
            "-e",
            &env_url,
            "-e",
            &env_token,
            "-e",
            "HEARTBEAT_INTERVAL_MS=300",
            "-e",
            "AGENT_OPAMP=1",
        ];
        args.extend_from_slice(extra);
        w.docker_run(&name, &args, &img.refs["v1"]);
        name
    };
    let update = |name: &str| {
        w.agentctl(&[
            "update",
            name,
            "--image",
            &img.refs["v2"],
            "-o",
            "json",
            "--heartbeat",
            &cc.url,
            "--heartbeat-token-file",
            cc.token_file.path().to_str().unwrap(),
            "--heartbeat-max-age",
            "3s",
            "--min-healthy-time",
            "2s",
            "--deadline",
            "10s",
            "--period",
            "300ms",
        ])
    };
    let good = run_agent("good", &[]);
    let out = update(&good);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    let evidence = report["verdict"]["evidence"].as_array().unwrap();
    let hb = evidence.iter().find(|e| e["probe"] == "heartbeat").unwrap();
    let detail = hb["last"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("reports 2.0.0") && detail.contains("healthy by its own report (running)"),
        "{hb}"
    );
    // The control center lists it from its OpAMP messages.
    let agents = req("GET", &format!("{}/v1/agents", cc.url), Some(TOKEN), None);
    assert!(
        agents.body.contains("\"version\":\"2.0.0\"") && agents.body.contains("\"healthy\":true"),
        "{}",
        agents.body
    );

    let broken = run_agent("broken", &["-e", "AGENT_OPAMP_UNHEALTHY=otlp: connection refused"]);
    let out = update(&broken);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report = json(&out);
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("reports itself unhealthy: otlp: connection refused") && reason.contains("exporter/otlp"),
        "{reason}"
    );
    assert_eq!(w.state(&broken).unwrap().2, img.refs["v1"], "rolled back");
}
