//! The CLI's own output, snapshot-tested (help, usage errors, completions).

use crate::support::*;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("DOCKER_HOST")
        .env_remove("AGENTCTL_STATE_DIR")
        .output()
        .unwrap()
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", stdout(&run(&["--help"])));
    insta::assert_snapshot!("update_help", stdout(&run(&["update", "--help"])));
}

#[test]
fn usage_errors_name_the_input_and_exit_2() {
    let out = run(&["update", "agent", "--image", "acme/Agent:1"]);
    assert_eq!(code(&out), 2);
    insta::assert_snapshot!("bad_image", stderr(&out));
    let out = run(&["update", "agent"]);
    assert_eq!(code(&out), 2);
    let out = run(&["undo", "agent", "--to-revision", "0"]);
    assert_eq!(code(&out), 2);
    insta::assert_snapshot!("bad_revision", stderr(&out));
}

#[test]
fn version_has_the_git_revision_and_completions_work() {
    let v = stdout(&run(&["--version"]));
    assert!(v.starts_with("agentctl 0.1.0 ("), "{v}");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("agentctl"), "{shell}");
    }
}

#[test]
fn an_unreachable_engine_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--host", "unix:///nonexistent/docker.sock", "status", "agent"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn the_scratch_dockerfile_template_builds_and_runs_healthy() {
    let w = World::new("tmpl");
    let ctx = tempfile::tempdir().unwrap();
    let binary = agent_docker::testing::demo_agent_binary().unwrap();
    std::fs::copy(&binary, ctx.path().join("agent")).unwrap();
    let tag = format!("agentctl-template-test:{}", w.run);
    let dockerfile = workspace_path("examples/dockerfiles/Dockerfile.scratch");
    let out = w.docker(&[
        "build",
        "-q",
        "-f",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        "VERSION=4.5.6",
        "--label",
        &w.label,
        "-t",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let labels = w.docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"org.opencontainers.image.version\"}} {{.Config.User}}",
        &tag,
    ]);
    assert_eq!(stdout(&labels).trim(), "4.5.6 65534:65534");
    let name = w.name("agent");
    w.docker_run(&name, &[], &tag);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let h = w.docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
        if stdout(&h).trim() == "healthy" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the template's HEALTHCHECK never passed"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let _ = w.docker(&["rm", "-f", &name]);
    let _ = w.docker(&["rmi", "-f", &tag]);
}

/// Output into a pipe that is already closed (`… | head -1`): no panic, the command's own exit code.
#[test]
fn a_closed_pipe_is_not_an_error() {
    for args in [
        &["completions", "bash"][..],
        &["--help"][..],
        &["rollout", "list", "-o", "json"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .arg("--state-dir")
            .arg(dir.path())
            .env("NO_COLOR", "1")
            .env_remove("AGENTCTL_STATE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_eq!(code(&out), 0, "{args:?}: {err}");
    }
}

/// A state URL with a password, in the environment or in an error, is never shown.
#[test]
fn a_state_url_password_shows_nowhere() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["history", "--help"])
        .env("AGENTCTL_STATE", "postgres://agentctl:hunter2@db.internal/agentctl")
        .env("DOCKER_HOST", "tcp://user:hunter3@127.0.0.1:1")
        .output()
        .unwrap();
    let help = stdout(&out);
    assert!(
        help.contains("AGENTCTL_STATE") && !help.contains("hunter2") && !help.contains("hunter3"),
        "{help}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args([
            "--state",
            "postgres://agentctl@127.0.0.1:1/agentctl?password=hunter2&sslmode=disable",
        ])
        .args(["rollout", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(!err.contains("hunter2") && err.contains("password=<redacted>"), "{err}");
}
