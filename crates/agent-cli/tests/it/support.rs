//! Shared fixture: the engine, a local registry with the demo images pushed to it, and helpers to run
//! `agentctl` and to set up containers with the docker CLI the way operators do.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use agent_core::ContainerRuntime;
use agent_docker::testing::{demo_agent_binary, run_id, DemoImage, LocalRegistry, SecondEngine, RUN_LABEL};
use agent_docker::DockerRuntime;

/// Images in the registry, by name: `v1`, `v2`, `exit`, `never-healthy`, `fatal`, `crash`, `slow`.
pub struct Images {
    pub registry: String,
    pub refs: HashMap<&'static str, String>,
}

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ENGINES: Mutex<Vec<(u32, PathBuf, String)>> = Mutex::new(Vec::new());
static SECOND: OnceLock<String> = OnceLock::new();
static IMAGES: OnceLock<Images> = OnceLock::new();
const FIXTURE_LABEL: &str = "io.agentctl.it-fixture";

extern "C" fn kill_children() {
    for pid in PIDS.lock().map(|p| p.clone()).unwrap_or_default() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    prune_fixture_images();
    for (pid, dir, bridge) in ENGINES.lock().map(|e| e.clone()).unwrap_or_default() {
        SecondEngine::stop(pid, &dir, &bridge);
    }
}

/// A second Docker engine for multi-host tests (started once per test process, stopped at exit), with the
/// fixture's v1 image pulled from the local registry. Returns its endpoint.
pub fn second_engine() -> &'static str {
    SECOND.get_or_init(|| {
        let img = images();
        let bridge = format!("agctl{}", std::process::id() % 100_000);
        let subnet = format!(
            "10.{}.{}.1/24",
            240 + (std::process::id() % 10),
            std::process::id() % 250
        );
        let engine = SecondEngine::start(&bridge, &subnet).expect("start a second dockerd");
        let endpoint = engine.endpoint();
        ENGINES.lock().unwrap().push(engine.detach());
        let out = Command::new("docker")
            .args(["-H", &endpoint, "pull", &img.refs["v1"]])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the second engine pulls from the local registry: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        endpoint
    })
}

/// Removes the fixture's images that no container uses (this run's at exit, or a crashed run's at start).
fn prune_fixture_images() {
    let _ = Command::new("docker")
        .args([
            "image",
            "prune",
            "-a",
            "-f",
            "--filter",
            &format!("label={FIXTURE_LABEL}"),
        ])
        .output();
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The registry and images, made once per test process.
pub fn images() -> &'static Images {
    IMAGES.get_or_init(|| {
        prune_fixture_images();
        let registry = LocalRegistry::start().expect("start the local registry (apt-get install docker-registry)");
        let address = registry.address();
        // The registry lives as long as the test process; kill it at exit.
        PIDS.lock().unwrap().push(registry.detach());
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(kill_children);
        }
        let binary = demo_agent_binary().expect("build the demo agent");
        let rt = runtime();
        let refs = rt.block_on(async {
            let docker = DockerRuntime::connect(None).await.expect("connect to the engine");
            let labels = HashMap::from([(FIXTURE_LABEL.to_owned(), "1".to_owned())]);
            let mut refs = HashMap::new();
            let specs: [(&'static str, &str, Option<&str>); 12] = [
                ("v1", "1.0.0", None),
                ("v2", "2.0.0", None),
                ("v3", "3.0.0", None),
                ("exit", "9.1.0", Some("exit-at-start")),
                ("never-healthy", "9.2.0", Some("never-healthy")),
                ("fatal", "9.3.0", Some("fatal-logs")),
                ("crash", "9.4.0", Some("crash-after:1")),
                ("slow", "9.5.0", Some("slow-start:600")),
                // Tagged 9.6.0 but still reports 1.0.0: a stale build.
                ("stale", "9.6.0", None),
                ("silent", "9.7.0", Some("no-heartbeat")),
                ("errors", "9.8.0", Some("error-rate:0.5")),
                // Healthy at first, crashes once it is live: for probation.
                ("late-crash", "9.9.0", Some("crash-after:6")),
            ];
            for (key, version, failure) in specs {
                let mut img = DemoImage::new(version);
                img.failure = failure.map(str::to_owned);
                if key == "stale" {
                    img.env.push(("AGENT_VERSION".into(), "1.0.0".into()));
                }
                let tag = format!("{address}/agentctl-it/agent:{version}");
                img.build(&docker, &binary, &tag, &labels)
                    .await
                    .expect("build a demo image");
                docker.push_image(&tag).await.expect("push to the local registry");
                refs.insert(key, tag);
            }
            refs
        });
        Images {
            registry: address,
            refs,
        }
    })
}

/// The PostgreSQL server the whole suite runs its state against, when `AGENTCTL_TEST_POSTGRES` names one
/// (`scripts/test` runs the suite a second time that way): every state directory then gets a database of
/// its own, passed to agentctl as `AGENTCTL_STATE`, so separate state directories stay separate stores.
pub fn test_postgres() -> Option<String> {
    std::env::var("AGENTCTL_TEST_POSTGRES").ok().filter(|u| !u.is_empty())
}

static DATABASES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The environment that points agentctl at the store of `state_dir`: nothing for SQLite (the store is in
/// the directory), `AGENTCTL_STATE` with the directory's own database in the PostgreSQL run.
pub fn state_env(state_dir: &Path) -> Vec<(String, String)> {
    let Some(server) = test_postgres() else {
        return Vec::new();
    };
    let mut dbs = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, url)) = dbs.iter().find(|(p, _)| p == state_dir) {
        return vec![("AGENTCTL_STATE".into(), url.clone())];
    }
    let name = format!("it_{}_{}", std::process::id(), dbs.len());
    #[cfg(feature = "testing")]
    let url = agent_rollout::testing::create_database(&server, &name).expect("create a test database");
    #[cfg(not(feature = "testing"))]
    let url: String = panic!("the PostgreSQL run of {server} needs --features testing ({name})");
    dbs.push((state_dir.to_owned(), url.clone()));
    vec![("AGENTCTL_STATE".into(), url)]
}

/// `agentctl --state-dir STATE` (and its store, see [`state_env`]), colours off.
pub fn agentctl_in(state_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentctl"));
    cmd.arg("--state-dir").arg(state_dir).env("NO_COLOR", "1");
    cmd.envs(state_env(state_dir));
    cmd
}

/// agentctl with its own state directory `state` (and its store), optionally killed at `crash` (`KIND:STEP`,
/// through the `AGENTCTL_CRASH_AT` switch of a `testing` build).
pub fn run_in(state: &Path, args: &[&str], crash: Option<&str>) -> Output {
    let mut cmd = agentctl_in(state);
    cmd.arg("--no-progress").args(args);
    match crash {
        Some(s) => cmd.env("AGENTCTL_CRASH_AT", s),
        None => cmd.env_remove("AGENTCTL_CRASH_AT"),
    };
    cmd.output().unwrap()
}

/// Every byte the store of `state_dir` holds: the SQLite file and its WAL, or the PostgreSQL database's
/// tables as text. Tests look for secrets in it.
pub fn stored_state(state_dir: &Path) -> Vec<u8> {
    match state_env(state_dir).pop() {
        None => {
            let mut bytes = std::fs::read(state_dir.join("state.db")).unwrap_or_default();
            bytes.extend(std::fs::read(state_dir.join("state.db-wal")).unwrap_or_default());
            bytes
        }
        Some((_, url)) => {
            let sql = "SELECT string_agg(t::text, E'\\n') FROM (SELECT body::text FROM agentctl_revisions UNION ALL SELECT record::text FROM agentctl_journal UNION ALL SELECT body::text FROM agentctl_documents UNION ALL SELECT body::text FROM agentctl_leases) t";
            let out = Command::new("psql")
                .args([url.as_str(), "-At", "-c", sql])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        }
    }
}

/// The copy of `container`'s history that agentctl keeps on the local engine, as stored there: the label of
/// its newest history record (empty when it has none).
pub fn engine_history(container: &str) -> Vec<u8> {
    let newest = ["0", "1"]
        .iter()
        .filter_map(|slot| {
            let out = Command::new("docker")
                .args(["inspect", &format!("{container}.agentctl-history.{slot}")])
                .output()
                .ok()?;
            let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let labels = &inspected[0]["Config"]["Labels"];
            let seq: u64 = labels["io.agentctl.history.seq"].as_str()?.parse().ok()?;
            Some((seq, labels["io.agentctl.history"].as_str()?.to_owned()))
        })
        .max_by_key(|(seq, _)| *seq);
    newest.map(|(_, body)| body.into_bytes()).unwrap_or_default()
}

/// One test's world: a run id, a state dir, and cleanup by label on drop.
pub struct World {
    pub run: String,
    pub state: tempfile::TempDir,
    pub label: String,
}

impl World {
    pub fn new(prefix: &str) -> World {
        let run = run_id(prefix);
        World {
            label: format!("{RUN_LABEL}={run}"),
            run,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// A container name unique to this test.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.run)
    }

    /// Runs agentctl with this world's state dir.
    pub fn agentctl(&self, args: &[&str]) -> Output {
        self.agentctl_env(args, &[])
    }

    pub fn agentctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = agentctl_in(self.state.path());
        cmd.arg("--no-progress").args(args);
        cmd.env_remove("AGENTCTL_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// `docker run -d` with this world's label and `args`, returning the container id.
    pub fn docker_run(&self, name: &str, args: &[&str], image: &str) -> String {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", name, "--label", &self.label])
            .args(args)
            .arg(image);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").args(args).output().unwrap()
    }

    /// Removes `names` one after another with their anonymous volumes (`docker rm -f -v`). One at a time:
    /// an update re-attaches the old container's anonymous volumes to the new one by name, and the engine
    /// removes a volume with the container that created it only once no other container uses it, which a
    /// single `docker rm` of both (removed in parallel) does not wait for.
    pub fn remove(&self, names: &[&str]) {
        for name in names {
            let _ = self.docker(&["rm", "-f", "-v", name]);
        }
    }

    /// `docker run -d` on another engine.
    pub fn docker_run_on(&self, endpoint: &str, name: &str, args: &[&str], image: &str) -> String {
        let out = Command::new("docker")
            .args(["-H", endpoint, "run", "-d", "--name", name, "--label", &self.label])
            .args(args)
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Like [`World::state`], on another engine.
    pub fn state_on(&self, endpoint: &str, name: &str) -> Option<(String, bool, String)> {
        let out = Command::new("docker")
            .args([
                "-H",
                endpoint,
                "inspect",
                "-f",
                "{{.Id}} {{.State.Running}} {{.Config.Image}}",
                name,
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut it = s.split(' ');
        Some((it.next()?.to_owned(), it.next()? == "true", it.next()?.to_owned()))
    }

    /// A docker network with this world's label.
    pub fn network(&self, suffix: &str, subnet: &str) -> String {
        let name = self.name(suffix);
        // Name the gateway: with only --subnet, Docker 20.10 leaves it out of the IPAM config.
        let gateway = format!("{}.1", subnet.rsplit_once('.').map(|(net, _)| net).unwrap_or(subnet));
        let out = self.docker(&[
            "network",
            "create",
            "--label",
            &self.label,
            "--subnet",
            subnet,
            "--gateway",
            &gateway,
            &name,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        name
    }

    /// A named volume with this world's label.
    pub fn volume(&self, suffix: &str) -> String {
        let name = self.name(suffix);
        let out = self.docker(&["volume", "create", "--label", &self.label, &name]);
        assert!(out.status.success());
        name
    }

    /// The container's id, running flag and image, or `None` when it does not exist.
    pub fn state(&self, name: &str) -> Option<(String, bool, String)> {
        let out = self.docker(&["inspect", "-f", "{{.Id}} {{.State.Running}} {{.Config.Image}}", name]);
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut it = s.split(' ');
        Some((it.next()?.to_owned(), it.next()? == "true", it.next()?.to_owned()))
    }

    /// Names of this world's containers whose name starts with `prefix`.
    pub fn containers(&self, prefix: &str) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={}", self.label),
            "--format",
            "{{.Names}}",
        ]);
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// Names of this world's running containers whose name starts with `prefix`.
    pub fn running(&self, prefix: &str) -> Vec<String> {
        self.containers(prefix)
            .into_iter()
            .filter(|c| self.state(c).is_some_and(|s| s.1))
            .collect()
    }

    /// `count` agents on 1.0.0 named `PREFIX1`, `PREFIX2`, …, restart policy `unless-stopped`: their names
    /// and container ids.
    pub fn agents(&self, prefix: &str, count: usize) -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = (1..=count).map(|i| self.name(&format!("{prefix}{i}"))).collect();
        let ids = names
            .iter()
            .map(|n| self.docker_run(n, &["--restart", "unless-stopped"], &images().refs["v1"]))
            .collect();
        (names, ids)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Samples, every 50 ms until `stop` is set, how many of this world's containers named `t` or
    /// `t.preview` run, for each target `t`. Join the handle for the samples (one `Vec` per target).
    pub fn sample_instances(
        &self,
        targets: &[String],
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Vec<Vec<usize>>> {
        let label = self.label.clone();
        let targets = targets.to_vec();
        std::thread::spawn(move || {
            let mut samples = vec![Vec::new(); targets.len()];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new("docker")
                    .args(["ps", "--filter", &format!("label={label}"), "--format", "{{.Names}}"])
                    .output()
                    .unwrap();
                let running: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                for (i, t) in targets.iter().enumerate() {
                    let preview = format!("{t}.preview");
                    samples[i].push(running.iter().filter(|n| **n == *t || **n == preview).count());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            samples
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let label = self.label.clone();
        // The records agentctl keeps beside this world's containers (locks a killed agentctl left, journals,
        // histories): they carry no run label, and are found by name: the run's prefix, or the project name
        // a docker-compose test makes of it (its letters and digits, then `_`).
        let locks = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=io.agentctl.record",
                "--format",
                "{{.Names}}",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let project: String = self.run.chars().filter(char::is_ascii_alphanumeric).collect();
        let ours = |name: &str| name.starts_with(&format!("{}-", self.run)) || name.starts_with(&format!("{project}_"));
        for lock in locks.lines().filter(|l| ours(l)) {
            let _ = Command::new("docker").args(["rm", lock]).output();
        }
        let _ = std::thread::spawn(move || {
            runtime().block_on(async {
                if let Ok(d) = DockerRuntime::connect(None).await {
                    d.remove_labelled(&label).await;
                }
                if let Some(second) = SECOND.get() {
                    if let Ok(d) = DockerRuntime::connect(Some(second)).await {
                        d.remove_labelled(&label).await;
                    }
                }
            })
        })
        .join();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Verification flags that keep tests short.
pub const FAST: &[&str] = &[
    "--min-healthy-time",
    "2s",
    "--deadline",
    "15s",
    "--period",
    "300ms",
    "--pull",
    "always",
];

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

pub fn workspace_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// The spec the adapter reads for a container.
pub fn spec(name: &str) -> agent_core::ContainerSpec {
    runtime().block_on(async {
        let d = DockerRuntime::connect(None).await.unwrap();
        d.inspect_container(name).await.unwrap().spec
    })
}

/// A process started by a test, killed on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `url` until it answers 200, for up to `secs`.
pub fn wait_http(url: &str, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let rt = runtime();
    while std::time::Instant::now() < deadline {
        let ok = rt
            .block_on(agent_health::http::get(url, std::time::Duration::from_secs(1)))
            .map(|r| r.status == 200);
        if ok.unwrap_or(false) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The gateway address of a docker network (the host, as containers on it reach it).
pub fn gateway(w: &World, network: &str) -> String {
    let out = w.docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        network,
    ]);
    stdout(&out).trim().to_owned()
}

/// Makes `dir` a git work tree with one commit of everything in it; returns the commit.
pub fn git_commit_all(dir: &Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.email=ci@example.invalid", "-c", "user.name=ci"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "agent"]);
    git(&["rev-parse", "HEAD"])
}
