//! What an attacker or a careless operator could get out of agentctl: secrets in files and output, file
//! modes. (Heartbeat identity is in `health`.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

/// Secret values planted under the names an outside probe found stored in plain text, and one in a URL.
pub(crate) const PLANTED: &[(&str, &str)] = &[
    ("PASSWORD", "planted-pw-1"),
    ("API_KEY", "planted-key-2"),
    ("SECRET_KEY", "planted-secret-3"),
    ("PGPASSWORD", "planted-pg-4"),
    ("AWS_SECRET_ACCESS_KEY", "planted-aws-5"),
    ("GITHUB_PAT", "planted-pat-6"),
    ("DATABASE_URL", "postgres://app:planted-url-7@db/app"),
    ("CUSTOM_THING", "planted-custom-8"),
    // Secret by a name ending in _PASS, and by the shape of a value under a plain name.
    ("DB_PASS", "planted-pass-9"),
    (
        "ALERTS",
        "https://hooks.slack.com/services/T0PLANTED/B0PLANTED/planted10slackhook",
    ),
    ("BILLING", "sk_live_planted11stripekey0123"),
    (
        "SESSION_BLOB",
        "eyJhbGciOiJIUzI1NiJ9.eyJwbGFudGVkIjoxMn0.planted12jwtsignature",
    ),
];

/// The part of each planted value that must appear nowhere (for a URL, its password).
pub(crate) fn needles() -> Vec<&'static str> {
    PLANTED
        .iter()
        .map(|(_, v)| v.rsplit(':').next().unwrap().split('@').next().unwrap())
        .collect()
}

/// `agentctl` under umask 000, so that only agentctl's own choice of modes protects the files.
fn agentctl_umask0(w: &World, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_agentctl"))
        .arg("--state-dir")
        .arg(w.state_dir().join("private"))
        .envs(state_env(&w.state_dir().join("private")))
        .args(["--no-progress", "--secret-pattern", "CUSTOM_*"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn planted_secrets_appear_in_no_output_and_no_file_and_the_files_are_private() {
    let img = images();
    let w = World::new("secrets");
    let name = w.name("agent");
    let env: Vec<String> = PLANTED.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for e in &env {
        args.extend(["-e", e.as_str()]);
    }
    w.docker_run(&name, &args, &img.refs["v1"]);
    let backup = tempfile::tempdir().unwrap();
    let backups = backup.path().join("backups");
    let mut outputs = Vec::new();
    let out = agentctl_umask0(
        &w,
        &[
            &[
                "-vv",
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "--backup-dir",
                backups.to_str().unwrap(),
            ],
            FAST,
        ]
        .concat(),
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    outputs.push(out);
    for format in ["json", "yaml", "table"] {
        for command in ["status", "history"] {
            let out = agentctl_umask0(&w, &["-vv", command, &name, "-o", format]);
            assert_eq!(code(&out), 0, "{command} -o {format}: {}", stderr(&out));
            outputs.push(out);
        }
    }
    let out = agentctl_umask0(&w, &[&["-vv", "undo", &name], &FAST[..6]].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    outputs.push(out);
    // A rolled-back update's report, with the failed container's last output.
    let out = agentctl_umask0(
        &w,
        &[&["-vv", "update", &name, "--image", &img.refs["fatal"]], FAST].concat(),
    );
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    outputs.push(out);
    // A rollout of it, its events as JSON and its state in every format.
    let rollout = w.name("ro");
    let spec = w.state_dir().join("secrets-rollout.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {rollout}\nimage: {}\ntargets: [{{host: 'unix:///var/run/docker.sock', container: {name}}}]\nstrategy: {{canary: {{steps: [{{setWeight: 100}}]}}}}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\n",
            img.refs["v3"]
        ),
    )
    .unwrap();
    let out = agentctl_umask0(&w, &["-vv", "-o", "json", "apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    outputs.push(out);
    for format in ["json", "yaml", "table"] {
        let out = agentctl_umask0(&w, &["rollout", "status", &rollout, "-o", format]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        outputs.push(out);
        let out = agentctl_umask0(&w, &["rollout", "history", &rollout, "-o", format]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        outputs.push(out);
    }
    for args in [&["state", "export"][..], &["deliveries", "-o", "json"][..]] {
        let out = agentctl_umask0(&w, args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        outputs.push(out);
    }
    // The web view's pages of the same store.
    let token_file = w.state_dir().join("cc-token");
    std::fs::write(&token_file, "secrets-test-token-0123456789").unwrap();
    let addr = format!("127.0.0.1:{}", agent_docker::testing::free_port().unwrap());
    let _cc = Proc(
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("--state-dir")
            .arg(w.state_dir().join("private"))
            .envs(state_env(&w.state_dir().join("private")))
            .args(["control-center", "--listen", &addr, "--token-file"])
            .arg(&token_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_http(&format!("http://{addr}/healthz"), 15));
    let exchange = |request: String| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let body = "name=sec&token=secrets-test-token-0123456789";
    let signed_in = exchange(format!(
        "POST /login HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let cookie = signed_in
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session: {signed_in}"))
        .to_owned();
    let mut pages = Vec::new();
    for path in ["/".to_owned(), "/rollouts".to_owned(), format!("/rollouts/{rollout}")] {
        let page = exchange(format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"
        ));
        assert!(
            page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
            "{path}: {page}"
        );
        pages.push(page);
    }
    for needle in needles() {
        for page in &pages {
            assert!(!page.contains(needle), "{needle} on a page of the web view");
        }
    }
    // Every secret still reached the container, and none left the process.
    let running = w.docker(&["inspect", "-f", "{{json .Config.Env}}", &name]);
    for (k, v) in PLANTED {
        assert!(stdout(&running).contains(&format!("{k}={v}")), "{k} kept its value");
    }
    let mut files = Vec::new();
    for root in [w.state_dir().join("private"), backups.clone()] {
        for entry in walk(&root) {
            files.push(entry);
        }
    }
    for needle in needles() {
        for o in &outputs {
            assert!(
                !stdout(o).contains(needle) && !stderr(o).contains(needle),
                "{needle} printed"
            );
        }
        // The store (whichever it is) and the engine's copy of the history hold none either.
        let stored = stored_state(&w.state_dir().join("private"));
        assert!(
            !stored.windows(needle.len()).any(|x| x == needle.as_bytes()),
            "{needle} in the store"
        );
        let on_engine = engine_history(&name);
        assert!(!on_engine.is_empty(), "no history on the engine");
        assert!(
            !on_engine.windows(needle.len()).any(|x| x == needle.as_bytes()),
            "{needle} in the engine's history"
        );
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(
                !bytes.windows(needle.len()).any(|x| x == needle.as_bytes()),
                "{needle} stored in {}",
                f.display()
            );
        }
    }
    // Private whatever the umask: directories 0700, files 0600.
    if test_postgres().is_none() {
        assert_eq!(mode(&w.state_dir().join("private")), 0o700);
    }
    assert_eq!(mode(&backups), 0o700);
    for f in &files {
        let m = mode(f);
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", f.display());
    }
    assert!(files.iter().any(|f| f.ends_with("spec.json")));
    assert!(test_postgres().is_some() || files.iter().any(|f| f.ends_with("state.db")));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn reserved_names_are_refused_undo_checks_the_retained_container_and_status_reports_drift() {
    let img = images();
    let w = World::new("names");
    let name = w.name("agent");
    w.docker_run(&name, &[], &img.refs["v1"]);
    let out = w.agentctl(&[&["update", &name, "--image", &img.refs["v2"]], FAST].concat());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let retained = format!("{name}.rev1");
    let (retained_id, running, _) = w.state(&retained).unwrap();
    assert!(!running);

    // The retained container is agentctl's: an update of it would start a second instance beside NAME.
    for target in [
        retained.clone(),
        format!("{name}.preview"),
        format!("{name}.agentctl-history.0"),
        format!("{name}.agentctl-journal"),
    ] {
        let out = w.agentctl(&[&["update", &target, "--image", &img.refs["v2"]], FAST].concat());
        assert_eq!(code(&out), 1, "{target}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("reserved") && stderr(&out).contains(&name),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        w.state(&retained).unwrap(),
        (retained_id.clone(), false, img.refs["v1"].clone())
    );
    assert_eq!(w.running(&name), std::slice::from_ref(&name), "one instance runs");

    // Another container under the retained name is not revision 1: undo recreates revision 1 from its
    // snapshot and leaves the impostor alone.
    assert!(w.docker(&["rm", "-f", &retained]).status.success());
    let out = w.docker(&["create", "--name", &retained, "--label", &w.label, &img.refs["v3"]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let impostor = w.state(&retained).unwrap().0;
    let out = w.agentctl(&[&["undo", &name, "--to-revision", "1", "-o", "json"], FAST].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let runs = w.state(&name).unwrap().2;
    assert!(
        runs.starts_with(&img.refs["v1"]),
        "the engine runs revision 1's image, not {runs}"
    );
    assert_eq!(w.state(&retained).unwrap().0, impostor, "the impostor is not touched");

    // Changed outside agentctl: status says so, loudly, with the fix.
    assert!(w.docker(&["rm", "-f", &name]).status.success());
    w.docker_run(&name, &[], &img.refs["v3"]);
    let out = w.agentctl(&["status", &name, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let drift = json(&out)["drift"].as_str().unwrap_or_default().to_owned();
    assert!(
        drift.contains("changed outside agentctl") && drift.contains("--to-revision"),
        "{drift}"
    );
    let out = w.agentctl(&["status", &name]);
    assert!(stdout(&out).contains("DRIFT"), "{}", stdout(&out));
}

#[test]
fn oversized_endless_and_huge_specs_are_refused_before_anything_is_read_whole() {
    let w = World::new("bounds");
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(5 * 1024 * 1024))).unwrap();
    let targets: Vec<String> = (0..10_001)
        .map(|i| format!(r#"{{"host":"unix:///var/run/docker.sock","container":"a{i}"}}"#))
        .collect();
    let many = dir.path().join("many.json");
    std::fs::write(
        &many,
        format!(
            r#"{{"name":"many","image":"acme/agent:1.0.0","strategy":{{"rolling":{{"maxUnavailable":1}}}},"targets":[{}]}}"#,
            targets.join(",")
        ),
    )
    .unwrap();
    for (file, expect) in [
        (&zero, "not a regular file"),
        (&big, "more than the 4194304"),
        (&many, "10001 targets"),
    ] {
        let out = w.agentctl(&["apply", "-f", file.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{}: {}", file.display(), stderr(&out));
        assert!(stderr(&out).contains(expect), "{}: {}", file.display(), stderr(&out));
    }
}

/// `--metrics-listen` under file-descriptor exhaustion: with the process limited to 64 descriptors and 80
/// connections held open against it, `accept` fails with EMFILE; the loop backs off instead of ending (it
/// ended for good before), and once the connections go, scrapes are answered again and the rollout finishes.
#[test]
fn the_metrics_listener_survives_running_out_of_file_descriptors() {
    let img = images();
    let w = World::new("emfile");
    let (names, _) = w.agents("e", 2);
    let rollout = w.name("ro");
    let targets: String = names
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    let spec = w.state_dir().join("emfile.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {rollout}\nimage: {}\ntargets:\n{targets}strategy:\n  canary: {{steps: [{{setWeight: 50}}, {{pause: 15s}}]}}\nhealth: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}\n",
            img.refs["v2"]
        ),
    )
    .unwrap();
    let port = agent_docker::testing::free_port().unwrap();
    let child = std::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_agentctl"))
        .arg("--state-dir")
        .arg(w.state_dir())
        .envs(state_env(w.state_dir()))
        .args([
            "--no-progress",
            "apply",
            "-f",
            spec.to_str().unwrap(),
            "--metrics-listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .env_remove("AGENTCTL_CRASH_AT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert!(wait_http(&url, 30), "the metrics endpoint did not answer");
    let scrape = || {
        runtime()
            .block_on(agent_health::http::get(&url, std::time::Duration::from_secs(3)))
            .map(|r| r.body)
    };
    // Wait for the timed pause: the first target is updated, the process only serves metrics.
    let paused = format!("agentctl_rollout_targets{{rollout=\"{rollout}\",status=\"updated\"}} 1");
    let mut body = String::new();
    for _ in 0..150 {
        body = scrape().unwrap_or_default();
        if body.contains(&paused) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(body.contains(&paused), "{body}");
    // Hold more connections than the process has descriptors.
    let held: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(held);
    // Closed clients free their descriptors; the listener answers again.
    let mut again = Err(String::new());
    for _ in 0..50 {
        again = scrape().map_err(|e| e.to_string());
        if again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let again = again.expect("the metrics listener answers after the descriptors are free");
    assert!(again.contains(&rollout), "{again}");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("accept failed"),
        "the test must have exhausted the descriptors: {err}"
    );
    assert_eq!(code(&out), 0, "{err}");
}
