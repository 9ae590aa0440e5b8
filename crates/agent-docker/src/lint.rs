//! The Dockerfile lint `agentctl build` runs before it builds anything.
//!
//! The file is parsed by the `dockerfile-parser` crate; the rules are ours. What the file alone cannot show
//! (a `USER` or `HEALTHCHECK` inherited from the base image, a user set through a build argument) is checked
//! again on the built image by [`crate::build`], from what the engine reports.
//!
//! Not parsed (the lint refuses the file and says so rather than guessing): heredocs (`RUN <<EOF`), the
//! `# escape=` parser directive, `${VAR:-default}` forms in `FROM`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use agent_core::{secret_value_kind, ImageRef, SecretPolicy, Version};
use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr, Span, StageParent};

/// One lint rule, named as in findings and in `--allow RULE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The final stage sets a `USER` that is not root.
    NonRootUser,
    /// The final stage declares a `HEALTHCHECK` (not `NONE`).
    Healthcheck,
    /// Every external base is pinned: a digest or an exact version tag (`1.2.3`, `1.2.3-bookworm`, a date).
    PinnedBase,
    /// No `ENV` or `ARG` with a secret-looking name or value (both stay in the image's config or history).
    NoSecrets,
    /// `CMD` and `ENTRYPOINT` of the final stage in exec form (a shell does not forward the stop signal).
    ExecForm,
    /// `COPY` rather than `ADD` for local files.
    CopyNotAdd,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 6] = [
        Rule::NonRootUser,
        Rule::Healthcheck,
        Rule::PinnedBase,
        Rule::NoSecrets,
        Rule::ExecForm,
        Rule::CopyNotAdd,
    ];

    /// The rule's name (`non-root-user`, `pinned-base`, …).
    pub fn name(self) -> &'static str {
        match self {
            Rule::NonRootUser => "non-root-user",
            Rule::Healthcheck => "healthcheck",
            Rule::PinnedBase => "pinned-base",
            Rule::NoSecrets => "no-secrets",
            Rule::ExecForm => "exec-form",
            Rule::CopyNotAdd => "copy-not-add",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Rule, String> {
        Rule::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<_> = Rule::ALL.iter().map(|r| r.name()).collect();
            format!("unknown lint rule `{s}`; the rules are {}", names.join(", "))
        })
    }
}

/// One thing the lint found, at a line of the Dockerfile (line 0: the built image, not a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1-based line of the instruction, or 0 for a finding on the built image.
    pub line: usize,
    /// The rule.
    pub rule: Rule,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Finding {
    /// The finding as `FILE:LINE: RULE: message` (`IMAGE: RULE: message` on the built image).
    pub fn display_in(&self, file: &str) -> String {
        if self.line == 0 {
            format!("{file} (built image): {}: {}", self.rule, self.message)
        } else {
            format!("{file}:{}: {}: {}", self.line, self.rule, self.message)
        }
    }
}

/// What the lint learned from a Dockerfile: its findings and the facts the build needs.
#[derive(Debug, Clone, Default)]
pub struct Lint {
    /// Findings, in line order.
    pub findings: Vec<Finding>,
    /// Every `ARG` the file declares (the build passes `VERSION` and `REVISION` only when declared).
    pub args: Vec<String>,
    /// Number of stages.
    pub stages: usize,
    /// The external base of the final stage (after `ARG` defaults), `None` for `scratch`.
    pub final_base: Option<String>,
}

impl Lint {
    /// The findings not allowed by `allow`.
    pub fn blocking<'a>(&'a self, allow: &'a [Rule]) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(|f| !allow.contains(&f.rule))
    }
}

/// The Dockerfile could not be read by the lint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot lint the Dockerfile: {message}; the lint does not read heredocs (`RUN <<EOF`) or the `# escape=` directive: rewrite those lines, or build with `docker build` and lint by hand")]
pub struct LintError {
    /// The parser's message.
    pub message: String,
}

/// Lints `text`, a Dockerfile.
pub fn lint(text: &str) -> Result<Lint, LintError> {
    if text
        .lines()
        .any(|l| l.contains("<<") && is_instruction(l, &["RUN", "COPY"]))
    {
        return Err(LintError {
            message: "a heredoc".into(),
        });
    }
    let file = Dockerfile::parse(text).map_err(|e| LintError { message: e.to_string() })?;
    let line_of = |span: &Span| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let mut out = Lint::default();
    let global: HashMap<&str, &str> = file
        .global_args
        .iter()
        .filter_map(|a| a.value.as_ref().map(|v| (a.name.as_ref(), v.as_ref())))
        .collect();

    let secrets = SecretPolicy::default();
    for ins in &file.instructions {
        match ins {
            Instruction::Arg(a) => {
                out.args.push(a.name.content.clone());
                let value = a.value.as_ref().map(|v| v.content.as_str()).unwrap_or_default();
                out.findings.extend(secret_finding(
                    &secrets,
                    "ARG",
                    &a.name.content,
                    value,
                    line_of(&a.span),
                ));
            }
            Instruction::Env(e) => {
                for v in &e.vars {
                    let value = v.value.to_string();
                    out.findings.extend(secret_finding(
                        &secrets,
                        "ENV",
                        &v.key.content,
                        &value,
                        line_of(&v.span),
                    ));
                }
            }
            Instruction::Misc(m) if m.instruction.content.eq_ignore_ascii_case("ADD") => {
                let args = m.arguments.to_string();
                let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let sources = &words[..words.len().saturating_sub(1)];
                if sources.iter().any(|s| !is_remote(s)) {
                    out.findings.push(Finding {
                        line: line_of(&m.span),
                        rule: Rule::CopyNotAdd,
                        message: "ADD of a local file also unpacks archives, which COPY states plainly; use COPY (and RUN tar for an archive)".into(),
                    });
                }
            }
            _ => {}
        }
    }

    let stages = file.stages();
    out.stages = stages.stages.len();
    let names: HashSet<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    for ins in &file.instructions {
        let Instruction::From(from) = ins else { continue };
        let raw = from.image.content.as_str();
        if raw.eq_ignore_ascii_case("scratch") || names.contains(raw) {
            continue;
        }
        let line = line_of(&from.span);
        let mut used = HashSet::new();
        let Some(resolved) = dockerfile_parser::substitute(raw, &global, &mut used, 16) else {
            out.findings.push(Finding {
                line,
                rule: Rule::PinnedBase,
                message: format!("FROM {raw} uses a build argument without a default before the first FROM, so the base cannot be checked; give the ARG a pinned default"),
            });
            continue;
        };
        if let Some(why) = unpinned(&resolved) {
            out.findings.push(Finding {
                line,
                rule: Rule::PinnedBase,
                message: format!("base {resolved} {why}; pin an exact version (`debian:12.8-slim` is not one, `12.8` moves; use a digest `name@sha256:…` or a tag like `1.85.0-bookworm`)"),
            });
        }
    }

    if let Some(last) = stages.stages.last() {
        out.final_base = match &last.root {
            StageParent::Scratch => None,
            _ => root_from(&stages, last).map(|f| {
                let mut used = HashSet::new();
                dockerfile_parser::substitute(&f.image.content, &global, &mut used, 16)
                    .unwrap_or_else(|| f.image.content.clone())
            }),
        };
        let from_line = last.instructions.first().map(|i| line_of(&i.span())).unwrap_or(1);
        final_stage(
            last,
            &line_of,
            from_line,
            matches!(last.root, StageParent::Scratch),
            &mut out,
        );
    }
    out.findings.sort_by_key(|f| (f.line, f.rule));
    Ok(out)
}

/// The rules on the final stage: user, healthcheck, exec form.
fn final_stage(
    stage: &dockerfile_parser::Stage<'_>,
    line_of: &dyn Fn(&Span) -> usize,
    from_line: usize,
    scratch: bool,
    out: &mut Lint,
) {
    let mut user = None;
    let mut healthcheck = None;
    for ins in &stage.instructions {
        match ins {
            Instruction::Misc(m) if m.instruction.content.eq_ignore_ascii_case("USER") => {
                user = Some((line_of(&m.span), m.arguments.to_string().trim().to_owned()));
            }
            Instruction::Misc(m) if m.instruction.content.eq_ignore_ascii_case("HEALTHCHECK") => {
                healthcheck = Some((line_of(&m.span), m.arguments.to_string().trim().to_owned()));
            }
            Instruction::Cmd(c) => exec_form("CMD", &c.expr, line_of(&c.span), out),
            Instruction::Entrypoint(e) => exec_form("ENTRYPOINT", &e.expr, line_of(&e.span), out),
            _ => {}
        }
    }
    match user {
        None => out.findings.push(Finding {
            line: from_line,
            rule: Rule::NonRootUser,
            message: "the final stage sets no USER, so the agent runs as the base image's user (root for most bases); add `USER 65534:65534` or a named non-root user".into(),
        }),
        Some((line, u)) if is_root(&u) => out.findings.push(Finding {
            line,
            rule: Rule::NonRootUser,
            message: format!("USER {u} runs the agent as root; use a non-root user such as `65534:65534`"),
        }),
        Some(_) => {}
    }
    match healthcheck {
        None => out.findings.push(Finding {
            line: from_line,
            rule: Rule::Healthcheck,
            message: "the final stage declares no HEALTHCHECK, so the engine cannot tell a hung agent from a working one; add `HEALTHCHECK CMD [\"/agent\", \"healthcheck\"]`".into(),
        }),
        Some((line, h)) if h.eq_ignore_ascii_case("NONE") => out.findings.push(Finding {
            line,
            rule: Rule::Healthcheck,
            message: "HEALTHCHECK NONE turns the health check off; declare one".into(),
        }),
        Some((line, h)) => {
            let cmd = h
                .split_whitespace()
                .skip_while(|w| w.starts_with("--"))
                .collect::<Vec<_>>()
                .join(" ");
            let rest = cmd.strip_prefix("CMD").unwrap_or(&cmd).trim_start();
            if scratch && !rest.starts_with('[') {
                out.findings.push(Finding {
                    line,
                    rule: Rule::ExecForm,
                    message: "HEALTHCHECK CMD in shell form needs /bin/sh, which a scratch image does not have, so the check always fails; use the exec form `CMD [\"/agent\", \"healthcheck\"]`".into(),
                });
            }
        }
    }
}

fn exec_form(what: &str, expr: &ShellOrExecExpr, line: usize, out: &mut Lint) {
    if let ShellOrExecExpr::Shell(s) = expr {
        out.findings.push(Finding {
            line,
            rule: Rule::ExecForm,
            message: format!(
                "{what} {} is in shell form: it runs under /bin/sh -c, which does not pass the stop signal on, so the agent is killed at the stop timeout instead of stopping cleanly; use the exec form {what} [\"…\", \"…\"]",
                s.to_string().trim()
            ),
        });
    }
}

/// Why `base` (after ARG defaults) is not pinned, or `None` when it is.
fn unpinned(base: &str) -> Option<String> {
    let r = match ImageRef::parse(base) {
        Ok(r) => r,
        Err(e) => return Some(format!("is not a valid reference ({e})")),
    };
    if r.digest().is_some() {
        return None;
    }
    let Some(tag) = r.tag() else {
        return Some("has no tag, which means `latest`".into());
    };
    if exact_version(tag.as_str()) {
        None
    } else {
        Some(format!(
            "uses the tag `{}`, which moves when a new image is published",
            tag.as_str()
        ))
    }
}

/// A tag naming one release: a full `MAJOR.MINOR.PATCH` (with any prefix `v` and suffix) or an 8-digit date.
fn exact_version(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let head = t.split(['-', '_']).next().unwrap_or_default();
    let three_part = head.split('.').count() == 3 && Version::parse(head).is_some();
    let dated = tag
        .split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() == 8 && run.starts_with("20"));
    three_part || dated
}

/// A `no-secrets` finding for `ARG` or `ENV` `name=value` at `line`, when it looks secret. The message never
/// repeats the value.
fn secret_finding(policy: &SecretPolicy, what: &str, name: &str, value: &str, line: usize) -> Option<Finding> {
    let why = secret_reason(policy, name, value)?;
    let fix = if what == "ARG" {
        "build arguments are kept in the image history: pass secrets at run time (an env file or a mounted file), never at build time"
    } else {
        "ENV values are stored in the image for anyone who pulls it: pass it at run time (`agentctl` carries the container's own env over on update)"
    };
    Some(Finding {
        line,
        rule: Rule::NoSecrets,
        message: format!("{what} {name} {why}; {fix}"),
    })
}

/// Why `NAME=value` looks secret, or `None`.
fn secret_reason(policy: &SecretPolicy, name: &str, value: &str) -> Option<String> {
    if policy.is_secret(name) {
        Some("has a secret-looking name".into())
    } else {
        secret_value_kind(value).map(|kind| format!("holds {kind}"))
    }
}

fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or_default();
    name == "root" || name == "0"
}

fn is_remote(source: &str) -> bool {
    ["http://", "https://", "git@", "git://"]
        .iter()
        .any(|p| source.starts_with(p))
}

fn is_instruction(line: &str, names: &[&str]) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    names.iter().any(|n| first.eq_ignore_ascii_case(n))
}

/// The `FROM` of the stage at the root of `stage`'s chain of parents.
fn root_from<'a>(
    stages: &dockerfile_parser::Stages<'a>,
    stage: &dockerfile_parser::Stage<'a>,
) -> Option<&'a dockerfile_parser::FromInstruction> {
    let mut s = stage;
    for _ in 0..stages.stages.len() {
        match s.parent {
            StageParent::Stage(i) if i < s.index => s = &stages.stages[i],
            _ => break,
        }
    }
    s.instructions.first().and_then(|i| i.as_from())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(usize, Rule)> {
        lint(text).unwrap().findings.iter().map(|f| (f.line, f.rule)).collect()
    }

    const GOOD: &str = "\
ARG VERSION=0.0.0
FROM 127.0.0.1:5000/base/rust:1.85.0-bookworm AS builder
COPY . /src
RUN make
FROM scratch
ARG VERSION
COPY --from=builder /agent /agent
USER 65534:65534
HEALTHCHECK --interval=5s CMD [\"/agent\", \"healthcheck\"]
ENTRYPOINT [\"/agent\"]
";

    #[test]
    fn a_good_multi_stage_file_has_no_findings() {
        let l = lint(GOOD).unwrap();
        assert_eq!(l.findings, vec![]);
        assert_eq!(l.stages, 2);
        assert_eq!(l.args, vec!["VERSION", "VERSION"]);
        assert_eq!(l.final_base, None);
    }

    #[test]
    fn each_rule_names_its_line() {
        let bad = "\
FROM debian:latest AS builder
ENV API_TOKEN=abc123
ARG DB_URL=postgres://app:hunter2@db/app
ADD agent.tar.gz /opt/
ADD https://example.com/x.tgz /opt/
FROM debian
USER root
CMD /agent run
";
        assert_eq!(
            rules(bad),
            vec![
                (1, Rule::PinnedBase),
                (2, Rule::NoSecrets),
                (3, Rule::NoSecrets),
                (4, Rule::CopyNotAdd),
                (6, Rule::Healthcheck),
                (6, Rule::PinnedBase),
                (7, Rule::NonRootUser),
                (8, Rule::ExecForm),
            ]
        );
        let f = lint(bad).unwrap();
        let shown = f.findings[0].display_in("Dockerfile");
        assert!(
            shown.starts_with("Dockerfile:1: pinned-base: base debian:latest uses the tag `latest`"),
            "{shown}"
        );
        assert!(
            !format!("{:?}", f.findings).contains("hunter2"),
            "a finding never repeats a secret"
        );
    }

    #[test]
    fn pins_are_digests_or_exact_versions() {
        let digest = format!("debian@sha256:{}", "a".repeat(64));
        for pinned in [
            "debian:12.8.0-slim",
            "node:v20.11.1",
            "debian:bookworm-20240110-slim",
            digest.as_str(),
            &format!("debian:12@sha256:{}", "b".repeat(64)),
        ] {
            assert_eq!(unpinned(pinned), None, "{pinned}");
        }
        for floating in [
            "debian",
            "debian:12",
            "debian:12.8-slim",
            "rust:1.85-bookworm",
            "alpine:edge",
        ] {
            assert!(unpinned(floating).is_some(), "{floating}");
        }
    }

    #[test]
    fn arg_defaults_are_substituted_before_the_pin_check() {
        let pinned = "ARG RUST=1.85.0\nFROM rust:${RUST}-bookworm\nUSER 1000\nHEALTHCHECK CMD [\"x\"]\n";
        assert_eq!(rules(pinned), vec![]);
        assert_eq!(
            lint(pinned).unwrap().final_base.as_deref(),
            Some("rust:1.85.0-bookworm")
        );
        let floating = "ARG RUST=1.85\nFROM rust:${RUST}\nUSER 1000\nHEALTHCHECK CMD [\"x\"]\n";
        assert_eq!(rules(floating), vec![(2, Rule::PinnedBase)]);
        let unknown = "ARG RUST\nFROM rust:${RUST}\nUSER 1000\nHEALTHCHECK CMD [\"x\"]\n";
        assert_eq!(rules(unknown), vec![(2, Rule::PinnedBase)]);
    }

    #[test]
    fn only_the_final_stage_needs_user_healthcheck_and_exec_form() {
        let text =
            "FROM scratch AS a\nCMD run\nFROM a\nUSER 10\nHEALTHCHECK CMD /agent healthcheck\nCMD [\"/agent\"]\n";
        // The final stage inherits from scratch through `a`: a shell-form HEALTHCHECK cannot run there.
        assert_eq!(rules(text), vec![(5, Rule::ExecForm)]);
        assert_eq!(rules("FROM scratch\nUSER 0:0\nHEALTHCHECK NONE\n").len(), 2);
    }

    #[test]
    fn secrets_by_shape_not_only_by_name() {
        let text = format!(
            "FROM scratch\nENV AWS=AKIAIOSFODNN7EXAMPLE GH=ghp_{} PLAIN=value\nUSER 1\nHEALTHCHECK CMD [\"x\"]\n",
            "x".repeat(36)
        );
        let found = lint(&text).unwrap();
        let secrets: Vec<_> = found.findings.iter().filter(|f| f.rule == Rule::NoSecrets).collect();
        assert_eq!(secrets.len(), 2, "{secrets:?}");
    }

    #[test]
    fn what_the_parser_cannot_read_is_refused_by_name() {
        let err = lint("FROM scratch\nRUN <<EOF\necho hi\nEOF\n").unwrap_err();
        assert!(err.to_string().contains("heredoc"), "{err}");
        assert_eq!("copy-not-add".parse::<Rule>(), Ok(Rule::CopyNotAdd));
        assert!("nope".parse::<Rule>().unwrap_err().contains("pinned-base"));
    }
}
