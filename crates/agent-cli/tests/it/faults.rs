//! Engine faults in the middle of an update, injected while agentctl holds right after a journaled step
//! (the `AGENTCTL_HOLD_AT` test switch): each fails cleanly, reverts (now, or on the next command once the
//! fault is gone), and loses nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// An agentctl process holding after a journaled step until released.
pub(crate) struct Held {
    pub(crate) child: Child,
    release: PathBuf,
}

impl Held {
    fn start(w: &World, args: &[&str], step: &str) -> Held {
        Held::start_in(w.state_dir(), args, step)
    }

    /// Like [`Held::start`], with the state directory `state`.
    pub(crate) fn start_in(state: &std::path::Path, args: &[&str], step: &str) -> Held {
        let release = state.join(format!("release-{}", step.replace(':', "-")));
        let held = PathBuf::from(format!("{}.held", release.display()));
        let mut child = agentctl_in(state)
            .arg("--no-progress")
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("AGENTCTL_CRASH_AT")
            .env("AGENTCTL_HOLD_AT", step)
            .env("AGENTCTL_HOLD_FILE", &release)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !held.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!("agentctl ended ({status}) before holding at {step}: {}", stderr(&out));
            }
            assert!(Instant::now() < deadline, "agentctl never reached {step}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Held { child, release }
    }

    pub(crate) fn release(self) -> Output {
        std::fs::write(&self.release, b"").unwrap();
        self.child.wait_with_output().unwrap()
    }
}

/// Exactly one running instance among the containers named `name*`, and it is `name`.
fn one_running(w: &World, name: &str) {
    assert_eq!(w.running(name), [name], "{:?}", w.containers(name));
}

#[test]
fn a_name_conflict_is_refused_up_front_and_reverted_when_it_appears_mid_update() {
    let img = images();
    let w = World::new("conflict");
    let name = w.name("agent");
    let id = w.docker_run(&name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    // A stranger already holds the name agentctl retains the old container under.
    let stranger = format!("{name}.rev1");
    let out = w.docker(&["create", "--name", &stranger, "--label", &w.label, &img.refs["v1"]]);
    assert!(out.status.success());
    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], FAST].concat());
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("the container name {stranger}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.state(&name).unwrap(), (id.clone(), true, img.refs["v1"].clone()));
    w.docker(&["rm", "-f", &stranger]);

    // The same conflict appearing after the old container was stopped: the rename fails, the old comes back.
    let held = Held::start(
        &w,
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "stop-old",
    );
    let out = w.docker(&["create", "--name", &stranger, "--label", &w.label, &img.refs["v1"]]);
    assert!(out.status.success());
    let stranger_id = w.state(&stranger).unwrap().0;
    let out = held.release();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    one_running(&w, &name);
    assert_eq!(w.state(&name).unwrap().0, id);
    assert_eq!(
        w.state(&stranger).unwrap().0,
        stranger_id,
        "the stranger is not touched"
    );
}

#[test]
fn a_port_taken_mid_update_fails_the_update_and_the_revert_finishes_once_it_is_free() {
    let img = images();
    let w = World::new("port");
    let name = w.name("agent");
    let port = agent_docker::testing::free_port().unwrap();
    let id = w.docker_run(
        &name,
        &["--restart", "unless-stopped", "-p", &format!("127.0.0.1:{port}:8080")],
        &img.refs["v1"],
    );
    // After the old container stopped and its name moved, another process takes the port.
    let held = Held::start(
        &w,
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "create-new",
    );
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = held.release();
    // The new container cannot bind, and neither can the old one while the port is taken: exit 5, the old
    // container kept under its name with its configuration.
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    // The port is named, and why it could not be had.
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")) && stderr(&out).contains("address already in use"),
        "{}",
        stderr(&out)
    );
    let (now, _, image) = w.state(&name).unwrap();
    assert_eq!((now.as_str(), image.as_str()), (id.as_str(), img.refs["v1"].as_str()));
    // Once the port is free, the next command finishes the revert.
    drop(squatter);
    let out = w.agentctl(&["status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["recovered"].as_array().unwrap().len(), 1);
    one_running(&w, &name);
    assert_eq!(w.state(&name).unwrap().0, id);
    let p = w.docker(&["port", &name, "8080"]);
    assert!(stdout(&p).contains(&port.to_string()), "{}", stdout(&p));
}

#[test]
fn a_network_removed_mid_update_fails_cleanly_and_nothing_is_lost() {
    let img = images();
    let w = World::new("netgone");
    let net = w.network("net", "10.233.7.0/24");
    let name = w.name("agent");
    let id = w.docker_run(
        &name,
        &[
            "--restart",
            "unless-stopped",
            "--network",
            &net,
            "--ip",
            "10.233.7.20",
            "--network-alias",
            "collector",
        ],
        &img.refs["v1"],
    );
    let held = Held::start(
        &w,
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "create-new",
    );
    let out = w.docker(&["network", "rm", &net]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = held.release();
    // Neither the new nor the old container can join a network that is gone.
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&net) || stderr(&out).contains("network"),
        "{}",
        stderr(&out)
    );
    // The old container is kept under its name, configuration intact.
    let (now, running, _) = w.state(&name).unwrap();
    assert_eq!((now.as_str(), running), (id.as_str(), false));
    let cfg = w.docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
        &name,
    ]);
    assert_eq!(stdout(&cfg).trim(), net);
    // The network is back (same name): the next command finishes the revert.
    w.network("net", "10.233.7.0/24");
    let out = w.agentctl(&["status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    one_running(&w, &name);
    assert_eq!(w.state(&name).unwrap().0, id);
    // Re-joined as it was: its address and its alias on the network.
    let joined = w.docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}} {{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}"),
        &name,
    ]);
    let joined = stdout(&joined);
    assert!(
        joined.starts_with("10.233.7.20 ") && joined.contains("\"collector\""),
        "{joined}"
    );
}

#[test]
fn a_bind_source_removed_mid_update_fails_cleanly_and_nothing_is_lost() {
    let img = images();
    let w = World::new("bindgone");
    let dir = w.state_dir().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.toml"), "level = 3\n").unwrap();
    let name = w.name("agent");
    let mount = format!("type=bind,src={},dst=/config", dir.display());
    let id = w.docker_run(
        &name,
        &["--restart", "unless-stopped", "--mount", &mount],
        &img.refs["v1"],
    );
    let held = Held::start(
        &w,
        &[&["update", &name, "--image", &img.refs["v2"]], FAST].concat(),
        "create-new",
    );
    let moved = w.state_dir().join("config.moved");
    std::fs::rename(&dir, &moved).unwrap();
    let out = held.release();
    assert!(matches!(code(&out), 3 | 5), "{}", stderr(&out));
    let (now, _, image) = w.state(&name).unwrap();
    assert_eq!((now.as_str(), image.as_str()), (id.as_str(), img.refs["v1"].as_str()));
    std::fs::rename(&moved, &dir).unwrap();
    let out = w.agentctl(&["status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    one_running(&w, &name);
    assert_eq!(w.state(&name).unwrap().0, id);
    assert_eq!(std::fs::read_to_string(dir.join("agent.toml")).unwrap(), "level = 3\n");
}

#[test]
fn an_engine_restarted_mid_update_loses_nothing_and_the_next_command_finishes() {
    let img = images();
    let w = World::new("restart");
    // An engine of its own: this test restarts it.
    let pid = std::process::id();
    let bridge = format!("agrs{}", pid % 100_000);
    let subnet = format!("10.{}.{}.1/24", 230 + (pid % 5), pid % 250);
    let mut engine = agent_docker::testing::SecondEngine::start(&bridge, &subnet).expect("start a dockerd");
    let ep = engine.endpoint();
    let docker = |args: &[&str]| Command::new("docker").arg("-H").arg(&ep).args(args).output().unwrap();
    for v in ["v1", "v2"] {
        let out = docker(&["pull", &img.refs[v]]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let name = w.name("agent");
    let vol = format!("{name}-data");
    let id = w.docker_run_on(
        &ep,
        &name,
        &["--restart", "unless-stopped", "-v", &format!("{vol}:/data")],
        &img.refs["v1"],
    );
    let seed = w.state_dir().join("seed.txt");
    std::fs::write(&seed, "config of the agent\n").unwrap();
    let out = docker(&["cp", seed.to_str().unwrap(), &format!("{name}:/data/seed.txt")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = || docker(&["cp", &format!("{name}:/data/seed.txt"), "-"]).stdout;
    let before = read();

    // The engine restarts while the new container is being verified.
    let args = [&["--host", &ep, "update", &name, "--image", &img.refs["v2"]], FAST].concat();
    let held = Held::start(&w, &args, "verify");
    engine.restart().expect("restart the engine");
    let inspect = |c: &str| {
        let o = docker(&[
            "inspect",
            "-f",
            "{{.Id}} {{.State.Running}} {{.HostConfig.RestartPolicy.Name}}",
            c,
        ]);
        o.status.success().then(|| stdout(&o).trim().to_owned())
    };
    // The retained old container (restart policy `no`) does not come back running beside the new one.
    let retained = inspect(&format!("{name}.rev1")).expect("the old container is retained");
    assert_eq!(retained, format!("{id} false no"));
    let out = held.release();
    let first = code(&out);
    assert!(matches!(first, 0 | 3 | 5), "{}", stderr(&out));
    // The next command finishes or reverts whatever was left.
    let out = w.agentctl(&["--host", &ep, "status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ps = docker(&["ps", "--filter", &format!("name={name}"), "--format", "{{.Names}}"]);
    assert_eq!(stdout(&ps).trim(), name, "exactly one running instance");
    let (now_id, image) = {
        let o = docker(&["inspect", "-f", "{{.Id}} {{.Config.Image}}", &name]);
        let s = stdout(&o);
        let mut it = s.split_whitespace();
        (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
    };
    if first == 0 {
        assert_eq!(image, img.refs["v2"]);
    } else {
        assert_eq!(
            (now_id.as_str(), image.as_str()),
            (id.as_str(), img.refs["v1"].as_str())
        );
    }
    assert_eq!(read(), before, "the volume's bytes are unchanged");
    // Clean up on that engine before it stops.
    let _ = docker(&["rm", "-f", &name, &format!("{name}.rev1")]);
}

#[test]
fn a_full_disk_fails_the_update_cleanly_and_nothing_is_lost() {
    let img = images();
    let w = World::new("disk");
    let pid = std::process::id();
    let bridge = format!("agdk{}", pid % 100_000);
    let subnet = format!("10.{}.{}.1/24", 235 + (pid % 5), pid % 250);
    // A 256 MiB data root that the test fills.
    let engine = agent_docker::testing::SecondEngine::start_with(
        &bridge,
        &subnet,
        agent_docker::testing::EngineOptions {
            disk_mib: Some(256),
            ..Default::default()
        },
    )
    .expect("start a dockerd");
    let ep = engine.endpoint();
    let docker = |args: &[&str]| Command::new("docker").arg("-H").arg(&ep).args(args).output().unwrap();
    let out = docker(&["pull", &img.refs["v1"]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = w.name("agent");
    let id = w.docker_run_on(&ep, &name, &["--restart", "unless-stopped"], &img.refs["v1"]);
    let fill = engine.dir().join("data").join("fill");
    let fill_disk = || {
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", fill.display()))
            .args(["bs=1M", "count=1024"])
            .stderr(Stdio::null())
            .status();
    };
    let state = |c: &str| {
        let o = docker(&["inspect", "-f", "{{.Id}} {{.State.Running}} {{.Config.Image}}", c]);
        o.status.success().then(|| stdout(&o).trim().to_owned())
    };
    let original = format!("{id} true {}", img.refs["v1"]);

    // 1. No room for the new image: the pull fails before anything changes.
    fill_disk();
    let out = w.agentctl(&[&["--host", &ep, "update", &name, "--image", &img.refs["v2"]], FAST].concat());
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no space left"), "{}", stderr(&out));
    assert_eq!(state(&name).unwrap(), original);

    // 2. The image is there but the disk fills before the new container is created: it fails and reverts
    // (now, or on the next command once there is room again).
    std::fs::remove_file(&fill).unwrap();
    let out = docker(&["pull", &img.refs["v2"]]);
    assert!(out.status.success(), "{}", stderr(&out));
    fill_disk();
    let out = w.agentctl(
        &[
            &[
                "--host",
                &ep,
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "--pull",
                "never",
            ],
            &FAST[..6],
        ]
        .concat(),
    );
    assert!(matches!(code(&out), 1 | 3 | 5), "{}", stderr(&out));
    std::fs::remove_file(&fill).unwrap();
    let out = w.agentctl(&["--host", &ep, "status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(state(&name).unwrap(), original, "the original container runs again");
    let ps = docker(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(stdout(&ps).trim(), name, "exactly one running instance");
    let _ = docker(&["rm", "-f", &name, &format!("{name}.rev1")]);
}
