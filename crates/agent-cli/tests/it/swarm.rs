//! Swarm services as rollout targets, on a real single-node swarm: a second dockerd made a manager, its
//! images pulled from the local registry. The swarm, the engine, `docker_gwbridge` and the iptables rules
//! the swarm added are removed when the test ends, failed or not.

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_docker::testing::{free_port, SecondEngine};
use serde_json::Value;

use crate::support::*;

/// One swarm at a time: `docker_gwbridge` is one per machine.
static ONE_SWARM: Mutex<()> = Mutex::new(());

pub struct Swarm {
    engine: Option<SecondEngine>,
    pub endpoint: String,
    /// The host's address on the engine's bridge: its tasks reach it.
    pub gateway: String,
}

impl Swarm {
    /// A second engine, made a single-node swarm manager, with `images` pulled into it.
    pub fn start(images: &[&str]) -> Swarm {
        remove_swarm_leftovers();
        let n = std::process::id() % 200;
        let engine =
            SecondEngine::start(&format!("agsw{n}"), &format!("10.252.{n}.1/24")).expect("start a second dockerd");
        let swarm = Swarm {
            endpoint: engine.endpoint(),
            engine: Some(engine),
            gateway: format!("10.252.{n}.1"),
        };
        for image in images {
            let out = swarm.docker(&["pull", image]);
            assert!(out.status.success(), "pull {image}: {}", stderr(&out));
        }
        let listen = format!("127.0.0.1:{}", free_port().unwrap());
        let out = swarm.docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            &listen,
        ]);
        assert!(out.status.success(), "swarm init: {}", stderr(&out));
        swarm
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["-H", &self.endpoint])
            .args(args)
            .output()
            .unwrap()
    }

    /// `docker service create --detach --name NAME --no-resolve-image ARGS… IMAGE`, then waits until its
    /// `tasks` tasks run; the spec it was created with (as `docker service inspect` shows it).
    pub fn create(&self, name: &str, args: &[&str], image: &str, tasks: usize) -> Value {
        let mut all = vec!["service", "create", "--detach", "--name", name, "--no-resolve-image"];
        all.extend_from_slice(args);
        all.push(image);
        let out = self.docker(&all);
        assert!(out.status.success(), "service create: {}", stderr(&out));
        self.converge(name, tasks, 90);
        self.inspect(name)["Spec"].clone()
    }

    /// The service's inspect document.
    pub fn inspect(&self, service: &str) -> Value {
        let out = self.docker(&["service", "inspect", service]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    }

    /// The images of the tasks the manager wants running, and how many of them run, as the engine says.
    pub fn task_images(&self, service: &str) -> (Vec<String>, usize) {
        let out = self.docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Image}}|{{.CurrentState}}",
            "--no-trunc",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let rows: Vec<(String, bool)> = stdout(&out)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(i, s)| (i.to_owned(), s.starts_with("Running")))
            .collect();
        let mut images: Vec<String> = rows.iter().map(|(i, _)| i.clone()).collect();
        images.sort();
        (images, rows.iter().filter(|(_, r)| *r).count())
    }

    /// Waits until every desired task of `service` runs, up to `secs`.
    pub fn converge(&self, service: &str, tasks: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (images, running) = self.task_images(service);
            if images.len() == tasks && running == tasks {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} did not converge: {images:?}, {running} running"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // A view of a `NetSwarm`'s manager owns nothing.
        if let Some(engine) = self.engine.take() {
            let _ = self.docker(&["swarm", "leave", "--force"]);
            drop(engine);
            remove_swarm_leftovers();
        }
    }
}

/// A swarm of three engines, each in its own network namespace (one manager, two workers), joined over
/// a bridge of the test's own; images are moved in with `docker save | docker load`. Everything it made
/// (engines, namespaces, the bridge, its forwarding rule) goes when it is dropped.
pub struct NetSwarm {
    n: u32,
    /// The manager's endpoint.
    pub endpoint: String,
}

impl NetSwarm {
    pub fn start(images: &[&str]) -> NetSwarm {
        let n = 100 + std::process::id() % 150;
        let swarm = NetSwarm {
            n,
            endpoint: format!("unix:///tmp/agns{n}-1/docker.sock"),
        };
        swarm.teardown();
        let driver = if std::fs::read_to_string("/etc/docker/daemon.json")
            .unwrap_or_default()
            .contains("fuse-overlayfs")
        {
            "fuse-overlayfs"
        } else {
            "overlay2"
        };
        // The host's FORWARD policy (the engine's) drops bridged traffic: let the nodes talk to each other.
        let script = format!(
            r#"set -e
            N={n}; BR=agnb$N
            ip link add $BR type bridge; ip addr add 10.253.$N.1/24 dev $BR; ip link set $BR up
            iptables -I FORWARD -i $BR -o $BR -j ACCEPT
            for i in 1 2 3; do
              NS=agns$N-$i; D=/tmp/agns$N-$i; mkdir -p $D
              ip netns add $NS
              ip link add agv$N$i type veth peer name eth0 netns $NS
              ip link set agv$N$i master $BR up
              ip netns exec $NS ip addr add 10.253.$N.1$i/24 dev eth0
              ip netns exec $NS ip link set eth0 up
              ip netns exec $NS ip link set lo up
              ip netns exec $NS ip route add default via 10.253.$N.1
              echo '{{"storage-driver": "{driver}"}}' > $D/daemon.json
              # Only the network namespace: `ip netns exec` would hide the cgroup mounts from dockerd.
              nsenter --net=/var/run/netns/$NS dockerd --config-file $D/daemon.json --data-root $D/data                 --exec-root $D/exec --pidfile $D/docker.pid -H unix://$D/docker.sock > $D/log 2>&1 &
            done
            for i in 1 2 3; do
              for t in $(seq 1 150); do docker -H unix:///tmp/agns$N-$i/docker.sock info >/dev/null 2>&1 && break; sleep 0.2; done
            done"#
        );
        sh(&script);
        for image in images {
            for i in 1..=3 {
                sh(&format!(
                    "docker save {image} | docker -H unix:///tmp/agns{n}-{i}/docker.sock load -q"
                ));
            }
        }
        sh(&format!(
            r#"set -e
            N={n}; M=unix:///tmp/agns$N-1/docker.sock
            docker -H $M swarm init --advertise-addr 10.253.$N.11 --listen-addr 10.253.$N.11:2377 >/dev/null
            T=$(docker -H $M swarm join-token -q worker)
            for i in 2 3; do
              docker -H unix:///tmp/agns$N-$i/docker.sock swarm join --token $T --advertise-addr 10.253.$N.1$i                 --listen-addr 10.253.$N.1$i:2377 10.253.$N.11:2377 >/dev/null
            done"#
        ));
        swarm
    }

    pub fn swarm(&self) -> Swarm {
        Swarm {
            engine: None,
            endpoint: self.endpoint.clone(),
            gateway: format!("10.253.{}.1", self.n),
        }
    }

    fn teardown(&self) {
        let n = self.n;
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                r#"N={n}
                for i in 1 2 3; do docker -H unix:///tmp/agns$N-$i/docker.sock swarm leave --force >/dev/null 2>&1; done
                for i in 1 2 3; do [ -f /tmp/agns$N-$i/docker.pid ] && kill $(cat /tmp/agns$N-$i/docker.pid); done
                for t in $(seq 1 100); do pgrep -f "data-root /tmp/agns$N-" >/dev/null || break; sleep 0.2; done
                for i in 1 2 3; do
                  ip netns del agns$N-$i 2>/dev/null
                  grep -o " /tmp/agns$N-$i[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l
                  rm -rf /tmp/agns$N-$i
                done
                ip link del agnb$N 2>/dev/null
                iptables -D FORWARD -i agnb$N -o agnb$N -j ACCEPT 2>/dev/null
                true"#
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetSwarm {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}\n{}", stderr(&out));
}

/// `docker_gwbridge` and the iptables rules a swarm adds outlive its engine: remove them.
fn remove_swarm_leftovers() {
    let script = r#"
        ip link del docker_gwbridge 2>/dev/null
        for t in filter nat; do
          iptables -t $t -S 2>/dev/null | grep -E 'docker_gwbridge|DOCKER-INGRESS' | grep '^-A' | sed 's/^-A/-D/' |
            while read -r rule; do eval iptables -t $t $rule; done
          iptables -t $t -X DOCKER-INGRESS 2>/dev/null
        done
        true"#;
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The spec without what a rollout may change (the image), for comparing before and after.
fn without_image(spec: &Value) -> Value {
    let mut s = spec.clone();
    s["TaskTemplate"]["ContainerSpec"]["Image"] = Value::Null;
    s
}

fn service_spec(w: &World, name: &str, endpoint: &str, service: &str, image: &str, steps: &str) -> String {
    service_spec_held(w, name, endpoint, service, image, steps, "2s")
}

/// A canary spec whose new tasks must stay healthy for `min_healthy`.
fn service_spec_held(
    w: &World,
    name: &str,
    endpoint: &str,
    service: &str,
    image: &str,
    steps: &str,
    min_healthy: &str,
) -> String {
    service_spec_with(w, name, endpoint, service, image, steps, min_healthy, "")
}

/// A canary spec with more health checks (`, heartbeat: {…}`).
#[allow(clippy::too_many_arguments)]
fn service_spec_with(
    w: &World,
    name: &str,
    endpoint: &str,
    service: &str,
    image: &str,
    steps: &str,
    min_healthy: &str,
    health: &str,
) -> String {
    let text = format!(
        "name: {name}\nimage: {image}\ntargets:\n  - {{host: '{endpoint}', service: {service}}}\nstrategy:\n  canary: {{steps: [{steps}]}}\nhealth: {{minHealthyTime: {min_healthy}, deadline: 30s, period: 300ms{health}}}\n"
    );
    let path = w.state_dir().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_service_is_rolled_out_by_a_share_of_its_tasks_and_reverted_by_the_gates() {
    let _one = ONE_SWARM.lock().unwrap_or_else(|p| p.into_inner());
    let img = images();
    let swarm = Swarm::start(&[
        &img.refs["v1"],
        &img.refs["v2"],
        &img.refs["fatal"],
        &img.refs["never-healthy"],
        &img.refs["silent"],
    ]);
    // A control center on the host's address on the engine's bridge, where the tasks send heartbeats.
    let cc = crate::health::control_center(&swarm.gateway);
    let hb = format!(
        ", heartbeat: {{url: '{}', tokenFile: '{}', timeout: 5s}}",
        cc.url,
        cc.token_file.path().display()
    );
    let cc_url = format!("CONTROL_CENTER_URL={}", cc.url);
    let cc_token = format!("CONTROL_CENTER_TOKEN={}", crate::health::TOKEN);
    let w = World::new("swarm");
    let svc = w.name("svc");
    let original = swarm.create(
        &svc,
        &[
            "--replicas",
            "3",
            "--update-parallelism",
            "2",
            "--update-delay",
            "5s",
            "--label",
            "team=obs",
            "--env",
            "MODE=edge",
            "--env",
            &cc_url,
            "--env",
            &cc_token,
            "--env",
            "HEARTBEAT_INTERVAL_MS=300",
            "--restart-max-attempts",
            "5",
        ],
        &img.refs["v1"],
        3,
    );

    // A canary of one task in three, held: the manager's updater stops after it. Every gate, the heartbeat
    // of the new task's container included.
    let ro = w.name("ro");
    let f = service_spec_with(
        &w,
        &ro,
        &swarm.endpoint,
        &svc,
        &img.refs["v2"],
        "{setWeight: 33}, {pause: {}}, {setWeight: 100}",
        "2s",
        &hb,
    );
    let out = w.agentctl(&["apply", "-f", &f, "-o", "json"]);
    assert_eq!(
        code(&out),
        4,
        "paused after the canary: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    std::thread::sleep(Duration::from_secs(3));
    let (images, running) = swarm.task_images(&svc);
    let new: Vec<&String> = images.iter().filter(|i| i.contains(":2.0.0")).collect();
    assert_eq!(
        (new.len(), images.len(), running),
        (1, 3, 3),
        "one task of three runs 2.0.0: {images:?}\n{}\n{}\n{}",
        swarm.inspect(&svc)["Spec"]["UpdateConfig"],
        stdout(&swarm.docker(&["service", "ps", &svc, "--no-trunc"])),
        stdout(&out)
    );
    assert!(new[0].contains("@sha256:"), "the digest is pinned: {}", new[0]);
    let status = json(&w.agentctl(&["rollout", "status", &ro, "-o", "json"]));
    let evidence = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| t["evidence"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        evidence.contains("healthy") && evidence.contains("heartbeat"),
        "the new task's container was verified, its heartbeat too: {status}"
    );

    let out = w.agentctl(&["rollout", "promote", &ro]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let (images, running) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| i.contains(":2.0.0@sha256:")) && running == 3,
        "{images:?}"
    );
    let promoted = swarm.inspect(&svc)["Spec"].clone();
    assert_eq!(
        without_image(&promoted),
        without_image(&original),
        "only the image changed; the service's own update settings are back"
    );
    let good = promoted["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap()
        .to_owned();

    // A version that logs FATAL, one whose HEALTHCHECK never passes and one that sends no heartbeat:
    // stopped at the first task, the whole spec put back, exit 3.
    for (key, why) in [
        ("fatal", "FATAL"),
        ("never-healthy", "HEALTHCHECK"),
        ("silent", "heartbeat"),
    ] {
        let ro = w.name(&format!("ro-{key}"));
        let f = service_spec_with(
            &w,
            &ro,
            &swarm.endpoint,
            &svc,
            &img.refs[key],
            "{setWeight: 33}, {setWeight: 100}",
            "2s",
            &hb,
        );
        let started = Instant::now();
        let out = w.agentctl(&["apply", "-f", &f]);
        assert_eq!(code(&out), 3, "{key} is reverted: {}\n{}", stdout(&out), stderr(&out));
        assert!(
            stdout(&out).contains(why) || stderr(&out).contains(why),
            "{}",
            stdout(&out)
        );
        let (images, running) = swarm.task_images(&svc);
        assert!(
            images.iter().all(|i| *i == good) && running == 3,
            "every task runs 2.0.0 again after {key}: {images:?}"
        );
        assert_eq!(swarm.inspect(&svc)["Spec"], promoted, "{key}: the whole spec is back");
        eprintln!(
            "{key}: detected and restored in {:.1} s\n{}",
            started.elapsed().as_secs_f64(),
            stdout(&out)
        );
    }

    // Any revision: the manager keeps one previous spec, agentctl keeps them all.
    let h = json(&w.agentctl(&["rollout", "history", &ro, "-o", "json"]));
    let revs = h
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == svc.as_str())
        .unwrap()["revisions"]
        .clone();
    assert_eq!(revs[0]["number"], 1, "{h}");
    // The manager's own document (the CLI's inspect adds the defaults it did not store).
    assert_eq!(
        revs[0]["spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img.refs["v1"].as_str(),
        "{h}"
    );
    assert_eq!(revs[0]["spec"]["Labels"], original["Labels"], "{h}");
    let out = w.agentctl(&["rollout", "undo", &ro, "--to-revision", "1"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(swarm.inspect(&svc)["Spec"], original, "revision 1's whole spec is back");
    let (images, running) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| *i == img.refs["v1"]) && running == 3,
        "{images:?}"
    );
}

#[test]
fn a_rollout_of_a_service_killed_mid_step_is_resumed_then_aborted_by_the_next_commands() {
    let _one = ONE_SWARM.lock().unwrap_or_else(|p| p.into_inner());
    let img = images();
    let swarm = Swarm::start(&[&img.refs["v1"], &img.refs["v2"]]);
    let w = World::new("swarmkill");
    let svc = w.name("svc");
    let original = swarm.create(&svc, &["--replicas", "3"], &img.refs["v1"], 3);
    let ro = w.name("ro");
    let f = service_spec_held(
        &w,
        &ro,
        &swarm.endpoint,
        &svc,
        &img.refs["v2"],
        "{setWeight: 33}, {pause: {}}, {setWeight: 100}",
        "8s",
    );
    let mut child = agentctl_in(w.state_dir())
        .args(["--no-progress", "apply", "-f", &f])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed while it verifies the canary's task: the manager has already started it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while swarm
        .task_images(&svc)
        .0
        .iter()
        .filter(|i| i.contains(":2.0.0"))
        .count()
        == 0
    {
        assert!(Instant::now() < deadline, "the canary task never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = json(&w.agentctl(&["rollout", "status", &ro, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "progressing", "{status}");

    // The next apply finds the step half done, verifies the task it finds instead of trusting it, and
    // goes on to the pause without replacing another task.
    let out = w.agentctl(&["apply", "-f", &f, "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stdout(&out), stderr(&out));
    let status = json(&w.agentctl(&["rollout", "status", &ro, "-o", "json"]));
    let verified = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "updated")
        .count();
    assert_eq!(verified, 1, "{status}");
    assert!(
        status.to_string().contains("healthy after"),
        "the resumed step verified the task: {status}"
    );
    let (images, _) = swarm.task_images(&svc);
    assert_eq!(images.iter().filter(|i| i.contains(":2.0.0")).count(), 1, "{images:?}");

    // Killed again in the pause, then aborted: the whole spec is back.
    let out = w.agentctl(&["rollout", "abort", &ro]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let (images, running) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| *i == img.refs["v1"]) && running == 3,
        "{images:?}"
    );
    assert_eq!(swarm.inspect(&svc)["Spec"], original);
}

/// BENCHMARKS.md "Swarm services side by side": `docker service update` (with Swarm's own automatic
/// rollback) and `agentctl apply` on the same service, for a FATAL-logging and a never-healthy version.
/// `cargo test -p agent-cli --all-features --test it swarm::measure -- --ignored --nocapture`
#[test]
#[ignore = "a measurement for BENCHMARKS.md, not a check"]
fn measure() {
    let _one = ONE_SWARM.lock().unwrap_or_else(|p| p.into_inner());
    let img = images();
    let swarm = Swarm::start(&[&img.refs["v2"], &img.refs["fatal"], &img.refs["never-healthy"]]);
    let w = World::new("swarmbench");
    let svc = w.name("svc");
    swarm.create(
        &svc,
        &[
            "--replicas",
            "3",
            "--update-parallelism",
            "1",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "5s",
        ],
        &img.refs["v2"],
        3,
    );
    let good = img.refs["v2"].clone();
    let summary = |images: &[String]| {
        let bad = images
            .iter()
            .filter(|i| **i != good && !i.starts_with(&format!("{good}@")))
            .count();
        format!("{bad} of {} tasks on the bad version", images.len())
    };
    println!("| version | tool | exit | reports | tasks after | time |");
    println!("|---|---|---|---|---|---|");
    for key in ["fatal", "never-healthy"] {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args([
                "300",
                "docker",
                "-H",
                &swarm.endpoint,
                "service",
                "update",
                "--image",
                &img.refs[key],
                &svc,
            ])
            .output()
            .unwrap();
        let took = started.elapsed().as_secs_f64();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_owned();
        std::thread::sleep(Duration::from_secs(2));
        let (images, _) = swarm.task_images(&svc);
        let update = swarm.inspect(&svc)["UpdateStatus"].clone();
        println!(
            "| {key} | docker service update | {} | \"{last}\"; UpdateStatus {} | {} | {took:.1} s |",
            code(&out),
            update["State"],
            summary(&images)
        );
        // Back to the good version before agentctl's turn.
        let out = swarm.docker(&["service", "update", "--image", &good, &svc]);
        assert!(out.status.success(), "{}", stderr(&out));
        swarm.converge(&svc, 3, 120);
        let ro = w.name(&format!("ro-{key}"));
        let f = service_spec(
            &w,
            &ro,
            &swarm.endpoint,
            &svc,
            &img.refs[key],
            "{setWeight: 33}, {setWeight: 100}",
        );
        let started = Instant::now();
        let out = w.agentctl(&["apply", "-f", &f, "-o", "json"]);
        let took = started.elapsed().as_secs_f64();
        let end = stdout(&out)
            .lines()
            .last()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .unwrap();
        // The cause, as the failed unit records it.
        let reason: String = end["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["status"] == "failed")
            .and_then(|t| t["message"].as_str())
            .unwrap_or_default()
            .split("; the service runs")
            .next()
            .unwrap_or_default()
            .chars()
            .take(110)
            .collect();
        let (images, _) = swarm.task_images(&svc);
        println!(
            "| {key} | agentctl apply (canary 33 %) | {} | {} ({reason}) | {} | {took:.1} s |",
            code(&out),
            end["phase"].as_str().unwrap_or_default(),
            summary(&images)
        );
        swarm.converge(&svc, 3, 120);
    }
}

#[test]
fn a_global_service_on_three_nodes_is_rolled_out_node_by_node_and_reverted() {
    let _one = ONE_SWARM.lock().unwrap_or_else(|p| p.into_inner());
    let img = images();
    let net = NetSwarm::start(&[&img.refs["v1"], &img.refs["v2"], &img.refs["fatal"]]);
    let swarm = net.swarm();
    let w = World::new("swarmglobal");
    let svc = w.name("svc");
    let original = swarm.create(&svc, &["--mode", "global"], &img.refs["v1"], 3);

    // A mixed spec: a plain container first (on the manager's engine: the nodes have their images from
    // `docker load`, without the registry's digests), then the service's three nodes. 25 % of the four units
    // is the container; one node more is held at 50 %; then the rest.
    let agent = w.name("agent");
    w.docker_run_on(
        &swarm.endpoint,
        &agent,
        &["--restart", "unless-stopped"],
        &img.refs["v1"],
    );
    let ro = w.name("ro");
    let f = w.state_dir().join("mixed.yaml");
    std::fs::write(
        &f,
        format!(
            "name: {ro}\nimage: {}\ntargets:\n  - {{host: '{ep}', container: {agent}}}\n  - {{host: '{ep}', service: {svc}}}\nstrategy:\n  canary: {{steps: [{{setWeight: 25}}, {{pause: {{}}}}, {{setWeight: 50}}, {{pause: {{}}}}, {{setWeight: 100}}]}}\nhealth: {{minHealthyTime: 2s, deadline: 30s, period: 300ms}}\n",
            img.refs["v2"],
            ep = swarm.endpoint
        ),
    )
    .unwrap();
    let f = f.to_string_lossy().into_owned();
    let out = w.agentctl(&["apply", "-f", &f, "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stdout(&out), stderr(&out));
    let first = w.state_on(&swarm.endpoint, &agent).unwrap().2;
    assert!(
        first == img.refs["v2"],
        "the container went first: {first}\n{}",
        stdout(&out)
    );
    let (images, _) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| *i == img.refs["v1"]),
        "the service is untouched at 25 %: {images:?}"
    );
    let out = w.agentctl(&["rollout", "promote", &ro, "-o", "json"]);
    assert_eq!(code(&out), 4, "{}\n{}", stdout(&out), stderr(&out));
    let (images, running) = swarm.task_images(&svc);
    assert_eq!(
        (images.iter().filter(|i| i.contains(":2.0.0")).count(), running),
        (1, 3),
        "one node of three at 50 %: {images:?}"
    );
    let out = w.agentctl(&["rollout", "promote", &ro, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let (images, running) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| i.contains(":2.0.0")) && running == 3,
        "{images:?}"
    );
    let promoted = swarm.inspect(&svc)["Spec"].clone();
    assert_eq!(without_image(&promoted), without_image(&original));
    // Tasks on the workers were verified through the manager (their engines are not agentctl's targets).
    let status = json(&w.agentctl(&["rollout", "status", &ro, "-o", "json"]));
    let evidence: Vec<&str> = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["service"] == svc.as_str())
        .filter_map(|t| t["evidence"].as_str())
        .collect();
    assert_eq!(evidence.len(), 3, "each node's task has its evidence: {status}");
    assert!(
        evidence.iter().any(|e| e.contains("through the manager")),
        "{evidence:?}"
    );

    // A FATAL-logging version on every node at once: caught on the workers too, the spec put back.
    let ro = w.name("ro-fatal");
    let f = service_spec(&w, &ro, &swarm.endpoint, &svc, &img.refs["fatal"], "{setWeight: 100}");
    let out = w.agentctl(&["apply", "-f", &f]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let (images, running) = swarm.task_images(&svc);
    assert!(
        images.iter().all(|i| i.contains(":2.0.0")) && running == 3,
        "{images:?}"
    );
    assert_eq!(swarm.inspect(&svc)["Spec"], promoted);
}

/// The step sequences a canary makes of every share, over replicated services of 1, 2, 4 and 5 tasks and a
/// global service: each step holds the manager's updater after its own tasks and the next step takes the
/// rest, to the last one (a 4-task service at `setWeight: 50` then 100 once stopped at 2 of 4).
#[test]
fn every_step_sequence_takes_its_share_of_tasks_to_the_end() {
    let _one = ONE_SWARM.lock().unwrap_or_else(|p| p.into_inner());
    let img = images();
    let swarm = Swarm::start(&[&img.refs["v1"], &img.refs["v2"]]);
    let w = World::new("swsteps");
    let cases: [(&str, &[&str], usize, &str); 6] = [
        ("r1", &["--replicas", "1"], 1, "{setWeight: 50}, {setWeight: 100}"),
        ("r2", &["--replicas", "2"], 2, "{setWeight: 50}, {setWeight: 100}"),
        ("r4", &["--replicas", "4"], 4, "{setWeight: 50}, {setWeight: 100}"),
        (
            "r4b",
            &["--replicas", "4"],
            4,
            "{setWeight: 25}, {setWeight: 50}, {setWeight: 75}",
        ),
        (
            "r5",
            &["--replicas", "5"],
            5,
            "{setWeight: 20}, {setWeight: 60}, {setWeight: 100}",
        ),
        ("g", &["--mode", "global"], 1, "{setWeight: 50}, {setWeight: 100}"),
    ];
    for (tag, args, tasks, steps) in cases {
        let svc = w.name(tag);
        swarm.create(&svc, args, &img.refs["v1"], tasks);
        let ro = w.name(&format!("ro{tag}"));
        let f = service_spec_held(&w, &ro, &swarm.endpoint, &svc, &img.refs["v2"], steps, "1s");
        let out = w.agentctl(&["apply", "-f", &f]);
        assert_eq!(
            code(&out),
            0,
            "{tag} ({tasks} tasks, {steps}): {}\n{}\n{}",
            stdout(&out),
            stderr(&out),
            stdout(&swarm.docker(&["service", "ps", &svc, "--no-trunc"]))
        );
        let (images, running) = swarm.task_images(&svc);
        assert_eq!(running, tasks, "{tag}: {images:?}");
        assert!(
            images.iter().all(|i| i.contains(":2.0.0")),
            "{tag}: every task on 2.0.0: {images:?}"
        );
        let _ = swarm.docker(&["service", "rm", &svc]);
    }
}
