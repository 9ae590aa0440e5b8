//! `agentctl deliver` end to end on the real engine and the local registry: build → test → rollout → watch,
//! a version stopped by its tests that never reaches a host, one stopped by its canary and rolled back, the
//! delivery record, and a killed delivery repaired by the next one.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

/// A delivery directory in a git work tree: the demo agent, a Dockerfile with `extra_env`, a delivery file
/// for targets `names` on the local engine.
fn delivery_dir(w: &World, repo: &str, names: &[String], extra_env: &str, watch: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::copy(agent_docker::testing::demo_agent_binary().unwrap(), p.join("agent")).unwrap();
    std::fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM scratch\nARG VERSION\nENV AGENT_VERSION=${{VERSION}}{extra_env}\nCOPY agent /agent\nUSER 65534:65534\nHEALTHCHECK --interval=2s CMD [\"/agent\", \"healthcheck\"]\nENTRYPOINT [\"/agent\"]\n"
        ),
    )
    .unwrap();
    let targets: String = names
        .iter()
        .map(|n| format!("    - {{host: \"unix:///var/run/docker.sock\", container: {n}}}\n"))
        .collect();
    let watch = if watch {
        "watch:\n  window: 4s\n  alertFor: 2s\n"
    } else {
        ""
    };
    std::fs::write(
        p.join("delivery.yaml"),
        format!(
            "build:\n  image: {repo}\ntest:\n  protocol: \">=1.0, <2\"\n  requireSeries: [agent_up]\n  stopTimeout: 5s\nrollout:\n  name: {}\n  targets:\n{targets}  strategy: {{canary: {{steps: [{{setWeight: 50}}]}}}}\n  health: {{minHealthyTime: 2s, deadline: 20s, period: 300ms}}\n{watch}",
            w.name("fleet")
        ),
    )
    .unwrap();
    let commit = git_commit_all(p);
    (dir, commit)
}

fn deliver(w: &World, dir: &Path, version: &str, env: &[(&str, &str)]) -> Output {
    let file = dir.join("delivery.yaml");
    let mut all = vec![("AGENTCTL_ACTOR", "ci-job-42")];
    all.extend_from_slice(env);
    w.agentctl_env(&["deliver", "-f", file.to_str().unwrap(), "--version", version], &all)
}

fn image_of(name: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Config.Image}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn records(w: &World) -> serde_json::Value {
    json(&w.agentctl(&["deliveries", "-o", "json"]))
}

/// Two agents of the fixture's v1, run with `args`.
fn fleet(w: &World, args: &[&str]) -> Vec<String> {
    let img = images();
    let names: Vec<String> = (1..=2).map(|i| w.name(&format!("a{i}"))).collect();
    for n in &names {
        w.docker_run(n, args, &img.refs["v1"]);
    }
    names
}

#[test]
fn a_good_version_is_built_tested_rolled_out_watched_and_recorded() {
    let img = images();
    let w = World::new("deliver");
    let names = fleet(&w, &[]);
    let repo = format!("{}/agentctl-it/delivered-{}", img.registry, w.run);
    let (dir, commit) = delivery_dir(&w, &repo, &names, "", true);
    let out = deliver(&w, dir.path(), "2.1.0", &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    for stage in ["build ", "test ", "rollout ", "watch "] {
        assert!(err.contains(stage), "{stage} in {err}");
    }
    // The engine runs the pushed digest on every target.
    let r = &records(&w)[0];
    let pinned = r["image"].as_str().unwrap().to_owned();
    assert!(pinned.starts_with(&format!("{repo}@sha256:")), "{r}");
    for n in &names {
        assert_eq!(image_of(n), pinned, "{n}");
    }
    assert_eq!(r["outcome"], "delivered");
    assert_eq!(r["by"], "ci-job-42");
    assert_eq!(r["commit"], commit.as_str());
    assert_eq!(r["version"], "2.1.0");
    assert_eq!(r["stage"], "done");
    // The history of each target says who changed it.
    let hist = json(&w.agentctl(&["history", &names[0], "-o", "json"]));
    let last = hist.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["by"], "ci-job-42", "{hist}");
    let cases = r["tests"]["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 7 && cases.iter().all(|c| c["outcome"] == "passed"),
        "{cases:?}"
    );
    let _ = w.docker(&[
        "rmi",
        "-f",
        &format!("{repo}:2.1.0"),
        &format!("{repo}:2.1.0-{}", &commit[..7]),
    ]);
}

/// Targets whose environment holds the planted secrets and a work tree whose remote URL holds a token:
/// a delivery (build, test, rollout, watch) prints neither, records neither, and labels its image with the
/// remote's URL without the token.
#[test]
fn a_delivery_prints_no_secret_of_its_targets_or_its_source() {
    let img = images();
    let w = World::new("deliver-secrets");
    let env: Vec<String> = crate::security::PLANTED
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let args: Vec<&str> = env.iter().flat_map(|e| ["-e", e.as_str()]).collect();
    let names = fleet(&w, &args);
    let repo = format!("{}/agentctl-it/secret-{}", img.registry, w.run);
    let (dir, commit) = delivery_dir(&w, &repo, &names, "", false);
    let remote_token = "glpat-planted13remotetoken";
    let added = Command::new("git")
        .current_dir(dir.path())
        .args(["remote", "add", "origin"])
        .arg(format!("https://ci:{remote_token}@git.example.invalid/acme/agent.git"))
        .status()
        .unwrap();
    assert!(added.success());
    let file = dir.path().join("delivery.yaml");
    let mut outputs = vec![w.agentctl_env(
        &[
            "-vv",
            "-o",
            "json",
            "--secret-pattern",
            "CUSTOM_*",
            "deliver",
            "-f",
            file.to_str().unwrap(),
            "--version",
            "2.2.0",
        ],
        &[],
    )];
    assert_eq!(code(&outputs[0]), 0, "{}\n{}", stdout(&outputs[0]), stderr(&outputs[0]));
    outputs.push(w.agentctl(&["deliveries", "-o", "json"]));
    outputs.push(w.agentctl(&["state", "export"]));
    let pinned = records(&w)[0]["image"].as_str().unwrap().to_owned();
    let labels = w.docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", &pinned]);
    assert!(
        stdout(&labels).contains("https://git.example.invalid/acme/agent.git"),
        "the source label keeps the URL: {}",
        stdout(&labels)
    );
    outputs.push(labels);
    let mut needles = crate::security::needles();
    needles.push(remote_token);
    for needle in needles {
        for o in &outputs {
            assert!(
                !stdout(o).contains(needle) && !stderr(o).contains(needle),
                "{needle} printed: {}{}",
                stdout(o),
                stderr(o)
            );
        }
    }
    // Every secret still reached the new containers.
    for n in &names {
        let running = stdout(&w.docker(&["inspect", "-f", "{{json .Config.Env}}", n]));
        assert_eq!(image_of(n), pinned, "{n}");
        for (k, v) in crate::security::PLANTED {
            assert!(running.contains(&format!("{k}={v}")), "{n}: {k} kept its value");
        }
    }
    let _ = w.docker(&[
        "rmi",
        "-f",
        &format!("{repo}:2.2.0"),
        &format!("{repo}:2.2.0-{}", &commit[..7]),
    ]);
}

#[test]
fn a_version_that_fails_its_tests_never_reaches_a_host() {
    let img = images();
    let w = World::new("deliver-bad");
    let names = fleet(&w, &[]);
    let before: Vec<String> = names
        .iter()
        .map(|n| w.docker(&["inspect", "-f", "{{.Id}}", n]))
        .map(|o| stdout(&o))
        .collect();
    for (i, (env, needle)) in [
        ("\nENV AGENT_FAILURE=no-heartbeat", "healthy: "),
        (
            "\nENV AGENT_PROTOCOL=2.0",
            "it speaks protocol 2.0, the control center accepts >=1.0, <2",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let repo = format!("{}/agentctl-it/untested-{i}-{}", img.registry, w.run);
        let (dir, _) = delivery_dir(&w, &repo, &names, env, false);
        let out = deliver(&w, dir.path(), "3.0.0", &[]);
        assert_eq!(code(&out), 1, "{env}: {}\n{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains(needle), "{env}: {}", stdout(&out));
        let after: Vec<String> = names
            .iter()
            .map(|n| w.docker(&["inspect", "-f", "{{.Id}}", n]))
            .map(|o| stdout(&o))
            .collect();
        assert_eq!(before, after, "{env}: no target was touched");
        for n in &names {
            assert_eq!(image_of(n), img.refs["v1"]);
        }
        // Only a tested image is pushed: the registry has no such version.
        let pull = w.docker(&["pull", &format!("{repo}:3.0.0")]);
        assert!(
            !pull.status.success(),
            "{env}: the untested image is not in the registry"
        );
    }
    let all = records(&w);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "test-failed" && r["stage"] == "test"),
        "{all}"
    );
}

#[test]
fn a_version_that_passes_its_tests_but_fails_its_canary_is_rolled_back() {
    let img = images();
    let w = World::new("deliver-canary");
    // The hosts' configuration breaks 4.0.0 (it exits at start there), which the clean test environment
    // cannot see: the canary catches it.
    let names = fleet(&w, &["-e", "AGENT_BROKEN_ON=4.0.0"]);
    let ids: Vec<String> = names.iter().map(|n| w.state(n).unwrap().0).collect();
    let repo = format!("{}/agentctl-it/canary-{}", img.registry, w.run);
    let (dir, _) = delivery_dir(&w, &repo, &names, "", false);
    let out = deliver(&w, dir.path(), "4.0.0", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(image_of(n), img.refs["v1"], "{n} runs the old version again");
        // Not a copy: the very container that ran before.
        assert_eq!(w.state(n), Some((id.clone(), true, img.refs["v1"].clone())), "{n}");
    }
    let r = &records(&w)[0];
    assert_eq!(r["outcome"], "rolled-back", "{r}");
    assert_eq!(r["stage"], "rollout");
    assert!(r["tests"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["outcome"] == "passed"));
}

#[cfg(feature = "testing")]
#[test]
fn a_killed_delivery_is_repaired_by_the_next_one() {
    let img = images();
    let w = World::new("deliver-kill");
    let names = fleet(&w, &[]);
    let repo = format!("{}/agentctl-it/killed-{}", img.registry, w.run);
    let (dir, _) = delivery_dir(&w, &repo, &names, "", false);
    // Killed (as by kill -9) while starting the first target's new container.
    let out = deliver(&w, dir.path(), "5.0.0", &[("AGENTCTL_CRASH_AT", "start-new")]);
    assert_ne!(code(&out), 0);
    assert_eq!(
        records(&w)[0]["outcome"],
        "running",
        "the record shows the delivery did not end"
    );
    let out = deliver(&w, dir.path(), "5.0.1", &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("repairing delivery"), "{}", stderr(&out));
    let all = records(&w);
    let first = &all[0];
    assert_ne!(first["outcome"], "running", "{first}");
    assert!(
        first["reason"].as_str().unwrap().contains("interrupted during rollout"),
        "{first}"
    );
    let second = &all[1];
    assert_eq!(second["outcome"], "delivered");
    for n in &names {
        assert_eq!(image_of(n), second["image"].as_str().unwrap(), "{n}");
        assert_eq!(w.state(n).map(|s| s.1), Some(true), "{n} runs");
    }
}

/// The `run:` script of the GitHub Actions step named `step`, and the `script:` of the GitLab job `job`.
fn ci_scripts() -> (String, String) {
    let read = |f: &str| -> serde_json::Value {
        serde_saphyr::from_str(&std::fs::read_to_string(workspace_path(&format!("examples/ci/{f}"))).unwrap()).unwrap()
    };
    let gh = read("github-actions.yml");
    let step = gh["jobs"]["deliver"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Deliver")
        .expect("a Deliver step")["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let gl = read("gitlab-ci.yml");
    let script = gl["deliver"]["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    (step, script)
}

#[test]
fn the_ci_examples_run_as_written() {
    let img = images();
    let w = World::new("deliver-ci");
    let names = fleet(&w, &[]);
    let repo = format!("{}/agentctl-it/ci-{}", img.registry, w.run);
    let (dir, _) = delivery_dir(&w, &repo, &names, "", false);
    // As in a repository: the delivery file under deploy/, the build context at the root.
    let text = std::fs::read_to_string(dir.path().join("delivery.yaml")).unwrap();
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(
        dir.path().join("deploy/delivery.yaml"),
        text.replacen("build:\n", "build:\n  context: ..\n", 1),
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_agentctl")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (github, gitlab) = ci_scripts();
    // The shared form the examples use: AGENTCTL_STATE names the team's PostgreSQL, and each job runs
    // with an empty state directory of its own, as on a fresh runner.
    let server = agent_rollout::testing::TestPostgres::start().expect("PostgreSQL (apt-get install postgresql)");
    let shared = server.database("team").unwrap();
    for (ci, script, env) in [
        (
            "github",
            github,
            [("GITHUB_REF_NAME", "v6.0.0"), ("AGENTCTL_ACTOR", "github:ci/run-1")],
        ),
        (
            "gitlab",
            gitlab,
            [("CI_COMMIT_TAG", "v6.0.1"), ("AGENTCTL_ACTOR", "gitlab:ci/job-2")],
        ),
    ] {
        let job_dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .args(["-e", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("AGENTCTL_STATE_DIR", job_dir.path())
            .env("AGENTCTL_STATE", &shared)
            .env("NO_COLOR", "1")
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{ci}: {}\n{}", stdout(&out), stderr(&out));
        let lines = std::fs::read_to_string(dir.path().join("delivery.jsonl")).unwrap();
        let record: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        assert!(
            lines.lines().count() > 1,
            "{ci}: the rollout's events come first: {lines}"
        );
        assert_eq!(record["outcome"], "delivered", "{ci}: {record}");
        assert_eq!(record["by"], env[1].1);
        for n in &names {
            assert_eq!(image_of(n), record["image"].as_str().unwrap(), "{ci}: {n}");
        }
    }
    // Both jobs' deliveries are in the shared store.
    let listed = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["deliveries", "-o", "json"])
        .env("AGENTCTL_STATE", &shared)
        .output()
        .unwrap();
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let by: Vec<String> = json(&listed)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["by"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        by.contains(&"github:ci/run-1".to_owned()) && by.contains(&"gitlab:ci/job-2".to_owned()),
        "{by:?}"
    );
}

/// The README's main command: the whole loop on the demo agent, as an operator runs it.
#[test]
fn the_demo_runs_the_whole_loop() {
    images();
    let w = World::new("demo");
    let out = w.agentctl(&["demo", "--agents", "2"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let (out_text, err) = (stdout(&out), stderr(&out));
    for line in ["delivered", "test-failed", "rolled-back"] {
        assert!(out_text.contains(line), "{line} in the deliveries table: {out_text}");
    }
    assert!(
        err.contains("failed heartbeat: it speaks protocol 2.0, the control center accepts >=1.0, <2"),
        "{err}"
    );
    assert!(err.contains("demo finished"), "{err}");
    let left = w.docker(&["ps", "-aq", "--filter", "name=demo-agent-"]);
    assert_eq!(stdout(&left).trim(), "", "the demo removed its fleet");
}

#[test]
fn a_watch_alert_rolls_back_and_a_pause_exits_4() {
    let img = images();
    let w = World::new("deliver-watch");
    // The hosts break 7.0.0 eight seconds after its start: it passes its tests and its canary, and the
    // watch after 100 % catches it.
    let names = fleet(&w, &["-e", "AGENT_CRASH_ON=7.0.0:8"]);
    let repo = format!("{}/agentctl-it/watched-{}", img.registry, w.run);
    let (dir, _) = delivery_dir(&w, &repo, &names, "", true);
    let file = dir.path().join("delivery.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("window: 4s", "window: 20s")).unwrap();
    let out = deliver(&w, dir.path(), "7.0.0", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let r = &records(&w)[0];
    assert_eq!(
        (r["outcome"].as_str(), r["stage"].as_str()),
        (Some("rolled-back"), Some("watch")),
        "{r}"
    );
    assert!(r["reason"].as_str().unwrap().contains("rule container fired"), "{r}");
    for n in &names {
        assert_eq!(image_of(n), img.refs["v1"], "{n} runs the old version again");
        assert_eq!(w.state(n).map(|s| s.1), Some(true), "{n} runs");
    }

    // A canary that pauses until promoted: exit 4, recorded as paused.
    std::fs::write(
        &file,
        text.replace("[{setWeight: 50}]", "[{setWeight: 50}, {pause: {}}]")
            .replace("watch:\n  window: 4s\n  alertFor: 2s\n", ""),
    )
    .unwrap();
    let out = deliver(&w, dir.path(), "7.1.0", &[]);
    assert_eq!(code(&out), 4, "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(records(&w)[1]["outcome"], "paused");
}
