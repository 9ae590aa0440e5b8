//! Load benchmark of the control center (not a test): starts `agentctl control-center` as its own process,
//! registers many agents to measure the memory per tracked agent (from the server's RSS), then sends
//! heartbeats over loopback from this separate process on keep-alive connections and reports heartbeats
//! per second; then the same load as OpAMP messages (`POST /v1/opamp`, protobuf, every agent described once
//! first), in the same run, for heartbeats per second side by side.
//!
//! `cargo build --release -p agent-cli && cargo run --release -p agentctl-benches --bin heartbeat-load -- [AGENTS] [CONNECTIONS] [SECONDS]`

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn body(agent: usize, version: &str) -> String {
    format!(
        r#"{{"agentId":"agent-{agent:05}","container":"{agent:012x}","host":"host-{}","version":"{version}","revision":"7","status":"ok"}}"#,
        agent % 50
    )
}

fn request(addr: &str, body: &str) -> String {
    format!(
        "POST /v1/heartbeats HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn uid(agent: usize) -> Vec<u8> {
    let mut u = vec![0u8; 16];
    u[..8].copy_from_slice(&(agent as u64 + 1).to_be_bytes());
    u
}

/// An OpAMP message from `agent`: its description when `describe`, else a bare heartbeat.
fn opamp_body(agent: usize, describe: bool, seq: u64) -> Vec<u8> {
    use agent_health::opamp::*;
    use prost::Message;
    let kv = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::String(v)),
        }),
    };
    AgentToServer {
        instance_uid: uid(agent),
        sequence_num: seq,
        agent_description: describe.then(|| AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "agent".into()),
                kv("service.version", "2.0.0".into()),
                kv("service.instance.id", format!("opamp-{agent:05}")),
            ],
            non_identifying_attributes: vec![kv("host.name", format!("{agent:012x}"))],
        }),
        capabilities: 1 | 8192,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Bytes of the error an agent supplies in the hostile phase (what an outside probe sent: 15 KB errors,
/// within the control center's 16 KiB body limit).
const HOSTILE_BYTES: usize = 15_000;

/// An OpAMP message from `agent` whose health carries a [`HOSTILE_BYTES`] error starting with an escape
/// sequence, a 600-byte status and 24 components: what the control center must bound.
fn hostile_body(agent: usize, seq: u64) -> Vec<u8> {
    use agent_health::opamp::*;
    use prost::Message;
    let component = |i: usize| {
        (
            format!("c{i:02}\n"),
            ComponentHealth {
                healthy: false,
                ..Default::default()
            },
        )
    };
    AgentToServer {
        instance_uid: uid(agent),
        sequence_num: seq,
        health: Some(ComponentHealth {
            healthy: false,
            last_error: "\u{1b}[8m".to_owned() + &"x".repeat(HOSTILE_BYTES),
            status: "y".repeat(600),
            component_health_map: (0..24).map(component).collect(),
            ..Default::default()
        }),
        capabilities: 1 | 8192,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Every page of `GET /v1/agents` (following `x-agentctl-next-after`): the pages, the largest page's bytes,
/// the total bytes and the time taken.
fn read_agent_pages(addr: &str) -> (usize, usize, usize, Duration) {
    use std::io::{Read, Write};
    let start = Instant::now();
    let (mut pages, mut largest, mut total) = (0, 0, 0);
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/agents?after={a}"),
            None => "/v1/agents".to_owned(),
        };
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            break;
        };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
        let body = answer.len() - head_end;
        pages += 1;
        largest = largest.max(body);
        total += body;
        after = head
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{}:", agent_health::NEXT_PAGE_HEADER)))
            .map(|v| v.trim().to_owned());
        if after.is_none() || pages > 10_000 {
            break;
        }
    }
    (pages, largest, total, start.elapsed())
}

fn opamp_request(addr: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads one answer with a `Content-Length` body from a keep-alive connection; whether it was a 200.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    let mut got = 0;
    let head_end = loop {
        if got == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
        if let Some(i) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let ok = buf.starts_with(b"HTTP/1.1 200");
    while got < head_end + len {
        if got == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    Some(ok)
}

/// Like [`drive`], with OpAMP heartbeats; counts 200 answers.
async fn drive_opamp(
    addr: String,
    agents: usize,
    offset: usize,
    until: Instant,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let (mut i, mut seq) = (offset, 1u64);
    while Instant::now() < until {
        let req = opamp_request(&addr, &opamp_body(i % agents, false, seq));
        if s.write_all(&req).await.is_err() {
            return;
        }
        match read_answer(&mut s, &mut buf).await {
            None => return,
            Some(true) => ok.fetch_add(1, Ordering::Relaxed),
            Some(false) => bad.fetch_add(1, Ordering::Relaxed),
        };
        i += 7919;
        seq += 1;
    }
}

/// Sends requests on one keep-alive connection until `until`; counts 204 answers.
async fn drive(addr: String, agents: usize, offset: usize, until: Instant, ok: Arc<AtomicU64>, bad: Arc<AtomicU64>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut i = offset;
    while Instant::now() < until {
        let req = request(&addr, &body(i % agents, "2.0.0"));
        if s.write_all(req.as_bytes()).await.is_err() {
            return;
        }
        // A 204 has no body: read until the end of the headers.
        let mut got = 0;
        loop {
            match s.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        if buf.starts_with(b"HTTP/1.1 204") {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        i += 7919;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let agents = args.first().copied().unwrap_or(10_000);
    let connections = args.get(1).copied().unwrap_or(64);
    let seconds = args.get(2).copied().unwrap_or(10) as u64;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = std::env::var("AGENTCTL_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target/release/agentctl"));
    let state = std::env::temp_dir().join(format!("hb-bench-{}", std::process::id()));
    let token_file = state.with_extension("token");
    std::fs::write(&token_file, TOKEN).expect("write the token file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(&bin)
        .args([
            "--state-dir",
            state.to_str().unwrap_or("."),
            "control-center",
            "--listen",
            &addr,
            "--token-file",
        ])
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {} (build it with cargo build --release -p agent-cli): {e}",
                bin.display()
            )
        });
    let pid = server.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).await.is_err() {
        assert!(Instant::now() < deadline, "the control center did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_empty = rss_kib(pid);

    // Register every agent once (one connection per 1,000 agents).
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for chunk in 0..agents.div_ceil(1000) {
        let (addr, ok, bad) = (addr.clone(), ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            for a in chunk * 1000..((chunk + 1) * 1000).min(agents) {
                if s.write_all(request(&addr, &body(a, "1.0.0")).as_bytes()).await.is_err() {
                    return;
                }
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                if buf.starts_with(b"HTTP/1.1 204") {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    bad.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Let the write-behind flush run, then read the memory.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rss_full = rss_kib(pid);
    let registered = ok.load(Ordering::Relaxed);

    ok.store(0, Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(drive(addr.clone(), agents, c * 131, until, ok.clone(), bad.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent = ok.load(Ordering::Relaxed);
    let rss_after = rss_kib(pid);
    let bad_json = bad.load(Ordering::Relaxed);

    // The same agents over OpAMP: each describes itself once, then bare heartbeats at full speed.
    ok.store(0, Ordering::Relaxed);
    bad.store(0, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for chunk in 0..agents.div_ceil(1000) {
        let (addr, bad) = (addr.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            for a in chunk * 1000..((chunk + 1) * 1000).min(agents) {
                if s.write_all(&opamp_request(&addr, &opamp_body(a, true, 0)))
                    .await
                    .is_err()
                {
                    return;
                }
                if read_answer(&mut s, &mut buf).await != Some(true) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(drive_opamp(
                addr.clone(),
                agents,
                c * 131,
                until,
                ok.clone(),
                bad.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let opamp_elapsed = start.elapsed().as_secs_f64();
    let opamp_sent = ok.load(Ordering::Relaxed);
    let bad_opamp = bad.load(Ordering::Relaxed);
    let rss_opamp = rss_kib(pid);

    // Hostile: every OpAMP agent reports unhealthy with a 15 KB error.
    let hostile_refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for chunk in 0..agents.div_ceil(1000) {
        let (addr, refused) = (addr.clone(), hostile_refused.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            for a in chunk * 1000..((chunk + 1) * 1000).min(agents) {
                // The next sequence number after the throughput phase's is unknown here: the server may
                // ask for the full state, which is what this message is.
                if s.write_all(&opamp_request(&addr, &hostile_body(a, u64::MAX / 2)))
                    .await
                    .is_err()
                {
                    return;
                }
                if read_answer(&mut s, &mut buf).await != Some(true) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rss_hostile = rss_kib(pid);
    let list_addr = addr.clone();
    let (pages, largest_page, all_pages, list_took) = tokio::task::spawn_blocking(move || read_agent_pages(&list_addr))
        .await
        .unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&token_file);

    println!("| measure | value |");
    println!("|---|---|");
    println!("| agents registered | {registered} of {agents} |");
    println!("| control-center RSS, empty | {:.1} MiB |", rss_empty as f64 / 1024.0);
    println!(
        "| control-center RSS with {agents} agents | {:.1} MiB |",
        rss_full as f64 / 1024.0
    );
    println!(
        "| memory per tracked agent | {:.0} bytes |",
        (rss_full.saturating_sub(rss_empty) * 1024) as f64 / agents.max(1) as f64
    );
    println!("| heartbeats accepted | {sent} in {elapsed:.1} s on {connections} keep-alive connections |");
    println!("| **heartbeats per second** | **{:.0}** |", sent as f64 / elapsed);
    println!("| refused or malformed answers | {bad_json} |");
    println!(
        "| OpAMP messages accepted (each a heartbeat) | {opamp_sent} in {opamp_elapsed:.1} s on {connections} keep-alive connections |"
    );
    println!(
        "| **OpAMP heartbeats per second** | **{:.0}** ({:.2}x the JSON rate) |",
        opamp_sent as f64 / opamp_elapsed,
        (opamp_sent as f64 / opamp_elapsed) / (sent as f64 / elapsed).max(1.0)
    );
    println!("| OpAMP answers refused or malformed | {bad_opamp} |");
    println!(
        "| control-center RSS after the load | {:.1} MiB |",
        rss_after as f64 / 1024.0
    );
    println!(
        "| control-center RSS after the OpAMP load ({agents} more agents) | {:.1} MiB |",
        rss_opamp as f64 / 1024.0
    );
    println!(
        "| control-center RSS after every OpAMP agent reported unhealthy with a {HOSTILE_BYTES}-byte error ({} bytes a message; {} refused) | {:.1} MiB |",
        hostile_body(0, 1).len(),
        hostile_refused.load(Ordering::Relaxed),
        rss_hostile as f64 / 1024.0
    );
    println!(
        "| `GET /v1/agents`, every page ({agents} JSON and {agents} OpAMP agents) | {pages} pages, largest {:.0} KiB, {:.1} MiB in all, {:.2} s |",
        largest_page as f64 / 1024.0,
        all_pages as f64 / 1024.0 / 1024.0,
        list_took.as_secs_f64()
    );
}
