//! Support for tests, the demo and the benchmarks (feature `testing`): the demo agent's image, built from the
//! workspace's static binary through the engine (no registry, no base image), and a real local registry
//! (Debian's `docker-registry`) on loopback.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_core::RuntimeError;

use crate::{BuildContext, DockerRuntime};

/// The label every object made by a test or the demo carries, with the run id as value.
pub const RUN_LABEL: &str = "io.agentctl.test-run";

/// A unique id for one test run (labels, names).
pub fn run_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xff_ffff)
}

/// The workspace root this crate was built in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of the static demo-agent binary, building it when needed (`cargo build --release -p demo-agent` for
/// the static gnu target, in `target/static`). `AGENTCTL_DEMO_AGENT` overrides the path.
pub fn demo_agent_binary() -> std::io::Result<PathBuf> {
    if let Ok(p) = std::env::var("AGENTCTL_DEMO_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let target_dir = root.join("target/static");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "demo-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static -C strip=symbols")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "building the demo agent failed ({status}); run `cargo build -p demo-agent` to see why"
        )));
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/demo-agent"))
}

/// How a demo image is made.
#[derive(Debug, Clone)]
pub struct DemoImage {
    /// Version the agent reports (`AGENT_VERSION` and the OCI version label).
    pub version: String,
    /// Failure mode baked into the image (`AGENT_FAILURE`), e.g. `exit-at-start`.
    pub failure: Option<String>,
    /// Whether the image has a HEALTHCHECK.
    pub healthcheck: bool,
    /// Extra `ENV` lines.
    pub env: Vec<(String, String)>,
}

impl DemoImage {
    /// A healthy demo image of `version` with a HEALTHCHECK.
    pub fn new(version: &str) -> DemoImage {
        DemoImage {
            version: version.to_owned(),
            failure: None,
            healthcheck: true,
            env: Vec::new(),
        }
    }

    /// The same with a failure mode.
    pub fn failing(mut self, mode: &str) -> DemoImage {
        self.failure = Some(mode.to_owned());
        self
    }

    /// The Dockerfile: the offline `FROM scratch` variant (non-root user, HEALTHCHECK, OCI labels).
    pub fn dockerfile(&self) -> String {
        let mut d = String::from("FROM scratch\nCOPY agent /agent\n");
        d.push_str(&format!("ENV AGENT_VERSION={}\n", self.version));
        if let Some(f) = &self.failure {
            d.push_str(&format!("ENV AGENT_FAILURE={f}\n"));
        }
        for (k, v) in &self.env {
            d.push_str(&format!("ENV {k}={v}\n"));
        }
        d.push_str(&format!(
            "LABEL org.opencontainers.image.version=\"{}\" org.opencontainers.image.title=\"demo-agent\"\n",
            self.version
        ));
        d.push_str("EXPOSE 8080\nUSER 65534:65534\n");
        if self.healthcheck {
            d.push_str("HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/agent\", \"healthcheck\"]\n");
        }
        d.push_str("ENTRYPOINT [\"/agent\"]\n");
        d
    }

    /// Builds the image as `tag` from `binary`, labelled with `labels`.
    pub async fn build(
        &self,
        docker: &DockerRuntime,
        binary: &Path,
        tag: &str,
        labels: &HashMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let bytes = std::fs::read(binary).map_err(|e| RuntimeError::Engine {
            operation: "build",
            subject: tag.to_owned(),
            status: None,
            message: format!("cannot read the demo agent binary {}: {e}", binary.display()),
        })?;
        let ctx = BuildContext::new(&self.dockerfile()).file("agent", bytes, 0o755);
        docker.build_image(&ctx, tag, labels).await
    }
}

/// A real registry (Debian's `docker-registry`) on a free loopback port, stopped on drop.
#[derive(Debug)]
pub struct LocalRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts the registry and waits until it answers (up to 15 s).
    pub fn start() -> std::io::Result<LocalRegistry> {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                std::io::Error::other("docker-registry is not installed; `apt-get install docker-registry`")
            })?;
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let reg = LocalRegistry { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("the local registry did not start within 15 s"))
    }

    /// Keeps the registry running past this value (for a fixture shared by a whole test process); returns
    /// its pid so the caller can stop it at exit.
    pub fn detach(self) -> u32 {
        // Neither the child nor its temp dir is dropped: both outlive this value.
        std::mem::ManuallyDrop::new(self).child.id()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` still runs (a zombie, exited but not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
}

/// A free TCP port on loopback.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A second Docker engine on this machine for multi-host tests: its own data root, exec root, socket, pid
/// file and bridge (created here with its own subnet, so nothing collides with the first engine).
#[derive(Debug)]
pub struct SecondEngine {
    pid: u32,
    dir: std::path::PathBuf,
    bridge: String,
    extra_args: Vec<String>,
}

/// How to start a [`SecondEngine`].
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Put the data root on a tmpfs of this many MiB: a small disk that images and containers can fill.
    pub disk_mib: Option<u32>,
    /// More `dockerd` arguments (e.g. `-H tcp://127.0.0.1:PORT --tlsverify …`).
    pub extra_args: Vec<String>,
}

impl SecondEngine {
    /// Starts `dockerd` with bridge `bridge` on `subnet_gateway` (`10.250.0.1/24`) and waits up to 30 s for it.
    pub fn start(bridge: &str, subnet_gateway: &str) -> std::io::Result<SecondEngine> {
        SecondEngine::start_with(bridge, subnet_gateway, EngineOptions::default())
    }

    /// Like [`SecondEngine::start`], with options: a small data root, extra `dockerd` arguments.
    pub fn start_with(bridge: &str, subnet_gateway: &str, options: EngineOptions) -> std::io::Result<SecondEngine> {
        let disk_mib = options.disk_mib;
        let dir = std::env::temp_dir().join(format!("agentctl-engine-{}-{bridge}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let _ = ip(&["link", "del", bridge]);
        ip(&["link", "add", "name", bridge, "type", "bridge"])?;
        ip(&["addr", "add", subnet_gateway, "dev", bridge])?;
        ip(&["link", "set", bridge, "up"])?;
        // The machine's /etc/docker/daemon.json would conflict with these flags: give this engine its own.
        let main = std::fs::read_to_string("/etc/docker/daemon.json").unwrap_or_default();
        let driver = if main.contains("fuse-overlayfs") {
            "fuse-overlayfs"
        } else {
            "overlay2"
        };
        std::fs::write(dir.join("daemon.json"), format!("{{\"storage-driver\": \"{driver}\"}}"))?;
        if let Some(mib) = disk_mib {
            std::fs::create_dir_all(dir.join("data"))?;
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(dir.join("data"))
                .status()?
                .success();
            if !ok {
                return Err(std::io::Error::other("cannot mount a tmpfs for the engine's data root"));
            }
        }
        let mut engine = SecondEngine {
            pid: 0,
            dir,
            bridge: bridge.to_owned(),
            extra_args: options.extra_args,
        };
        engine.launch()?;
        Ok(engine)
    }

    /// Stops the engine (SIGTERM: it stops its containers as a daemon shutdown does) and starts it again on
    /// the same data, waiting until it answers: containers whose restart policy says so come back.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let pid = self.pid;
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.launch()
    }

    fn launch(&mut self) -> std::io::Result<()> {
        let (dir, bridge) = (&self.dir, &self.bridge);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--bridge")
            .arg(bridge)
            .args(&self.extra_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new("docker")
                .args(["-H", &self.endpoint(), "info"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        Err(std::io::Error::other(format!(
            "the second engine did not answer within 30 s: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        )))
    }

    /// Its directory (data root under `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its endpoint (`unix:///tmp/…/docker.sock`).
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// Stops the engine (SIGTERM, up to 20 s), removes its bridge and files.
    pub fn stop(pid: u32, dir: &Path, bridge: &str) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["link", "del", bridge])
            .stderr(Stdio::null())
            .status();
        // Unmount what the engine left mounted under its directory (a tmpfs data root, container mounts).
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                dir.display()
            ))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Keeps it running past this value; returns what [`SecondEngine::stop`] needs.
    pub fn detach(self) -> (u32, PathBuf, String) {
        let this = std::mem::ManuallyDrop::new(self);
        (this.pid, this.dir.clone(), this.bridge.clone())
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        SecondEngine::stop(self.pid, &self.dir, &self.bridge);
    }
}
