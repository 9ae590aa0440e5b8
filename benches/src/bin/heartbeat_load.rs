//! Load benchmark of the control center (not a test): starts `agentctl control-center` as its own process,
//! registers many agents to measure the memory per tracked agent (from the server's RSS), then sends
//! heartbeats over loopback from this separate process on keep-alive connections and reports heartbeats
//! per second.
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
    println!("| refused or malformed answers | {} |", bad.load(Ordering::Relaxed));
    println!(
        "| control-center RSS after the load | {:.1} MiB |",
        rss_after as f64 / 1024.0
    );
}
