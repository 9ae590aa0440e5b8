//! `agentctl test` against the real engine: the contract cases, their JUnit XML, failures that name both
//! sides, and an environment that is gone afterwards, on success, on failure and on Ctrl-C.

use std::process::Command;
use std::time::{Duration, Instant};

use agent_rollout::contract::CONTRACT_LABEL;

use crate::support::*;

const QUICK: &[&str] = &["--min-healthy-time", "2s", "--deadline", "20s", "--period", "300ms"];

/// Containers and networks contract run `run` left behind, from the engine.
fn leftovers(run: &str) -> Vec<String> {
    let mut all = Vec::new();
    for what in [&["ps", "-a"][..], &["network", "ls"][..]] {
        let out = Command::new("docker")
            .args(what)
            .args(["-q", "--filter", &format!("label={CONTRACT_LABEL}={run}")])
            .output()
            .unwrap();
        all.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned));
    }
    all
}

fn test_image(w: &World, image: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["test", image];
    args.extend_from_slice(QUICK);
    args.extend_from_slice(extra);
    w.agentctl(&args)
}

#[test]
fn a_good_image_passes_every_case_and_leaves_nothing() {
    let img = images();
    let w = World::new("contract");
    let junit = w.state.path().join("contract.xml");
    let out = test_image(
        &w,
        &img.refs["v1"],
        &[
            "--http-port",
            "8080",
            "--protocol",
            ">=1.0, <2",
            "--require-series",
            "agent_up",
            "--exec",
            "/agent healthcheck",
            "--read-only",
            "--target-host",
            "unix:///var/run/docker.sock",
            "--junit",
            junit.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    let names: Vec<&str> = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "platform",
            "non-root",
            "healthy",
            "heartbeat",
            "metrics",
            "exec: /agent healthcheck",
            "reconnect",
            "graceful-stop"
        ]
    );
    for c in r["cases"].as_array().unwrap() {
        assert_eq!(c["outcome"], "passed", "{c}");
    }
    assert_eq!(r["version"], "1.0.0");
    let heartbeat = r["cases"][3]["detail"].as_str().unwrap();
    assert!(heartbeat.contains("version 1.0.0, protocol 1.0"), "{heartbeat}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="8""#) && xml.contains(r#"failures="0""#), "{xml}");
    assert_eq!(
        leftovers(r["run"].as_str().unwrap()),
        Vec::<String>::new(),
        "the environment is removed"
    );
}

#[test]
fn a_wrong_protocol_or_a_silent_agent_fails_and_names_why() {
    let img = images();
    let w = World::new("contract-bad");
    // The agent speaks protocol 2.0; the control center accepts 1.x.
    let out = test_image(
        &w,
        &img.refs["v1"],
        &["--protocol", ">=1.0, <2", "--env", "AGENT_PROTOCOL=2.0", "-o", "json"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["cases"][3]["name"], "heartbeat");
    assert_eq!(r["cases"][3]["outcome"], "failed");
    assert_eq!(
        r["cases"][3]["detail"],
        "it speaks protocol 2.0, the control center accepts >=1.0, <2"
    );
    assert_eq!(leftovers(r["run"].as_str().unwrap()), Vec::<String>::new());

    // No heartbeat at all: not healthy, and the cases that need a healthy agent are skipped, not passed.
    let junit = w.state.path().join("silent.xml");
    let out = test_image(
        &w,
        &img.refs["silent"],
        &["--junit", junit.to_str().unwrap(), "-o", "json"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let r = json(&out);
    let healthy = &r["cases"][2];
    assert_eq!(healthy["outcome"], "failed", "{healthy}");
    assert!(healthy["detail"].as_str().unwrap().contains("heartbeat"), "{healthy}");
    assert_eq!(r["cases"][3]["outcome"], "skipped");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"failures="1""#) && xml.contains(r#"skipped="4""#),
        "{xml}"
    );
    assert_eq!(
        leftovers(r["run"].as_str().unwrap()),
        Vec::<String>::new(),
        "removed after a failure too"
    );

    // An agent that ignores SIGTERM is killed at its stop timeout: exit 137 named.
    let out = test_image(
        &w,
        &img.refs["v1"],
        &["--env", "AGENT_FAILURE=ignore-term", "--stop-timeout", "2s"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("failed graceful-stop: exit 137"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("did not stop on its stop signal"),
        "{}",
        stdout(&out)
    );
}

/// Starts `agentctl test` on the slow image in the background and returns it with its run id once its
/// agent and network exist (or after 30 s; callers assert what they need).
fn start_slow_run(w: &World, img: &Images) -> (std::process::Child, String) {
    let mut child = agentctl_in(w.state.path())
        .args(["--no-progress", "test", &img.refs["slow"]])
        .args(QUICK)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first line names the run.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.as_mut().unwrap()), &mut first).unwrap();
    let run = first
        .split("(run ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no run id in {first:?}"))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leftovers(&run).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, run)
}

#[test]
fn ctrl_c_removes_the_environment() {
    let img = images();
    let w = World::new("contract-int");
    let (mut child, run) = start_slow_run(&w, img);
    assert_eq!(
        leftovers(&run).len(),
        2,
        "the agent and its network exist while the test runs"
    );
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(leftovers(&run), Vec::<String>::new(), "Ctrl-C removed the environment");
}

/// A run killed with -9 cannot clean up: its agent (holding its control center's token) and its network
/// stay, until the next run sees that their owner process is gone and removes them.
#[test]
fn the_environment_of_a_killed_run_is_swept_by_the_next_one() {
    let img = images();
    let w = World::new("contract-kill");
    let (mut child, run) = start_slow_run(&w, img);
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
    assert_eq!(leftovers(&run).len(), 2, "a killed run leaves its agent and network");
    let out = test_image(&w, &img.refs["v1"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(leftovers(&run), Vec::<String>::new(), "the next run swept them");
}

#[test]
fn dependencies_and_test_containers_run_on_the_test_network() {
    let img = images();
    let w = World::new("contract-deps");
    let v1 = &img.refs["v1"];
    let out = test_image(
        &w,
        v1,
        &[
            "--dependency",
            &format!("collector={v1}"),
            // The agent is told where its dependency is.
            "--env",
            "COLLECTOR_ADDR=${IP:collector}:8080",
            "--test-container",
            &format!("reach-agent={v1} probe ${{AGENT_IP}}:8080"),
            "--test-container",
            &format!("reach-collector={v1} probe ${{IP:collector}}:8080"),
            "--test-container",
            &format!("fails={v1} exit 4"),
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let r = json(&out);
    let case = |name: &str| {
        r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name}: {r}"))
            .clone()
    };
    assert_eq!(case("healthy")["outcome"], "passed", "{r}");
    let reach = case("test-container: reach-agent");
    assert_eq!(reach["outcome"], "passed", "{reach}");
    let detail = reach["detail"].as_str().unwrap();
    assert!(
        detail.contains(":8080: ok") && !detail.contains("${"),
        "the agent's address was put in: {reach}"
    );
    assert_eq!(case("test-container: reach-collector")["outcome"], "passed", "{r}");
    let fails = case("test-container: fails");
    assert_eq!(fails["outcome"], "failed");
    assert!(fails["detail"].as_str().unwrap().starts_with("exit 4"), "{fails}");
    assert_eq!(
        leftovers(r["run"].as_str().unwrap()),
        Vec::<String>::new(),
        "dependencies and test containers are removed"
    );
}
