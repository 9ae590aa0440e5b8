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
                let run = |args: &[&str], crash: Option<&str>| {
                    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"));
                    cmd.arg("--state-dir")
                        .arg(state.path())
                        .arg("--no-progress")
                        .args(args)
                        .env("NO_COLOR", "1");
                    match crash {
                        Some(s) => cmd.env("AGENTCTL_CRASH_AT", s),
                        None => cmd.env_remove("AGENTCTL_CRASH_AT"),
                    };
                    cmd.output().unwrap()
                };
                let killed = run(&[&["update", &name, "--image", &v2], &FAST[..6]].concat(), Some(&step));
                let repaired = run(&["status", &name, "-o", "json"], None);
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
