//! A process killed at every journaled step of an update (the `AGENTCTL_CRASH_AT` test switch aborts the
//! process right after the step's intent is durable, as `kill -9` would), then repaired by the next command.

use crate::support::*;

/// Every journaled step of an update except `revert`, which only a failed update reaches.
fn steps() -> Vec<&'static str> {
    agent_rollout::UPDATE_STEPS
        .iter()
        .copied()
        .filter(|s| *s != "revert")
        .collect()
}

#[test]
fn a_kill_at_every_step_is_repaired_by_the_next_command() {
    let img = images();
    let w = World::new("crash");
    let handles: Vec<_> = steps()
        .into_iter()
        .map(|step| {
            let name = w.name(step);
            let vol = w.volume(&format!("{step}-data"));
            let id = w.docker_run(
                &name,
                &["--restart", "unless-stopped", "-v", &format!("{vol}:/data")],
                &img.refs["v1"],
            );
            let state = tempfile::tempdir().unwrap();
            let step = step.to_string();
            let v2 = img.refs["v2"].clone();
            std::thread::spawn(move || {
                let killed = run_in(
                    state.path(),
                    &[&["update", &name, "--image", &v2], &FAST[..6]].concat(),
                    Some(&step),
                );
                let repaired = run_in(state.path(), &["status", &name, "-o", "json"], None);
                (step, name, id, vol, killed, repaired, state)
            })
        })
        .collect();
    for h in handles {
        let (step, name, id, vol, killed, repaired, _state) = h.join().unwrap();
        assert!(
            !killed.status.success(),
            "{step}: the switch must kill the process: {}",
            stderr(&killed)
        );
        assert_eq!(code(&repaired), 0, "{step}: {}", stderr(&repaired));
        let report = json(&repaired);
        let recovered = report["recovered"].as_array().unwrap();
        assert_eq!(recovered.len(), 1, "{step}: {report}");
        assert_eq!(recovered[0]["interruptedAt"], step.as_str());
        // Exactly one instance, running, under the name; nothing retained is running.
        let all = w.containers(&name);
        let running: Vec<&String> = all.iter().filter(|c| w.state(c).unwrap().1).collect();
        assert_eq!(running, [&name], "{step}: {all:?}");
        let (now, _, image) = w.state(&name).unwrap();
        if step == "commit" || step == "done" {
            assert_eq!(recovered[0]["action"], "completed");
            assert_eq!(image, img.refs["v2"], "{step}: a committed update stays");
            let retained = format!("{name}.rev1");
            let p = w.docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &retained]);
            assert_eq!(stdout(&p).trim(), "no");
        } else {
            assert_eq!(recovered[0]["action"], "reverted");
            assert_eq!(now, id, "{step}: the original container is back");
            assert_eq!(image, img.refs["v1"]);
            let p = w.docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &name]);
            assert_eq!(stdout(&p).trim(), "unless-stopped", "{step}: restart policy restored");
            assert_eq!(all, std::slice::from_ref(&name), "{step}: no leftover container");
        }
        // The volume is still mounted where it was.
        let m = w.docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &name]);
        assert_eq!(stdout(&m).trim(), vol, "{step}");
    }
}

/// Runs agentctl with its own state dir, optionally killed at `crash` (`KIND:STEP`).
fn run_in(state: &std::path::Path, args: &[&str], crash: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"));
    cmd.arg("--state-dir")
        .arg(state)
        .arg("--no-progress")
        .args(args)
        .env("NO_COLOR", "1");
    match crash {
        Some(s) => cmd.env("AGENTCTL_CRASH_AT", s),
        None => cmd.env_remove("AGENTCTL_CRASH_AT"),
    };
    cmd.output().unwrap()
}

/// A start-first update killed at every step of its preview (`stage`) and of the switch (`promote`), and an
/// undo killed at every step: the next command leaves exactly one running instance under the name, the
/// old version unless the switch had committed, no preview, and the volume's bytes unchanged.
#[test]
fn kills_during_start_first_and_undo_are_repaired_by_the_next_command() {
    let img = images();
    let w = World::new("crash2");
    let mut cases: Vec<String> = ["begin", "create-new", "start-new", "verify", "done"]
        .iter()
        .map(|s| format!("stage:{s}"))
        .collect();
    cases.extend(steps().iter().map(|s| format!("promote:{s}")));
    cases.extend(steps().iter().map(|s| format!("undo:{s}")));
    let handles: Vec<_> = cases
        .into_iter()
        .map(|case| {
            let suffix = case.replace(':', "-");
            let name = w.name(&suffix);
            let vol = w.volume(&format!("{suffix}-d"));
            crate::update::seed_volume(&w, &vol, &format!("data of {suffix}"));
            let seed = crate::update::read_volume_file(&w, &vol);
            w.docker_run(
                &name,
                &["--restart", "unless-stopped", "-v", &format!("{vol}:/data")],
                &img.refs["v1"],
            );
            let state = tempfile::tempdir().unwrap();
            let (v1, v2) = (img.refs["v1"].clone(), img.refs["v2"].clone());
            std::thread::spawn(move || {
                let fast = &FAST[..6];
                let (before, killed) = if case.starts_with("undo:") {
                    let up = run_in(state.path(), &[&["update", &name, "--image", &v2], fast].concat(), None);
                    assert_eq!(code(&up), 0, "{case}: {}", stderr(&up));
                    let killed = run_in(state.path(), &[&["undo", &name], fast].concat(), Some(&case));
                    (v2.clone(), killed)
                } else {
                    let args = [&["update", &name, "--image", &v2, "--strategy", "start-first"], fast].concat();
                    (v1.clone(), run_in(state.path(), &args, Some(&case)))
                };
                let repaired = run_in(state.path(), &["status", &name, "-o", "json"], None);
                (case, name, vol, before, killed, repaired, seed, state)
            })
        })
        .collect();
    for h in handles {
        let (case, name, vol, before, killed, repaired, seed, _state) = h.join().unwrap();
        assert!(!killed.status.success(), "{case}: the switch must kill the process");
        assert_eq!(code(&repaired), 0, "{case}: {}", stderr(&repaired));
        let all = w.containers(&name);
        let running: Vec<&String> = all.iter().filter(|c| w.state(c).unwrap().1).collect();
        assert_eq!(running, [&name], "{case}: {all:?}");
        assert!(
            !all.contains(&format!("{name}.preview")),
            "{case}: a preview is left: {all:?}"
        );
        let image = w.state(&name).unwrap().2;
        let committed = case.ends_with(":commit") || case.ends_with(":done") && !case.starts_with("stage:");
        let after = if !committed {
            before.clone()
        } else if case.starts_with("undo:") {
            img.refs["v1"].clone()
        } else {
            img.refs["v2"].clone()
        };
        assert_eq!(image, after, "{case}");
        // The volume is mounted and its bytes are what they were.
        let m = w.docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &name]);
        assert_eq!(stdout(&m).trim(), vol, "{case}");
        assert_eq!(crate::update::read_volume_file(&w, &vol), seed, "{case}: volume bytes");
    }
}
