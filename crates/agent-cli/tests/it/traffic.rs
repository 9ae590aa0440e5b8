//! Traffic-weighted rollouts through a real HAProxy (Debian's package) in front of real agents, with a real
//! Prometheus scraping HAProxy's exporter for the judge. A load generator sends requests through HAProxy the
//! whole time: the share each version serves is measured, and no request may find no server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_docker::testing::free_port;

use crate::health::{prometheus, wait_scraped};
use crate::support::*;

/// An HAProxy in front of the agents: a frontend, a Prometheus exporter and the admin socket.
struct Haproxy {
    dir: tempfile::TempDir,
    proc: Option<Proc>,
    front: u16,
    stats: u16,
}

impl Haproxy {
    /// Starts HAProxy with the backend `agents` listing `servers` (name, address) on port 8080.
    fn start(servers: &[(String, String)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let (front, stats) = (free_port().unwrap(), free_port().unwrap());
        let list: String = servers
            .iter()
            .map(|(name, ip)| format!("  server {name} {ip}:8080\n"))
            .collect();
        let socket = dir.path().join("admin.sock");
        std::fs::write(
            dir.path().join("haproxy.cfg"),
            format!(
                "global\n  stats socket {} level admin\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\nfrontend fe\n  bind 127.0.0.1:{front}\n  default_backend agents\nfrontend stats\n  bind 127.0.0.1:{stats}\n  http-request use-service prometheus-exporter if {{ path /metrics }}\nbackend agents\n  balance roundrobin\n{list}",
                socket.display()
            ),
        )
        .unwrap();
        let mut h = Haproxy {
            dir,
            proc: None,
            front,
            stats,
        };
        h.proc = Some(h.spawn(None));
        h
    }

    fn spawn(&self, replaces: Option<u32>) -> Proc {
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(self.dir.path().join("haproxy.cfg"));
        if let Some(pid) = replaces {
            // A soft reload: the new process takes the listeners over and the old one finishes its requests.
            cmd.arg("-sf").arg(pid.to_string());
        }
        let proc = Proc(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start haproxy (apt-get install haproxy)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("show servers state agents").is_none() || (replaces.is_some() && self.answers_old()) {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }

    /// Whether the admin socket still lists servers added at runtime (the old process answers).
    fn answers_old(&self) -> bool {
        self.servers().iter().any(|s| s.0.contains('.'))
    }

    /// Reloads HAProxy as an operator would: its configuration again, runtime changes forgotten.
    fn reload(&mut self) {
        let old = self.proc.take().unwrap();
        let pid = old.0.id();
        self.proc = Some(self.spawn(Some(pid)));
        drop(old);
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn command(&self, command: &str) -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        s.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// The backend's servers: name, `addr:port`, weight.
    fn servers(&self) -> Vec<(String, String, u32)> {
        let text = self.command("show servers state agents").unwrap_or_default();
        let mut out: Vec<_> = text
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3].to_owned(), format!("{}:{}", f[4], f[18]), f[7].parse().unwrap())
            })
            .collect();
        out.sort();
        out
    }
}

/// What one request through HAProxy got: its status (0: no connection) and body.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    status: u16,
    body: String,
}

/// Requests through HAProxy's frontend in a loop, `/version` or `/work` at random, until dropped.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn request(port: u16, path: &str) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agents\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
        Ok((status, body))
    };
    attempt().unwrap_or((0, String::new()))
}

impl Load {
    fn start(port: u16) -> Load {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (answers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // The path is drawn at random (xorshift): in turn, round-robin could give one server every
            // `/version` and another every `/work`.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !s.load(Ordering::SeqCst) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let path = if x.is_multiple_of(2) { "/version" } else { "/work" };
                let (status, body) = request(port, path);
                a.lock().unwrap().push(Answer {
                    at: Instant::now(),
                    status,
                    body,
                });
                std::thread::sleep(Duration::from_millis(8));
            }
        });
        Load {
            answers,
            stop,
            thread: Some(thread),
        }
    }

    fn since(&self, from: Instant) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at >= from)
            .cloned()
            .collect()
    }

    /// Requests HAProxy could not serve: no connection, or its own 503 (no server was up).
    fn refused(&self) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.status == 0 || (a.status == 503 && a.body.contains("No server")))
            .cloned()
            .collect()
    }

    /// The versions of the next `n` `/version` answers.
    fn versions(&self, n: usize) -> Vec<String> {
        let from = Instant::now();
        let deadline = from + Duration::from_secs(60);
        loop {
            let got: Vec<String> = self
                .since(from)
                .into_iter()
                .filter(|a| a.status == 200 && a.body.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .map(|a| a.body)
                .collect();
            if got.len() >= n {
                return got[..n].to_vec();
            }
            assert!(Instant::now() < deadline, "too few answers: {}", got.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn share(versions: &[String], version: &str) -> f64 {
    versions.iter().filter(|v| *v == version).count() as f64 / versions.len() as f64
}

fn ip(w: &World, container: &str, network: &str) -> String {
    let out = w.docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ]);
    stdout(&out).trim().to_owned()
}

fn write_spec(w: &World, name: &str, body: &str) -> PathBuf {
    let path = w.state_dir().join(format!("{name}.yaml"));
    std::fs::write(&path, body).unwrap();
    path
}

/// A rollout of `agents` to `image` through `haproxy` with `strategy`, and `extra` lines.
fn traffic_spec(
    w: &World,
    name: &str,
    image: &str,
    agents: &[String],
    socket: &Path,
    strategy: &str,
    extra: &str,
) -> PathBuf {
    let targets: String = agents
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    write_spec(
        w,
        name,
        &format!(
            "name: {name}\nimage: {image}\ntargets:\n{targets}strategy:\n  {strategy}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\ntraffic:\n  haproxy: {{socket: '{}', backend: agents, port: 8080, drainTimeout: 5s}}\n{extra}",
            socket.display()
        ),
    )
}

/// The judge over HAProxy's per-server responses: the share of 5xx of each server.
fn judge(prom: &str, canary: &str, baseline: &str) -> String {
    format!(
        r#"analysis:
  judge:
    prometheus: {prom}
    judge:
      splitBy: server
      canary: '{canary}'
      baseline: '{baseline}'
      window: 12s
      step: 1s
      minPoints: 8
      metrics:
        - name: error-ratio
          query: 'sum by (server) (rate(haproxy_server_http_responses_total{{proxy="agents",code="5xx"}}[4s])) / sum by (server) (rate(haproxy_server_http_responses_total{{proxy="agents"}}[4s]))'
          absoluteTolerance: 0.02
          critical: true
"#
    )
}

/// The backend's servers, after checking they are exactly the containers now named `agents` (no preview,
/// no container that went).
fn routed_only_to(hap: &Haproxy, w: &World, agents: &[String], network: &str) -> Vec<(String, String, u32)> {
    let mut want: Vec<String> = agents.iter().map(|n| format!("{}:8080", ip(w, n, network))).collect();
    want.sort();
    let servers = hap.servers();
    let mut routed: Vec<String> = servers.iter().map(|s| s.1.clone()).collect();
    routed.sort();
    assert_eq!(
        routed, want,
        "the servers are the containers under the agents' names: {servers:?}"
    );
    servers
}

/// Two agents of `image` on a network of their own (`subnet`, addresses from the engine), and the servers
/// HAProxy's configuration lists for them (`a1`, `a2` at their addresses): the network, the containers
/// and the servers.
fn two_agents(w: &World, subnet: &str, image: &str) -> (String, Vec<String>, Vec<(String, String)>) {
    let net = w.network("net", subnet);
    let agents: Vec<String> = (1..=2).map(|i| w.name(&format!("a{i}"))).collect();
    for n in &agents {
        w.docker_run(n, &["--restart", "unless-stopped", "--network", &net], image);
    }
    let configured = agents
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("a{}", i + 1), ip(w, n, &net)))
        .collect();
    (net, agents, configured)
}

#[test]
fn the_example_haproxy_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_path("examples/traffic/haproxy.cfg")).unwrap();
    // Its socket lives where Debian's service puts it; here, in a directory of the test's own.
    let text = text.replace(
        "/run/haproxy/admin.sock",
        &dir.path().join("admin.sock").display().to_string(),
    );
    std::fs::write(dir.path().join("haproxy.cfg"), text).unwrap();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .output()
        .expect("run haproxy (apt-get install haproxy)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_canary_gets_its_share_of_requests_is_judged_against_the_baseline_and_promoted_or_reverted() {
    let img = images();
    let w = World::new("traffic");
    let (net, agents, configured) = two_agents(&w, "10.236.1.0/24", &img.refs["v1"]);
    let hap = Haproxy::start(&configured);
    let (_prom, url, _dir) = prometheus(&[format!("127.0.0.1:{}", hap.stats)]);
    wait_scraped(&url, 1);
    let load = Load::start(hap.front);
    assert_eq!(share(&load.versions(50), "1.0.0"), 1.0);

    // 2.0.0 at 10 % of the requests, held there: each agent has a verified preview beside it.
    let good = w.name("good");
    let f = traffic_spec(
        &w,
        &good,
        &img.refs["v2"],
        &agents,
        &hap.socket(),
        "canary: {steps: [{setWeight: 10}, {pause: {}}, {setWeight: 50}, {pause: 14s}, {analysis: judge}, {setWeight: 100}]}",
        &judge(&url, r".*-2\.0\.0", ".*"),
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "paused at 10 %: {}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("traffic: 10 % to the new version"),
        "{}",
        stderr(&out)
    );
    let servers = hap.servers();
    let weights: Vec<u32> = servers.iter().map(|s| s.2).collect();
    assert_eq!(servers.len(), 4, "{servers:?}");
    assert_eq!(weights.iter().filter(|w| **w == 90).count(), 2, "{servers:?}");
    assert_eq!(weights.iter().filter(|w| **w == 10).count(), 2, "{servers:?}");
    for n in &agents {
        assert_eq!(w.running(n).len(), 2, "{n} and its preview run: {:?}", w.running(n));
    }
    let versions = load.versions(300);
    let at_ten = share(&versions, "2.0.0");
    eprintln!(
        "measured: 10 % set, 2.0.0 served {:.1} % of 300 requests",
        at_ten * 100.0
    );
    assert!((0.05..=0.15).contains(&at_ten), "2.0.0 served {at_ten} of 300 requests");
    let status = stdout(&w.agentctl(&["rollout", "status", &good]));
    assert!(
        status.contains("traffic: 10 % to the new version through backend agents"),
        "{status}"
    );

    // Promoted: 50 %, the judge passes (no 5xx on either side), 100 %, and the previews take over.
    let out = w.agentctl(&["rollout", "promote", &good]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let status = json(&w.agentctl(&["rollout", "status", &good, "-o", "json"]));
    let judged = status.to_string();
    assert!(judged.contains(r#""judgement":"pass""#), "{judged}");
    let servers = routed_only_to(&hap, &w, &agents, &net);
    assert!(
        servers.iter().all(|s| s.2 == 100 && s.0.ends_with("-2.0.0")),
        "{servers:?}"
    );
    for n in &agents {
        assert_eq!(w.running(n), [n.as_str()], "{n}: the preview took the name");
    }
    assert_eq!(share(&load.versions(100), "2.0.0"), 1.0);

    // 9.8.0 answers half of /work with 500: judged worse than the 2.0.0 baseline beside it, its traffic
    // goes back to 2.0.0 and the previews are removed (exit 3).
    let bad = w.name("bad");
    let f = traffic_spec(
        &w,
        &bad,
        &img.refs["errors"],
        &agents,
        &hap.socket(),
        "canary: {steps: [{setWeight: 20}, {pause: 14s}, {analysis: judge}, {setWeight: 100}]}",
        &judge(&url, r".*-9\.8\.0", r".*-2\.0\.0"),
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("critical metric error-ratio"), "{}", stderr(&out));
    let status = json(&w.agentctl(&["rollout", "status", &bad, "-o", "json"])).to_string();
    assert!(status.contains(r#""judgement":"fail""#), "{status}");
    let servers = routed_only_to(&hap, &w, &agents, &net);
    assert!(
        servers.iter().all(|s| s.2 == 100 && s.0.ends_with("-2.0.0")),
        "{servers:?}"
    );
    for n in &agents {
        assert_eq!(w.running(n), [n.as_str()], "{n}: the preview is gone");
    }
    assert_eq!(share(&load.versions(100), "2.0.0"), 1.0);
    let refused = load.refused();
    assert!(refused.is_empty(), "requests found no server: {refused:?}");
}

#[test]
fn a_killed_traffic_rollout_is_repaired_after_an_haproxy_reload_and_blue_green_switches_and_undoes() {
    let img = images();
    let w = World::new("traffic-kill");
    let (net, agents, configured) = two_agents(&w, "10.236.2.0/24", &img.refs["v1"]);
    let mut hap = Haproxy::start(&configured);
    let load = Load::start(hap.front);

    // Killed during the pause after 10 %: the weights are HAProxy's and the state's.
    let name = w.name("kill");
    let f = traffic_spec(
        &w,
        &name,
        &img.refs["v2"],
        &agents,
        &hap.socket(),
        "canary: {steps: [{setWeight: 10}, {pause: 60s}, {setWeight: 50}, {pause: {}}]}",
        "",
    );
    let mut run = agentctl_in(w.state_dir());
    run.args(["--no-progress", "apply", "-f", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while hap.servers().iter().filter(|s| s.2 == 10).count() < 2 {
        assert!(Instant::now() < deadline, "10 % never set: {:?}", hap.servers());
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // HAProxy reloads: the servers added at runtime are gone, the configured ones are back at weight 1.
    hap.reload();
    assert_eq!(hap.servers().len(), 2, "{:?}", hap.servers());
    assert_eq!(share(&load.versions(50), "1.0.0"), 1.0);

    // The next command puts the saved 10 % back, then goes on (the pause again, 50 %, paused).
    let f = traffic_spec(
        &w,
        &name,
        &img.refs["v2"],
        &agents,
        &hap.socket(),
        "canary: {steps: [{setWeight: 10}, {pause: 60s}, {setWeight: 50}, {pause: {}}]}",
        "",
    );
    let mut resumed = agentctl_in(w.state_dir());
    resumed
        .args(["--no-progress", "apply", "-f", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut resumed = resumed.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hap.servers().iter().filter(|s| s.2 == 10).count() < 2 {
        assert!(Instant::now() < deadline, "10 % not restored: {:?}", hap.servers());
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = share(&load.versions(300), "2.0.0");
    assert!(
        (0.05..=0.15).contains(&restored),
        "after the repair 2.0.0 served {restored}"
    );
    // Killed again in its pause; an abort takes its place: everything back on 1.0.0, the previews gone.
    resumed.kill().unwrap();
    resumed.wait().unwrap();
    let started = Instant::now();
    let out = w.agentctl(&["rollout", "abort", &name]);
    let aborted = started.elapsed();
    assert_eq!(code(&out), 3, "rolled back: {}\n{}", stdout(&out), stderr(&out));
    let last_new = load
        .since(started)
        .iter()
        .filter(|a| a.body == "2.0.0")
        .map(|a| a.at - started)
        .max()
        .unwrap_or_default();
    eprintln!(
        "measured: abort at 10 %: the last request to 2.0.0 {:.3} s after the abort began; the command took {:.2} s",
        last_new.as_secs_f64(),
        aborted.as_secs_f64()
    );
    let servers = routed_only_to(&hap, &w, &agents, &net);
    assert!(servers.iter().all(|s| s.2 == 100), "{servers:?}");
    assert_eq!(share(&load.versions(100), "1.0.0"), 1.0);
    for n in &agents {
        assert_eq!(w.running(n), [n.as_str()], "{n}: the preview is gone");
    }

    // Blue-green: staged with no traffic, switched on promotion, taken back by undo.
    let bg = w.name("bg");
    let f = traffic_spec(
        &w,
        &bg,
        &img.refs["v3"],
        &agents,
        &hap.socket(),
        "blueGreen: {autoPromote: false}",
        "",
    );
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        hap.servers().iter().filter(|s| s.2 == 0).count(),
        2,
        "{:?}",
        hap.servers()
    );
    assert_eq!(share(&load.versions(100), "1.0.0"), 1.0, "the previews get no traffic");
    let out = w.agentctl(&["rollout", "promote", &bg]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(share(&load.versions(100), "3.0.0"), 1.0);
    let out = w.agentctl(&["rollout", "undo", &bg]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(share(&load.versions(100), "1.0.0"), 1.0);
    routed_only_to(&hap, &w, &agents, &net);
    let refused = load.refused();
    assert!(refused.is_empty(), "requests found no server: {refused:?}");
}

/// Not a pass/fail test but the measurement behind BENCHMARKS.md ("Traffic through HAProxy"): the share of
/// requests the new version serves at each weight set, and how soon after `rollout abort` begins the last
/// request reaches it. `cargo test -p agent-cli --all-features --test it traffic::measure -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement for BENCHMARKS.md, not a test"]
fn measure_the_split_and_the_time_to_move_traffic_back() {
    let img = images();
    let w = World::new("traffic-measure");
    let (_, agents, configured) = two_agents(&w, "10.236.3.0/24", &img.refs["v1"]);
    let hap = Haproxy::start(&configured);
    let load = Load::start(hap.front);
    let name = w.name("split");
    let f = traffic_spec(
        &w,
        &name,
        &img.refs["v2"],
        &agents,
        &hap.socket(),
        "canary: {steps: [{setWeight: 1}, {pause: {}}, {setWeight: 5}, {pause: {}}, {setWeight: 10}, {pause: {}}, {setWeight: 25}, {pause: {}}, {setWeight: 50}, {pause: {}}]}",
        "",
    );
    let mut out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    println!("| weight set | requests | served by the new version | share |");
    for weight in [1, 5, 10, 25, 50] {
        assert_eq!(code(&out), 4, "{}", stderr(&out));
        let versions = load.versions(1000);
        let new = versions.iter().filter(|v| *v == "2.0.0").count();
        println!("| {weight} % | 1000 | {new} | {:.1} % |", new as f64 / 10.0);
        out = w.agentctl(&["rollout", "promote", &name]);
    }
    // The last promotion completed the rollout: 2.0.0 runs everywhere. Each round stages 3.0.0 at 50 % (a
    // request to it every few milliseconds) and aborts.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    println!("\n| round | last request to the new version after abort began | abort command |");
    for round in 1..=5 {
        let name = w.name(&format!("abort{round}"));
        let f = traffic_spec(
            &w,
            &name,
            &img.refs["v3"],
            &agents,
            &hap.socket(),
            "canary: {steps: [{setWeight: 50}, {pause: {}}]}",
            "",
        );
        assert_eq!(code(&w.agentctl(&["apply", "-f", f.to_str().unwrap()])), 4);
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let out = w.agentctl(&["rollout", "abort", &name]);
        let took = started.elapsed();
        assert_eq!(code(&out), 3, "{}", stderr(&out));
        let last = load
            .since(started)
            .iter()
            .filter(|a| a.body == "3.0.0")
            .map(|a| a.at - started)
            .max();
        let last = last.map_or("none after it began".to_owned(), |l| {
            format!("{:.3} s", l.as_secs_f64())
        });
        println!("| {round} | {last} | {:.2} s |", took.as_secs_f64());
    }
    // An abort from another process while the rollout's `apply` waits in a 10-minute pause: handed to the
    // running process through the store, which reverts at once.
    println!(
        "\n| round | abort taken by the running apply, the last request to the new version after | abort command |"
    );
    for round in 1..=5 {
        let name = w.name(&format!("live{round}"));
        let image = if round % 2 == 1 {
            &img.refs["v3"]
        } else {
            &img.refs["v1"]
        };
        let f = traffic_spec(
            &w,
            &name,
            image,
            &agents,
            &hap.socket(),
            "canary: {steps: [{setWeight: 50}, {pause: 10m}, {setWeight: 100}]}",
            "",
        );
        let mut cmd = agentctl_in(w.state_dir());
        cmd.args(["--no-progress", "apply", "-f", f.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut running = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while hap.servers().iter().filter(|s| s.2 == 50).count() < 4 {
            assert!(Instant::now() < deadline, "50 % never set: {:?}", hap.servers());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        let new_version = if round % 2 == 1 { "3.0.0" } else { "1.0.0" };
        let started = Instant::now();
        let out = w.agentctl(&["rollout", "abort", &name]);
        let took = started.elapsed();
        assert_eq!(code(&out), 3, "{}", stderr(&out));
        let _ = running.wait();
        let last = load
            .since(started)
            .iter()
            .filter(|a| a.body == new_version)
            .map(|a| a.at - started)
            .max();
        let last = last.map_or("none after it began".to_owned(), |l| {
            format!("{:.3} s", l.as_secs_f64())
        });
        println!("| {round} | {last} | {:.2} s |", took.as_secs_f64());
    }
    println!("\nrefused requests: {}", load.refused().len());
}

/// Waits until `hap` has `count` servers of weight `weight`, for at most `secs`.
fn wait_weights(hap: &Haproxy, weight: u32, count: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while hap.servers().iter().filter(|s| s.2 == weight).count() < count {
        assert!(
            Instant::now() < deadline,
            "{count} servers at {weight} never came: {:?}",
            hap.servers()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_apply_takes_an_abort_during_a_timed_pause_keeps_its_weights_and_names_servers_for_what_runs() {
    let img = images();
    let w = World::new("traffic-live");
    let (net, agents, configured) = two_agents(&w, "10.236.4.0/24", &img.refs["v1"]);
    let hap = Haproxy::start(&configured);
    let load = Load::start(hap.front);
    let apply = |name: &str, image: &str| {
        let f = traffic_spec(
            &w,
            name,
            image,
            &agents,
            &hap.socket(),
            "canary: {steps: [{setWeight: 20}, {pause: 10m}, {setWeight: 100}]}",
            "",
        );
        let mut cmd = agentctl_in(w.state_dir());
        cmd.args(["--no-progress", "apply", "-f", f.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };

    // A 2.0.0 rollout killed at 20 %, its previews removed by hand: their addresses are free again.
    let old = w.name("old");
    let mut killed = apply(&old, &img.refs["v2"]);
    wait_weights(&hap, 20, 2, 90);
    killed.kill().unwrap();
    killed.wait().unwrap();
    for n in &agents {
        let _ = w.docker(&["rm", "-f", &format!("{n}.preview")]);
    }
    assert!(
        hap.servers().iter().any(|s| s.0.ends_with("-2.0.0")),
        "{:?}",
        hap.servers()
    );

    // A 3.0.0 rollout: its previews get those addresses; their servers are named for 3.0.0.
    let new = w.name("new");
    let running = apply(&new, &img.refs["v3"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while hap
        .servers()
        .iter()
        .filter(|s| s.2 == 20 && s.0.ends_with("-3.0.0"))
        .count()
        < 2
    {
        if Instant::now() >= deadline {
            let servers = hap.servers();
            let mut running = running;
            let _ = running.kill();
            let out = running.wait_with_output().unwrap();
            panic!("3.0.0 never got 20 %: {servers:?}\n{}\n{}", stdout(&out), stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let servers = hap.servers();
    let previews: Vec<_> = servers.iter().filter(|s| s.2 == 20).collect();
    assert!(
        previews.iter().all(|s| s.0.ends_with("-3.0.0")) && !servers.iter().any(|s| s.0.ends_with("-2.0.0")),
        "a server name says what runs there: {servers:?}"
    );
    // And which agent: the killed rollout's previews may have had their addresses the other way round.
    for n in &agents {
        let at = format!("{}:8080", ip(&w, &format!("{n}.preview"), &net));
        let named: Vec<_> = previews.iter().filter(|s| s.1 == at).map(|s| s.0.as_str()).collect();
        assert_eq!(
            named,
            [format!("{n}-3.0.0")],
            "the server at {at}, {n}'s preview: {servers:?}"
        );
    }

    // A weight changed behind the rollout's back (a second client of the admin socket) is put back.
    let victim = previews[0].0.clone();
    hap.command(&format!("set server agents/{victim} weight 100")).unwrap();
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(10);
    while hap.servers().iter().find(|s| s.0 == victim).map(|s| s.2) != Some(20) {
        assert!(
            Instant::now() < deadline,
            "the weight was not put back: {:?}",
            hap.servers()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "measured: a weight changed by hand was set back after {:.2} s",
        changed.elapsed().as_secs_f64()
    );

    // An abort from another process acts during the 10-minute pause, long before it ends.
    let started = Instant::now();
    let out = w.agentctl(&["rollout", "abort", &new]);
    let took = started.elapsed();
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert!(took < Duration::from_secs(30), "the abort took {took:?}");
    let last_new = load
        .since(started)
        .iter()
        .filter(|a| a.body == "3.0.0")
        .map(|a| a.at - started)
        .max()
        .unwrap_or_default();
    eprintln!(
        "measured: abort during a timed pause: the last request to 3.0.0 {:.3} s after the abort began; the command took {:.2} s",
        last_new.as_secs_f64(),
        took.as_secs_f64()
    );
    let out = running.wait_with_output().unwrap();
    assert_eq!(code(&out), 3, "the running apply ends rolled back: {}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("set back to 20 %") && said.contains(&victim), "{said}");
    let servers = routed_only_to(&hap, &w, &agents, &net);
    assert!(servers.iter().all(|s| s.2 == 100), "{servers:?}");
    for n in &agents {
        assert_eq!(w.running(n), [n.as_str()], "{n}: the preview is gone");
    }
    let status = w.agentctl(&["rollout", "status", &new, "-o", "json"]);
    assert!(
        stdout(&status).contains("taken by the running apply"),
        "the audit trail says who aborted and how: {}",
        stdout(&status)
    );
    assert!(
        load.refused().is_empty(),
        "requests found no server: {:?}",
        load.refused()
    );
}
