//! The faithful recreate, checked against the engine's own answer: a container started by plain `docker run`
//! with each option the docker CLI offers is updated by `agentctl update`, and `docker inspect` before and
//! after must agree on every key of `Config`, `HostConfig`, every network endpoint and every mount, except
//! the differences an update must make (see [`inspect_differences`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::support::*;

/// One `docker run` option: the arguments that exercise it, or why it cannot run on this machine.
struct Row {
    option: &'static str,
    args: Vec<String>,
    skip: Option<&'static str>,
}

fn row(option: &'static str, args: &[&str]) -> Row {
    Row {
        option,
        args: args.iter().map(|a| a.to_string()).collect(),
        skip: None,
    }
}

fn skip(option: &'static str, why: &'static str) -> Row {
    Row {
        option,
        args: Vec::new(),
        skip: Some(why),
    }
}

/// What the rows need around them: networks, a volume, a peer container, files.
struct Setup {
    net: String,
    vol: String,
    peer: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(w: &World, subnet_octet: u8) -> Setup {
        let net = w.network("fnet", &format!("10.232.{subnet_octet}.0/24"));
        let vol = w.volume("fvol");
        let peer = w.name("peer");
        w.docker_run(&peer, &[], &images().refs["v1"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("env"), "FROM_FILE=1\nOTHER=two\n").unwrap();
        std::fs::write(dir.path().join("labels"), "from.file=yes\n").unwrap();
        std::fs::create_dir(dir.path().join("bind")).unwrap();
        Setup { net, vol, peer, dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }
}

/// Every option of `docker run --help` (docker CLI 28 against this engine, API 1.41), in its order.
fn rows(s: &Setup) -> Vec<Row> {
    let bind = s.path("bind");
    let net = s.net.as_str();
    let peer = s.peer.as_str();
    let vol = s.vol.as_str();
    let owned = |option: &'static str, args: Vec<String>| Row {
        option,
        args,
        skip: None,
    };
    vec![
        row("--add-host", &["--add-host", "db:10.0.0.5"]),
        skip("--attach", "attaches the CLI to the streams; refused together with --detach, which every row needs"),
        row("--blkio-weight", &["--blkio-weight", "300"]),
        row("--blkio-weight-device", &["--blkio-weight-device", "/dev/vda:300"]),
        row("--cap-add", &["--cap-add", "SYS_TIME"]),
        row("--cap-drop", &["--cap-drop", "NET_RAW"]),
        row("--cgroup-parent", &["--cgroup-parent", "/agentctl-fidelity"]),
        row("--cgroupns", &["--cgroupns", "private"]),
        owned("--cidfile", vec!["--cidfile".into(), s.path("cid")]),
        row("--cpu-period", &["--cpu-period", "50000"]),
        row("--cpu-quota", &["--cpu-quota", "25000"]),
        row("--cpu-rt-period", &["--cpu-rt-period", "1000000"]),
        skip(
            "--cpu-rt-runtime",
            "this kernel gives the engine's cgroup no real-time budget (runc: write cpu.rt_runtime_us: invalid argument)",
        ),
        row("--cpu-shares", &["--cpu-shares", "512"]),
        row("--cpus", &["--cpus", "0.5"]),
        row("--cpuset-cpus", &["--cpuset-cpus", "0"]),
        row("--cpuset-mems", &["--cpuset-mems", "0"]),
        row("--detach", &[]),
        row("--detach-keys", &["--detach-keys", "ctrl-x"]),
        row("--device", &["--device", "/dev/null:/dev/xnull:r"]),
        row("--device-cgroup-rule", &["--device-cgroup-rule", "c 1:3 r"]),
        row("--device-read-bps", &["--device-read-bps", "/dev/vda:1mb"]),
        row("--device-read-iops", &["--device-read-iops", "/dev/vda:100"]),
        row("--device-write-bps", &["--device-write-bps", "/dev/vda:1mb"]),
        row("--device-write-iops", &["--device-write-iops", "/dev/vda:100"]),
        row("--disable-content-trust", &["--disable-content-trust"]),
        row("--dns", &["--dns", "10.0.0.53"]),
        row("--dns-option", &["--dns-option", "ndots:2"]),
        row("--dns-search", &["--dns-search", "example.internal"]),
        row("--domainname", &["--domainname", "example.internal"]),
        row("--entrypoint", &["--entrypoint", "/agent"]),
        row("--env", &["--env", "LOG_LEVEL=debug", "-e", "EMPTY="]),
        owned("--env-file", vec!["--env-file".into(), s.path("env")]),
        row("--expose", &["--expose", "9090", "--expose", "7000-7002/udp"]),
        skip("--gpus", "no GPU and no GPU runtime on this machine"),
        row("--group-add", &["--group-add", "123", "--group-add", "4"]),
        skip(
            "--health-cmd",
            "the CLI makes a CMD-SHELL check and the demo image has no shell, so no container with it is ever healthy; user healthchecks are in the image-defaults test",
        ),
        row("--health-interval", &["--health-interval", "3s"]),
        row("--health-retries", &["--health-retries", "7"]),
        row("--health-start-period", &["--health-start-period", "1s"]),
        row("--health-timeout", &["--health-timeout", "4s"]),
        row("--hostname", &["--hostname", "agent-host"]),
        row("--init", &["--init"]),
        row("--interactive", &["--interactive"]),
        owned("--ip", vec!["--network".into(), net.into(), "--ip".into(), ip(net, 20)]),
        skip("--ip6", "needs an IPv6-enabled daemon (ip6tables, fixed-cidr-v6); this engine runs IPv4 only"),
        row("--ipc", &["--ipc", "shareable"]),
        row("--isolation", &["--isolation", "default"]),
        row("--kernel-memory", &["--kernel-memory", "64m"]),
        row("--label", &["--label", "team=observability", "-l", "empty="]),
        owned("--label-file", vec!["--label-file".into(), s.path("labels")]),
        owned("--link", vec!["--link".into(), format!("{peer}:upstream")]),
        owned(
            "--link-local-ip",
            vec!["--network".into(), net.into(), "--link-local-ip".into(), "169.254.7.7".into()],
        ),
        row("--log-driver", &["--log-driver", "local"]),
        row("--log-opt", &["--log-opt", "max-size=1m", "--log-opt", "max-file=2"]),
        skip(
            "--mac-address",
            "this docker CLI sends it per network, which needs API 1.44; agentctl's own tests cover the API 1.41 field (Config.MacAddress) through the engine API",
        ),
        row("--memory", &["--memory", "64m"]),
        row("--memory-reservation", &["--memory-reservation", "32m"]),
        row("--memory-swap", &["--memory", "64m", "--memory-swap", "128m"]),
        row("--memory-swappiness", &["--memory-swappiness", "10"]),
        owned(
            "--mount",
            vec![
                "--mount".into(),
                format!("type=bind,source={bind},target=/b,readonly"),
                "--mount".into(),
                format!("type=volume,source={vol},target=/v,volume-nocopy"),
                "--mount".into(),
                "type=volume,target=/anon-mount,volume-nocopy".into(),
                "--mount".into(),
                "type=tmpfs,target=/t,tmpfs-size=1048576,tmpfs-mode=1770".into(),
            ],
        ),
        row("--name", &[]),
        owned("--network", vec!["--network".into(), net.into()]),
        owned(
            "--network-alias",
            vec!["--network".into(), net.into(), "--network-alias".into(), "collector".into()],
        ),
        row("--no-healthcheck", &["--no-healthcheck"]),
        row("--oom-kill-disable", &["--memory", "64m", "--oom-kill-disable"]),
        row("--oom-score-adj", &["--oom-score-adj", "100"]),
        row("--pid", &["--pid", "host"]),
        row("--pids-limit", &["--pids-limit", "100"]),
        row("--platform", &["--platform", "linux/amd64"]),
        row("--privileged", &["--privileged"]),
        row("--publish", &["--publish", "127.0.0.1::8080", "-p", "9999/udp"]),
        row("--publish-all", &["--publish-all"]),
        row("--pull", &["--pull", "missing"]),
        row("--quiet", &["--quiet"]),
        row("--read-only", &["--read-only"]),
        row("--restart", &["--restart", "on-failure:3"]),
        Row {
            option: "--rm",
            args: vec!["--rm".into()],
            skip: None,
        },
        row("--runtime", &["--runtime", "runc"]),
        row("--security-opt", &["--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined"]),
        row("--shm-size", &["--shm-size", "32m"]),
        row("--sig-proxy", &["--sig-proxy=false"]),
        row("--stop-signal", &["--stop-signal", "SIGINT"]),
        row("--stop-timeout", &["--stop-timeout", "7"]),
        skip(
            "--storage-opt",
            "this engine's storage driver does not support it (\"--storage-opt is not supported\")",
        ),
        row("--sysctl", &["--sysctl", "net.ipv4.ip_unprivileged_port_start=80"]),
        row("--tmpfs", &["--tmpfs", "/run/agent:size=1m,mode=1777"]),
        row("--tty", &["--tty"]),
        row("--ulimit", &["--ulimit", "nofile=1024:2048"]),
        row("--use-api-socket", &["--use-api-socket"]),
        row("--user", &["--user", "65534:65534"]),
        row("--userns", &["--userns", "host"]),
        row("--uts", &["--uts", "host"]),
        owned(
            "--volume",
            vec![
                "-v".into(),
                format!("{bind}:/etc/agent:ro,z"),
                "-v".into(),
                format!("{vol}:/data:nocopy"),
                "-v".into(),
                "/cache".into(),
            ],
        ),
        row("--volume-driver", &["--volume-driver", "local", "-v", "/vd"]),
        owned("--volumes-from", vec!["--volumes-from".into(), format!("{peer}:ro")]),
        row("--workdir", &["--workdir", "/work"]),
    ]
}

/// An address on `net` (whose subnet the world made as `10.232.X.0/24`).
fn ip(net: &str, host: u8) -> String {
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", net])
        .output()
        .unwrap();
    let subnet = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let base = subnet.rsplit_once('.').map(|(b, _)| b).unwrap_or("10.232.0");
    format!("{base}.{host}")
}

fn inspect(what: &str) -> Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", what])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker inspect {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// Written out again here, not taken from agent-docker: the test checks the engine's answer on its own terms.
const ENDPOINT_RUNTIME: [&str; 10] = [
    "NetworkID",
    "EndpointID",
    "Gateway",
    "IPAddress",
    "IPPrefixLen",
    "IPv6Gateway",
    "GlobalIPv6Address",
    "GlobalIPv6PrefixLen",
    "MacAddress",
    "DNSNames",
];

fn short(id: &Value) -> String {
    id.as_str().unwrap_or_default().chars().take(12).collect()
}

fn generated(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn user_set(values: &Value, image: &Value) -> BTreeSet<String> {
    let image: BTreeSet<String> = image
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .filter(|v| !image.contains(v))
        .collect()
}

fn labels_set(labels: &Value, image: &Value) -> BTreeMap<String, Value> {
    labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| image.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The keys of either object.
fn keys_of<'a>(a: &'a Value, b: &'a Value) -> BTreeSet<&'a String> {
    a.as_object()
        .into_iter()
        .chain(b.as_object())
        .flat_map(|m| m.keys())
        .collect()
}

/// Every difference between two `docker inspect` answers of the same agent before and after an update from
/// `old_image` to `new_image` (their `docker image inspect`), except those an update must make:
/// - `Config.Image` is the new image, and the image's own `Env` entries and labels are the new image's;
/// - a hostname that was the engine's (the short id) is the new container's short id;
/// - an anonymous volume is named where it was unnamed (in `Binds`, or as the `Source` of its `Mounts` entry);
/// - per endpoint, the runtime facts (ids, addresses the engine chose, gateway) and the id aliases.
pub(crate) fn inspect_differences(before: &Value, after: &Value, old_image: &Value, new_image: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: String, a: &Value, b: &Value| {
        if a != b {
            out.push(format!("{what}: {a} -> {b}"));
        }
    };
    let (bc, ac) = (&before["Config"], &after["Config"]);
    for key in keys_of(bc, ac) {
        match key.as_str() {
            "Image" => {}
            "Hostname" if bc[key] == json!(short(&before["Id"])) => differ(
                "Config.Hostname (the engine's)".into(),
                &json!(short(&after["Id"])),
                &ac[key],
            ),
            "Env" => differ(
                "Config.Env (user-set)".into(),
                &json!(user_set(&bc[key], &old_image["Config"]["Env"])),
                &json!(user_set(&ac[key], &new_image["Config"]["Env"])),
            ),
            "Labels" => differ(
                "Config.Labels (user-set)".into(),
                &json!(labels_set(&bc[key], &old_image["Config"]["Labels"])),
                &json!(labels_set(&ac[key], &new_image["Config"]["Labels"])),
            ),
            _ => differ(format!("Config.{key}"), &bc[key], &ac[key]),
        }
    }
    let anonymous: BTreeSet<String> = before["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Type"] == "volume")
        .filter_map(|m| m["Name"].as_str().filter(|n| generated(n)).map(str::to_owned))
        .collect();
    let (bh, ah) = (&before["HostConfig"], &after["HostConfig"]);
    for key in keys_of(bh, ah) {
        match key.as_str() {
            "Binds" => {
                let was: Vec<Value> = bh[key].as_array().cloned().unwrap_or_default();
                let now: Vec<Value> = ah[key]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|b| {
                        was.contains(b)
                            || !b
                                .as_str()
                                .and_then(|b| b.split(':').next())
                                .is_some_and(|n| anonymous.contains(n))
                    })
                    .collect();
                differ(
                    "HostConfig.Binds (beyond anonymous volumes named)".into(),
                    &json!(was),
                    &json!(now),
                );
            }
            "Mounts" => {
                let mut now = ah[key].clone();
                for (i, m) in now.as_array_mut().into_iter().flatten().enumerate() {
                    let unnamed_before = bh[key][i].get("Source").is_none();
                    if unnamed_before && m["Source"].as_str().is_some_and(|s| anonymous.contains(s)) {
                        m.as_object_mut().unwrap().remove("Source");
                    }
                }
                differ("HostConfig.Mounts".into(), &bh[key], &now);
            }
            _ => differ(format!("HostConfig.{key}"), &bh[key], &ah[key]),
        }
    }
    let endpoints = |v: &Value| {
        let mut eps = v["NetworkSettings"]["Networks"].clone();
        let ids = [short(&v["Id"]), v["Id"].as_str().unwrap_or_default().to_owned()];
        for ep in eps.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
            let ep = ep.as_object_mut().unwrap();
            for k in ENDPOINT_RUNTIME {
                ep.remove(k);
            }
            if let Some(Value::Array(aliases)) = ep.get_mut("Aliases") {
                aliases.retain(|a| !ids.iter().any(|id| a == id));
            }
        }
        eps
    };
    let (be, ae) = (endpoints(before), endpoints(after));
    if be != ae {
        out.push(format!("endpoints: {be} -> {ae}"));
    }
    let mounts = |v: &Value| -> BTreeSet<String> {
        v["Mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let what = m["Name"].as_str().or(m["Source"].as_str()).unwrap_or_default();
                format!("{} {} -> {} rw={}", m["Type"], what, m["Destination"], m["RW"])
            })
            .collect()
    };
    let (bm, am) = (mounts(before), mounts(after));
    if bm != am {
        out.push(format!("mounts: {bm:?} -> {am:?}"));
    }
    out
}

/// Starts `args`, updates to v2, and returns the differences (or why the row failed).
fn run_row(w: &World, name: &str, args: &[String]) -> Result<Vec<String>, String> {
    let img = images();
    let mut cmd = std::process::Command::new("docker");
    cmd.args(["run", "-d", "--name", name, "--label", &w.label])
        .args(args)
        .arg(&img.refs["v1"]);
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(format!("docker run refused it: {}", stderr(&out).trim()));
    }
    let before = inspect(name);
    let out = w.agentctl(&[&["update", name, "--image", &img.refs["v2"], "-o", "json"], FAST].concat());
    if before["HostConfig"]["AutoRemove"] == true {
        // The engine deletes such a container when it stops: it cannot be retained, so the update is refused.
        let refused = code(&out) == 1 && stderr(&out).contains("--rm");
        let untouched = inspect(name)["Id"] == before["Id"] && inspect(name)["State"]["Running"] == true;
        return match (refused, untouched) {
            (true, true) => Ok(Vec::new()),
            _ => Err(format!(
                "expected a refusal (exit 1) and an untouched container: exit {}, {}",
                code(&out),
                stderr(&out)
            )),
        };
    }
    if code(&out) != 0 {
        return Err(format!(
            "agentctl update exited {}: {}{}",
            code(&out),
            stdout(&out),
            stderr(&out)
        ));
    }
    let after = inspect(name);
    if after["Config"]["Image"] != json!(img.refs["v2"]) {
        return Err(format!("it runs {} after the update", after["Config"]["Image"]));
    }
    let (old_image, new_image) = (inspect(&img.refs["v1"]), inspect(&img.refs["v2"]));
    Ok(inspect_differences(&before, &after, &old_image, &new_image))
}

#[test]
fn every_docker_run_option_survives_an_update_as_docker_inspect_shows() {
    let w = World::new("fidelity");
    let setup = Setup::new(&w, 1);
    // FIDELITY_ONLY=--opt,--other runs just those rows (for a quick look at one).
    let only = std::env::var("FIDELITY_ONLY").unwrap_or_default();
    let table: Vec<Row> = rows(&setup)
        .into_iter()
        .filter(|r| only.is_empty() || only.split(',').any(|o| o == r.option))
        .collect();
    let queue = Mutex::new(table.iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let Some((i, row)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let started = std::time::Instant::now();
                let result = match row.skip {
                    Some(why) => Ok(vec![format!("skipped: {why}")]),
                    None => {
                        let name = w.name(&format!("o{i}"));
                        let result = run_row(&w, &name, &row.args);
                        // Every running agent's HEALTHCHECK costs CPU: keep only the rows in flight.
                        w.remove(&[&name, &format!("{name}.rev1")]);
                        result
                    }
                };
                eprintln!("{} took {:?}", row.option, started.elapsed());
                results.lock().unwrap().insert(i, (row.option, result));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut failed = Vec::new();
    for (option, result) in results.values() {
        match result {
            Ok(d) if d.is_empty() => eprintln!("{option:24} faithful"),
            Ok(d) if d[0].starts_with("skipped") => eprintln!("{option:24} {}", d[0]),
            Ok(d) => {
                eprintln!("{option:24} DIFFERS: {}", d.join("; "));
                failed.push(*option);
            }
            Err(e) => {
                eprintln!("{option:24} FAILED: {e}");
                failed.push(*option);
            }
        }
    }
    assert!(failed.is_empty(), "not faithful: {failed:?} (details above)");
}

/// Options that cannot be combined with each other in one `docker run` (the CLI or the engine refuses).
const EXCLUSIVE: &[&[&str]] = &[
    &["--network", "--ip", "--network-alias", "--link-local-ip", "--link"],
    &[
        "--no-healthcheck",
        "--health-interval",
        "--health-retries",
        "--health-start-period",
        "--health-timeout",
    ],
    &["--uts", "--hostname", "--domainname"],
    &["--cpus", "--cpu-period", "--cpu-quota"],
];

/// A small deterministic generator (xorshift), so a seed reproduces a combination.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_combinations_of_options_survive_an_update() {
    let seed: u64 = std::env::var("FIDELITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("FIDELITY_SEED={seed} reproduces these combinations");
    let w = World::new("combo");
    let setup = Setup::new(&w, 2);
    let table: Vec<Row> = rows(&setup)
        .into_iter()
        .filter(|r| r.skip.is_none() && r.option != "--rm" && !r.args.is_empty())
        .collect();
    let mut state = seed;
    let mut failures = Vec::new();
    for combo in 0..3 {
        let mut chosen: Vec<&Row> = Vec::new();
        while chosen.len() < 8 {
            let candidate = &table[(next(&mut state) % table.len() as u64) as usize];
            let clashes = chosen.iter().any(|c| {
                c.option == candidate.option
                    || EXCLUSIVE
                        .iter()
                        .any(|group| group.contains(&c.option) && group.contains(&candidate.option))
            });
            if !clashes {
                chosen.push(candidate);
            }
        }
        let options: Vec<&str> = chosen.iter().map(|r| r.option).collect();
        let args: Vec<String> = chosen.iter().flat_map(|r| r.args.clone()).collect();
        let name = w.name(&format!("c{combo}"));
        match run_row(&w, &name, &args) {
            Ok(d) if d.is_empty() => eprintln!("{options:?} faithful"),
            Ok(d) => failures.push(format!("{options:?} differ: {}", d.join("; "))),
            Err(e) => failures.push(format!("{options:?} failed: {e}")),
        }
        w.remove(&[&name, &format!("{name}.rev1")]);
    }
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
}

/// Builds a local image `tag` from `base` with `lines` added to its Dockerfile.
fn build_image(w: &World, tag: &str, base: &str, lines: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {base}\n{lines}")).unwrap();
    let out = w.docker(&[
        "build",
        "-q",
        "--label",
        &w.label,
        "-t",
        tag,
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "docker build {tag}: {}", stderr(&out));
}

/// The update flags of [`FAST`] for images that exist only on this engine.
fn local_update(w: &World, name: &str, image: &str) -> std::process::Output {
    w.agentctl(
        &[
            &["update", name, "--image", image, "-o", "json", "--pull", "never"],
            &FAST[..6],
        ]
        .concat(),
    )
}

fn env_of(v: &Value) -> BTreeSet<String> {
    v["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_new_image_defaults_apply_where_the_user_set_nothing_and_undo_brings_the_old_ones_back() {
    let img = images();
    let w = World::new("defaults");
    let (d1, d2) = (
        format!("agentctl-it/defaults:1.0.0-{}", w.run),
        format!("agentctl-it/defaults:2.0.0-{}", w.run),
    );
    build_image(
        &w,
        &d1,
        &img.refs["v1"],
        "ENV A_ONLY=a SHARED=old\nENTRYPOINT [\"/agent\", \"ep-1\"]\nCMD [\"cmd-1\"]\nVOLUME /vol-1\n\
         HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/agent\", \"healthcheck\"]\nUSER 65534\nWORKDIR /w1\n\
         EXPOSE 7001\nLABEL d=1 only1=yes\n",
    );
    build_image(
        &w,
        &d2,
        &img.refs["v2"],
        "ENV B_ONLY=b SHARED=new\nENTRYPOINT [\"/agent\", \"ep-2\"]\nCMD [\"cmd-2\"]\nVOLUME /vol-2\n\
         HEALTHCHECK --interval=2s --timeout=3s --retries=3 CMD [\"/agent\", \"healthcheck\"]\nUSER 65534:65534\n\
         WORKDIR /w2\nEXPOSE 7002\nLABEL d=2 only2=yes\n",
    );

    // Nothing set by the user: every default is the new image's, then the old image's again after undo.
    let plain = w.name("plain");
    w.docker_run(&plain, &[], &d1);
    let vol1 = inspect(&plain)["Mounts"][0]["Name"].as_str().unwrap().to_owned();
    let out = local_update(&w, &plain, &d2);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let after = inspect(&plain);
    let c = &after["Config"];
    let env = env_of(&after);
    assert!(
        env.contains("B_ONLY=b") && env.contains("SHARED=new") && !env.contains("A_ONLY=a"),
        "{env:?}"
    );
    assert_eq!(c["Entrypoint"], json!(["/agent", "ep-2"]));
    assert_eq!(c["Cmd"], json!(["cmd-2"]));
    assert_eq!(c["Healthcheck"]["Interval"], json!(2_000_000_000u64));
    assert_eq!(
        (c["User"].as_str(), c["WorkingDir"].as_str()),
        (Some("65534:65534"), Some("/w2"))
    );
    assert!(c["ExposedPorts"].get("7002/tcp").is_some() && c["ExposedPorts"].get("7001/tcp").is_none());
    assert_eq!((c["Labels"]["d"].as_str(), c["Labels"].get("only1")), (Some("2"), None));
    assert!(
        c["Volumes"].get("/vol-2").is_some() && c["Volumes"].get("/vol-1").is_none(),
        "{}",
        c["Volumes"]
    );
    assert!(
        after["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["Name"] == json!(vol1)),
        "the old image's volume and its data stay mounted: {}",
        after["Mounts"]
    );
    let out = w.agentctl(&[&["undo", &plain, "--pull", "never"], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let back = inspect(&plain);
    let c = &back["Config"];
    let env = env_of(&back);
    assert!(
        env.contains("A_ONLY=a") && env.contains("SHARED=old") && !env.contains("B_ONLY=b"),
        "{env:?}"
    );
    assert_eq!(
        (c["Entrypoint"].clone(), c["Cmd"].clone()),
        (json!(["/agent", "ep-1"]), json!(["cmd-1"]))
    );
    assert_eq!(
        (c["User"].as_str(), c["WorkingDir"].as_str()),
        (Some("65534"), Some("/w1"))
    );
    assert_eq!(c["Healthcheck"]["Interval"], json!(1_000_000_000u64));

    // What the user set survives both ways.
    let set = w.name("set");
    let out = w.docker(&[
        "run",
        "-d",
        "--name",
        &set,
        "--label",
        &w.label,
        "--entrypoint",
        "/agent",
        "-e",
        "SHARED=mine",
        "-e",
        "X=1",
        "--user",
        "1234",
        "--workdir",
        "/mine",
        "--health-interval",
        "5s",
        "--label",
        "d=user",
        &d1,
        "cmd-user",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = local_update(&w, &set, &d2);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let when = "after the update";
    let v = inspect(&set);
    let c = &v["Config"];
    let env = env_of(&v);
    assert!(
        env.contains("SHARED=mine") && env.contains("X=1") && env.contains("B_ONLY=b"),
        "{when}: {env:?}"
    );
    assert_eq!(c["Entrypoint"], json!(["/agent"]), "{when}");
    assert_eq!(c["Cmd"], json!(["cmd-user"]), "{when}");
    assert_eq!(
        (c["User"].as_str(), c["WorkingDir"].as_str()),
        (Some("1234"), Some("/mine")),
        "{when}"
    );
    assert_eq!(c["Healthcheck"]["Interval"], json!(5_000_000_000u64), "{when}");
    assert_eq!(c["Labels"]["d"], "user", "{when}");
    let out = w.agentctl(&[&["undo", &set, "--pull", "never"], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v = inspect(&set);
    assert!(env_of(&v).contains("SHARED=mine") && env_of(&v).contains("A_ONLY=a"));
    assert_eq!(
        (v["Config"]["Cmd"].clone(), v["Config"]["User"].clone()),
        (json!(["cmd-user"]), json!("1234"))
    );
    for c in [&plain, &set] {
        w.remove(&[c, &format!("{c}.rev1"), &format!("{c}.rev2")]);
    }
    let _ = w.docker(&["rmi", &d1, &d2]);
}

#[test]
fn a_docker_compose_service_keeps_its_labels_networks_and_aliases() {
    let img = images();
    let w = World::new("compose");
    let project: String = w.run.chars().filter(char::is_ascii_alphanumeric).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    let label = w.label.split_once('=').unwrap();
    std::fs::write(
        &file,
        format!(
            "version: '2.4'\nservices:\n  agent:\n    image: {}\n    restart: unless-stopped\n    labels:\n      {}: {}\n    \
             networks:\n      back:\n        aliases: [collector]\nnetworks:\n  back:\n    labels:\n      {}: {}\n",
            img.refs["v1"], label.0, label.1, label.0, label.1
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        std::process::Command::new("docker-compose")
            .args(["-p", &project, "-f", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = compose(&["up", "-d"]);
    assert!(out.status.success(), "docker-compose up: {}", stderr(&out));
    let name = format!("{project}_agent_1");
    let before = inspect(&name);

    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"], "-o", "json"], FAST].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let after = inspect(&name);
    let differences = inspect_differences(&before, &after, &inspect(&img.refs["v1"]), &inspect(&img.refs["v2"]));
    assert!(differences.is_empty(), "{differences:#?}");
    let ps = compose(&["ps"]);
    let listed = stdout(&ps);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_default();
    assert!(
        line.contains("Up"),
        "docker-compose ps lists the updated service as up: {listed}"
    );

    // A later `docker-compose up -d` with the file unchanged takes the retained container for the service's
    // (it still carries compose's labels, and its image is the file's): compose removes the updated container
    // and starts `NAME.rev1`, the old version. The README says so: change the image in the file too.
    let out = compose(&["up", "-d"]);
    assert!(out.status.success(), "docker-compose up again: {}", stderr(&out));
    assert!(w.state(&name).is_none(), "compose removed the updated container");
    let retained = w
        .state(&format!("{name}.rev1"))
        .expect("the retained container is there");
    assert!(
        retained.1 && retained.2 == img.refs["v1"],
        "compose started the retained one: {retained:?}"
    );
    let _ = compose(&["down"]);
    w.remove(&[&format!("{name}.rev1")]);
}

#[test]
fn the_carried_configuration_serves_start_first_and_undo_from_the_snapshot() {
    let img = images();
    let w = World::new("paths");
    let setup = Setup::new(&w, 3);
    let name = w.name("agent");
    let bind = setup.path("bind");
    let args: Vec<String> = [
        "--device",
        "/dev/null:/dev/xnull:r",
        "--group-add",
        "123",
        "--oom-score-adj",
        "100",
        "--tmpfs",
        "/run/agent:size=1m,mode=1777",
        "--mount",
        "type=volume,target=/anon-mount,volume-nocopy",
        "-v",
        "/cache",
        "--network",
        &setup.net,
        "--network-alias",
        "collector",
        "--sysctl",
        "net.ipv4.ip_unprivileged_port_start=80",
        "--ulimit",
        "nofile=1024:2048",
        "-e",
        "API_TOKEN=kept-from-the-running-container",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-v".to_owned(), format!("{bind}:/etc/agent:ro,z")])
    .collect();
    let out = w.docker(
        &[
            &["run", "-d", "--name", &name, "--label", &w.label][..],
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[&img.refs["v1"]],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let original = inspect(&name);
    let (v1, v2) = (inspect(&img.refs["v1"]), inspect(&img.refs["v2"]));

    // Start-first: the preview is created from the carried document, then takes the name.
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
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let updated = inspect(&name);
    let d = inspect_differences(&original, &updated, &v1, &v2);
    assert!(d.is_empty(), "start-first: {d:#?}");

    // Undo from the snapshot (the retained container is gone): revision 1's document, its secret taken from
    // the running container.
    assert!(w.docker(&["rm", "-f", "-v", &format!("{name}.rev1")]).status.success());
    let out = w.agentctl(&[&["undo", &name, "-o", "json"], FAST].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let back = inspect(&name);
    assert_ne!(back["Id"], original["Id"], "recreated, not the retained one");
    let d = inspect_differences(&original, &back, &v1, &v1);
    assert!(d.is_empty(), "undo from the snapshot: {d:#?}");
}
