//! The control center's web view in a real browser: headless Chromium from Debian driven through
//! chromedriver's WebDriver API. The fleet page lists the agents the test registered, a paused rollout's
//! page shows its steps and evidence, Promote on the page continues it (the page follows without a reload),
//! and actions without a session or without the form's CSRF token are refused. Screenshots go to
//! `target/web-screenshots/`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_docker::testing::free_port;
use agent_health::http;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "web-view-test-token-0123456789";

/// A WebDriver session of headless Chromium.
struct Browser {
    _driver: Proc,
    base: String,
    session: String,
}

/// One HTTP/1.1 exchange with chromedriver (it answers HTTP/1.0 with nothing and keeps connections open,
/// so the body is read by its Content-Length): the status and the body.
fn driver_http(method: &str, url: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or_default();
    write!(
        s,
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if path.is_empty() { "/" } else { path },
        body.len()
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Ok((status, text));
            }
        }
    }
    Err(std::io::Error::other(
        "chromedriver closed the connection before answering",
    ))
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let text = body.map(|b| b.to_string());
    let (status, text) = driver_http(method, url, text.as_deref()).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert!(status < 400, "{method} {url}: {status} {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        let port = free_port().unwrap();
        let driver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver (apt-get install chromium chromium-driver)"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver_http("GET", &format!("{base}/status"), None).map_or(true, |(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let v = call(
            "POST",
            &format!("{base}/session"),
            Some(
                json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
                }}}}),
            ),
        );
        let session = v["sessionId"].as_str().expect("a WebDriver session").to_owned();
        Browser {
            _driver: driver,
            base,
            session,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn go(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({ "url": url })));
    }

    fn element(&self, css: &str) -> String {
        let v = call(
            "POST",
            &self.url("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        call(
            "POST",
            &self.url(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        call("POST", &self.url(&format!("/element/{e}/click")), Some(json!({})));
    }

    fn source(&self) -> String {
        call("GET", &self.url("/source"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn current(&self) -> String {
        call("GET", &self.url("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn js(&self, script: &str) -> Value {
        call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits (up to 30 s) until the JavaScript expression `condition` holds: a click that submits a form
    /// returns before the next page is there.
    fn wait_until(&self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.js(&format!(
            "try {{ return !!({condition}); }} catch (e) {{ return false; }}"
        )) != true
        {
            assert!(Instant::now() < deadline, "never true: {condition}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot as `target/web-screenshots/NAME.png`.
    fn screenshot(&self, name: &str) {
        let b64 = call("GET", &self.url("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap();
        let dir = workspace_path("target/web-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = driver_http("DELETE", &format!("{}/session/{}", self.base, self.session), None);
    }
}

/// A raw HTTP/1.0 exchange with the control center: the status line, the headers and the body.
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The status code of a raw answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn form_post(addr: &str, path: &str, cookie: Option<&str>, body: &str) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Sends heartbeats of agents `from..to` running `version`, a hundred at a time.
fn heartbeats(url: &str, from: usize, to: usize, version: &str) {
    runtime().block_on(async {
        for chunk in (from..to).collect::<Vec<_>>().chunks(100) {
            let mut set = tokio::task::JoinSet::new();
            for &i in chunk {
                let url = format!("{url}/v1/heartbeats");
                let hb = json!({"agentId": format!("edge-{i:05}"), "container": format!("{i:012x}"), "host": "h2",
                                "version": version});
                set.spawn(async move {
                    let auth = format!("Bearer {TOKEN}");
                    http::request(
                        "POST",
                        &url,
                        &[("Authorization", &auth), ("Content-Type", "application/json")],
                        Some(hb.to_string().as_bytes()),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|r| r.status)
                });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.unwrap().unwrap(), 204);
            }
        }
    });
}

#[test]
fn the_web_view_shows_fleet_and_rollout_and_promotes_only_for_a_signed_in_user() {
    let img = images();
    let w = World::new("web");
    // The control center, on this world's state store (where the rollout below is saved).
    let token_file = w.state_dir().join("cc-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let _cc = Proc(
        agentctl_in(w.state_dir())
            .args(["control-center", "--listen", &addr, "--token-file"])
            .arg(&token_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(w.state_dir().join("cc.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{addr}");
    assert!(
        wait_http(&format!("{url}/healthz"), 15),
        "the control center did not start"
    );

    // 30 agents report: 20 on 1.0.0, 10 on 2.0.0, one of them unhealthy by its own account.
    for i in 0..30 {
        let version = if i < 20 { "1.0.0" } else { "2.0.0" };
        let health = if i == 25 {
            json!({"healthy": false, "lastError": "exporter otlp: connection refused"})
        } else {
            json!({"healthy": true})
        };
        let hb = json!({"agentId": format!("edge-{i:02}"), "container": format!("{i:012x}"), "host": "h1",
                        "version": version, "health": health});
        let r = runtime()
            .block_on(http::request(
                "POST",
                &format!("{url}/v1/heartbeats"),
                &[
                    ("Authorization", &format!("Bearer {TOKEN}")),
                    ("Content-Type", "application/json"),
                ],
                Some(hb.to_string().as_bytes()),
                Duration::from_secs(5),
            ))
            .unwrap();
        assert!(r.status < 300, "{}", r.body);
    }

    // A canary of two real agents, paused after its first half.
    let agents: Vec<String> = (1..=2).map(|i| w.name(&format!("a{i}"))).collect();
    for n in &agents {
        w.docker_run(n, &["--restart", "unless-stopped"], &img.refs["v1"]);
    }
    let name = w.name("canary");
    let targets: String = agents
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    let spec = w.state_dir().join("canary.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {name}\nimage: {}\ntargets:\n{targets}strategy:\n  canary: {{steps: [{{setWeight: 50}}, {{pause: {{}}}}, {{setWeight: 100}}]}}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\n",
            img.refs["v2"]
        ),
    )
    .unwrap();
    let out = w.agentctl(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));

    // Without a session: pages send the browser to sign in, actions are refused and change nothing.
    let refused = form_post(&addr, &format!("/rollouts/{name}/promote"), None, "csrf=x");
    assert_eq!(status_of(&refused), 403, "{refused}");
    let wrong = form_post(
        &addr,
        "/login",
        None,
        &format!("name=mallory&token=not-the-token-{TOKEN}"),
    );
    assert_eq!(status_of(&wrong), 401, "{wrong}");
    let signed_in = form_post(&addr, "/login", None, &format!("name=bob&token={TOKEN}"));
    let cookie = signed_in
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie: "))
        .map(|l| &l["set-cookie: ".len()..])
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {signed_in}"))
        .to_owned();
    assert!(signed_in.to_lowercase().contains("httponly") && signed_in.contains("SameSite=Strict"));
    let forged = form_post(&addr, &format!("/rollouts/{name}/promote"), Some(&cookie), "csrf=guess");
    assert!(status_of(&forged) == 403 && forged.contains("CSRF"), "{forged}");
    let status = json(&w.agentctl(&["rollout", "status", &name, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "paused", "{status}");

    let b = Browser::start();
    b.go(&url);
    assert!(b.current().ends_with("/login"), "{}", b.current());
    b.type_into("#name", "alice");
    b.type_into("#token", TOKEN);
    b.click("#signin");
    b.wait_until("document.getElementById('count-total')");

    // The fleet: every agent, counts per version, the unhealthy one with its own words.
    let fleet = b.source();
    assert!(fleet.contains("alice (web)"), "signed in as alice");
    assert_eq!(b.js("return document.getElementById('count-total').textContent"), "30");
    assert_eq!(
        b.js("return document.querySelector('tr[data-version=\"1.0.0\"] .count').textContent"),
        "20"
    );
    assert_eq!(
        b.js("return document.querySelector('tr[data-version=\"2.0.0\"] .count').textContent"),
        "10"
    );
    assert_eq!(b.js("return document.querySelectorAll('tr.agent').length"), 30);
    assert!(fleet.contains("edge-07") && fleet.contains("exporter otlp: connection refused"));
    b.screenshot("fleet");

    // The rollout: paused after 2 of its 3 steps, the updated target's evidence, the audit trail.
    b.go(&format!("{url}/rollouts/{name}"));
    assert_eq!(b.js("return document.getElementById('phase').textContent"), "paused");
    assert_eq!(b.js("return document.querySelectorAll('tr.step').length"), 3);
    assert_eq!(b.js("return document.querySelectorAll('tr.step.succeeded').length"), 2);
    let page = b.source();
    assert!(
        page.contains("pause until promoted") && page.contains(&agents[0]),
        "{page}"
    );
    assert!(page.contains("updated") && page.contains("pending"), "{page}");
    assert!(
        page.contains("verdict: healthy") && page.contains("healthcheck"),
        "evidence: {page}"
    );
    b.screenshot("rollout-paused");

    // Promote from the page: the rollout continues in the control center; the page follows it.
    b.click("#promote");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // While the form's answer loads there is no element yet.
        let phase = b.js("const e = document.getElementById('phase'); return e ? e.textContent : ''");
        if phase == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {phase}; the control center said: {}",
            std::fs::read_to_string(w.state_dir().join("cc.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(b.current().contains(&format!("/rollouts/{name}")), "{}", b.current());
    assert!(b.source().contains("alice (web)"), "the audit trail names alice");
    b.screenshot("rollout-promoted");
    let status = json(&w.agentctl(&["rollout", "status", &name, "-o", "json"]));
    assert_eq!(status["machine"]["phase"], "succeeded", "{status}");
    let audit = status["audit"].to_string();
    assert!(
        audit.contains(r#""by":"alice (web)""#) && audit.contains("promote"),
        "{audit}"
    );
    // Live updates: the fleet page follows new heartbeats without being loaded again.
    b.go(&url);
    b.js("window.notReloaded = true; return 1");
    heartbeats(&url, 100, 105, "3.0.0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.js("return document.getElementById('count-total').textContent") != "35" {
        assert!(Instant::now() < deadline, "the page did not follow: {}", b.source());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        b.js("return window.notReloaded === true"),
        true,
        "updated in place, not reloaded"
    );
    assert_eq!(
        b.js("return document.querySelector('tr[data-version=\"3.0.0\"] .count').textContent"),
        "5"
    );

    // 10,000 agents: counts of all of them, one page of rows, a way to the next.
    heartbeats(&url, 1000, 1000 + 10_000 - 35, "3.0.1");
    let started = Instant::now();
    b.go(&url);
    eprintln!(
        "measured: the fleet page of 10,000 agents loaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        b.js("return document.getElementById('count-total').textContent"),
        "10000"
    );
    assert_eq!(b.js("return document.querySelectorAll('tr.agent').length"), 200);
    b.click("#next");
    b.wait_until("location.search === '?page=1' && document.getElementById('count-total')");
    assert!(b.current().ends_with("/?page=1"), "{}", b.current());
    assert_eq!(b.js("return document.querySelectorAll('tr.agent').length"), 200);
    b.go(&format!("{url}/?version=1.0.0"));
    assert_eq!(b.js("return document.querySelectorAll('tr.agent').length"), 20);
    b.go(&url);
    b.screenshot("fleet-10000");

    let v2 = stdout(&w.docker(&["image", "inspect", "-f", "{{.Id}}", &img.refs["v2"]]));
    for n in &agents {
        assert_eq!(stdout(&w.docker(&["inspect", "-f", "{{.Image}}", n])), v2, "{n}");
    }
}

/// The web view over plain HTTP: what the browser is told (no framing, no sniffing, no caching, no script
/// but its own), sign-out that ends the session on the server (and its event stream), a banner no URL can
/// write, a cap on sessions, and sign-in throttling after repeated wrong tokens.
#[test]
fn the_web_view_is_closed_to_framing_guessing_stale_sessions_and_planted_banners() {
    let w = World::new("webhard");
    let token_file = w.state_dir().join("cc-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // A rollout in the store, for its page.
    let dump = json!({"format": "agentctl-state", "version": 1, "revisions": [], "operations": [],
        "documents": [{"kind": "rollout", "key": "edge", "value": {"machine": {"phase": "paused"},
        "plan": {"steps": []}, "targets": [], "analyses": [], "audit": [], "nextStep": 0, "pinned": "acme/agent:2.0.0",
        "startedAt": "2026-12-01T00:00:00Z", "updatedAt": "2026-12-01T00:00:00Z"}}]});
    let dump_file = w.state_dir().join("dump.json");
    std::fs::write(&dump_file, dump.to_string()).unwrap();
    let out = w.agentctl(&["state", "import", dump_file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let _cc = Proc(
        agentctl_in(w.state_dir())
            .args(["control-center", "--listen", &addr, "--token-file"])
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_http(&format!("http://{addr}/healthz"), 15),
        "the control center did not start"
    );
    let get = |path: &str, cookie: Option<&str>| {
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        raw(&addr, &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{cookie}\r\n"))
    };
    let login = get("/login", None).to_lowercase();
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "cache-control: no-store",
    ] {
        assert!(login.contains(header), "{header}: {login}");
    }
    assert!(
        !login.contains("<script>") && login.contains("<script src=\"/app.js\">"),
        "{login}"
    );
    let sign_in = || {
        let answer = form_post(&addr, "/login", None, &format!("name=bob&token={TOKEN}"));
        answer
            .lines()
            .find(|l| l.to_lowercase().starts_with("set-cookie: "))
            .and_then(|l| l["set-cookie: ".len()..].split(';').next())
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned()
    };
    let csrf_of = |page: &str| {
        page.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    };

    // No URL puts text in the banner.
    let bob = sign_in();
    let page = get("/rollouts/edge?error=INJECTED-BANNER&done=INJECTED-DONE", Some(&bob));
    assert_eq!(status_of(&page), 200, "{page}");
    assert!(!page.contains("INJECTED"), "{page}");

    // Sign-out without the form's token changes nothing; with it, the session ends on the server and its
    // event stream with it.
    let out = form_post(&addr, "/logout", Some(&bob), "");
    assert_eq!(status_of(&out), 403, "{out}");
    assert!(!out.to_lowercase().contains("set-cookie"), "{out}");
    assert_eq!(status_of(&get("/", Some(&bob))), 200, "still signed in");
    let mut events = std::net::TcpStream::connect(&addr).unwrap();
    write!(events, "GET /events HTTP/1.0\r\nHost: {addr}\r\nCookie: {bob}\r\n\r\n").unwrap();
    events.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut first = [0u8; 512];
    let n = events.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("200"),
        "the stream opened"
    );
    let csrf = csrf_of(&get("/", Some(&bob)));
    let out = form_post(&addr, "/logout", Some(&bob), &format!("csrf={csrf}"));
    assert_eq!(status_of(&out), 303, "{out}");
    let signed_out = Instant::now();
    let mut rest = Vec::new();
    let ended = events.read_to_end(&mut rest).is_ok();
    assert!(
        ended && signed_out.elapsed() < Duration::from_secs(5),
        "the stream outlived the session"
    );
    assert_eq!(
        status_of(&get("/", Some(&bob))),
        303,
        "the session is gone on the server"
    );

    // Sessions are capped: the oldest goes.
    let first = sign_in();
    for _ in 0..agent_health::web::MAX_SESSIONS {
        sign_in();
    }
    assert_eq!(status_of(&get("/", Some(&first))), 303, "the oldest session made room");

    // Wrong tokens: after five, this address waits, even with the right token.
    for _ in 0..agent_health::web::MAX_FAILED_SIGN_INS {
        let wrong = form_post(&addr, "/login", None, "name=mallory&token=guess-0123456789abcdef");
        assert_eq!(status_of(&wrong), 401, "{wrong}");
    }
    let blocked = form_post(&addr, "/login", None, &format!("name=bob&token={TOKEN}"));
    assert_eq!(status_of(&blocked), 429, "{blocked}");
    assert!(blocked.to_lowercase().contains("retry-after:"), "{blocked}");
}
