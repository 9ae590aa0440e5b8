//! `agentctl build` against the real engine and the local registry: lint, a multi-stage build with labels
//! and both tags, the check of the built image, the push and its digest, and what a refused build leaves.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// Removes every tag given when the test ends, passed or failed.
struct Untag(Vec<String>);

impl Drop for Untag {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", t]).output();
        }
    }
}

/// A build context in a git work tree with one commit: the Dockerfile and a file `.dockerignore` excludes.
fn context(dockerfile: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.path().join("local.env"), "TOKEN=never-sent\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "*.env\n").unwrap();
    let commit = git_commit_all(dir.path());
    (dir, commit)
}

fn inspect(image: &str, format: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", format, image])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn build(w: &World, ctx: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build", ctx.to_str().unwrap()];
    all.extend_from_slice(args);
    w.agentctl(&all)
}

#[test]
fn a_multi_stage_build_is_linted_checked_tagged_and_pushed_with_its_digest() {
    let img = images();
    let w = World::new("build");
    // The builder stage starts from an image in the registry, pinned by its exact version.
    let base = &img.refs["v1"];
    let (ctx, commit) = context(&format!(
        "ARG BASE={base}\nFROM ${{BASE}} AS builder\n\nFROM scratch\nARG VERSION\nARG REVISION\nENV AGENT_VERSION=${{VERSION}} AGENT_REVISION=${{REVISION}}\nCOPY --from=builder /agent /agent\nCOPY . /ctx/\nUSER 65534:65534\nHEALTHCHECK --interval=2s CMD [\"/agent\", \"healthcheck\"]\nENTRYPOINT [\"/agent\"]\n"
    ));
    let repo = format!("{}/agentctl-it/built-{}", img.registry, w.run);
    let tags = [format!("{repo}:1.4.2"), format!("{repo}:1.4.2-{}", &commit[..7])];
    let mut guard = Untag(tags.to_vec());
    let out = build(
        &w,
        ctx.path(),
        &["--image", &repo, "--version", "v1.4.2", "--push", "-o", "json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(
        r["tags"],
        serde_json::json!(tags),
        "SEMVER and SEMVER-COMMIT, never latest"
    );
    assert_eq!(r["stages"], 2);
    assert_eq!(
        r["base"],
        serde_json::Value::Null,
        "the final stage starts from scratch: {r}"
    );

    // What the engine reports, not what the report says.
    for t in &tags {
        assert_eq!(inspect(t, "{{.Config.User}}").as_deref(), Some("65534:65534"));
        let labels: serde_json::Value = serde_json::from_str(&inspect(t, "{{json .Config.Labels}}").unwrap()).unwrap();
        assert_eq!(labels["org.opencontainers.image.version"], "1.4.2");
        assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
        assert_eq!(labels["org.opencontainers.image.title"], format!("built-{}", w.run));
        assert!(labels["org.opencontainers.image.created"]
            .as_str()
            .unwrap()
            .starts_with("20"));
        let env = inspect(t, "{{json .Config.Env}}").unwrap();
        assert!(
            env.contains("AGENT_VERSION=1.4.2") && env.contains(&format!("AGENT_REVISION={commit}")),
            "VERSION and REVISION reach the declared build arguments: {env}"
        );
        assert_eq!(inspect(t, "{{.Id}}").unwrap(), r["imageId"].as_str().unwrap());
    }
    assert_eq!(
        inspect(&tags[0], "{{len .RootFS.Layers}}").unwrap(),
        r["layers"].to_string()
    );

    // The registry holds the digest: with every local tag gone, the image comes back by digest alone.
    let digest = r["digest"].as_str().unwrap().to_owned();
    let pinned = format!("{repo}@{digest}");
    assert_eq!(r["pinned"].as_str(), Some(pinned.as_str()));
    let rmi = w.docker(&["rmi", &tags[0], &tags[1]]);
    assert!(rmi.status.success(), "{}", stderr(&rmi));
    let pull = w.docker(&["pull", &pinned]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    guard.0.push(pinned.clone());
    assert_eq!(
        inspect(&pinned, "{{index .Config.Labels \"org.opencontainers.image.version\"}}").as_deref(),
        Some("1.4.2")
    );
    // `.dockerignore` kept the env file out of the context; the Dockerfile went in.
    let c = w.name("files");
    let created = w.docker(&["create", "--name", &c, "--label", &w.label, &pinned]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(w.docker(&["cp", &format!("{c}:/ctx/Dockerfile"), "-"]).status.success());
    assert!(!w.docker(&["cp", &format!("{c}:/ctx/local.env"), "-"]).status.success());
    let _ = w.docker(&["rm", "-f", &c]);

    // On a terminal-less stderr, the builder's steps and each layer's push are shown line by line; the
    // layers pushed before are reported as already there.
    let out = build(&w, ctx.path(), &["--image", &repo, "--version", "1.4.3", "--push"]);
    guard
        .0
        .extend([format!("{repo}:1.4.3"), format!("{repo}:1.4.3-{}", &commit[..7])]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Step 1/"), "{err}");
    assert!(err.contains("push ") && err.contains("Layer already exists"), "{err}");
    assert!(
        stdout(&out).contains(&format!("deploy    {repo}@sha256:")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_refused_build_names_each_finding_and_leaves_no_tag() {
    let img = images();
    let w = World::new("build-bad");
    let repo = format!("{}/agentctl-it/refused-{}", img.registry, w.run);
    let _guard = Untag(vec![format!("{repo}:1.0.0")]);

    // The lint: each finding as FILE:LINE: RULE, exit 1, nothing built.
    let (ctx, _) = context("FROM debian:12\nENV API_TOKEN=abc\nADD agent /agent\nCMD /agent\n");
    let out = build(&w, ctx.path(), &["--image", &repo, "--version", "1.0.0"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "Dockerfile:1: non-root-user:",
        "Dockerfile:1: healthcheck:",
        "Dockerfile:1: pinned-base:",
        "Dockerfile:2: no-secrets:",
        "Dockerfile:3: copy-not-add:",
        "Dockerfile:4: exec-form:",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
    assert!(!err.contains("abc"), "a finding never shows the secret's value: {err}");
    assert_eq!(inspect(&format!("{repo}:1.0.0"), "{{.Id}}"), None);

    // The image check: a user set through a build argument passes the lint, but the engine reports root.
    let (ctx, _) = context(
        "FROM scratch\nARG RUNAS=0\nCOPY Dockerfile /Dockerfile\nUSER ${RUNAS}\nHEALTHCHECK CMD [\"/x\"]\nENTRYPOINT [\"/x\"]\n",
    );
    let out = build(&w, ctx.path(), &["--image", &repo, "--version", "1.0.0"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Dockerfile (built image): non-root-user: the image runs as 0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        inspect(&format!("{repo}:1.0.0"), "{{.Id}}"),
        None,
        "the refused image is untagged"
    );

    // A floating or non-semver version is a usage error before anything is built.
    for v in ["latest", "1.4", "1.0.0+build.7"] {
        let out = build(&w, ctx.path(), &["--image", &repo, "--version", v]);
        assert_eq!(code(&out), 2, "{v}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("--version {v}")), "{}", stderr(&out));
    }
    let out = build(
        &w,
        ctx.path(),
        &["--image", &format!("{repo}:1.0.0"), "--version", "1.0.0"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

/// A git remote with a token, a sparse file and a named pipe in the context: the build goes through, the
/// token appears nowhere (the source label has no user info at all), the sparse file is sent whole and the
/// pipe is skipped by name.
#[test]
fn a_token_in_the_remote_a_sparse_file_and_a_pipe_are_handled_and_named() {
    let img = images();
    let w = World::new("buildctx");
    let (ctx, _) = context(
        "FROM scratch\nCOPY . /ctx/\nUSER 65534:65534\nHEALTHCHECK CMD [\"/agent\", \"healthcheck\"]\nENTRYPOINT [\"/agent\"]\n",
    );
    let token = format!("ghp_{}", "T0k3n".repeat(8));
    let remote = format!("https://{token}@example.com/acme/agent.git");
    let git = Command::new("git")
        .current_dir(ctx.path())
        .args(["remote", "add", "origin", &remote])
        .output()
        .unwrap();
    assert!(git.status.success());
    let sparse = std::fs::File::create(ctx.path().join("sparse.bin")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    let fifo = Command::new("mkfifo").arg(ctx.path().join("pipe")).status().unwrap();
    assert!(fifo.success());
    let repo = format!("{}/agentctl-it/ctx-{}", img.registry, w.run);
    let commit = Command::new("git")
        .current_dir(ctx.path())
        .args(["rev-parse", "--short=7", "HEAD"])
        .output()
        .unwrap();
    let _guard = Untag(vec![
        format!("{repo}:1.0.0"),
        format!("{repo}:1.0.0-{}", String::from_utf8_lossy(&commit.stdout).trim()),
    ]);
    let out = build(
        &w,
        ctx.path(),
        &["--image", &repo, "--version", "1.0.0", "--allow", "pinned-base"],
    );
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!said.contains(&token), "{said}");
    assert!(said.contains("skipped: pipe is a named pipe"), "{said}");
    let labels = inspect(&format!("{repo}:1.0.0"), "{{json .Config.Labels}}").unwrap();
    assert!(!labels.contains(&token), "{labels}");
    assert!(labels.contains("https://example.com/acme/agent.git"), "{labels}");
    // The sparse file arrived whole (8 MiB of zeros).
    let size = inspect(&format!("{repo}:1.0.0"), "{{.Size}}").unwrap();
    assert!(size.parse::<u64>().unwrap() >= 8 << 20, "{size}");
}
