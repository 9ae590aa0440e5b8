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
