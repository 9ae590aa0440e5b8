//! The engine is the record: agentctl never reports a state the engine does not show. Prunes between and
//! during operations (the real `docker container|system|volume prune` on an engine of the test's own), an
//! agent removed by mistake and brought back by `undo`, engine records that are forged or implausible, one
//! engine written four ways, and a sidecar's `--volumes-from`.

use std::process::{Command, Output};

use crate::faults::Held;
use crate::support::*;

/// An engine of the test's own (prunes act engine-wide), with the fixture's images pulled from the registry.
struct OwnEngine {
    /// Stopped when dropped.
    _engine: agent_docker::testing::SecondEngine,
    ep: String,
}

impl OwnEngine {
    fn start(tag: &str, images: &[&str]) -> OwnEngine {
        let pid = std::process::id();
        let bridge = format!("ag{tag}{}", pid % 100_000);
        let subnet = format!("10.{}.{}.1/24", 235 + (pid % 4), (pid + tag.len() as u32) % 250);
        let engine = agent_docker::testing::SecondEngine::start(&bridge, &subnet).expect("start a dockerd");
        let ep = engine.endpoint();
        let own = OwnEngine { _engine: engine, ep };
        for v in images {
            let out = own.docker(&["pull", &crate::support::images().refs[v]]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        own
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(&self.ep)
            .args(args)
            .output()
            .unwrap()
    }

    /// `{{.Id}} {{.State.Running}} {{.Config.Image}}` of `name`, or `None` when it is gone.
    fn state(&self, name: &str) -> Option<(String, bool, String)> {
        let o = self.docker(&["inspect", "-f", "{{.Id}} {{.State.Running}} {{.Config.Image}}", name]);
        if !o.status.success() {
            return None;
        }
        let s = stdout(&o);
        let mut it = s.split_whitespace();
        Some((it.next()?.to_owned(), it.next()? == "true", it.next()?.to_owned()))
    }

    fn prune(&self, args: &[&str]) {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    }
}

/// The seed file of the agent's anonymous volume at /cache, through the archive API.
fn cache_seed(e: &OwnEngine, name: &str) -> Vec<u8> {
    e.docker(&["cp", &format!("{name}:/cache/seed.txt"), "-"]).stdout
}

#[test]
fn prunes_between_and_during_operations_lose_nothing_agentctl_could_keep_and_name_the_rest() {
    let img = images();
    let w = World::new("prune");
    let e = OwnEngine::start("pr", &["v1", "v2", "fatal"]);
    let ep = e.ep.as_str();
    let name = w.name("agent");
    let fast = &FAST[..6];
    let agentctl = |args: &[&str]| w.agentctl(&[&["--host", ep], args].concat());
    w.docker_run_on(
        ep,
        &name,
        &[
            "--restart",
            "unless-stopped",
            "-e",
            "LOG_LEVEL=debug",
            "-e",
            "API_TOKEN=planted-secret",
            "-v",
            "/cache",
        ],
        &img.refs["v1"],
    );
    let seed = w.state_dir().join("seed.txt");
    std::fs::write(&seed, "cached state\n").unwrap();
    assert!(e
        .docker(&["cp", seed.to_str().unwrap(), &format!("{name}:/cache/seed.txt")])
        .status
        .success());
    let cached = cache_seed(&e, &name);
    let up = agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));

    // Between operations: `docker container prune` takes the retained revision 1 and every record.
    e.prune(&["container", "prune", "-f"]);
    assert!(e.state(&format!("{name}.rev1")).is_none());
    let status = agentctl(&["status", &name, "-o", "json"]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let findings = json(&status)["findings"].to_string();
    assert!(
        findings.contains(&format!("{name}.rev1, the container retained for revision 1, is gone"))
            && findings.contains("kept no copy of"),
        "{findings}"
    );
    let history = agentctl(&["history", &name]);
    assert!(
        stdout(&history).contains("(gone: pruned or removed)"),
        "{}",
        stdout(&history)
    );
    // Undo recreates revision 1 from its recorded configuration, its secret from the running container.
    let undo = agentctl(&[&["undo", &name], fast].concat());
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    assert!(
        stderr(&undo).contains("is gone (pruned or removed)"),
        "{}",
        stderr(&undo)
    );
    let (_, running, image) = e.state(&name).unwrap();
    assert!(running && image == img.refs["v1"], "{image}");
    let env = stdout(&e.docker(&["inspect", "-f", "{{json .Config.Env}}", &name]));
    assert!(
        env.contains("API_TOKEN=planted-secret") && env.contains("LOG_LEVEL=debug"),
        "{env}"
    );
    assert_eq!(cache_seed(&e, &name), cached, "the anonymous volume came back by name");
    let v1_id = e.state(&name).unwrap().0;

    // During verification: the retained container, every record and the old image are pruned while a
    // version that fails is being verified. The old revision is recreated from its configuration, its image
    // pulled back by its recorded digest; the lock pruned under the operation is taken again.
    let held = Held::start_in(
        w.state_dir(),
        &[&["--host", ep, "update", &name, "--image", &img.refs["fatal"]], FAST].concat(),
        "update:verify",
    );
    let retained = format!("{name}.rev3");
    assert!(
        e.state(&retained).is_some(),
        "revision 3 is retained while 4 is verified"
    );
    e.prune(&["container", "prune", "-f"]);
    e.prune(&["system", "prune", "-af"]);
    assert!(e.state(&retained).is_none());
    let lock = format!("{name}.agentctl-lock");
    assert!(e.state(&lock).is_none(), "the prune took the lock");
    // The lock is renewed every 10 s: the renewal finds it gone and takes it again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    while e.state(&lock).is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        e.state(&lock).is_some(),
        "the lock was not taken again under the operation"
    );
    let out = held.release();
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("revision 3") && text.contains("recreated from its recorded configuration"),
        "{text}"
    );
    assert!(stderr(&out).contains("restore-image"), "{}", stderr(&out));
    let (now_id, running, image) = e.state(&name).unwrap();
    assert!(running && image == img.refs["v1"] && now_id != v1_id, "{image}");
    assert_eq!(cache_seed(&e, &name), cached, "the anonymous volume came back by name");
    assert!(e.state(&lock).is_none(), "the lock taken again was released");

    // `docker volume prune` between operations takes no volume of a running agent; `system prune -f`
    // takes nothing it runs: the next update goes ahead and the data stays.
    e.prune(&["volume", "prune", "-f"]);
    e.prune(&["system", "prune", "-f"]);
    let up = agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    assert_eq!(cache_seed(&e, &name), cached);

    // An agent (without secrets, which are never stored) removed, then every stopped container and every
    // unused volume pruned: its data is gone from the engine. Undo brings it back from the store's history
    // and says its volume came back empty instead of claiming it is back as it was.
    let plain = w.name("plain");
    w.docker_run_on(ep, &plain, &["-v", "/cache"], &img.refs["v1"]);
    assert!(e
        .docker(&["cp", seed.to_str().unwrap(), &format!("{plain}:/cache/seed.txt")])
        .status
        .success());
    let up = agentctl(&[&["update", &plain, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    assert!(e.docker(&["rm", "-f", &plain]).status.success());
    e.prune(&["container", "prune", "-f"]);
    e.prune(&["volume", "prune", "-f"]);
    let undo = agentctl(&[&["undo", &plain], fast].concat());
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    assert!(
        stdout(&undo).contains("at /cache was gone (pruned) and was created empty: the data it held is not there"),
        "{}",
        stdout(&undo)
    );
    assert!(e.state(&plain).is_some_and(|(_, running, _)| running));
    assert!(cache_seed(&e, &plain).is_empty(), "the volume is a new, empty one");
    let _ = e.docker(&["rm", "-f", "-v", &plain]);
    let _ = e.docker(&["rm", "-f", "-v", &name]);
    let _ = e.docker(&["container", "prune", "-f"]);
}

#[test]
fn undo_brings_back_an_agent_removed_by_mistake_also_from_an_empty_state_dir() {
    let img = images();
    let w = World::new("rmagent");
    let name = w.name("agent");
    let fast = &FAST[..6];
    let v1 = w.docker_run(
        &name,
        &["--restart", "unless-stopped", "-e", "LOG_LEVEL=debug"],
        &img.refs["v1"],
    );
    let up = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    assert!(w.docker(&["rm", "-f", &name]).status.success());
    let status = w.agentctl(&["status", &name, "-o", "json"]);
    assert!(
        json(&status)["findings"]
            .to_string()
            .contains("does not exist on the engine, but revision 2"),
        "{}",
        stdout(&status)
    );
    // The default undo: revision 1, its retained container itself.
    let undo = w.agentctl(&[&["undo", &name], fast].concat());
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    assert_eq!(w.state(&name).unwrap(), (v1.clone(), true, img.refs["v1"].clone()));
    // Removed again; a runner with an empty state directory brings revision 2 back from the history the
    // engine keeps, recreated from its recorded configuration.
    assert!(w.docker(&["rm", "-f", &name]).status.success());
    let fresh = tempfile::tempdir().unwrap();
    let undo = run_in(
        fresh.path(),
        &[&["undo", &name, "--to-revision", "2"], fast].concat(),
        None,
    );
    assert_eq!(code(&undo), 0, "{}", stderr(&undo));
    assert!(
        stderr(&undo).contains("read from the engine record"),
        "{}",
        stderr(&undo)
    );
    let (_, running, image) = w.state(&name).unwrap();
    assert!(running && image == img.refs["v2"]);
    let env = stdout(&w.docker(&["inspect", "-f", "{{json .Config.Env}}", &name]));
    assert!(env.contains("LOG_LEVEL=debug"), "{env}");
}

#[test]
fn implausible_locks_and_forged_histories_are_named_never_trusted() {
    let img = images();
    let w = World::new("forged");
    let name = w.name("agent");
    let fast = &FAST[..6];
    w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    // The record image exists once agentctl has taken any lock on this engine.
    assert_eq!(code(&w.agentctl(&["status", &name])), 0);
    let lock = format!("{name}.agentctl-lock");
    for (acquired, ttl) in [
        ("9999-01-01T00:00:00Z", "30"),
        ("2026-01-01T00:00:00Z", "18446744073709551615"),
    ] {
        let out = w.docker(&[
            "create",
            "--name",
            &lock,
            "--label",
            "io.agentctl.record=lock",
            "--label",
            "io.agentctl.lock.host=elsewhere",
            "--label",
            "io.agentctl.lock.pid=1",
            "--label",
            &format!("io.agentctl.lock.acquired={acquired}"),
            "--label",
            &format!("io.agentctl.lock.ttl={ttl}"),
            "agentctl-record:1",
            "agentctl-record",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let before = w.state(&name).unwrap();
        for args in [vec!["update", &name, "--image", &img.refs["v2"]], vec!["undo", &name]] {
            let out = w.agentctl(&[&args[..], fast].concat());
            assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
            let msg = stderr(&out);
            assert!(
                msg.contains(&format!("the engine record {lock}")) && msg.contains(&format!("docker rm {lock}")),
                "{msg}"
            );
        }
        let status = w.agentctl(&["status", &name, "-o", "json"]);
        assert_eq!(code(&status), 0, "{}", stderr(&status));
        assert!(
            json(&status)["inProgress"].to_string().contains("unreadable"),
            "{}",
            stdout(&status)
        );
        assert_eq!(w.state(&name).unwrap(), before, "nothing changed");
        assert!(w.docker(&["rm", &lock]).status.success());
    }
    // A history record of another container, as a runner with an empty state directory finds it.
    let up = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    let record = format!("{name}.agentctl-history.9");
    let slots: Vec<String> = ["0", "1"]
        .iter()
        .map(|s| format!("{name}.agentctl-history.{s}"))
        .collect();
    let body = String::from_utf8(engine_history(&name)).unwrap();
    let forged = body.replace(&format!("\"name\":\"{name}\""), "\"name\":\"someone-else\"");
    assert_ne!(forged, body);
    for s in &slots {
        let _ = w.docker(&["rm", s]);
    }
    let out = w.docker(&[
        "create",
        "--name",
        &slots[0],
        "--label",
        "io.agentctl.record=history",
        "--label",
        &format!("io.agentctl.history.container={name}"),
        "--label",
        "io.agentctl.history.seq=7",
        "--label",
        &format!("io.agentctl.history={forged}"),
        "agentctl-record:1",
        "agentctl-record",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = tempfile::tempdir().unwrap();
    let history = run_in(fresh.path(), &["history", &name], None);
    assert_eq!(code(&history), 1, "{}", stdout(&history));
    let msg = stderr(&history);
    assert!(
        msg.contains(&format!("the engine record {}", slots[0])) && msg.contains("someone-else"),
        "{msg}"
    );
    let _ = record;
    let _ = w.docker(&["rm", &slots[0]]);
}

#[test]
fn one_engine_written_four_ways_is_one_target_and_one_history() {
    let img = images();
    let w = World::new("oneengine");
    let name = w.name("agent");
    let fast = &FAST[..6];
    w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let up = w.agentctl(
        &[
            &[
                "--host",
                "unix:///var/run//docker.sock/",
                "update",
                &name,
                "--image",
                &img.refs["v2"],
            ],
            fast,
        ]
        .concat(),
    );
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    // The same history, however the engine is written.
    for host in [
        "unix:///var/run/docker.sock",
        "/run/docker.sock",
        "unix:///var/run/docker.sock/",
    ] {
        let h = w.agentctl(&["--host", host, "history", &name, "-o", "json"]);
        assert_eq!(code(&h), 0, "{host}: {}", stderr(&h));
        assert_eq!(json(&h).as_array().map(Vec::len), Some(2), "{host}: {}", stdout(&h));
    }
    // One spec naming the one engine four ways names one target four times: refused, nothing changed.
    let spec = w.state_dir().join("four.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {n}\nimage: {i}\ntargets:\n  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n  - {{host: 'unix:///var/run/docker.sock/', container: {n}}}\n  - {{host: 'unix:///var/run//docker.sock', container: {n}}}\n  - {{host: '/run/docker.sock', container: {n}}}\nstrategy: {{recreate: {{}}}}\n",
            n = name,
            i = img.refs["v3"]
        ),
    )
    .unwrap();
    let out = w.agentctl(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("listed twice"), "{}", stderr(&out));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v2"]);
}

#[test]
fn a_sidecar_with_volumes_from_comes_back_without_a_volume_of_its_own() {
    let img = images();
    let w = World::new("volfrom");
    let data = w.name("data");
    let sidecar = w.name("sidecar");
    let fast = &FAST[..6];
    w.docker_run(&data, &["-v", "/shared"], &img.refs["v1"]);
    w.docker_run(
        &sidecar,
        &["--restart", "unless-stopped", "--volumes-from", &data],
        &img.refs["v1"],
    );
    let host = |c: &str| {
        let o = w.docker(&[
            "inspect",
            "-f",
            "{{json .HostConfig.Binds}} {{json .HostConfig.VolumesFrom}}",
            c,
        ]);
        stdout(&o).trim().to_owned()
    };
    let before = host(&sidecar);
    let up = w.agentctl(&[&["update", &sidecar, "--image", &img.refs["v2"]], fast].concat());
    assert_eq!(code(&up), 0, "{}", stderr(&up));
    assert_eq!(
        host(&sidecar),
        before,
        "the sidecar has no bind of the data container's volume"
    );
    w.remove(&[&sidecar, &format!("{sidecar}.rev1"), &data]);
}

#[test]
fn a_different_spec_under_an_unfinished_rollouts_name_is_refused_then_replaced() {
    let img = images();
    let w = World::new("conflict");
    let (names, _) = w.agents("a", 2);
    let rollout = w.name("r");
    let targets: String = names
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    let write = |file: &str, strategy: &str| {
        let p = w.state_dir().join(file);
        std::fs::write(
            &p,
            format!(
                "name: {rollout}\nimage: {}\ntargets:\n{targets}strategy: {strategy}\nhealth: {{minHealthyTime: 2s, deadline: 20s, period: 300ms}}\n",
                img.refs["v2"]
            ),
        )
        .unwrap();
        p
    };
    let canary = write(
        "canary.yaml",
        "{canary: {steps: [{setWeight: 50}, {pause: {}}, {setWeight: 100}]}}",
    );
    let recreate = write("recreate.yaml", "{recreate: {}}");
    let out = w.agentctl(&["apply", "-f", canary.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let before: Vec<_> = names.iter().map(|n| w.state(n).unwrap()).collect();
    let out = w.agentctl(&["apply", "-f", recreate.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("strategy") && msg.contains("--replace") && msg.contains("paused"),
        "{msg}"
    );
    let after: Vec<_> = names.iter().map(|n| w.state(n).unwrap()).collect();
    assert_eq!(after, before, "nothing changed");
    let out = w.agentctl(&["apply", "--replace", "-f", recreate.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for n in &names {
        // The rollout pins the tag's digest.
        let image = w.state(n).unwrap().2;
        assert!(image.contains("agentctl-it/agent@sha256:"), "{n}: {image}");
    }
    let status = w.agentctl(&["rollout", "status", &rollout, "-o", "json"]);
    assert!(stdout(&status).contains("recreate"), "{}", stdout(&status));
}

#[test]
fn durations_past_a_year_are_refused_naming_the_field_and_nothing_panics() {
    let img = images();
    let w = World::new("bounds");
    let name = w.name("agent");
    w.docker_run(&name, &[], &img.refs["v1"]);
    for (field, yaml) in [
        ("deadline", "health: {deadline: 18446744073709551615s}"),
        (
            "pause",
            "strategy: {canary: {steps: [{setWeight: 50}, {pause: 99999999h}]}}",
        ),
        ("minHealthyTime", "health: {minHealthyTime: 18446744073709551615}"),
    ] {
        let spec = w.state_dir().join("spec.yaml");
        let strategy = if yaml.starts_with("strategy") {
            ""
        } else {
            "strategy: {recreate: {}}\n"
        };
        std::fs::write(
            &spec,
            format!(
                "name: {name}\nimage: {}\ntargets: [{{host: 'unix:///var/run/docker.sock', container: {name}}}]\n{strategy}{yaml}\n",
                img.refs["v2"]
            ),
        )
        .unwrap();
        let out = w.agentctl(&["apply", "-f", spec.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{field}: {}", stderr(&out));
        assert!(stderr(&out).contains("365d"), "{field}: {}", stderr(&out));
    }
    let out = w.agentctl(&["update", &name, "--image", &img.refs["v2"], "--deadline", "1000000h"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(w.state(&name).unwrap().2, img.refs["v1"]);
}
