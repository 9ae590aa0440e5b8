//! `agentctl build`: lint a Dockerfile, build it through the engine, check the image the engine made, tag it
//! by the tag policy (`REPO:SEMVER` and, in a git work tree, `REPO:SEMVER-<commit>`; never `latest`), label it
//! with the OCI annotations, and push it with its digest.
//!
//! The build runs on the engine's classic builder (this engine's API has no BuildKit session), which builds
//! multi-stage files. The context is the directory sent as a tar archive with `.dockerignore` applied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use agent_core::{ContainerRuntime, ImageRef, PullProgress, RuntimeError};
use serde::Serialize;
use time::OffsetDateTime;

use crate::lint::{self, Finding, Lint, LintError, Rule};
use crate::DockerRuntime;

/// The OCI annotation keys `build` sets.
pub mod labels {
    /// The semantic version.
    pub const VERSION: &str = "org.opencontainers.image.version";
    /// The full git commit.
    pub const REVISION: &str = "org.opencontainers.image.revision";
    /// When it was built (RFC 3339).
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// Where the source lives (the git remote, or `--source`).
    pub const SOURCE: &str = "org.opencontainers.image.source";
    /// The image's title.
    pub const TITLE: &str = "org.opencontainers.image.title";
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile; relative paths are taken from the context. Default `Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// The repository to tag, without a tag (`127.0.0.1:5000/acme/agent`).
    pub repository: String,
    /// The semantic version (`1.4.2`; a leading `v` is dropped).
    pub version: String,
    /// Lint rules whose findings do not stop the build.
    pub allow: Vec<Rule>,
    /// Push the tags to the repository's registry.
    pub push: bool,
    /// `org.opencontainers.image.source`; default the git remote `origin`.
    pub source: Option<String>,
    /// `org.opencontainers.image.title`; default the repository's last path component.
    pub title: Option<String>,
}

/// Something that happened during a build, for progress output.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// A lint finding that `allow` lets through.
    Allowed(Finding),
    /// The work tree has changes that are not committed: the commit tag does not describe the content.
    Dirty {
        /// The commit.
        commit: String,
    },
    /// A line of the builder's output (`Step 3/9 : COPY …`).
    Output(String),
    /// A file of the context that is not sent (the context is everything else).
    Skipped {
        /// The file, relative to the context.
        path: PathBuf,
        /// Why (`a named pipe`, `a socket`, `a device`).
        why: &'static str,
    },
    /// Push progress of one layer.
    Push(PullProgress),
}

/// What the engine reports about the built image, next to the tags and digest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// Engine image id.
    pub image_id: String,
    /// The tags given, `REPO:SEMVER` first.
    pub tags: Vec<String>,
    /// The version.
    pub version: String,
    /// The git commit, when the context is in a work tree.
    pub commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub dirty: bool,
    /// The OCI labels set.
    pub labels: BTreeMap<String, String>,
    /// The user the image runs as, as the engine reports it.
    pub user: String,
    /// The HEALTHCHECK test, as the engine reports it.
    pub healthcheck: Option<Vec<String>>,
    /// `os/arch`.
    pub platform: String,
    /// Image size in bytes.
    pub size: u64,
    /// Number of filesystem layers.
    pub layers: usize,
    /// Stages in the Dockerfile.
    pub stages: usize,
    /// The final stage's base and its size, when it is not `scratch` and the engine has it.
    pub base: Option<(String, u64)>,
    /// Lint findings that were allowed.
    pub allowed: Vec<String>,
    /// The registry digest, after a push.
    pub digest: Option<String>,
    /// `REPO@DIGEST`, the reference to deploy, after a push.
    pub pinned: Option<String>,
}

/// Why a build did not produce a pushed, checked image. Each names the input and the fix; none leaves a tag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The repository carries a tag or digest, or is not a reference.
    #[error("--image {repository}: {reason}")]
    Repository {
        /// What was given.
        repository: String,
        /// What is wrong.
        reason: String,
    },
    /// The version is not a semantic version usable as a tag.
    #[error("--version {version}: {reason}")]
    Version {
        /// What was given.
        version: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The lint could not read the Dockerfile.
    #[error(transparent)]
    Unreadable(#[from] LintError),
    /// The lint or the image check found something not allowed.
    #[error("{} finding(s) stop the build: {}; fix them, or pass --allow RULE for each rule you accept", findings.len(), rule_names(findings))]
    Findings {
        /// The Dockerfile's path as given, for `FILE:LINE`.
        file: String,
        /// The blocking findings.
        findings: Vec<Finding>,
    },
    /// The engine failed.
    #[error("{operation}: {source}")]
    Engine {
        /// `build`, `tag`, `push`, `inspect`.
        operation: &'static str,
        /// The engine's error.
        source: RuntimeError,
    },
    /// The push did not report a digest, or the two tags got different digests.
    #[error("push of {image}: {reason}")]
    Digest {
        /// The tag.
        image: String,
        /// What went wrong.
        reason: String,
    },
}

fn rule_names(findings: &[Finding]) -> String {
    let mut names: Vec<&str> = findings.iter().map(|f| f.rule.name()).collect();
    names.dedup();
    names.join(", ")
}

/// The git facts of a work tree.
#[derive(Debug, Clone, Default)]
struct Git {
    commit: Option<String>,
    dirty: bool,
    remote: Option<String>,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_facts(dir: &Path) -> Git {
    let Some(commit) = git(dir, &["rev-parse", "HEAD"]).filter(|c| c.len() >= 7) else {
        return Git::default();
    };
    Git {
        dirty: git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
        // Published in a label: no user info at all (a user name alone may be a token).
        remote: git(dir, &["remote", "get-url", "origin"]).map(|r| agent_core::strip_url_userinfo(&r)),
        commit: Some(commit),
    }
}

/// Checks `repository` (no tag, no digest) and `version` (semver usable as a tag, not `latest`); returns the
/// repository as given and the version without a leading `v`.
pub fn check_names(repository: &str, version: &str) -> Result<(String, semver::Version), BuildError> {
    let r = ImageRef::parse(repository).map_err(|e| BuildError::Repository {
        repository: repository.to_owned(),
        reason: e.to_string(),
    })?;
    if r.tag().is_some() || r.digest().is_some() {
        return Err(BuildError::Repository {
            repository: repository.to_owned(),
            reason: "give the repository without a tag or digest (`registry/acme/agent`); the tags come from --version and the commit".into(),
        });
    }
    let bad = |reason: &str| BuildError::Version {
        version: version.to_owned(),
        reason: reason.to_owned(),
    };
    if version.eq_ignore_ascii_case("latest") {
        return Err(bad(
            "`latest` is a floating tag that cannot be rolled back to; give a semantic version such as 1.4.2",
        ));
    }
    let v = semver::Version::parse(version.strip_prefix('v').unwrap_or(version)).map_err(|e| {
        bad(&format!(
            "not a semantic version MAJOR.MINOR.PATCH ({e}); give one such as 1.4.2 or 1.5.0-rc.1"
        ))
    })?;
    if !v.build.is_empty() {
        return Err(bad(
            "build metadata (`+…`) cannot be part of an image tag; drop it (the commit is tagged and labelled anyway)",
        ));
    }
    Ok((repository.to_owned(), v))
}

/// A build context written to a temporary file, streamed to the engine from there (memory stays flat
/// whatever its size), and what was left out of it.
#[derive(Debug)]
pub struct ContextArchive {
    /// The tar archive.
    pub file: tempfile::NamedTempFile,
    /// Its size in bytes.
    pub len: u64,
    /// Files not sent, with why (a named pipe, a socket, a device: not files a build can copy).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl ContextArchive {
    /// The archive's bytes (for tests and small contexts).
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.file.path())
    }
}

/// What kind of special file `t` is, when it is one a build context cannot carry.
fn special(t: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        Some("a named pipe")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        None
    }
}

/// The build context as a tar archive in a temporary file: every file under `dir` except what
/// `.dockerignore` excludes (the Dockerfile is always sent). Patterns are anchored at the context root as
/// Docker does; an exception (`!`) cannot re-include a file inside an excluded directory (a difference from
/// Docker, which can). Sparse files are written whole (the engine's archive reader has no sparse entries);
/// named pipes, sockets and devices are skipped and listed. Every error names the file.
pub fn context_tar(dir: &Path, dockerfile: &Path) -> Result<ContextArchive, BuildError> {
    let read = |path: &Path, source| BuildError::Read {
        path: path.to_owned(),
        source,
    };
    let mut ignore = ignore::gitignore::GitignoreBuilder::new(dir);
    let di = dir.join(".dockerignore");
    if let Ok(text) = std::fs::read_to_string(&di) {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (neg, pat) = line.strip_prefix('!').map_or(("", line), |p| ("!", p));
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            ignore
                .add_line(Some(di.clone()), &format!("{neg}/{pat}"))
                .map_err(|e| read(&di, std::io::Error::other(e.to_string())))?;
        }
    }
    let ignore = ignore
        .build()
        .map_err(|e| read(&di, std::io::Error::other(e.to_string())))?;
    let spool = tempfile::NamedTempFile::new().map_err(|e| read(&std::env::temp_dir(), e))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(spool));
    builder.follow_symlinks(false);
    builder.sparse(false);
    let mut skipped = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| read(&d, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read(&d, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_owned();
            let kind = e.file_type().map_err(|er| read(&path, er))?;
            let is_dir = kind.is_dir();
            if path != dockerfile && ignore.matched_path_or_any_parents(&rel, is_dir).is_ignore() {
                continue;
            }
            if let Some(what) = special(&kind) {
                skipped.push((rel, what));
                continue;
            }
            builder
                .append_path_with_name(&path, &rel)
                .map_err(|er| read(&path, er))?;
            if is_dir {
                stack.push(path);
            }
        }
    }
    let spool = builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| read(dir, e))?;
    let len = spool.as_file().metadata().map_err(|e| read(spool.path(), e))?.len();
    Ok(ContextArchive {
        file: spool,
        len,
        skipped,
    })
}

impl DockerRuntime {
    /// Lints, builds, checks, tags and (with `push`) pushes; see the module docs. On any failure no tag of
    /// this build is left on the engine.
    pub async fn build(
        &self,
        req: &BuildRequest,
        progress: &(dyn Fn(BuildEvent) + Send + Sync),
    ) -> Result<BuildReport, BuildError> {
        let (repository, version) = check_names(&req.repository, &req.version)?;
        let dockerfile = match &req.dockerfile {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => req.context.join(p),
            None => req.context.join("Dockerfile"),
        };
        let shown = req
            .dockerfile
            .as_ref()
            .map_or_else(|| "Dockerfile".to_owned(), |p| p.display().to_string());
        let text = std::fs::read_to_string(&dockerfile).map_err(|source| BuildError::Read {
            path: dockerfile.clone(),
            source,
        })?;
        let lint: Lint = lint::lint(&text)?;
        let blocking: Vec<Finding> = lint.blocking(&req.allow).cloned().collect();
        if !blocking.is_empty() {
            return Err(BuildError::Findings {
                file: shown,
                findings: blocking,
            });
        }
        let allowed: Vec<Finding> = lint
            .findings
            .iter()
            .filter(|f| req.allow.contains(&f.rule))
            .cloned()
            .collect();
        for f in &allowed {
            progress(BuildEvent::Allowed(f.clone()));
        }
        let Ok(context) = req.context.canonicalize() else {
            return Err(BuildError::Read {
                path: req.context.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the build context directory does not exist",
                ),
            });
        };
        let dockerfile_in_context = dockerfile
            .canonicalize()
            .ok()
            .and_then(|p| p.strip_prefix(&context).ok().map(Path::to_owned))
            .ok_or_else(|| BuildError::Read {
                path: dockerfile.clone(),
                source: std::io::Error::other("the Dockerfile must be inside the build context"),
            })?;

        let git = git_facts(&context);
        if let (true, Some(c)) = (git.dirty, &git.commit) {
            progress(BuildEvent::Dirty { commit: c.clone() });
        }
        let mut tags = vec![format!("{repository}:{version}")];
        if let Some(c) = &git.commit {
            tags.push(format!("{repository}:{version}-{}", &c[..7]));
        }
        let title = req
            .title
            .clone()
            .unwrap_or_else(|| repository.rsplit('/').next().unwrap_or(&repository).to_owned());
        let mut labels = BTreeMap::from([
            (labels::VERSION.to_owned(), version.to_string()),
            (labels::TITLE.to_owned(), title),
            (
                labels::CREATED.to_owned(),
                OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
        ]);
        if let Some(c) = &git.commit {
            labels.insert(labels::REVISION.to_owned(), c.clone());
        }
        if let Some(s) = req.source.clone().or(git.remote.clone()) {
            labels.insert(labels::SOURCE.to_owned(), agent_core::strip_url_userinfo(&s));
        }
        let mut args = HashMap::new();
        if lint.args.iter().any(|a| a == "VERSION") {
            args.insert("VERSION".to_owned(), version.to_string());
        }
        if let (true, Some(c)) = (lint.args.iter().any(|a| a == "REVISION"), &git.commit) {
            args.insert("REVISION".to_owned(), c.clone());
        }

        let tar = context_tar(&context, &dockerfile.canonicalize().unwrap_or(dockerfile.clone()))?;
        for (path, what) in &tar.skipped {
            progress(BuildEvent::Skipped {
                path: path.clone(),
                why: what,
            });
        }
        let engine = |operation| move |source| BuildError::Engine { operation, source };
        let image_id = self
            .build_tar(
                crate::images::ContextBody::File(tar.file.path().to_owned()),
                &tags[0],
                &dockerfile_in_context.to_string_lossy(),
                &labels.clone().into_iter().collect(),
                &args,
                &|line| progress(BuildEvent::Output(line)),
            )
            .await
            .map_err(engine("build"))?;
        let untag = || async {
            for t in &tags {
                let _ = self.remove_image(t).await;
            }
        };
        let checked = self.check_built(&image_id, &lint, &req.allow, &shown).await;
        let mut report = match checked {
            Ok(r) => r,
            Err(e) => {
                untag().await;
                return Err(e);
            }
        };
        for t in &tags[1..] {
            if let Err(e) = self.tag_as(&image_id, t).await {
                untag().await;
                return Err(BuildError::Engine {
                    operation: "tag",
                    source: e,
                });
            }
        }
        report.tags = tags.clone();
        report.version = version.to_string();
        report.commit = git.commit.clone();
        report.dirty = git.dirty;
        report.labels = labels;
        report.allowed = allowed.iter().map(|f| f.display_in(&shown)).collect();
        if req.push {
            let digest = self.push_tags(&tags, progress).await?;
            report.pinned = Some(format!("{repository}@{digest}"));
            report.digest = Some(digest);
        }
        Ok(report)
    }

    /// Pushes `tags` (of one image) to their registry with per-layer progress; returns the digest, which
    /// every tag must have got.
    pub async fn push_tags(
        &self,
        tags: &[String],
        progress: &(dyn Fn(BuildEvent) + Send + Sync),
    ) -> Result<String, BuildError> {
        let mut digest: Option<String> = None;
        for t in tags {
            let pushed = self
                .push_image_with(t, &|p| progress(BuildEvent::Push(p)))
                .await
                .map_err(|source| BuildError::Engine {
                    operation: "push",
                    source,
                })?;
            let Some(d) = pushed else {
                return Err(BuildError::Digest {
                    image: t.clone(),
                    reason: "the registry reported no digest".into(),
                });
            };
            match &digest {
                Some(first) if *first != d => {
                    return Err(BuildError::Digest {
                        image: t.clone(),
                        reason: format!("the registry reported {d}, but {} got {first}", tags[0]),
                    })
                }
                _ => digest = Some(d),
            }
        }
        digest.ok_or_else(|| BuildError::Digest {
            image: String::new(),
            reason: "no tag to push".into(),
        })
    }

    /// Checks what the engine reports about the built image: a non-root user and a HEALTHCHECK, whatever the
    /// Dockerfile said (a base image can set either).
    async fn check_built(
        &self,
        image_id: &str,
        lint: &Lint,
        allow: &[Rule],
        file: &str,
    ) -> Result<BuildReport, BuildError> {
        let info = self
            .inspect_image(image_id)
            .await
            .map_err(|source| BuildError::Engine {
                operation: "inspect",
                source,
            })?;
        let raw = self
            .client()
            .inspect_image(image_id)
            .await
            .map_err(|e| BuildError::Engine {
                operation: "inspect",
                source: self.err("inspect-image", image_id, e),
            })?;
        let user = info.defaults.user.clone().unwrap_or_default();
        let healthcheck = info
            .defaults
            .healthcheck
            .as_ref()
            .map(|h| h.test.clone())
            .filter(|t| t.first().is_some_and(|k| k != "NONE"));
        let mut findings = Vec::new();
        if user.is_empty() || user.split(':').next().is_some_and(|u| u == "root" || u == "0") {
            findings.push(Finding {
                line: 0,
                rule: Rule::NonRootUser,
                message: format!(
                    "the image runs as {}; set a non-root USER in the final stage",
                    if user.is_empty() {
                        "root (no user set)".to_owned()
                    } else {
                        user.clone()
                    }
                ),
            });
        }
        if healthcheck.is_none() {
            findings.push(Finding {
                line: 0,
                rule: Rule::Healthcheck,
                message: "the image has no HEALTHCHECK".into(),
            });
        }
        findings.retain(|f| !allow.contains(&f.rule));
        if !findings.is_empty() {
            return Err(BuildError::Findings {
                file: file.to_owned(),
                findings,
            });
        }
        let base = match &lint.final_base {
            Some(b) => match self.client().inspect_image(b).await {
                Ok(i) => Some((b.clone(), i.size.unwrap_or(0).max(0) as u64)),
                Err(_) => None,
            },
            None => None,
        };
        Ok(BuildReport {
            image_id: info.id.clone(),
            tags: Vec::new(),
            version: String::new(),
            commit: None,
            dirty: false,
            labels: BTreeMap::new(),
            user,
            healthcheck,
            platform: format!("{}/{}", info.os, info.arch),
            size: raw.size.unwrap_or(0).max(0) as u64,
            layers: raw.root_fs.and_then(|r| r.layers).map_or(0, |l| l.len()),
            stages: lint.stages,
            base,
            allowed: Vec::new(),
            digest: None,
            pinned: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_tag_policy() {
        let (_, v) = check_names("127.0.0.1:5000/acme/agent", "v1.4.2").unwrap();
        assert_eq!(v.to_string(), "1.4.2");
        for (repo, version, needle) in [
            ("acme/agent:1.0.0", "1.0.0", "without a tag"),
            ("acme/agent", "latest", "floating"),
            ("acme/agent", "1.4", "MAJOR.MINOR.PATCH"),
            ("acme/agent", "1.4.2+build.5", "build metadata"),
            ("Acme/Agent", "1.0.0", "--image"),
        ] {
            let err = check_names(repo, version).unwrap_err().to_string();
            assert!(err.contains(needle), "{repo} {version}: {err}");
        }
    }

    #[test]
    fn the_context_honours_dockerignore_anchored_at_the_root() {
        let dir = tempfile_dir();
        let p = dir.path();
        std::fs::create_dir_all(p.join("target/debug")).unwrap();
        std::fs::create_dir_all(p.join("src/target")).unwrap();
        std::fs::write(p.join("target/debug/big"), b"x").unwrap();
        std::fs::write(p.join("src/target/kept"), b"x").unwrap();
        std::fs::write(p.join("secret.env"), b"x").unwrap();
        std::fs::write(p.join("Dockerfile"), b"FROM scratch").unwrap();
        std::fs::write(p.join(".dockerignore"), "target\n*.env\nDockerfile\n").unwrap();
        let tar = context_tar(p, &p.join("Dockerfile")).unwrap().bytes().unwrap();
        let mut names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "src", "src/target", "src/target/kept"]
        );
    }

    fn tempfile_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
