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
                &[
                    "--restart",
                    "unless-stopped",
                    "-v",
                    &format!("{vol}:/data"),
                    "-e",
                    "MARK=kept",
                    "--memory",
                    "64m",
                ],
                &img.refs["v1"],
            );
            let before = spec(&name);
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
                (step, name, id, vol, killed, repaired, state, before)
            })
        })
        .collect();
    for h in handles {
        let (step, name, id, vol, killed, repaired, state, before) = h.join().unwrap();
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
        assert_eq!(w.running(&name), [name.as_str()], "{step}: {all:?}");
        let (now, _, image) = w.state(&name).unwrap();
        if step == "commit" || step == "done" {
            assert_eq!(recovered[0]["action"], "completed");
            assert_eq!(image, img.refs["v2"], "{step}: a committed update stays");
            let retained = format!("{name}.rev1");
            let p = w.docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &retained]);
            assert_eq!(stdout(&p).trim(), "no");
            // The completed update recorded the retained container: undo starts it again (the same
            // container, not a copy), as after an update that was never interrupted.
            let undo = run_in(state.path(), &[&["undo", &name], &FAST[..6]].concat(), None);
            assert_eq!(code(&undo), 0, "{step}: {}", stderr(&undo));
            assert_eq!(
                w.state(&name).unwrap().0,
                id,
                "{step}: undo brings back the original container"
            );
        } else {
            assert_eq!(recovered[0]["action"], "reverted");
            assert_eq!(now, id, "{step}: the original container is back");
            assert_eq!(image, img.refs["v1"]);
            let p = w.docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &name]);
            assert_eq!(stdout(&p).trim(), "unless-stopped", "{step}: restart policy restored");
            assert_eq!(all, std::slice::from_ref(&name), "{step}: no leftover container");
        }
        // The volume is still mounted where it was, and the whole configuration is as it was but for the
        // image (the engine's documents compared, not a few fields).
        let m = w.docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &name]);
        assert_eq!(stdout(&m).trim(), vol, "{step}");
        if step == "commit" || step == "done" {
            // (The completed update was undone above: the original container runs again.)
            assert_eq!(w.state(&name).unwrap().0, id);
        }
        same_configuration(&before, &name, &step);
    }
}

/// The container `name` has the configuration `before` had, beyond the image: every field of the engine's
/// document (`Config`, `HostConfig`, the network endpoints) as the adapter reads it.
fn same_configuration(before: &agent_core::ContainerSpec, name: &str, ctx: &str) {
    let now = spec(name);
    let differs = before.diff(&now).ignoring_image();
    assert!(differs.is_empty(), "{ctx}: the configuration changed: {differs}");
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
        assert_eq!(w.running(&name), [name.as_str()], "{case}: {all:?}");
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
        assert_eq!(image, after, "{case}: {}", stdout(&repaired));
        // The volume is mounted and its bytes are what they were.
        let m = w.docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &name]);
        assert_eq!(stdout(&m).trim(), vol, "{case}");
        assert_eq!(crate::update::read_volume_file(&w, &vol), seed, "{case}: volume bytes");
    }
}

/// A tiny xorshift generator: the chaos loop needs reproducible randomness, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The time budget (`AGENTCTL_CHAOS_SECS`, default 60) and the seed (`AGENTCTL_CHAOS_SEED`, default the
/// clock) of a random-kill loop, printed so that a failing run can be replayed.
fn chaos_settings(what: &str) -> (u64, u64) {
    let budget = std::env::var("AGENTCTL_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    let seed = std::env::var("AGENTCTL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{what}: seed {seed} (AGENTCTL_CHAOS_SEED), {budget} s");
    (budget, seed)
}

/// Starts agentctl with its own state dir without waiting for it; its stderr goes to `STATE/chaos.err`.
fn spawn_in(state: &std::path::Path, args: &[&str]) -> std::process::Child {
    let err = std::fs::File::create(state.join("chaos.err")).unwrap();
    agentctl_in(state)
        .arg("--no-progress")
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("AGENTCTL_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap()
}

/// How the commands of a random-kill loop ended.
#[derive(Default)]
struct Tally {
    killed: u32,
    finished: u32,
    errors: u32,
}

impl Tally {
    /// Runs agentctl with `args`, SIGKILLs it after `delay_ms` unless it has ended by then, and counts how
    /// it ended.
    fn run_and_kill(&mut self, state: &std::path::Path, args: &[&str], delay_ms: u64, label: &str) {
        let mut child = spawn_in(state, args);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        match child.try_wait().unwrap() {
            Some(status) => {
                self.finished += 1;
                self.errors += u32::from(refused(state, status, label));
            }
            None => {
                child.kill().unwrap();
                self.killed += 1;
            }
        }
        child.wait().unwrap();
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} killed, {} finished first ({} of them with an error)",
            self.killed, self.finished, self.errors
        )
    }
}

/// The settings a chaos loop's agent was started with are still there: restart policy, env, the volume.
fn assert_config_kept(w: &World, name: &str, volume: &str, ctx: &str) {
    let p = w.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.RestartPolicy.Name}} {{range .Config.Env}}{{.}} {{end}}{{range .Mounts}}{{.Name}}{{end}}",
        name,
    ]);
    let config = stdout(&p);
    assert!(config.starts_with("unless-stopped "), "{ctx}: {config}");
    assert!(config.contains("CHAOS_MARK=kept"), "{ctx}: {config}");
    assert!(config.trim_end().ends_with(volume), "{ctx}: {config}");
}

/// Whether a command that ended by itself ended with an error (exit 1 or 2), printing its stderr.
fn refused(state: &std::path::Path, status: std::process::ExitStatus, what: &str) -> bool {
    let bad = matches!(status.code(), Some(1 | 2));
    if bad {
        let err = std::fs::read_to_string(state.join("chaos.err")).unwrap_or_default();
        eprintln!("chaos: {what} exited {status}: {}", err.lines().last().unwrap_or(""));
    }
    bad
}

/// Kills at random moments rather than right after a journaled step: for `AGENTCTL_CHAOS_SECS` (default
/// 60), pick an operation at random (stop-first or start-first update to a good or a broken version, or an
/// undo), SIGKILL it after a random 0–4 s (sometimes it has finished by then), sometimes kill the repairing
/// command too, then check that the next command leaves exactly one running instance under the name, on a
/// good version, with its restart policy and env, and the volume's bytes unchanged. `AGENTCTL_CHAOS_SEED`
/// replays a run. Long, so it is ignored by default:
/// `AGENTCTL_CHAOS_SECS=600 cargo test -p agent-cli --test it -- --ignored random_kills`.
#[test]
#[ignore = "long: run with --ignored and a time budget in AGENTCTL_CHAOS_SECS"]
fn random_kills_lose_nothing() {
    let (budget, seed) = chaos_settings("chaos");
    let mut rng = Rng(seed);
    let img = images();
    let w = World::new("chaos");
    let name = w.name("agent");
    let vol = w.volume("data");
    crate::update::seed_volume(&w, &vol, "chaos seed data");
    let seed_bytes = crate::update::read_volume_file(&w, &vol);
    w.docker_run(
        &name,
        &[
            "--restart",
            "unless-stopped",
            "-e",
            "CHAOS_MARK=kept",
            "-v",
            &format!("{vol}:/data"),
        ],
        &img.refs["v1"],
    );
    let state = w.state_dir();
    let good = ["v1", "v2", "v3"];
    let bad = ["exit", "fatal", "never-healthy"];
    let good_refs: Vec<&String> = good.iter().map(|k| &img.refs[*k]).collect();
    let fast = &FAST[..6];
    let (mut rounds, mut repair_killed) = (0, 0);
    let mut tally = Tally::default();
    let mut ops: std::collections::BTreeMap<String, u32> = Default::default();
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < budget {
        rounds += 1;
        let op = rng.below(8);
        let (label, args): (String, Vec<String>) = match op {
            0 | 1 => ("undo".into(), vec!["undo".into(), name.clone()]),
            _ => {
                let target = if op == 2 {
                    bad[rng.below(3) as usize]
                } else {
                    good[rng.below(3) as usize]
                };
                let strategy = if rng.below(2) == 0 { "stop-first" } else { "start-first" };
                let args = ["update", &name, "--image", &img.refs[target], "--strategy", strategy];
                (
                    format!("update {strategy} to {target}"),
                    args.iter().map(|s| s.to_string()).collect(),
                )
            }
        };
        *ops.entry(label.clone()).or_default() += 1;
        let args: Vec<&str> = args.iter().map(String::as_str).chain(fast.iter().copied()).collect();
        tally.run_and_kill(state, &args, rng.below(4000), &label);
        // Sometimes the repairing command is killed too.
        if rng.below(4) == 0 {
            let mut repair = spawn_in(state, &["status", &name]);
            std::thread::sleep(std::time::Duration::from_millis(rng.below(400)));
            let _ = repair.kill();
            repair.wait().unwrap();
            repair_killed += 1;
        }
        let repaired = run_in(state, &["status", &name, "-o", "json"], None);
        let ctx = format!("round {rounds} ({label}, seed {seed})");
        assert_eq!(code(&repaired), 0, "{ctx}: {}", stderr(&repaired));
        let all = w.containers(&name);
        assert_eq!(w.running(&name), [name.as_str()], "{ctx}: {all:?}");
        let image = w.state(&name).unwrap().2;
        assert!(
            good_refs.contains(&&image),
            "{ctx}: a broken version is left running: {image}"
        );
        assert_config_kept(&w, &name, &vol, &ctx);
        let history = run_in(state, &["history", &name, "-o", "json"], None);
        assert_eq!(code(&history), 0, "{ctx}: {}", stderr(&history));
        assert_eq!(
            crate::update::read_volume_file(&w, &vol),
            seed_bytes,
            "{ctx}: volume bytes"
        );
    }
    eprintln!(
        "chaos: {rounds} rounds in {} s: {tally}, {repair_killed} repairs killed too; {ops:?}; nothing lost",
        start.elapsed().as_secs()
    );
}

/// The container's image id, or `None` when it does not exist.
fn image_id(w: &World, what: &[&str]) -> Option<String> {
    let out = w.docker(what);
    out.status.success().then(|| stdout(&out).trim().to_owned())
}

/// The fleet counterpart of [`random_kills_lose_nothing`]: a rollout of three targets driven at random
/// (a new `apply` with a random strategy among rolling, canary with a pause, blue-green and recreate, to a
/// good or a broken version; on a rollout left unfinished, `apply` again to resume, `rollout promote` or
/// `rollout abort`; on a finished one, `rollout undo`), each command SIGKILLed after a random 0–6 s. After
/// `rollout status` and `status` of each target, every target has one running container under its name on
/// a good version with its restart policy, env and volume; a running preview only while the rollout is
/// unfinished; at the end, once the rollout is finished, no preview and the volumes' bytes unchanged.
/// `AGENTCTL_CHAOS_SECS=600 cargo test -p agent-cli --test it -- --ignored random_kills_during_rollouts`.
#[test]
#[ignore = "long: run with --ignored and a time budget in AGENTCTL_CHAOS_SECS"]
fn random_kills_during_rollouts_lose_nothing() {
    let (budget, seed) = chaos_settings("fleet chaos");
    let mut rng = Rng(seed);
    let img = images();
    let w = World::new("fchaos");
    let names: Vec<String> = (0..3).map(|i| w.name(&format!("t{i}"))).collect();
    let mut volumes = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let vol = w.volume(&format!("d{i}"));
        crate::update::seed_volume(&w, &vol, &format!("fleet chaos data {i}"));
        let bytes = crate::update::read_volume_file(&w, &vol);
        w.docker_run(
            n,
            &[
                "--restart",
                "unless-stopped",
                "-e",
                "CHAOS_MARK=kept",
                "-v",
                &format!("{vol}:/data"),
            ],
            &img.refs["v1"],
        );
        volumes.push((vol, bytes));
    }
    let good: Vec<String> = ["v1", "v2", "v3"]
        .iter()
        .map(|k| image_id(&w, &["image", "inspect", "-f", "{{.Id}}", &img.refs[*k]]).unwrap())
        .collect();
    let state = w.state_dir();
    let rollout = w.name("ro");
    let file = state.join("chaos.yaml");
    let targets: String = names
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    let strategies = [
        "rolling: {maxUnavailable: 1}",
        "canary: {steps: [{setWeight: 34}, {pause: {}}, {setWeight: 100}]}",
        "blueGreen: {}",
        "recreate: {}",
    ];
    let phase = |state: &std::path::Path| -> String {
        let out = run_in(state, &["rollout", "status", &rollout, "-o", "json"], None);
        if code(&out) != 0 {
            return "none".into();
        }
        json(&out)["machine"]["phase"].as_str().unwrap_or("none").to_owned()
    };
    let mut rounds = 0;
    let mut tally = Tally::default();
    let mut ops: std::collections::BTreeMap<String, u32> = Default::default();
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < budget {
        rounds += 1;
        let now = phase(state);
        let unfinished = matches!(now.as_str(), "progressing" | "paused" | "verifying" | "rolling-back");
        let (label, args): (String, Vec<String>) = match (unfinished, rng.below(4)) {
            (true, 0 | 1) if now == "paused" => (
                "promote".into(),
                vec!["rollout".into(), "promote".into(), rollout.clone()],
            ),
            (true, 0 | 1) => (
                "resume".into(),
                vec!["apply".into(), "-f".into(), file.display().to_string()],
            ),
            (true, _) => ("abort".into(), vec!["rollout".into(), "abort".into(), rollout.clone()]),
            (false, 0) if now == "succeeded" => ("undo".into(), vec!["rollout".into(), "undo".into(), rollout.clone()]),
            (false, _) => {
                let strategy = strategies[rng.below(4) as usize];
                let target = if rng.below(5) == 0 {
                    "fatal"
                } else {
                    ["v1", "v2", "v3"][rng.below(3) as usize]
                };
                std::fs::write(
                    &file,
                    format!(
                        "name: {rollout}\nimage: {}\ntargets:\n{targets}strategy:\n  {strategy}\nparallelism: 2\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\n",
                        img.refs[target]
                    ),
                )
                .unwrap();
                let kind = strategy.split(':').next().unwrap();
                (
                    format!("apply {kind} to {target}"),
                    vec!["apply".into(), "-f".into(), file.display().to_string()],
                )
            }
        };
        *ops.entry(label.clone()).or_default() += 1;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tally.run_and_kill(state, &args, rng.below(6000), &label);
        let ctx = format!("round {rounds} ({label} from {now}, seed {seed})");
        let now = phase(state);
        for (n, (vol, _)) in names.iter().zip(&volumes) {
            let repaired = run_in(state, &["status", n, "-o", "json"], None);
            assert_eq!(code(&repaired), 0, "{ctx}: {n}: {}", stderr(&repaired));
            let all = w.containers(n);
            let running = w.running(n);
            let preview = format!("{n}.preview");
            let main: Vec<&String> = running.iter().filter(|c| **c != preview).collect();
            assert_eq!(main, [n], "{ctx}: {all:?}");
            if running.contains(&preview) {
                assert!(
                    matches!(now.as_str(), "progressing" | "paused"),
                    "{ctx}: a preview runs while the rollout is {now}"
                );
            }
            let id = image_id(&w, &["inspect", "-f", "{{.Image}}", n]).unwrap();
            assert!(good.contains(&id), "{ctx}: {n} runs a broken version");
            assert_config_kept(&w, n, vol, &ctx);
        }
    }
    // Finish: an unfinished rollout is aborted; then no preview is left and no byte has changed.
    if matches!(phase(state).as_str(), "progressing" | "paused") {
        let out = run_in(state, &["rollout", "abort", &rollout], None);
        assert!(matches!(code(&out), 0 | 3), "{}", stderr(&out));
    }
    for (n, (vol, bytes)) in names.iter().zip(&volumes) {
        let all = w.containers(n);
        assert!(!all.contains(&format!("{n}.preview")), "{all:?}");
        assert_eq!(&crate::update::read_volume_file(&w, vol), bytes, "{n}: volume bytes");
    }
    eprintln!(
        "fleet chaos: {rounds} rounds in {} s: {tally}; {ops:?}; nothing lost",
        start.elapsed().as_secs()
    );
}
