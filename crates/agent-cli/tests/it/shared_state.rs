//! State that outlives the runner: the lock on the engine excludes an agentctl with another state directory,
//! and a runner with an empty state directory repairs a killed update and undoes from what the engine keeps.

use std::path::Path;
use std::process::Output;

use crate::faults::Held;
use crate::support::*;

/// agentctl with its own state directory, optionally killed at `crash` (`KIND:STEP`).
fn run_in(state: &Path, args: &[&str], crash: Option<&str>) -> Output {
    let mut cmd = agentctl_in(state);
    cmd.arg("--no-progress").args(args);
    match crash {
        Some(s) => cmd.env("AGENTCTL_CRASH_AT", s),
        None => cmd.env_remove("AGENTCTL_CRASH_AT"),
    };
    cmd.output().unwrap()
}

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

#[test]
fn a_runner_with_an_empty_state_dir_repairs_a_killed_update_and_undoes() {
    let img = images();
    let w = World::new("fresh");
    let name = w.name("agent");
    let v1_id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let fast = &FAST[..6];
    let first = tempfile::tempdir().unwrap();
    let up = run_in(
        first.path(),
        &[&["update", &name, "--image", &img.refs["v2"]], fast].concat(),
        None,
    );
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    let v2_id = w.state(&name).unwrap().0;
    // The first runner is killed half-way through the next update, and its state directory is gone with
    // it (a CI runner).
    let killed = run_in(
        first.path(),
        &[&["update", &name, "--image", &img.refs["v3"]], fast].concat(),
        Some("update:start-new"),
    );
    assert!(!killed.status.success(), "the switch must kill the process");
    assert!(
        w.state(&format!("{name}.agentctl-lock")).is_some(),
        "the killed runner's lock stays"
    );
    drop(first);
    // A new runner with an empty state directory repairs from the journal in the engine lock.
    let fresh = tempfile::tempdir().unwrap();
    let status = run_in(fresh.path(), &["status", &name, "-o", "json"], None);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let report = json(&status);
    let recovered = report["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), 1, "{report}");
    assert_eq!(recovered[0]["action"], "reverted", "{report}");
    assert_eq!(recovered[0]["interruptedAt"], "start-new", "{report}");
    let (id, running, image) = w.state(&name).unwrap();
    assert_eq!(
        (id.as_str(), running, image.as_str()),
        (v2_id.as_str(), true, img.refs["v2"].as_str())
    );
    assert_eq!(w.running(&name), [name.as_str()], "{:?}", w.containers(&name));
    assert!(w.state(&format!("{name}.agentctl-lock")).is_none());
    // Its history came from the engine: revisions 1 and 2, by whoever made them.
    let history = run_in(fresh.path(), &["history", &name, "-o", "json"], None);
    assert_eq!(code(&history), 0, "{}", stderr(&history));
    let rows = json(&history).as_array().cloned().unwrap_or_default();
    let numbers: Vec<u64> = rows.iter().filter_map(|r| r["revision"].as_u64()).collect();
    assert_eq!(numbers, [1, 2], "{}", stdout(&history));
    // Undo goes back to revision 1: the retained original container itself, as the engine's copy of the
    // history records its id.
    let undo = run_in(fresh.path(), &[&["undo", &name], fast].concat(), None);
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    let (id, running, image) = w.state(&name).unwrap();
    assert_eq!(
        (id.as_str(), running, image.as_str()),
        (v1_id.as_str(), true, img.refs["v1"].as_str())
    );
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
