//! `agentctl update`, `undo`, `history` and `status` on the real engine.

use std::collections::BTreeSet;

use agent_core::ContainerRuntime;

use crate::support::*;

/// The volume's `seed.txt` as a tar stream (header + content), read through a throwaway container.
pub(crate) fn read_volume_file(w: &World, volume: &str) -> Vec<u8> {
    // No shell in the demo image: read the volume through the archive API.
    let name = w.name(&format!("reader-{}", volume.len()));
    let _ = w.docker(&["rm", "-f", &name]);
    let out = w.docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &w.label,
        "-v",
        &format!("{volume}:/v"),
        &images().refs["v1"],
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.docker(&["cp", &format!("{name}:/v/seed.txt"), "-"]);
    let _ = w.docker(&["rm", "-f", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

pub(crate) fn seed_volume(w: &World, volume: &str, content: &str) {
    let name = w.name("seeder");
    let out = w.docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &w.label,
        "-v",
        &format!("{volume}:/v"),
        &images().refs["v1"],
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seed.txt"), content).unwrap();
    let out = w.docker(&[
        "cp",
        &format!("{}/seed.txt", dir.path().display()),
        &format!("{name}:/v/seed.txt"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = w.docker(&["rm", "-f", &name]);
}

#[test]
fn a_richly_configured_container_keeps_every_setting_and_its_data() {
    let img = images();
    let w = World::new("rich");
    let name = w.name("agent");
    let n1 = w.network("n1", "10.231.1.0/24");
    let n2 = w.network("n2", "10.231.2.0/24");
    let vol = w.volume("data");
    seed_volume(&w, &vol, "state that must survive\n");
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("agent.yaml"), "interval: 10s\n").unwrap();
    let bind = format!("{}:/etc/agent:ro", conf.path().display());
    let before_id = w.docker_run(
        &name,
        &[
            "-e",
            "LOG_LEVEL=debug",
            "-e",
            "API_TOKEN=planted-secret-value",
            "--label",
            "team=observability",
            "--user",
            "65534:65534",
            "-w",
            "/work",
            "--hostname",
            "agent-host",
            "--domainname",
            "example.internal",
            "-v",
            &bind,
            "-v",
            &format!("{vol}:/var/lib/agent"),
            "-v",
            "/cache",
            "--tmpfs",
            "/tmp:size=1m",
            "-p",
            "127.0.0.1::8080",
            "--network",
            &n1,
            "--ip",
            "10.231.1.10",
            "--network-alias",
            "collector",
            "--restart",
            "unless-stopped",
            "--memory",
            "64m",
            "--cpu-shares",
            "512",
            "--cpus",
            "0.5",
            "--pids-limit",
            "100",
            "--cap-drop",
            "NET_RAW",
            "--cap-add",
            "SYS_TIME",
            "--ulimit",
            "nofile=1024:2048",
            "--log-opt",
            "max-size=1m",
            "--security-opt",
            "no-new-privileges",
            "--add-host",
            "db:10.0.0.5",
            "--dns",
            "10.0.0.53",
            "--dns-search",
            "example.internal",
            "--dns-option",
            "ndots:2",
            "--init",
            "--read-only",
            "--stop-signal",
            "SIGINT",
            "--stop-timeout",
            "7",
            "--shm-size",
            "32m",
        ],
        &img.refs["v1"],
    );
    let out = w.docker(&[
        "network",
        "connect",
        "--alias",
        "second",
        "--ip",
        "10.231.2.20",
        &n2,
        &name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let anon_before: BTreeSet<String> = spec(&name)
        .mounts
        .iter()
        .filter_map(|m| match &m.kind {
            agent_core::MountKind::Volume { name, anonymous: true } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(anon_before.len(), 1, "the -v /cache volume is anonymous");
    let before = spec(&name);
    let before_tar = read_volume_file(&w, &vol);
    let needle = b"state that must survive\n";
    assert!(before_tar.windows(needle.len()).any(|x| x == needle));

    let backup = tempfile::tempdir().unwrap();
    let backup_arg = backup.path().to_str().unwrap();
    let out = w.agentctl(
        &[
            &[
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "-o",
                "json",
                "--backup-dir",
                backup_arg,
            ],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 0, "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["status"], "updated");
    // The backup holds the spec and every config-carrying mount, taken through the archive API.
    let dir = std::path::PathBuf::from(report["backup"].as_str().unwrap());
    assert!(dir.starts_with(backup.path()));
    let spec_json = std::fs::read_to_string(dir.join("spec.json")).unwrap();
    assert!(spec_json.contains("observability") && !spec_json.contains("planted-secret-value"));
    let data = std::fs::read(dir.join("var_lib_agent.tar")).unwrap();
    assert!(
        data.windows(needle.len()).any(|x| x == needle),
        "the volume's file is in the backup"
    );
    assert!(dir.join("etc_agent.tar").exists() && dir.join("cache.tar").exists());
    assert!(report["unexpectedChanges"].as_array().unwrap().is_empty(), "{report}");

    let after = spec(&name);
    let diff = before.diff(&after).ignoring_image();
    assert!(diff.is_empty(), "configuration changed: {diff}");
    assert_eq!(
        after.image.to_string(),
        img.refs["v2"].parse::<agent_core::ImageRef>().unwrap().to_string()
    );
    let anon_after: BTreeSet<String> = after
        .mounts
        .iter()
        .filter_map(|m| match &m.kind {
            agent_core::MountKind::Volume { name, .. } if anon_before.contains(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        anon_after, anon_before,
        "the anonymous volume is re-attached by name, not replaced"
    );
    let ips = w.docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        &name,
    ]);
    let ips = stdout(&ips);
    assert!(
        ips.contains("10.231.1.10") && ips.contains("10.231.2.20"),
        "static IPs kept: {ips}"
    );
    let after_tar = read_volume_file(&w, &vol);
    assert_eq!(
        after_tar, before_tar,
        "the volume's file is byte-identical (content, mode, owner, mtime)"
    );
    let (id, running, _) = w.state(&name).unwrap();
    assert!(running && id != before_id);
    // The old container is retained, stopped, and will not be restarted by the daemon.
    let retained = format!("{name}.rev1");
    let policy = w.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.RestartPolicy.Name}} {{.State.Running}}",
        &retained,
    ]);
    assert_eq!(stdout(&policy).trim(), "no false");
    // The planted secret is in no output and not in the state store.
    assert!(!stdout(&out).contains("planted-secret-value") && !stderr(&out).contains("planted-secret-value"));
    let stored = stored_state(w.state_dir());
    let needle = b"planted-secret-value";
    assert!(!stored.is_empty() && !stored.windows(needle.len()).any(|x| x == needle));
}

#[test]
fn every_failure_mode_rolls_back_with_exit_3() {
    let img = images();
    let w = World::new("fail");
    let modes = ["exit", "never-healthy", "fatal", "crash", "slow"];
    let handles: Vec<_> = modes
        .iter()
        .map(|mode| {
            let name = w.name(mode);
            let id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
            let args: Vec<String> = ["update", &name, "--image", &img.refs[mode], "-o", "json"]
                .iter()
                .map(|s| s.to_string())
                .chain(
                    [
                        "--min-healthy-time",
                        "3s",
                        "--deadline",
                        "12s",
                        "--period",
                        "300ms",
                        "--pull",
                        "always",
                    ]
                    .map(String::from),
                )
                .collect();
            let state = w.state_dir().to_owned();
            let mode = mode.to_string();
            std::thread::spawn(move || {
                let out = agentctl_in(&state).args(&args).env("NO_COLOR", "1").output().unwrap();
                (mode, name, id, out)
            })
        })
        .collect();
    for h in handles {
        let (mode, name, id, out) = h.join().unwrap();
        assert_eq!(
            code(&out),
            3,
            "{mode}: stdout {}\nstderr {}",
            stdout(&out),
            stderr(&out)
        );
        let report = json(&out);
        assert_eq!(report["status"], "rolled-back", "{mode}");
        assert!(
            report["reason"].as_str().unwrap().len() > 10,
            "{mode}: a reason is given"
        );
        let (now, running, image) = w.state(&name).unwrap();
        assert_eq!(now, id, "{mode}: the very same old container runs again");
        assert!(running, "{mode}");
        assert_eq!(image, img.refs["v1"], "{mode}");
        assert_eq!(w.containers(&name), std::slice::from_ref(&name), "{mode}: no leftovers");
        let hist = json(&w.agentctl(&["history", &name, "-o", "json"]));
        let statuses: Vec<&str> = hist
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["succeeded", "rolled-back"], "{mode}");
    }
}

#[test]
fn bad_input_changes_nothing() {
    let img = images();
    let w = World::new("bad");
    let name = w.name("agent");
    let id = w.docker_run(&name, &["--restart", "always"], &img.refs["v1"]);
    let missing = format!("{}/agentctl-it/agent:0.0.404", img.registry);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["update", &name, "--image", &missing], 1, "not found"),
        (vec!["update", &name, "--image", "acme/agent:latest"], 1, "floating tag"),
        (vec!["update", &name, "--image", "acme/Agent:1"], 2, "position 5"),
        (
            vec!["update", "no-such-agent", "--image", &img.refs["v2"]],
            1,
            "no-such-agent",
        ),
        (
            vec!["update", "bad;name", "--image", &img.refs["v2"]],
            2,
            "invalid container name",
        ),
        (
            vec!["update", "../../etc/passwd", "--image", &img.refs["v2"]],
            2,
            "invalid container name",
        ),
        (
            vec!["update", "$(reboot)", "--image", &img.refs["v2"]],
            2,
            "invalid container name",
        ),
        (
            vec!["update", &name, "--image", &img.refs["v2"], "--deadline", "ten"],
            2,
            "invalid duration",
        ),
        (
            vec![
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "--min-healthy-time",
                "1m",
                "--deadline",
                "10s",
            ],
            2,
            "shorter than --deadline",
        ),
        (vec!["undo", &name, "--to-revision", "zero"], 2, "revision"),
        (vec!["undo", &name], 1, "no earlier good revision"),
    ];
    for (args, want, text) in cases {
        let out = w.agentctl(&args);
        assert_eq!(code(&out), want, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(text), "{args:?}: {}", stderr(&out));
        let (now, running, image) = w.state(&name).unwrap();
        assert!(
            now == id && running && image == img.refs["v1"],
            "{args:?} changed the container"
        );
        assert_eq!(w.containers(&name), std::slice::from_ref(&name));
    }
}

#[test]
fn undo_and_undo_to_revision() {
    let img = images();
    let w = World::new("undo");
    let name = w.name("agent");
    let v1_id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    for v in ["v2", "v3"] {
        let out = w.agentctl(&[&["update", &name, "--image", &img.refs[v]], FAST].concat());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    // Back to 2 from its retained container.
    let out = w.agentctl(&[&["undo", &name, "-o", "json"], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["revision"]["cause"], "undo to revision 2");
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
    // Then to 1: the original container comes back.
    let out = w.agentctl(&[&["undo", &name, "--to-revision", "1"], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (id, running, image) = w.state(&name).unwrap();
    assert_eq!(
        (id.as_str(), running, image.as_str()),
        (v1_id.as_str(), true, img.refs["v1"].as_str())
    );
    let hist = json(&w.agentctl(&["history", &name, "-o", "json"]));
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for field in ["revision", "image", "digest", "status", "cause", "created_at"] {
        assert!(rows.iter().all(|r| r.get(field).is_some()), "history rows have {field}");
    }
    assert!(
        rows[1]["digest"].as_str().unwrap().starts_with("sha256:"),
        "pushed images have digests"
    );
    let out = w.agentctl(&["undo", &name, "--to-revision", "9"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no revision 9"), "{}", stderr(&out));
    // The JSON history, snapshot-tested with run ids, times, ports and digests filtered.
    let history = stdout(&w.agentctl(&["history", &name, "-o", "json"]));
    insta::with_settings!({filters => vec![
        (r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z", "[TIME]"),
        (r"127\.0\.0\.1:\d+", "[REGISTRY]"),
        (r"sha256:[0-9a-f]{64}", "[DIGEST]"),
        (r"undo-\d+-[0-9a-f]+", "[RUN]"),
        (r#""by": "[^"]+""#, r#""by": "[ACTOR]""#),
    ]}, {
        insta::assert_snapshot!("history_json", history);
    });
    let table = stdout(&w.agentctl(&["history", &name]));
    assert!(
        table.contains("undo to revision 1") && table.contains("(current)"),
        "{table}"
    );
    let status = json(&w.agentctl(&["status", &name, "-o", "json"]));
    assert_eq!(status["state"], "running");
    assert_eq!(status["revision"]["number"], 5);
    // A protected revision outlives pruning: three more updates with a history of 2 keep revision 2 (and its
    // retained container); unprotected, the next pruning drops it.
    let out = w.agentctl(&["history", &name, "--protect", "2", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let protected = |h: &serde_json::Value, n: u64| {
        h.as_array()
            .unwrap()
            .iter()
            .any(|r| r["revision"] == n && r["protected"] == true)
    };
    assert!(protected(&json(&out), 2), "{}", stdout(&out));
    for v in ["v2", "v3", "v2"] {
        let out = w.agentctl(
            &[
                &["update", &name, "--image", &img.refs[v], "--history-limit", "2"],
                FAST,
            ]
            .concat(),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let hist = json(&w.agentctl(&["history", &name, "--history-limit", "1000", "-o", "json"]));
    assert!(protected(&hist, 2), "{hist}");
    let out = w.agentctl(&["history", &name, "--unprotect", "2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = w.agentctl(
        &[
            &["update", &name, "--image", &img.refs["v3"], "--history-limit", "2"],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let hist = json(&w.agentctl(&["history", &name, "--history-limit", "1000", "-o", "json"]));
    assert!(hist.as_array().unwrap().iter().all(|r| r["revision"] != 2), "{hist}");
    let out = w.agentctl(&["history", &name, "--protect", "99"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no revision 99"), "{}", stderr(&out));
}

#[test]
fn a_pull_reports_progress_and_pins_the_digest() {
    let img = images();
    let w = World::new("pull");
    let name = w.name("agent");
    // An image only the registry has.
    let tag = format!("{}/agentctl-it/pulled:{}", img.registry, w.run.replace(['-'], "."));
    let tag = tag.replace("pulled:", "pulled:v");
    assert!(w.docker(&["tag", &img.refs["v2"], &tag]).status.success());
    let push = w.docker(&["push", &tag]);
    assert!(push.status.success(), "{}", stderr(&push));
    let pushed = stdout(&push);
    let digest = pushed
        .split("digest: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(w.docker(&["rmi", &tag]).status.success());
    w.docker_run(&name, &[], &img.refs["v1"]);
    let out = w.agentctl(&[
        "update",
        &name,
        "--image",
        &tag,
        "-o",
        "json",
        "--min-healthy-time",
        "1s",
        "--deadline",
        "15s",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("pulled "), "{}", stderr(&out));
    assert_eq!(json(&out)["revision"]["digest"], digest.as_str());
    let _ = w.docker(&["rm", "-f", &name]);
    let _ = w.docker(&["rmi", "-f", &tag]);
}

/// Two updates of one container at the same moment: the second is refused while the first verifies (it
/// is held right there), nothing it could have done happens, and the first goes on to the end.
#[cfg(feature = "testing")]
#[test]
fn two_updates_on_one_container_cannot_both_run() {
    let img = images();
    let w = World::new("race");
    let name = w.name("agent");
    w.docker_run(&name, &[], &img.refs["v1"]);
    let held = crate::faults::Held::start_in(
        w.state_dir(),
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "update:verify",
    );
    let during = w.state(&name).unwrap();
    assert_eq!(
        during.2, img.refs["v2"],
        "the first update's new container is being verified"
    );
    let second = w.agentctl(&[&["update", &name, "--image", &img.refs["v3"]], FAST].concat());
    assert_eq!(code(&second), 1, "{}", stderr(&second));
    assert!(
        stderr(&second).contains("is locked by"),
        "refused, naming the holder: {}",
        stderr(&second)
    );
    assert_eq!(w.state(&name).unwrap(), during, "the refused update changed nothing");
    let first = held.release();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
    assert_eq!(w.running(&name), [name.as_str()], "exactly one instance runs");
}

#[test]
fn start_first_keeps_an_instance_running_throughout_and_refuses_what_two_cannot_share() {
    let img = images();
    let w = World::new("startfirst");
    let name = w.name("agent");
    let old_id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = w.sample_instances(std::slice::from_ref(&name), stop.clone());
    let from = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    let out = w.agentctl(
        &[
            &[
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "--strategy",
                "start-first",
                "-o",
                "json",
            ],
            FAST,
        ]
        .concat(),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().unwrap().remove(0);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Proven from the engine's own event stream, not only sampled: the new container started before the
    // old one was stopped.
    let until = time::OffsetDateTime::now_utc().unix_timestamp() + 1;
    let events = w.docker(&[
        "events",
        "--since",
        &from.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=container",
        "--format",
        "{{.Status}} {{.Actor.ID}}",
    ]);
    let events: Vec<String> = stdout(&events).lines().map(str::to_owned).collect();
    let new_id = w.state(&name).unwrap().0;
    let at = |status: &str, id: &str| events.iter().position(|e| *e == format!("{status} {id}"));
    let new_started = at("start", &new_id).unwrap_or_else(|| panic!("no start of the new container: {events:?}"));
    let old_stopped = at("die", &old_id).unwrap_or_else(|| panic!("no stop of the old container: {events:?}"));
    assert!(
        new_started < old_stopped,
        "the old container stopped before the new one started: {events:?}"
    );
    assert!(!samples.is_empty());
    assert!(
        samples.iter().all(|&n| n >= 1),
        "a moment without a running instance: {samples:?}"
    );
    assert!(
        samples.contains(&2),
        "the new version ran beside the old one: {samples:?}"
    );
    let (_, running, image) = w.state(&name).unwrap();
    assert!(running);
    assert_eq!(image, img.refs["v2"]);
    assert!(
        w.state(&format!("{name}.preview")).is_none(),
        "the preview took the name"
    );
    let (retained_id, retained_running, _) = w.state(&format!("{name}.rev1")).unwrap();
    assert_eq!((retained_id.as_str(), retained_running), (old_id.as_str(), false));

    // A failing new version: the live container is never stopped, the preview is removed.
    let live = w.state(&name).unwrap().0;
    let started = |n: &str| stdout(&w.docker(&["inspect", "-f", "{{.State.StartedAt}}", n]));
    let before = started(&name);
    let out = w.agentctl(
        &[
            &[
                "update",
                &name,
                "--image",
                &img.refs["exit"],
                "--strategy",
                "start-first",
                "-o",
                "json",
            ],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(w.state(&name).unwrap().0, live);
    assert_eq!(started(&name), before, "the live container was not restarted");
    assert!(w.state(&format!("{name}.preview")).is_none());

    // Two instances cannot share a fixed host port: refused before anything changes.
    let port = agent_docker::testing::free_port().unwrap().to_string();
    let published = w.name("published");
    let pid = w.docker_run(&published, &["-p", &format!("127.0.0.1:{port}:8080")], &img.refs["v1"]);
    let out = w.agentctl(
        &[
            &[
                "update",
                &published,
                "--image",
                &img.refs["v2"],
                "--strategy",
                "start-first",
            ],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("host port {port}/tcp")),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("stop-first"), "{}", stderr(&out));
    assert_eq!(w.state(&published).unwrap(), (pid, true, img.refs["v1"].clone()));
    assert!(json(&w.agentctl(&["history", &published, "-o", "json"]))
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_user_set_mac_address_is_kept_and_an_engine_chosen_one_is_not_frozen() {
    let img = images();
    let w = World::new("mac");
    let net = w.network("net", "10.233.9.0/24");
    // This docker CLI refuses `--mac-address` against a 1.41 engine ("per network ... requires API 1.44"),
    // so the containers are made through the API with a container-level MacAddress, as older CLIs and
    // compose files do; then `docker inspect` shows what the engine recorded.
    let make = |suffix: &str, network: &str, mac: Option<&str>| {
        let name = w.name(suffix);
        let mut spec = agent_core::ContainerSpec::new(name.parse().unwrap(), img.refs["v1"].parse().unwrap());
        spec.labels
            .insert(w.label.split_once('=').unwrap().0.into(), w.run.clone());
        spec.networks.push(agent_core::NetworkAttachment {
            name: network.to_owned(),
            aliases: Vec::new(),
            ipv4_address: None,
            ipv6_address: None,
            mac_address: mac.map(str::to_owned),
            links: Vec::new(),
        });
        runtime().block_on(async {
            let d = agent_docker::DockerRuntime::connect(None).await.unwrap();
            d.create_container(&spec).await.unwrap();
            d.start_container(&name).await.unwrap();
        });
        name
    };
    let cases = [
        (
            make("usernet", &net, Some("02:42:0a:e9:09:63")),
            Some("02:42:0a:e9:09:63"),
        ),
        (
            make("bridge", "bridge", Some("02:42:ac:11:99:01")),
            Some("02:42:ac:11:99:01"),
        ),
        (make("plain", &net, None), None),
    ];
    let inspect = |name: &str, format: &str| stdout(&w.docker(&["inspect", "-f", format, name])).trim().to_owned();
    for (name, mac) in &cases {
        assert_eq!(
            inspect(name, "{{.Config.MacAddress}}"),
            mac.unwrap_or(""),
            "{name}: made as asked"
        );
        let out = w.agentctl(&[&["update", name, "--image", &img.refs["v2"], "-o", "json"], FAST].concat());
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
        let report = json(&out);
        assert!(
            report["unexpectedChanges"].as_array().unwrap().is_empty(),
            "{name}: {report}"
        );
        assert_eq!(inspect(name, "{{.Config.Image}}"), img.refs["v2"]);
        match mac {
            Some(m) => {
                assert_eq!(inspect(name, "{{.Config.MacAddress}}"), *m, "{name}");
                assert_eq!(
                    inspect(name, "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}"),
                    *m,
                    "{name}"
                );
            }
            // Not chosen by the user: the engine picks one for the new container, as for any new container.
            None => assert_eq!(inspect(name, "{{.Config.MacAddress}}"), "", "{name}"),
        }
    }
}

/// What the engine runs differs from what agentctl asked for (here another client changes the new
/// container's memory limit between its creation and its start): every probe passes, but the faithfulness
/// check sees the field and the update rolls back, naming it.
#[cfg(feature = "testing")]
#[test]
fn a_configuration_changed_under_the_update_rolls_back_and_names_the_field() {
    let img = images();
    let w = World::new("unfaithful");
    let name = w.name("agent");
    let old = w.docker_run(
        &name,
        &["--restart", "unless-stopped", "--memory", "64m"],
        &img.refs["v1"],
    );
    let held = crate::faults::Held::start_in(
        w.state_dir(),
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "update:start-new",
    );
    let out = w.docker(&["update", "--memory", "48m", "--memory-swap", "96m", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = held.release();
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("configuration differs") && text.contains("Memory"),
        "{text}"
    );
    assert_eq!(w.state(&name).unwrap(), (old, true, img.refs["v1"].clone()));
}

/// A version that crash-loops under `--restart unless-stopped`: the engine starts it again each time
/// (running, its restart count up), and the restart is the reason it is rolled back.
#[test]
fn a_crash_looping_version_under_a_restart_policy_rolls_back_naming_the_restarts() {
    let img = images();
    let w = World::new("crashloop");
    let name = w.name("agent");
    let old = w.docker_run(
        &name,
        &["--restart", "unless-stopped", "-e", "AGENT_CRASH_ON=2.0.0:1"],
        &img.refs["v1"],
    );
    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], FAST].concat());
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let reason = stdout(&out);
    assert!(reason.contains("restart"), "the restart named: {reason}");
    assert_eq!(w.state(&name).unwrap(), (old, true, img.refs["v1"].clone()));
}
