//! The demo agent: a small static binary that behaves like a monitoring agent.
//!
//! It serves `GET /health` and Prometheus `GET /metrics` on `AGENT_LISTEN` (default `0.0.0.0:8080`), prints
//! its version at start, and sends heartbeats to `CONTROL_CENTER_URL` (`http://IP:PORT`, IP addresses only:
//! a static binary cannot resolve names) with the bearer token `CONTROL_CENTER_TOKEN`. `/agent healthcheck`
//! is for `HEALTHCHECK CMD ["/agent", "healthcheck"]`.
//!
//! Failure modes (`AGENT_FAILURE`): `exit-at-start`, `never-healthy`, `unhealthy-after:SECS`, `fatal-logs`,
//! `slow-start:SECS`, `error-rate:FRACTION`, `no-heartbeat`, `crash-after:SECS`, `ignore-term` (does not stop on
//! SIGTERM). `AGENT_BROKEN_ON=VERSION` makes only that version exit at start (a host whose configuration the new
//! version cannot handle), `AGENT_CRASH_ON=VERSION:SECS` makes only that version crash SECS after its start,
//! `AGENT_BUSY_ON=VERSION` makes only that version keep one CPU busy (a spin loop) while it works normally.
//! Heartbeats carry `AGENT_PROTOCOL` (default `1.0`) as the protocol version. With `AGENT_OPAMP=1` it speaks
//! OpAMP instead (`POST /v1/opamp`, protobuf written by hand), reporting its health
//! (`AGENT_OPAMP_UNHEALTHY=REASON` reports a broken exporter while everything else works).
//! `AGENT_UPDATE_LOCK=PATH:SECS` holds an update lock file for SECS after the start; `/agent exit N` exits N
//! (for update hooks); `/agent probe IP:PORT` checks another agent's `/health` (for test containers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq)]
enum Failure {
    None,
    ExitAtStart,
    NeverHealthy,
    UnhealthyAfter(u64),
    FatalLogs,
    SlowStart(u64),
    ErrorRate(f64),
    NoHeartbeat,
    CrashAfter(u64),
    IgnoreTerm,
}

fn parse_failure(s: &str) -> Failure {
    let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
    let n = || arg.parse::<u64>().unwrap_or(5);
    match kind {
        "exit-at-start" => Failure::ExitAtStart,
        "never-healthy" => Failure::NeverHealthy,
        "unhealthy-after" => Failure::UnhealthyAfter(n()),
        "fatal-logs" => Failure::FatalLogs,
        "slow-start" => Failure::SlowStart(n()),
        "error-rate" => Failure::ErrorRate(arg.parse().unwrap_or(0.5)),
        "no-heartbeat" => Failure::NoHeartbeat,
        "crash-after" => Failure::CrashAfter(n()),
        "ignore-term" => Failure::IgnoreTerm,
        _ => Failure::None,
    }
}

struct Agent {
    version: String,
    id: String,
    failure: Failure,
    started: Instant,
    requests_ok: AtomicU64,
    /// Heartbeats sent (the next one's `seq` less one).
    sent: AtomicU64,
    requests_err: AtomicU64,
    heartbeats: AtomicU64,
}

impl Agent {
    fn healthy(&self) -> bool {
        let up = self.started.elapsed().as_secs();
        match self.failure {
            Failure::NeverHealthy => false,
            Failure::UnhealthyAfter(s) => up < s,
            Failure::SlowStart(s) => up >= s,
            _ => true,
        }
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // Exit promptly on SIGTERM: as PID 1 the default action would be to ignore it.
    unsafe { libc::_exit(0) }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    // `/agent probe IP:PORT`: GET /health of another agent (a test container's check), exit 0 on 200.
    if args.get(1).map(String::as_str) == Some("probe") {
        let ok = args
            .get(2)
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .and_then(|addr| http(addr, "GET /health HTTP/1.0\r\n\r\n", Duration::from_secs(2)).ok())
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"));
        println!(
            "probe {}: {}",
            args.get(2).map_or("", String::as_str),
            if ok { "ok" } else { "failed" }
        );
        std::process::exit(if ok { 0 } else { 1 });
    }
    // `/agent exit N`: a hook that exits N (75 asks an update to skip this agent).
    if args.get(1).map(String::as_str) == Some("exit") {
        std::process::exit(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1));
    }
    let version = env("AGENT_VERSION", env!("CARGO_PKG_VERSION"));
    // AGENT_BROKEN_ON=VERSION: this host's configuration breaks that version only (exit at start).
    // AGENT_CRASH_ON=VERSION:SECS: this host breaks that version only after a while (it passes its first checks).
    let crash_on = std::env::var("AGENT_CRASH_ON").ok().and_then(|v| {
        let (ver, secs) = v.split_once(':')?;
        (ver == version).then(|| secs.parse::<u64>().ok()).flatten()
    });
    let failure = if std::env::var("AGENT_BROKEN_ON").is_ok_and(|v| v == version) {
        Failure::ExitAtStart
    } else if let Some(secs) = crash_on {
        Failure::CrashAfter(secs)
    } else {
        parse_failure(&env("AGENT_FAILURE", ""))
    };
    // AGENT_BUSY_ON=VERSION: that version spins one CPU (a regression that only the resources gate sees).
    if std::env::var("AGENT_BUSY_ON").is_ok_and(|v| v == version) {
        std::thread::spawn(|| {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }
    // AGENT_UPDATE_LOCK=PATH:SECS: hold an update lock (a file) for SECS after the start, as an agent busy
    // with work it must not lose would.
    if let Some((path, secs)) = std::env::var("AGENT_UPDATE_LOCK").ok().and_then(|v| {
        let (p, s) = v.rsplit_once(':')?;
        Some((p.to_owned(), s.parse::<u64>().ok()?))
    }) {
        if std::fs::write(&path, b"busy\n").is_ok() {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                let _ = std::fs::remove_file(&path);
            });
        }
    }
    // `ignore-term` leaves SIGTERM at PID 1's default (ignored): the engine kills it at the stop timeout.
    if failure != Failure::IgnoreTerm {
        unsafe {
            libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
        }
    }
    let agent = Arc::new(Agent {
        version,
        id: env("AGENT_ID", &env("HOSTNAME", "demo-agent")),
        failure,
        started: Instant::now(),
        requests_ok: AtomicU64::new(0),
        requests_err: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    println!("demo-agent version {} starting (id {})", agent.version, agent.id);
    match agent.failure {
        Failure::ExitAtStart => {
            eprintln!("error: cannot load configuration, exiting");
            std::process::exit(1);
        }
        Failure::FatalLogs => {
            eprintln!("FATAL: lost connection to the collector backend");
        }
        _ => {}
    }
    if let Failure::CrashAfter(s) = agent.failure {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(s));
            eprintln!("panic: index out of range");
            std::process::exit(101);
        });
    }
    if let Ok(url) = std::env::var("CONTROL_CENTER_URL") {
        if !url.is_empty() && agent.failure != Failure::NoHeartbeat {
            let a = agent.clone();
            std::thread::spawn(move || heartbeat_loop(a, url));
        }
    }
    let listen = env("AGENT_LISTEN", "0.0.0.0:8080");
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {listen}");
    for stream in listener.incoming().flatten() {
        let a = agent.clone();
        std::thread::spawn(move || serve(a, stream));
    }
}

fn healthcheck() -> i32 {
    let listen = env("AGENT_LISTEN", "0.0.0.0:8080");
    let port = listen.rsplit(':').next().unwrap_or("8080");
    let addr: SocketAddr = match format!("127.0.0.1:{port}").parse() {
        Ok(a) => a,
        Err(_) => return 1,
    };
    match http(addr, "GET /health HTTP/1.0\r\n\r\n", Duration::from_secs(2)) {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") => 0,
        Ok(resp) => {
            println!("unhealthy: {}", resp.lines().next().unwrap_or(""));
            1
        }
        Err(e) => {
            println!("unhealthy: {e}");
            1
        }
    }
}

fn serve(agent: Arc<Agent>, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let n = match stream.read(&mut buf) {
        Ok(n) => n,
        Err(_) => return,
    };
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (status, body, ctype) = match path {
        "/health" | "/healthz" | "/up" => {
            if agent.healthy() {
                ("200 OK", format!("ok {}\n", agent.version), "text/plain")
            } else {
                ("503 Service Unavailable", "unhealthy\n".to_owned(), "text/plain")
            }
        }
        "/metrics" => ("200 OK", metrics(&agent), "text/plain; version=0.0.4"),
        "/version" => ("200 OK", format!("{}\n", agent.version), "text/plain"),
        "/work" => {
            let fail = match agent.failure {
                Failure::ErrorRate(r) => {
                    // Spread evenly (every other request at 0.5), so any window of requests sees the rate.
                    let total = agent.requests_ok.load(Ordering::Relaxed) + agent.requests_err.load(Ordering::Relaxed);
                    ((total + 1) as f64 * r).floor() > (total as f64 * r).floor()
                }
                _ => false,
            };
            if fail {
                agent.requests_err.fetch_add(1, Ordering::Relaxed);
                ("500 Internal Server Error", "error\n".to_owned(), "text/plain")
            } else {
                agent.requests_ok.fetch_add(1, Ordering::Relaxed);
                ("200 OK", "done\n".to_owned(), "text/plain")
            }
        }
        _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
}

fn metrics(agent: &Agent) -> String {
    // Simulated traffic, so error-rate analysis has data without a load generator: every scrape counts 100
    // requests, failing at the configured rate.
    let (ok, err) = match agent.failure {
        Failure::ErrorRate(r) => {
            let bad = (100.0 * r).round() as u64;
            (100 - bad.min(100), bad.min(100))
        }
        _ => (100, 0),
    };
    agent.requests_ok.fetch_add(ok, Ordering::Relaxed);
    agent.requests_err.fetch_add(err, Ordering::Relaxed);
    format!(
        "# HELP agent_up Whether the agent runs.\n# TYPE agent_up gauge\nagent_up 1\n\
# HELP agent_info Agent build information.\n# TYPE agent_info gauge\nagent_info{{version=\"{v}\",id=\"{id}\"}} 1\n\
# HELP agent_requests_total Requests handled, by outcome.\n# TYPE agent_requests_total counter\n\
agent_requests_total{{code=\"200\",version=\"{v}\"}} {ok}\nagent_requests_total{{code=\"500\",version=\"{v}\"}} {err}\n\
# HELP agent_heartbeats_sent_total Heartbeats sent to the control center.\n# TYPE agent_heartbeats_sent_total counter\n\
agent_heartbeats_sent_total {hb}\n\
# HELP agent_uptime_seconds Seconds since start.\n# TYPE agent_uptime_seconds gauge\nagent_uptime_seconds {up}\n",
        v = agent.version,
        id = agent.id,
        ok = agent.requests_ok.load(Ordering::Relaxed),
        err = agent.requests_err.load(Ordering::Relaxed),
        hb = agent.heartbeats.load(Ordering::Relaxed),
        up = agent.started.elapsed().as_secs_f64(),
    )
}

fn heartbeat_loop(agent: Arc<Agent>, url: String) {
    let rest = url.trim_start_matches("http://");
    let (hostport, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let Ok(addr) = hostport.parse::<SocketAddr>() else {
        eprintln!("error: CONTROL_CENTER_URL must be http://IP:PORT (no host names), got {url}");
        return;
    };
    let token = env("CONTROL_CENTER_TOKEN", "");
    let interval = Duration::from_millis(env("HEARTBEAT_INTERVAL_MS", "1000").parse().unwrap_or(1000));
    let revision = env("AGENT_REVISION", "");
    let container = env("HOSTNAME", "");
    let host = env("AGENT_HOST", "");
    let protocol = env("AGENT_PROTOCOL", "1.0");
    if env("AGENT_OPAMP", "") == "1" {
        return opamp_loop(&agent, addr, hostport, base, &token, interval, &container);
    }
    loop {
        let status = if agent.healthy() { "ok" } else { "degraded" };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // `seq` counts this process's heartbeats from 1: a receiver tells a lost one from a late one.
        let seq = agent.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let body = format!(
            "{{\"agentId\":\"{}\",\"container\":\"{}\",\"host\":\"{}\",\"version\":\"{}\",\"revision\":\"{}\",\"status\":\"{}\",\"protocol\":\"{}\",\"sentAtMs\":{},\"seq\":{}}}",
            agent.id, container, host, agent.version, revision, status, protocol, ts, seq
        );
        let req = format!(
            "POST {base}/v1/heartbeats HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        match http(addr, &req, Duration::from_secs(2)) {
            Ok(resp) if resp.starts_with("HTTP/1.1 2") => {
                agent.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) => eprintln!("warning: heartbeat refused: {}", resp.lines().next().unwrap_or("")),
            Err(e) => eprintln!("warning: heartbeat failed: {e}"),
        }
        std::thread::sleep(interval);
    }
}

/// Protobuf by hand (the agent has no dependencies): a varint, a field key, a length-delimited field.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, n: u64) {
    varint(out, field << 3);
    varint(out, n);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An OpAMP `KeyValue` with a string `AnyValue`.
fn key_value(key: &str, value: &str) -> Vec<u8> {
    let mut any = Vec::new();
    field_bytes(&mut any, 1, value.as_bytes());
    let mut kv = Vec::new();
    field_bytes(&mut kv, 1, key.as_bytes());
    field_bytes(&mut kv, 2, &any);
    kv
}

/// The top-level varint field `field` of a protobuf message, if present (enough to read `ServerToAgent`'s
/// flags).
fn read_varint_field(mut msg: &[u8], field: u64) -> Option<u64> {
    fn take(msg: &mut &[u8]) -> Option<u64> {
        let (mut n, mut shift) = (0u64, 0);
        loop {
            let (&b, rest) = msg.split_first()?;
            *msg = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
        }
    }
    while !msg.is_empty() {
        let key = take(&mut msg)?;
        match key & 7 {
            0 => {
                let v = take(&mut msg)?;
                if key >> 3 == field {
                    return Some(v);
                }
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let len = take(&mut msg)? as usize;
                msg = msg.get(len..)?;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    None
}

/// Heartbeats as OpAMP `AgentToServer` messages to `/v1/opamp` (`AGENT_OPAMP=1`): the description (name,
/// version, instance id, host name) on the first message and whenever the server asks for the full state,
/// the agent's health on every one.
fn opamp_loop(
    agent: &Agent,
    addr: SocketAddr,
    hostport: &str,
    base: &str,
    token: &str,
    interval: Duration,
    container: &str,
) {
    let seed = format!("{}-{}-{:?}", agent.id, std::process::id(), SystemTime::now());
    let mut uid = [0u8; 16];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, b) in seed.bytes().cycle().take(seed.len() * 2).enumerate() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        uid[i % 16] ^= (h >> 24) as u8;
    }
    let (mut seq, mut describe) = (0u64, true);
    loop {
        let mut msg = Vec::new();
        field_bytes(&mut msg, 1, &uid);
        field_varint(&mut msg, 2, seq);
        if describe {
            let mut d = Vec::new();
            for (k, v) in [
                ("service.name", "demo-agent"),
                ("service.version", agent.version.as_str()),
                ("service.instance.id", agent.id.as_str()),
            ] {
                field_bytes(&mut d, 1, &key_value(k, v));
            }
            field_bytes(&mut d, 2, &key_value("host.name", container));
            field_bytes(&mut msg, 3, &d);
        }
        // ReportsStatus | ReportsHealth | ReportsHeartbeat.
        field_varint(&mut msg, 4, 1 | 2048 | 8192);
        // `AGENT_OPAMP_UNHEALTHY=REASON`: up and answering its health check, but reporting a broken component
        // (a collector whose exporter cannot reach its backend).
        let broken = env("AGENT_OPAMP_UNHEALTHY", "");
        let healthy = agent.healthy() && broken.is_empty();
        let mut health = Vec::new();
        field_varint(&mut health, 1, u64::from(healthy));
        if !healthy {
            let reason = if broken.is_empty() {
                "health check failing"
            } else {
                broken.as_str()
            };
            field_bytes(&mut health, 3, reason.as_bytes());
        }
        field_bytes(&mut health, 4, if healthy { b"running" } else { b"degraded" });
        if !broken.is_empty() {
            // component_health_map (6): {"exporter/otlp": {healthy: false, last_error: REASON}}.
            let mut component = Vec::new();
            field_varint(&mut component, 1, 0);
            field_bytes(&mut component, 3, broken.as_bytes());
            let mut entry = Vec::new();
            field_bytes(&mut entry, 1, b"exporter/otlp");
            field_bytes(&mut entry, 2, &component);
            field_bytes(&mut health, 6, &entry);
        }
        field_bytes(&mut msg, 5, &health);
        let mut req = format!(
            "POST {base}/v1/opamp HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )
        .into_bytes();
        req.extend_from_slice(&msg);
        match http_bytes(addr, &req, Duration::from_secs(2)) {
            Ok(resp) if resp.starts_with(b"HTTP/1.1 200") => {
                agent.heartbeats.fetch_add(1, Ordering::Relaxed);
                let body = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| &resp[i + 4..])
                    .unwrap_or_default();
                // ServerToAgent.flags (6): ReportFullState asks for the description again.
                describe = read_varint_field(body, 6).is_some_and(|f| f & 1 == 1);
                seq += 1;
            }
            Ok(resp) => eprintln!(
                "warning: opamp message refused: {}",
                String::from_utf8_lossy(resp.split(|b| *b == b'\r').next().unwrap_or_default())
            ),
            Err(e) => eprintln!("warning: opamp message failed: {e}"),
        }
        std::thread::sleep(interval);
    }
}

fn http_bytes(addr: SocketAddr, request: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(out)
}

fn http(addr: SocketAddr, request: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}
