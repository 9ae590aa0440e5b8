//! Remote engines over TCP with TLS (a second dockerd with `--tlsverify` and certificates made here).

use crate::support::*;

/// Makes a CA and a server certificate for 127.0.0.1 and a client certificate, as `docker` expects them.
fn certificates(dir: &std::path::Path) {
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca-key.pem -out ca.pem");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server-key.pem -out server.csr");
    sh("printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext");
    sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile server.ext -out server-cert.pem");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout key.pem -out client.csr");
    sh("printf 'extendedKeyUsage=clientAuth\\n' > client.ext");
    sh("openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile client.ext -out cert.pem");
}

#[test]
fn a_tls_engine_is_updated_with_certificates_and_refused_without() {
    let img = images();
    let w = World::new("tls");
    let certs = w.state_dir().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let port = agent_docker::testing::free_port().unwrap();
    let cert = |f: &str| certs.join(f).display().to_string();
    let pid = std::process::id();
    let engine = agent_docker::testing::SecondEngine::start_with(
        &format!("agtl{}", pid % 100_000),
        &format!("10.{}.{}.1/24", 225 + (pid % 5), pid % 250),
        agent_docker::testing::EngineOptions {
            extra_args: vec![
                "-H".into(),
                format!("tcp://127.0.0.1:{port}"),
                "--tlsverify".into(),
                "--tlscacert".into(),
                cert("ca.pem"),
                "--tlscert".into(),
                cert("server-cert.pem"),
                "--tlskey".into(),
                cert("server-key.pem"),
            ],
            ..Default::default()
        },
    )
    .expect("start a TLS dockerd");
    let unix = engine.endpoint();
    let out = std::process::Command::new("docker")
        .args(["-H", &unix, "pull", &img.refs["v1"]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Made through the API with a user-chosen MAC (this docker CLI cannot set one on a 1.41 engine): it
    // must survive an update driven over TLS too.
    let name = w.name("agent");
    let mac = "02:42:0a:e1:00:42";
    let mut spec = agent_core::ContainerSpec::new(name.parse().unwrap(), img.refs["v1"].parse().unwrap());
    spec.labels
        .insert(w.label.split_once('=').unwrap().0.into(), w.run.clone());
    spec.restart_policy = agent_core::RestartPolicy::UnlessStopped;
    spec.networks.push(agent_core::NetworkAttachment {
        name: "bridge".into(),
        aliases: Vec::new(),
        ipv4_address: None,
        ipv6_address: None,
        mac_address: Some(mac.into()),
        links: Vec::new(),
    });
    runtime().block_on(async {
        use agent_core::ContainerRuntime;
        let d = agent_docker::DockerRuntime::connect(Some(&unix)).await.unwrap();
        d.create_container(&spec).await.unwrap();
        d.start_container(&name).await.unwrap();
    });
    let tcp = format!("tcp://127.0.0.1:{port}");
    let certs_dir = certs.display().to_string();
    let tls_env = [("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", certs_dir.as_str())];
    // With the certificates: a full update over TLS.
    let out = w.agentctl_env(
        &[
            &[
                "--host",
                &tcp,
                "update",
                &name,
                "--image",
                &img.refs["v2"],
                "-o",
                "json",
            ],
            FAST,
        ]
        .concat(),
        &tls_env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["endpoint"], tcp.as_str());
    assert!(!stderr(&out).contains("plain TCP"), "{}", stderr(&out));
    let inspect = std::process::Command::new("docker")
        .args([
            "-H",
            &unix,
            "inspect",
            "-f",
            "{{.Config.Image}} {{.Config.MacAddress}}",
            &name,
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&inspect).trim(), format!("{} {mac}", img.refs["v2"]));
    // Without them: a clear error, nothing changed.
    let out = w.agentctl(&["--host", &tcp, "status", &name]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = w.agentctl_env(
        &["--host", &tcp, "status", &name],
        &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "/nonexistent")],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("DOCKER_CERT_PATH"), "{}", stderr(&out));
    // Bad files are named with what is wrong, never reported as an engine that does not answer.
    let other_ca = w.state_dir().join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    certificates(&other_ca);
    /// The file spoiled, how, and the problem the error must name.
    type Case<'a> = (&'a str, &'a dyn Fn(&std::path::Path), &'a str);
    let cases: [Case; 4] = [
        (
            "ca.pem",
            &|d| std::fs::write(d.join("ca.pem"), "garbage").unwrap(),
            "holds no certificate",
        ),
        (
            "key.pem",
            &|d| std::fs::write(d.join("key.pem"), "garbage").unwrap(),
            "holds no private key",
        ),
        (
            "key.pem",
            &|d| {
                std::fs::copy(d.join("server-key.pem"), d.join("key.pem")).unwrap();
            },
            "does not belong to the certificate",
        ),
        (
            "ca.pem",
            &|d| {
                std::fs::copy(other_ca.join("ca.pem"), d.join("ca.pem")).unwrap();
            },
            "unknown issuer",
        ),
    ];
    for (file, spoil, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem", "server-key.pem"] {
            std::fs::copy(certs.join(f), dir.path().join(f)).unwrap();
        }
        spoil(dir.path());
        let path = dir.path().display().to_string();
        let out = w.agentctl_env(
            &["--host", &tcp, "status", &name],
            &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", path.as_str())],
        );
        assert_eq!(code(&out), 1, "{file}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(file) && err.contains(problem), "{file} / {problem}: {err}");
        assert!(!err.contains("is it running"), "{err}");
    }
    let _ = std::process::Command::new("docker")
        .args(["-H", &unix, "rm", "-f", &name, &format!("{name}.rev1")])
        .output();
}
