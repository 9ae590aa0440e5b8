//! `agentctl apply` and `agentctl rollout` on the real engine, with targets on two endpoints of it.

use crate::support::*;

const HOST_A: &str = "unix:///var/run/docker.sock";
// The same engine through another path: two endpoints, two sets of leases and histories (a second engine
// is not started by these tests yet).
const HOST_B: &str = "unix:///run/docker.sock";

fn spec(w: &World, name: &str, image: &str, names: &[String], strategy: &str, extra: &str) -> std::path::PathBuf {
    let targets: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "  - {{host: '{}', container: {n}}}\n",
                if i % 2 == 0 { HOST_A } else { HOST_B }
            )
        })
        .collect();
    let text = format!(
        "name: {name}\nimage: {image}\ntargets:\n{targets}strategy:\n  {strategy}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\n{extra}"
    );
    let path = w.state_dir().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn a_canary_pauses_is_promoted_from_another_process_and_pins_the_digest() {
    let img = images();
    let w = World::new("canary");
    let names: Vec<String> = (1..=4).map(|i| w.name(&format!("a{i}"))).collect();
    for n in &names {
        w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]);
    }
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "canary: {steps: [{setWeight: 25}, {pause: {}}, {setWeight: 100}]}",
        "",
    );
    let out = w.agentctl_env(
        &["apply", "-f", f.to_str().unwrap(), "-o", "json"],
        &[("AGENTCTL_ACTOR", "alice")],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let ev = events(&out);
    assert!(ev.iter().any(|e| e["event"] == "paused"), "{ev:?}");
    let updated = ev
        .iter()
        .filter(|e| e["event"] == "target-updated" && e["status"] == "updated")
        .count();
    assert_eq!(updated, 1, "25 % of 4");
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "paused");
    // `rollout list` shows it with its phase, step and how many targets run the new version.
    let list = json(&w.agentctl(&["rollout", "list", "-o", "json"]));
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rollout.as_str())
        .unwrap_or_else(|| panic!("{rollout} not listed: {list}"));
    assert_eq!(
        (row["phase"].as_str(), row["updated"].as_u64(), row["targets"].as_u64()),
        (Some("paused"), Some(1), Some(4)),
        "{row}"
    );
    let out = w.agentctl_env(
        &["rollout", "promote", &rollout, "-o", "json"],
        &[("AGENTCTL_ACTOR", "bob")],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The rollout records who acted on it.
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    let audit: Vec<(String, String)> = status["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("apply".to_owned(), "alice".to_owned()),
            ("promote".to_owned(), "bob".to_owned())
        ]
    );
    let last = events(&out).pop().unwrap();
    assert_eq!(
        (
            last["event"].as_str(),
            last["phase"].as_str(),
            last["exit_code"].as_i64()
        ),
        (Some("finished"), Some("succeeded"), Some(0))
    );
    // Every target runs the same digest, resolved once from the tag.
    let images: std::collections::BTreeSet<String> = names.iter().map(|n| w.state(n).unwrap().2).collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let pinned = images.into_iter().next().unwrap();
    assert!(pinned.contains("@sha256:"), "{pinned}");
}

#[test]
fn a_failure_on_the_second_engine_reverts_every_touched_target_on_the_first() {
    let img = images();
    let second = second_engine();
    let w = World::new("ratio");
    let names: Vec<String> = ["a1", "a2", "b1", "b2"].iter().map(|s| w.name(s)).collect();
    let mut ids = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if i < 2 {
            ids.push(w.docker_run(n, &[], &img.refs["v1"]));
        } else {
            // The second engine's agents run with a configuration that version 2.0.0 cannot handle.
            ids.push(w.docker_run_on(second, n, &["-e", "AGENT_BROKEN_ON=2.0.0"], &img.refs["v1"]));
        }
    }
    let targets: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "  - {{host: '{}', container: {n}}}\n",
                if i < 2 { HOST_A } else { second }
            )
        })
        .collect();
    let rollout = w.name("ro");
    let text = format!(
        "name: {rollout}\nimage: {}\ntargets:\n{targets}  - {{host: 'unix:///nonexistent/docker.sock', container: ghost}}\nstrategy:\n  rolling: {{maxUnavailable: 2}}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\nrollback: {{maxFailureRatio: 0.3}}\n",
        img.refs["v2"]
    );
    let f = w.state_dir().join("ratio.yaml");
    std::fs::write(&f, text).unwrap();
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let ev = events(&out);
    let rb = ev
        .iter()
        .find(|e| e["event"] == "rolling-back")
        .expect("a rolling-back event");
    assert_eq!(rb["touched"].as_array().unwrap().len(), 2, "{rb}");
    assert!(rb["reason"].as_str().unwrap().contains("above maxFailureRatio"), "{rb}");
    let last = ev.last().unwrap();
    assert_eq!(
        (last["phase"].as_str(), last["exit_code"].as_i64()),
        (Some("rolled-back"), Some(3))
    );
    let statuses: Vec<&str> = last["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["reverted", "reverted", "failed", "failed", "pending"]);
    for (i, (n, id)) in names.iter().zip(&ids).enumerate() {
        let (now, running, image) = if i < 2 { w.state(n) } else { w.state_on(second, n) }.unwrap();
        assert!(running && image == img.refs["v1"], "{n} back on 1.0.0");
        assert_eq!(&now, id, "{n}: the original container (retained, then brought back)");
    }
}

#[test]
fn an_unreachable_engine_fails_its_targets_clearly() {
    let img = images();
    let w = World::new("unreach");
    let name = w.name("a1");
    w.docker_run(&name, &[], &img.refs["v1"]);
    let text = format!(
        "name: {}\nimage: {}\ntargets:\n  - {{host: 'unix:///nonexistent/docker.sock', container: ghost}}\n  - {{host: '{HOST_A}', container: {name}}}\nstrategy: {{rolling: {{maxUnavailable: 1}}}}\nrollback: {{maxFailureRatio: 0.5}}\nhealth: {{minHealthyTime: 1s, deadline: 15s}}\n",
        w.name("ro"),
        img.refs["v2"]
    );
    let f = w.state_dir().join("u.yaml");
    std::fs::write(&f, text).unwrap();
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    // One of two failing is 50 %, within the ratio: the reachable target is updated.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let last = events(&out).pop().unwrap();
    let ghost = &last["targets"][0];
    assert_eq!(ghost["status"], "failed");
    assert!(
        ghost["message"]
            .as_str()
            .unwrap()
            .contains("unix:///nonexistent/docker.sock"),
        "{ghost}"
    );
    // -o yaml prints the final state; a second apply of the same spec finds nothing to change.
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "yaml"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("phase: succeeded"), "{}", stdout(&out));
    let running = w.state(&name).unwrap().2;
    assert!(
        running.contains("/agentctl-it/agent@sha256:"),
        "the reachable target runs the pinned 2.0.0: {running}"
    );
}

#[test]
fn a_bad_spec_is_refused_with_line_and_column_and_changes_nothing() {
    let img = images();
    let w = World::new("badspec");
    let name = w.name("a1");
    let id = w.docker_run(&name, &[], &img.refs["v1"]);
    let cases = [
        (format!("name: r\nimage: {}\ntargets:\n  - {{host: '{HOST_A}', container: {name}}}\nstrategy:\n  rolling: {{maxUnavailable: lots}}\n", img.refs["v2"]), "line 6"),
        (format!("name: r\nimage: {}\ntargets:\n  - {{host: 'ftp://x', container: {name}}}\nstrategy: {{recreate: {{}}}}\n", img.refs["v2"]), "ftp://x"),
        (format!("name: r\nimage: {}\ntargets: []\nstrategy: {{canary: {{steps: [{{setWeight: 50}}, {{setWeight: 10}}]}}}}\n", img.refs["v2"]), "no targets"),
        (format!("name: r\nimage: {}\ntargets:\n  - {{host: '{HOST_A}', container: {name}}}\nstrategy: {{canary: {{steps: [{{setWeight: 50}}, {{setWeight: 10}}]}}}}\n", img.refs["v2"]), "weights only go up"),
        (format!("name: r\nimage: {}\ntargets:\n  - {{host: '{HOST_A}', container: {name}}}\nstrategy: {{recreate: {{}}}}\nrollback: {{maxFailureRatio: 2}}\n", img.refs["v2"]), "maxFailureRatio"),
        (format!("name: r\nimage: {}\ntargets:\n  - {{host: '{HOST_A}', container: {name}}}\nstrategy: {{recreate: {{}}, rolling: {{}}}}\n", img.refs["v2"]), "line 5"),
    ];
    for (text, expect) in cases {
        let f = w.state_dir().join("bad.yaml");
        std::fs::write(&f, &text).unwrap();
        let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{text}\n{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{expect}: {}", stderr(&out));
        assert_eq!(w.state(&name).unwrap(), (id.clone(), true, img.refs["v1"].clone()));
    }
}

#[test]
#[cfg(feature = "testing")]
fn a_killed_apply_is_resumed_by_the_next_apply() {
    let img = images();
    let w = World::new("resume");
    let names: Vec<String> = (1..=3).map(|i| w.name(&format!("a{i}"))).collect();
    for n in &names {
        w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]);
    }
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "rolling: {maxUnavailable: 1}",
        "",
    );
    // The switch aborts the process (as kill -9 would) while the first target is being verified.
    let killed = w.agentctl_env(
        &["apply", "-f", f.to_str().unwrap(), "-o", "json"],
        &[("AGENTCTL_CRASH_AT", "verify")],
    );
    assert!(!killed.status.success(), "{}", stderr(&killed));
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "progressing", "{status}");
    // The next apply takes over the dead process's lease, repairs the interrupted target and finishes.
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ev = events(&out);
    assert_eq!(ev[0]["event"], "started");
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "succeeded");
    for n in &names {
        let all = w.containers(n);
        assert_eq!(w.running(n), [n.as_str()], "exactly one instance of {n} runs: {all:?}");
        assert!(w.state(n).unwrap().2.contains("@sha256:"), "{n} runs the pinned 2.0.0");
    }
}

/// Found by the random-kill loop: a target whose update had committed (or whose preview was staged) when the
/// process died still read `pending` in the rollout (saved after each batch), so an abort reverted "0
/// touched targets" and left it on the new version (or left its preview running). The abort now asks the
/// target's own history and previews first.
#[test]
#[cfg(feature = "testing")]
fn an_abort_after_a_kill_reverts_the_target_that_was_being_updated() {
    let img = images();
    let w = World::new("killabort");
    for (case, strategy, crash) in [
        ("k", "rolling: {maxUnavailable: 1}", "commit"),
        ("g", "blueGreen: {}", "stage:done"),
    ] {
        let (names, ids) = w.agents(case, 3);
        let rollout = w.name(&format!("ro-{case}"));
        let f = spec(&w, &rollout, &img.refs["v2"], &names, strategy, "");
        let killed = w.agentctl_env(
            &["apply", "-f", f.to_str().unwrap(), "-o", "json"],
            &[("AGENTCTL_CRASH_AT", crash)],
        );
        assert!(!killed.status.success(), "{crash}: {}", stderr(&killed));
        let out = w.agentctl(&["rollout", "abort", &rollout, "-o", "json"]);
        assert_eq!(code(&out), 3, "{crash}: {}", stderr(&out));
        let last = events(&out).pop().unwrap();
        let statuses: Vec<&str> = last["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["status"].as_str().unwrap())
            .collect();
        if case == "k" {
            assert_eq!(statuses, ["reverted", "pending", "pending"], "{last}");
        } else {
            assert!(
                statuses.contains(&"reverted"),
                "the staged preview is discarded: {last}"
            );
        }
        for (n, id) in names.iter().zip(&ids) {
            assert_eq!(
                w.state(n).unwrap(),
                (id.clone(), true, img.refs["v1"].clone()),
                "{crash}: {n} runs its original container"
            );
            let all = w.containers(n);
            assert!(
                !all.contains(&format!("{n}.preview")),
                "{crash}: a preview is left: {all:?}"
            );
            assert_eq!(w.running(n), [n.as_str()], "{crash}: {all:?}");
        }
    }
}

/// Found by the random-kill loop: a process killed while rolling back left the rollout `rolling-back`,
/// which no command would touch again. `rollout abort` (or `apply`) now finishes the rollback.
#[test]
#[cfg(feature = "testing")]
fn a_rollback_killed_half_way_is_finished_by_the_next_command() {
    let img = images();
    let w = World::new("killrb");
    let (names, ids) = w.agents("r", 2);
    // The third target does not exist (and there is no template): it fails, and the rollout reverts the
    // two it updated, killed in the middle of the first revert.
    let mut all = names.clone();
    all.push(w.name("ghost"));
    let rollout = w.name("ro");
    let f = spec(&w, &rollout, &img.refs["v2"], &all, "rolling: {maxUnavailable: 2}", "");
    let killed = w.agentctl_env(
        &["apply", "-f", f.to_str().unwrap(), "-o", "json"],
        &[("AGENTCTL_CRASH_AT", "undo:start-new")],
    );
    assert!(!killed.status.success(), "{}", stderr(&killed));
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "rolling-back", "{status}");
    let out = w.agentctl(&["rollout", "abort", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "rolled-back", "{status}");
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(
            w.state(n).unwrap(),
            (id.clone(), true, img.refs["v1"].clone()),
            "{n} runs its original container"
        );
        assert_eq!(w.running(n), [n.as_str()]);
    }
}

#[test]
fn blue_green_stages_ten_previews_then_promotes_or_aborts_without_touching_the_old() {
    let img = images();
    let w = World::new("bluegreen");
    let (names, ids) = w.agents("b", 10);
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "blueGreen: {autoPromote: false}",
        "parallelism: 5\n",
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let staged = events(&out)
        .iter()
        .filter(|e| e["event"] == "target-updated" && e["status"] == "staged")
        .count();
    assert_eq!(staged, 10);
    // Old and preview run side by side; the old ones untouched.
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(w.state(n).unwrap(), (id.clone(), true, img.refs["v1"].clone()));
        let (_, running, image) = w.state(&format!("{n}.preview")).unwrap();
        assert!(
            running && image.starts_with(&img.refs["v2"].rsplit_once(':').unwrap().0.to_owned()),
            "{image}"
        );
    }
    let out = w.agentctl(&["rollout", "promote", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for (n, id) in names.iter().zip(&ids) {
        let (new_id, running, image) = w.state(n).unwrap();
        assert!(running && new_id != *id && image.contains("@sha256:"), "{n}: {image}");
        assert!(w.state(&format!("{n}.preview")).is_none());
        assert_eq!(
            w.state(&format!("{n}.rev1")).unwrap().0,
            *id,
            "the old container is retained"
        );
    }

    // Rollback after promotion: `rollout undo` starts the kept old containers again.
    let out = w.agentctl(&["rollout", "undo", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(w.state(n).unwrap(), (id.clone(), true, img.refs["v1"].clone()), "{n}");
    }

    // Another blue-green, aborted while its previews wait: they go, the live containers never changed.
    let live: Vec<String> = names.iter().map(|n| w.state(n).unwrap().0).collect();
    let again = w.name("ro2");
    let f = spec(&w, &again, &img.refs["v3"], &names[..4], "blueGreen: {}", "");
    assert_eq!(code(&w.agentctl(&["apply", "-f", f.to_str().unwrap()])), 4);
    let out = w.agentctl(&["rollout", "abort", &again, "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    for (n, id) in names.iter().zip(&live).take(4) {
        assert_eq!(w.state(n).unwrap().0, *id);
        assert!(w.state(n).unwrap().1);
        assert!(w.state(&format!("{n}.preview")).is_none());
    }
}

#[test]
fn rolling_with_max_surge_keeps_every_target_running_through_ten_agents() {
    let img = images();
    let w = World::new("surge");
    let names: Vec<String> = (1..=10).map(|i| w.name(&format!("s{i}"))).collect();
    for n in &names {
        w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]);
    }
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "rolling: {maxUnavailable: 0, maxSurge: 3}",
        "parallelism: 5\n",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = w.sample_instances(&names, stop.clone());
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for (n, s) in names.iter().zip(&samples) {
        assert!(
            s.iter().all(|&c| c >= 1),
            "{n} had no running instance at some moment: {s:?}"
        );
        assert!(w.state(n).unwrap().2.contains("@sha256:"));
    }
    // Batches of 3: never more than 3 targets with two instances at once.
    let doubled = (0..samples[0].len())
        .map(|k| samples.iter().filter(|s| s.get(k) == Some(&2)).count())
        .max()
        .unwrap();
    assert!((1..=3).contains(&doubled), "{doubled}");
}

#[test]
fn ten_agents_roll_with_metrics_then_undo_and_retry_fleet_wide() {
    let img = images();
    let w = World::new("ten");
    let (names, ids) = w.agents("t", 10);
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "rolling: {maxUnavailable: 3, batchDelay: 2s}",
        "parallelism: 3\n",
    );
    let port = agent_docker::testing::free_port().unwrap();
    let child = agentctl_in(w.state_dir())
        .args(["--no-progress", "apply", "-f", f.to_str().unwrap(), "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Scrape while it runs.
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert!(wait_http(&url, 30), "the metrics endpoint did not answer");
    // The endpoint answers before the rollout is recorded; scrape until it shows (as Prometheus would).
    let scrape = || {
        runtime()
            .block_on(agent_health::http::get(&url, std::time::Duration::from_secs(3)))
            .unwrap()
            .body
    };
    let mut body = scrape();
    for _ in 0..100 {
        if body.contains("agentctl_rollouts{phase=\"progressing\"} 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        body = scrape();
    }
    assert!(
        body.contains(&format!(
            "agentctl_rollout_step{{rollout=\"{rollout}\",phase=\"progressing\""
        )),
        "{body}"
    );
    assert!(body.contains("agentctl_rollouts{phase=\"progressing\"} 1"), "{body}");
    let samples = agent_health::parse_text(&body).expect("valid exposition text");
    assert!(samples.iter().any(|s| s.name == "agentctl_rollout_targets"), "{body}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for n in &names {
        assert!(w.state(n).unwrap().2.contains("@sha256:"), "{n}");
    }
    // Fleet-wide history: every target has its adopted revision and the rollout's.
    let h = json(&w.agentctl(&["rollout", "history", &rollout, "-o", "json"]));
    let rows = h.as_array().unwrap();
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter().all(|r| r["revisions"].as_array().unwrap().len() == 2),
        "{h}"
    );
    // Undo: every target back on its original container.
    let out = w.agentctl(&["rollout", "undo", &rollout]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(w.state(n).unwrap(), (id.clone(), true, img.refs["v1"].clone()), "{n}");
    }
    // Retry: the rollout runs again from its first step.
    let out = w.agentctl(&["rollout", "retry", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for n in &names {
        assert!(w.state(n).unwrap().2.contains("@sha256:"), "{n}");
    }
    let out = w.agentctl(&["rollout", "retry", &rollout]);
    assert_eq!(code(&out), 1, "a succeeded rollout is not retried");
    assert!(stderr(&out).contains("can be retried"), "{}", stderr(&out));
}

#[test]
fn a_ten_agent_canary_is_paused_by_the_operator_and_resumed() {
    let img = images();
    let w = World::new("pause");
    let names: Vec<String> = (1..=10).map(|i| w.name(&format!("c{i}"))).collect();
    for n in &names {
        w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]);
    }
    let rollout = w.name("ro");
    let f = spec(
        &w,
        &rollout,
        &img.refs["v2"],
        &names,
        "canary: {steps: [{setWeight: 10}, {pause: 20s}, {setWeight: 50}, {setWeight: 100}]}",
        "",
    );
    let child = agentctl_in(w.state_dir())
        .args(["--no-progress", "apply", "-f", f.to_str().unwrap(), "-o", "json"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // During the timed pause, another process asks for a pause.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // (Until the rollout is saved, status says there is none.)
        let out = w.agentctl(&["rollout", "status", &rollout, "-o", "json"]);
        if code(&out) == 0 {
            let s = json(&out);
            if s["machine"]["phase"] != "progressing" {
                let o = child.wait_with_output().unwrap();
                panic!(
                    "another process saw the rollout only {} after {:?} (it must see it progressing); state {s}; apply stdout:\n{}",
                    s["machine"]["phase"],
                    (std::time::Instant::now() + std::time::Duration::from_secs(60)) - deadline,
                    stdout(&o)
                );
            }
            if s["nextStep"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
        } else if !stderr(&out).contains("no rollout named") {
            panic!("status failed while the rollout runs: {}", stderr(&out));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the canary never reached its pause"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A second apply of the same rollout cannot run beside the first.
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("is locked by"), "{}", stderr(&out));
    let out = w.agentctl(&["rollout", "pause", &rollout, "--reason", "error budget"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "paused" && e["reason"].as_str().unwrap().contains("error budget")),
        "{ev:?}"
    );
    let updated = names
        .iter()
        .filter(|n| w.state(n).unwrap().2.contains("@sha256:"))
        .count();
    assert_eq!(updated, 1, "10 % of 10 before the pause");
    let out = w.agentctl(&["rollout", "resume", &rollout]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(names.iter().all(|n| w.state(n).unwrap().2.contains("@sha256:")));
}

#[test]
fn a_missing_target_is_created_from_the_template_and_removed_by_undo() {
    let img = images();
    let w = World::new("template");
    let names: Vec<String> = (1..=10).map(|i| w.name(&format!("m{i}"))).collect();
    // Ten targets through recreate; the last one does not exist.
    let ids: Vec<String> = names[..9]
        .iter()
        .map(|n| w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]))
        .collect();
    let (key, value) = w.label.split_once('=').unwrap();

    // A template that would store a secret is refused before anything changes.
    let bad = spec(
        &w,
        &w.name("bad"),
        &img.refs["v2"],
        &names,
        "recreate: {}",
        "template:\n  env: [{name: API_TOKEN, value: s3cret}]\n",
    );
    let out = w.agentctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("API_TOKEN") && stderr(&out).contains("looks secret"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.state(&names[0]).unwrap().2, img.refs["v1"]);

    // Without a template, the missing target fails and says how to fix it.
    let plain = w.name("plain");
    let f = spec(
        &w,
        &plain,
        &img.refs["v2"],
        &names,
        "recreate: {}",
        "rollback: {maxFailureRatio: 0.0}\n",
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stdout(&out).contains("add a `template`"), "{}", stdout(&out));
    for (n, id) in names[..9].iter().zip(&ids) {
        assert_eq!(
            w.state(n).unwrap(),
            (id.clone(), true, img.refs["v1"].clone()),
            "{n}: reverted"
        );
    }

    // With one, it is created with the template's settings, the pinned image and its own name.
    let rollout = w.name("ro");
    let template = format!(
        "template:\n  restartPolicy: unless-stopped\n  env: [{{name: ROLE, value: edge}}]\n  labels: {{'{key}': '{value}'}}\n"
    );
    let f = spec(&w, &rollout, &img.refs["v2"], &names, "recreate: {}", &template);
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    let (_, running, image) = w.state(&names[9]).unwrap();
    assert!(running && image.contains("@sha256:"), "{image}");
    let env = stdout(&w.docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{.}} {{end}}{{.HostConfig.RestartPolicy.Name}}",
        &names[9],
    ]));
    assert!(
        env.contains("ROLE=edge") && env.trim_end().ends_with("unless-stopped"),
        "{env}"
    );
    // Undo: the updated targets go back, the created one goes away.
    let out = w.agentctl(&["rollout", "undo", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    for (n, id) in names[..9].iter().zip(&ids) {
        assert_eq!(w.state(n).unwrap().0, *id, "{n}");
    }
    assert!(w.state(&names[9]).is_none(), "the created target is removed");
    // (The tenth target is on the second endpoint: its history is recorded there.)
    let h = json(&w.agentctl(&["--host", HOST_B, "history", &names[9], "-o", "json"]));
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h[0]["status"], "rolled-back", "{h}");
}

/// The verdict rule in a fleet, on the install and blue-green paths: with the control center down the
/// verification is inconclusive, so nothing is reverted; the rollout pauses (exit 4) keeping its state: the
/// updated target runs the new version and the next batch (a target to create) is held untouched, though it
/// was prepared while the first was verified; `rollout promote` creates it; a blue-green preview stays
/// staged beside the untouched old container, until `rollout promote` or `rollout abort`.
#[test]
fn an_unreachable_control_center_pauses_the_fleet_and_reverts_nothing() {
    let img = images();
    let w = World::new("fleetinc");
    let token = w.state_dir().join("token");
    std::fs::write(&token, "0123456789abcdef-fleet").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let spec_text = |rollout: &str, names: &[&str], strategy: &str, extra: &str| {
        let targets: String = names
            .iter()
            .map(|n| format!("  - {{host: '{HOST_A}', container: {n}}}\n"))
            .collect();
        let text = format!(
            "name: {rollout}\nimage: {}\ntargets:\n{targets}strategy:\n  {strategy}\nhealth:\n  minHealthyTime: 1s\n  deadline: 6s\n  period: 300ms\n  heartbeat: {{url: 'http://127.0.0.1:1', tokenFile: '{}', timeout: 5s}}\n{extra}",
            img.refs["v2"],
            token.display()
        );
        let path = w.state_dir().join(format!("{rollout}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };

    // Update, then install in the next batch: the update stays on the new version, unverified, and the
    // pause holds the install; promoted, it goes on (and pauses again, its verification inconclusive too).
    let (old, created) = (w.name("u1"), w.name("u2"));
    let old_id = w.docker_run(&old, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let rollout = w.name("ro-u");
    let f = spec_text(
        &rollout,
        &[&old, &created],
        "rolling: {maxUnavailable: 1}",
        "template: {restartPolicy: unless-stopped}\n",
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stderr(&out), stdout(&out));
    let paused = events(&out)
        .into_iter()
        .find(|e| e["event"] == "paused")
        .unwrap_or_else(|| panic!("no pause: {}", stdout(&out)));
    assert!(paused["reason"].as_str().unwrap().contains("inconclusive"), "{paused}");
    let (_, running, image) = w.state(&old).unwrap();
    assert!(running && image.contains("@sha256:"), "{image}");
    assert!(w.state(&created).is_none(), "the next batch was held");
    assert!(w.state(&format!("{created}.agentctl-lock")).is_none());
    assert!(w.state(&format!("{old}.rev1")).is_some(), "the old version is retained");
    let out = w.agentctl(&["rollout", "promote", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stderr(&out), stdout(&out));
    let (_, running, image) = w.state(&created).unwrap();
    assert!(running && image.contains("@sha256:"), "{image}");
    // Abort takes both back: the old container returns, the created one goes.
    let out = w.agentctl(&["rollout", "abort", &rollout]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(w.state(&old).unwrap(), (old_id, true, img.refs["v1"].clone()));
    assert!(w.state(&created).is_none());

    // Blue-green: the preview stays staged and the old container untouched until the promotion.
    let blue = w.name("b1");
    let blue_id = w.docker_run(&blue, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let rollout = w.name("ro-b");
    let f = spec_text(&rollout, &[&blue], "blueGreen: {}", "");
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(w.state(&blue).unwrap(), (blue_id, true, img.refs["v1"].clone()));
    let (_, running, image) = w.state(&format!("{blue}.preview")).expect("the preview is staged");
    assert!(running && image.contains("@sha256:"), "{image}");
    let status = json(&w.agentctl(&["rollout", "status", &rollout, "-o", "json"]));
    assert_eq!(status["targets"][0]["status"], "staged", "{status}");
    let out = w.agentctl(&["rollout", "promote", &rollout, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    assert!(w.state(&blue).unwrap().2.contains("@sha256:"));
    assert!(w.state(&format!("{blue}.preview")).is_none());
}
