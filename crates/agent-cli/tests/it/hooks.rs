//! Update hooks on the real engine: a pre-update hook that skips (exit 75) or refuses, a post-update hook that
//! passes or fails the new version, and an update lock the agent holds.

use crate::support::*;

fn update(w: &World, name: &str, image: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["update", name, "--image", image];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    w.agentctl(&args)
}

#[test]
fn a_pre_update_hook_skips_with_75_and_refuses_with_anything_else_changing_nothing() {
    let img = images();
    let w = World::new("hook-pre");
    let name = w.name("agent");
    let id = w.docker_run(&name, &[], &img.refs["v1"]);

    let out = update(
        &w,
        &name,
        &img.refs["v2"],
        &["--pre-update", "/agent exit 75", "-o", "json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["status"], "unchanged", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("exited 75: skipped"), "{r}");
    assert_eq!(
        w.state(&name).unwrap(),
        (id.clone(), true, img.refs["v1"].clone()),
        "not touched"
    );

    let out = update(&w, &name, &img.refs["v2"], &["--pre-update", "/agent exit 3"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("preUpdate hook `/agent exit 3` exited 3; nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.state(&name).unwrap(),
        (id, true, img.refs["v1"].clone()),
        "not touched"
    );

    // A hook that passes lets the update go on.
    let out = update(&w, &name, &img.refs["v2"], &["--pre-update", "/agent healthcheck"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
}

#[test]
fn a_post_update_hook_must_pass_for_the_new_version_to_stay() {
    let img = images();
    let w = World::new("hook-post");
    let name = w.name("agent");
    w.docker_run(&name, &[], &img.refs["v1"]);

    let out = update(&w, &name, &img.refs["v2"], &["--post-update", "/agent exit 1"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("`/agent exit 1` exited 1"), "{}", stderr(&out));
    let (_, running, image) = w.state(&name).unwrap();
    assert!(running && image == img.refs["v1"], "rolled back to v1");

    let out = update(
        &w,
        &name,
        &img.refs["v2"],
        &["--post-update", "/agent healthcheck", "-o", "json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evidence = json(&out)["verdict"]["evidence"].to_string();
    assert!(
        evidence.contains("post-update") && evidence.contains("exited 0"),
        "{evidence}"
    );
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
}

#[test]
fn the_update_waits_for_the_agents_update_lock() {
    let img = images();
    let w = World::new("hook-lock");
    let name = w.name("agent");
    // The agent holds /update.lock for 4 s after its start (as root: the scratch image has no directory its
    // own user may write, and the engine's archive API, which reads the lock, does not see a tmpfs).
    w.docker_run(
        &name,
        &["--user", "0:0", "-e", "AGENT_UPDATE_LOCK=/update.lock:4"],
        &img.refs["v1"],
    );
    let out = update(&w, &name, &img.refs["v2"], &["--update-lock", "/update.lock"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("holds its update lock /update.lock: waiting"), "{err}");
    assert!(err.contains("released its update lock"), "{err}");

    // A lock held longer than the timeout refuses the update and changes nothing.
    let name2 = w.name("busy");
    let id = w.docker_run(
        &name2,
        &["--user", "0:0", "-e", "AGENT_UPDATE_LOCK=/update.lock:600"],
        &img.refs["v1"],
    );
    let out = update(
        &w,
        &name2,
        &img.refs["v2"],
        &["--update-lock", "/update.lock", "--update-lock-timeout", "2s"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("still holds its update lock"), "{}", stderr(&out));
    assert_eq!(w.state(&name2).unwrap(), (id, true, img.refs["v1"].clone()));
}
