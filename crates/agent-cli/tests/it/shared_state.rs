//! State that outlives the runner: the lock on the engine excludes an agentctl with another state directory,
//! and a runner with an empty state directory repairs a killed update and undoes from what the engine keeps.

use crate::faults::Held;
use crate::support::*;

#[test]
fn two_runners_with_separate_state_dirs_never_change_one_target_at_once() {
    let img = images();
    let w = World::new("lockrace");
    let name = w.name("agent");
    w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fast = &FAST[..6];
    // Runner A holds mid-update, its new container started and under verification.
    let held = Held::start_in(
        a.path(),
        &[&["update", &name, "--image", &img.refs["v2"]], fast].concat(),
        "update:verify",
    );
    let holder_pid = held.child.id();
    let lock = format!("{name}.agentctl-lock");
    let labels = w.docker(&["inspect", "-f", "{{json .Config.Labels}}", &lock]);
    assert!(
        labels.status.success(),
        "no engine lock while A works: {}",
        stderr(&labels)
    );
    let labels: serde_json::Value = serde_json::from_slice(&labels.stdout).unwrap();
    assert_eq!(
        labels["io.agentctl.lock.pid"],
        holder_pid.to_string().as_str(),
        "{labels}"
    );
    // Runner B, another state directory (another store, no shared lease): refused, naming A, nothing
    // changed.
    let before = w.state(&name).unwrap();
    let refused = run_in(
        b.path(),
        &[&["update", &name, "--image", &img.refs["v3"]], fast].concat(),
        None,
    );
    assert_eq!(code(&refused), 1, "{}", stderr(&refused));
    let msg = stderr(&refused);
    assert!(
        msg.contains("locked on the engine") && msg.contains(&format!("pid {holder_pid}")),
        "{msg}"
    );
    assert_eq!(w.state(&name).unwrap(), before, "B changed the target");
    // Undo and status from B are refused too (status reports the operation under way instead).
    let undo = run_in(b.path(), &["undo", &name], None);
    assert_eq!(code(&undo), 1, "{}", stderr(&undo));
    assert!(stderr(&undo).contains("locked on the engine"), "{}", stderr(&undo));
    let status = run_in(b.path(), &["status", &name, "-o", "json"], None);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    assert!(
        json(&status)["inProgress"]
            .as_str()
            .is_some_and(|m| m.contains("locked on the engine")),
        "{}",
        stdout(&status)
    );
    let done = held.release();
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert!(w.state(&lock).is_none(), "A left its lock behind");
    assert!(
        w.state(&format!("{name}.agentctl-journal")).is_none(),
        "A left its journal behind"
    );
    // Once A is done, B goes ahead, from the history A left on the engine (revisions 1 and 2).
    let after = run_in(
        b.path(),
        &[&["update", &name, "--image", &img.refs["v3"], "-o", "json"], fast].concat(),
        None,
    );
    assert_eq!(code(&after), 0, "{}", stderr(&after));
    assert_eq!(json(&after)["revision"]["number"], 3, "{}", stdout(&after));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v3"]);
}

/// A runner killed during an update, its state directory gone with it (a CI runner), and a new runner with
/// an empty state directory: it repairs from the engine lock, completing the update when the engine's
/// history shows it was decided (killed at `done`), reverting it otherwise (the engine keeps the begin facts
/// and the history, not each step); then it undoes from the history on the engine.
#[test]
fn a_runner_with_an_empty_state_dir_repairs_a_killed_update_and_undoes() {
    let img = images();
    let w = World::new("fresh");
    let cases = [("start-new", "reverted"), ("commit", "reverted"), ("done", "completed")];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(step, action)| {
            let name = w.name(step);
            let v1_id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
            let (v2, v3) = (img.refs["v2"].clone(), img.refs["v3"].clone());
            let w_state = move |n: &str| {
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", "{{.Id}} {{.State.Running}} {{.Config.Image}}", n])
                    .output()
                    .unwrap();
                let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                out.status.success().then_some(s)
            };
            std::thread::spawn(move || {
                let fast = &FAST[..6];
                let first = tempfile::tempdir().unwrap();
                let up = run_in(first.path(), &[&["update", &name, "--image", &v2], fast].concat(), None);
                assert_eq!(code(&up), 0, "{step}: {}", stderr(&up));
                let v2_id = w_state(&name).unwrap().split(' ').next().unwrap().to_owned();
                let killed = run_in(
                    first.path(),
                    &[&["update", &name, "--image", &v3], fast].concat(),
                    Some(&format!("update:{step}")),
                );
                assert!(!killed.status.success(), "{step}: the switch must kill the process");
                assert!(
                    w_state(&format!("{name}.agentctl-lock")).is_some(),
                    "{step}: the lock stays"
                );
                assert!(
                    w_state(&format!("{name}.agentctl-journal")).is_some(),
                    "{step}: the begin facts stay"
                );
                drop(first);
                let fresh = tempfile::tempdir().unwrap();
                let status = run_in(fresh.path(), &["status", &name, "-o", "json"], None);
                assert_eq!(code(&status), 0, "{step}: {}", stderr(&status));
                let report = json(&status);
                let recovered = report["recovered"].as_array().cloned().unwrap_or_default();
                assert_eq!(recovered.len(), 1, "{step}: {report}");
                assert_eq!(recovered[0]["action"], action, "{step}: {report}");
                // What the engine tells: after the begin facts, or after the decision.
                let at = if action == "completed" { "commit" } else { "after-begin" };
                assert_eq!(recovered[0]["interruptedAt"], at, "{step}: {report}");
                let now = w_state(&name).unwrap();
                let want = if action == "completed" {
                    format!("true {v3}")
                } else {
                    format!("{v2_id} true {v2}")
                };
                assert!(now.ends_with(&want), "{step}: {now}, want {want}");
                assert!(w_state(&format!("{name}.agentctl-lock")).is_none(), "{step}");
                assert!(w_state(&format!("{name}.agentctl-journal")).is_none(), "{step}");
                let history = run_in(fresh.path(), &["history", &name, "-o", "json"], None);
                assert_eq!(code(&history), 0, "{step}: {}", stderr(&history));
                let rows = json(&history).as_array().cloned().unwrap_or_default();
                let numbers: Vec<u64> = rows.iter().filter_map(|r| r["revision"].as_u64()).collect();
                // The revision of an update that never decided lives only in the lost store.
                let want: &[u64] = if action == "completed" { &[1, 2, 3] } else { &[1, 2] };
                assert_eq!(numbers, want, "{step}: {}", stdout(&history));
                (step, name, v1_id, fresh)
            })
        })
        .collect();
    for h in handles {
        let (step, name, v1_id, fresh) = h.join().unwrap();
        // Undo to revision 1 from the history on the engine: the retained original container itself, as
        // the engine's copy records its id.
        let undo = run_in(
            fresh.path(),
            &[&["undo", &name, "--to-revision", "1"], &FAST[..6]].concat(),
            None,
        );
        assert_eq!(code(&undo), 0, "{step}: {}", stderr(&undo));
        let (id, running, image) = w.state(&name).unwrap();
        assert_eq!(
            (id.as_str(), running, image.as_str()),
            (v1_id.as_str(), true, img.refs["v1"].as_str()),
            "{step}"
        );
        assert_eq!(w.running(&name), [name.as_str()], "{step}: {:?}", w.containers(&name));
    }
}

#[test]
fn history_moves_to_a_postgresql_store_with_state_export_and_import() {
    let img = images();
    let w = World::new("export");
    let name = w.name("agent");
    let v1_id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let fast = &FAST[..6];
    let up = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    let file = w.state_dir().join("export.json");
    let export = w.agentctl(&["state", "export", "-f", file.to_str().unwrap()]);
    assert_eq!(code(&export), 0, "{}", stderr(&export));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    // Into a team's PostgreSQL store.
    let server = agent_rollout::testing::TestPostgres::start().expect("PostgreSQL (apt-get install postgresql)");
    let url = server.database("team").unwrap();
    let team = tempfile::tempdir().unwrap();
    let in_team = |args: &[&str]| {
        agentctl_in(team.path())
            .env("AGENTCTL_STATE", &url)
            .arg("--no-progress")
            .args(args)
            .output()
            .unwrap()
    };
    let import = in_team(&["state", "import", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&import), 0, "{}", stderr(&import));
    let summary = json(&import);
    assert_eq!(summary["revisions"], 2, "{summary}");
    assert!(summary["operations"].as_u64().unwrap() >= 1, "{summary}");
    let again = in_team(&["state", "import", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(json(&again)["revisions"], 0, "a second import adds nothing");
    let history = in_team(&["history", &name, "-o", "json"]);
    let rows = json(&history).as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{}", stdout(&history));
    assert!(
        rows[1]["by"].as_str().is_some_and(|b| !b.is_empty()),
        "who made it travels along"
    );
    // Not an export: refused, naming the file.
    std::fs::write(w.state_dir().join("junk.json"), b"{\"x\": 1}").unwrap();
    let junk = in_team(&["state", "import", w.state_dir().join("junk.json").to_str().unwrap()]);
    assert_eq!(code(&junk), 1);
    assert!(
        stderr(&junk).contains("junk.json is not an agentctl state export"),
        "{}",
        stderr(&junk)
    );
    // The team's store undoes from the imported history: the retained original container comes back.
    let undo = in_team(&[&["undo", &name], fast].concat());
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    assert_eq!(w.state(&name).unwrap().0, v1_id);
}

/// A lock on the engine as a runner on another machine leaves it (its labels, no renewal yet).
fn foreign_lock(w: &World, name: &str, acquired: time::OffsetDateTime) {
    let at = acquired.format(&time::format_description::well_known::Rfc3339).unwrap();
    let lock = format!("{name}.agentctl-lock");
    let out = w.docker(&[
        "create",
        "--name",
        &lock,
        "--label",
        "io.agentctl.record=lock",
        "--label",
        "io.agentctl.lock.host=ci-runner-7",
        "--label",
        "io.agentctl.lock.pid=4242",
        "--label",
        "io.agentctl.lock.holder=ci-runner-7:4242:99:beef",
        "--label",
        "io.agentctl.lock.purpose=update agent",
        "--label",
        "io.agentctl.lock.by=deploy-bot",
        "--label",
        &format!("io.agentctl.lock.acquired={at}"),
        "--label",
        "io.agentctl.lock.ttl=30",
        "agentctl-record:1",
        "agentctl-record",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_lock_from_another_machine_holds_until_it_expires_and_a_stranger_is_never_taken_for_a_lock() {
    let img = images();
    let w = World::new("foreign");
    let name = w.name("agent");
    w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let fast = &FAST[..6];
    // The record image exists once agentctl has taken any lock on this engine.
    let status = w.agentctl(&["status", &name]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let lock = format!("{name}.agentctl-lock");
    foreign_lock(&w, &name, time::OffsetDateTime::now_utc());
    let before = w.state(&name).unwrap();
    let refused = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&refused), 1, "{}", stderr(&refused));
    let msg = stderr(&refused);
    assert!(
        msg.contains("pid 4242 on ci-runner-7") && msg.contains("run by deploy-bot"),
        "{msg}"
    );
    assert_eq!(w.state(&name).unwrap(), before);
    // The same lock, expired (taken a minute ago, never renewed): taken over, and the update goes ahead.
    assert!(w.docker(&["rm", &lock]).status.success());
    foreign_lock(
        &w,
        &name,
        time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(60),
    );
    let up = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
    assert!(w.state(&lock).is_none());
    // A container agentctl did not make under the lock's name is refused, named, and left alone.
    let stranger = w.docker_run(&lock, &[], &img.refs["v1"]);
    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v3"]], fast].concat());
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("the container {lock}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.state(&lock).unwrap().0, stranger);
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
}
