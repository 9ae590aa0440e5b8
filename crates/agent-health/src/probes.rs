//! The built-in probes: container state, Docker HEALTHCHECK, log scan, HTTP.

use std::time::Duration;

use agent_core::{ContainerInfo, ContainerStatus, HealthStatus, LogLine, RuntimeError};
use async_trait::async_trait;
use regex::RegexSet;
use serde::{Deserialize, Serialize};

use crate::gate::{Observation, Probe, ProbeContext};
use crate::http;

pub(crate) fn engine_error(e: &RuntimeError) -> Observation {
    match e {
        RuntimeError::ContainerNotFound { .. } => Observation::Fatal(format!("the container is gone: {e}")),
        RuntimeError::Unavailable { .. } => Observation::Inconclusive(e.to_string()),
        _ => Observation::Fail(e.to_string()),
    }
}

/// The whole check of a probe that reads the container: one inspection, then its check of it.
pub(crate) async fn inspected<P: Probe + ?Sized>(probe: &P, ctx: &ProbeContext) -> Observation {
    match ctx.runtime.inspect_container(&ctx.container).await {
        Ok(info) => probe.check_inspected(ctx, &info).await,
        Err(e) => engine_error(&e),
    }
}

/// Passes while the container runs and its restart count stays where it was; an exit or a restart is fatal.
#[derive(Debug, Clone, Default)]
pub struct ContainerStateProbe;

#[async_trait]
impl Probe for ContainerStateProbe {
    fn name(&self) -> &str {
        "container"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        inspected(self, ctx).await
    }

    fn reads_inspection(&self) -> bool {
        true
    }

    async fn check_inspected(&self, ctx: &ProbeContext, info: &ContainerInfo) -> Observation {
        let s = &info.state;
        let restarts = s.restart_count.saturating_sub(ctx.baseline_restarts);
        if restarts > 0 {
            return Observation::Fatal(format!(
                "restarted {restarts} time(s) since it was started (now {}, last exit code {})",
                s.status,
                s.exit_code.map_or("-".to_owned(), |c| c.to_string())
            ));
        }
        match s.status {
            ContainerStatus::Running => Observation::Pass(format!("running, {} restarts", s.restart_count)),
            ContainerStatus::Created => Observation::Pending("created, not yet running".into()),
            ContainerStatus::Restarting => Observation::Fatal("restarting (crash loop)".into()),
            other => Observation::Fatal(format!(
                "{other} with exit code {}{}{}",
                s.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                if s.oom_killed { " (killed: out of memory)" } else { "" },
                s.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            )),
        }
    }
}

/// Docker's own HEALTHCHECK: passes on `healthy`, pending while `starting`, fails on `unhealthy` with the
/// check's last output. Passes with a note when the container has no HEALTHCHECK.
///
/// Until the engine has a result of its own (engines before API 1.44 run the command first after a whole
/// interval), the probe runs the same command through exec and counts its result as HEALTHCHECK evidence. A
/// passing run stands for the container's HEALTHCHECK interval, as the engine's own result would: the command
/// is run again at each check only until it has passed, never more often than the user configured after.
#[derive(Debug, Default)]
pub struct DockerHealthProbe {
    early_pass: std::sync::Mutex<Option<EarlyPass>>,
}

/// A passing run of the HEALTHCHECK command by the probe.
#[derive(Debug, Clone)]
struct EarlyPass {
    container_id: String,
    at: tokio::time::Instant,
    stands_for: Duration,
    output: String,
}

impl DockerHealthProbe {
    /// A probe with no result of its own yet.
    pub fn new() -> DockerHealthProbe {
        DockerHealthProbe::default()
    }

    fn early_pass(&self) -> std::sync::MutexGuard<'_, Option<EarlyPass>> {
        self.early_pass.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clone for DockerHealthProbe {
    fn clone(&self) -> Self {
        DockerHealthProbe {
            early_pass: std::sync::Mutex::new(self.early_pass().clone()),
        }
    }
}

/// Docker's default HEALTHCHECK interval, when neither the container nor its image sets one.
const DEFAULT_HEALTHCHECK_INTERVAL: Duration = Duration::from_secs(30);

#[async_trait]
impl Probe for DockerHealthProbe {
    fn name(&self) -> &str {
        "healthcheck"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        inspected(self, ctx).await
    }

    fn reads_inspection(&self) -> bool {
        true
    }

    async fn check_inspected(&self, ctx: &ProbeContext, info: &ContainerInfo) -> Observation {
        let Some(h) = info.state.health.clone() else {
            return Observation::Pass("no HEALTHCHECK defined".into());
        };
        let last = h
            .log
            .last()
            .map(|l| format!("exit {}: {}", l.exit_code, truncate(&l.output, 200)))
            .unwrap_or_else(|| "no run yet".into());
        match h.status {
            HealthStatus::Healthy => Observation::Pass(format!("healthy ({last})")),
            // No result of the engine's own yet: it runs the command first after a whole interval (engines
            // before API 1.44 have no start interval). Run the same command now, as the container's user, and
            // count its result as HEALTHCHECK evidence until the engine's first own run arrives.
            HealthStatus::Starting if h.log.is_empty() => {
                let now = tokio::time::Instant::now();
                let standing = self
                    .early_pass()
                    .clone()
                    .filter(|p| p.container_id == info.id && now.duration_since(p.at) < p.stands_for);
                if let Some(p) = standing {
                    return Observation::Pass(format!(
                        "its HEALTHCHECK command exited 0 {} ago, run by agentctl at once; the result stands for \
                         its interval of {} (the engine's first run is pending): {}",
                        agent_core::format_duration(now.duration_since(p.at)),
                        agent_core::format_duration(p.stands_for),
                        p.output
                    ));
                }
                match early_healthcheck(ctx, info).await {
                    Some((o, interval)) if o.exit_code == 0 => {
                        let output = truncate(o.output.trim(), 200);
                        *self.early_pass() = Some(EarlyPass {
                            container_id: info.id.clone(),
                            at: now,
                            stands_for: interval,
                            output: output.to_owned(),
                        });
                        Observation::Pass(format!(
                            "its HEALTHCHECK command exited 0, run by agentctl at once (the engine's first run is pending): {output}"
                        ))
                    }
                    Some((o, _)) => Observation::Pending(format!(
                        "starting: its HEALTHCHECK command exited {} when run by agentctl: {}",
                        o.exit_code,
                        truncate(o.output.trim(), 200)
                    )),
                    None => Observation::Pending(format!("starting ({last})")),
                }
            }
            HealthStatus::Starting => Observation::Pending(format!("starting ({last})")),
            HealthStatus::Unhealthy => {
                Observation::Fail(format!("unhealthy, {} failures in a row ({last})", h.failing_streak))
            }
        }
    }
}

/// Runs the container's HEALTHCHECK command (its own, else its image's) through exec, once, with the check's
/// interval; `None` when there is none to run or the engine could not run it.
async fn early_healthcheck(
    ctx: &ProbeContext,
    info: &agent_core::ContainerInfo,
) -> Option<(agent_core::ExecOutput, Duration)> {
    let check = match &info.spec.healthcheck {
        Some(h) => h.clone(),
        None => {
            ctx.runtime
                .inspect_image(&info.image_id)
                .await
                .ok()?
                .defaults
                .healthcheck?
        }
    };
    let argv: Vec<String> = match check.test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        (kind, [line]) if kind == "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        _ => return None,
    };
    let timeout = check.timeout.unwrap_or(Duration::from_secs(30));
    let interval = check.interval.unwrap_or(DEFAULT_HEALTHCHECK_INTERVAL);
    let output = ctx.runtime.exec(&ctx.container, &argv, timeout).await.ok()?;
    Some((output, interval))
}

/// Scans the container's output since it started for fatal lines. Any match is fatal, with excerpts.
#[derive(Debug, Clone)]
pub struct LogScanProbe {
    patterns: Vec<String>,
    set: RegexSet,
}

/// `text` without its terminal escape sequences (colours, cursor moves, title changes), as a terminal would
/// show it; other control characters are kept for the caller to escape.
pub fn plain_text(text: &str) -> String {
    if !text.contains('\x1b') && !text.contains('\u{9b}') {
        return text.to_owned();
    }
    strip_ansi_escapes::strip_str(text)
}

/// The default fatal-line patterns: case-insensitive `fatal` and `panic`.
pub const DEFAULT_FATAL_PATTERNS: &[&str] = &["(?i)\\bfatal\\b", "(?i)\\bpanic(ked)?\\b"];

impl Default for LogScanProbe {
    fn default() -> Self {
        LogScanProbe::new(DEFAULT_FATAL_PATTERNS.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|_| unreachable!("the default patterns are valid"))
    }
}

impl LogScanProbe {
    /// A probe for these regular expressions.
    pub fn new(patterns: Vec<String>) -> Result<LogScanProbe, regex::Error> {
        // A fleet builds one gate per target with the same patterns; compiling them is most of a gate's
        // cost, so the last set compiled is kept (a `RegexSet` clone shares its compiled program).
        static LAST: std::sync::Mutex<Option<(Vec<String>, RegexSet)>> = std::sync::Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, set)) = last.as_ref().filter(|(p, _)| *p == patterns) {
            return Ok(LogScanProbe {
                patterns: p.clone(),
                set: set.clone(),
            });
        }
        let set = RegexSet::new(&patterns)?;
        *last = Some((patterns.clone(), set.clone()));
        Ok(LogScanProbe { patterns, set })
    }

    /// Lines of `lines` matching any pattern, as `(pattern, line)`, the line with its terminal escape
    /// sequences removed: a colour code must not hide a word boundary (`\x1b[31mFATAL`) from the patterns.
    pub fn matches<'a>(&'a self, lines: &'a [LogLine]) -> impl Iterator<Item = (&'a str, String)> + 'a {
        lines.iter().filter_map(move |l| {
            let text = plain_text(&l.text);
            let m = self.set.matches(&text);
            m.iter().next().map(|i| (self.patterns[i].as_str(), text))
        })
    }
}

#[async_trait]
impl Probe for LogScanProbe {
    fn name(&self) -> &str {
        "logs"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        let lines = match ctx.runtime.logs(&ctx.container, Some(ctx.started_at), None).await {
            Ok(l) => l,
            Err(e) => return engine_error(&e),
        };
        let hits: Vec<(&str, String)> = self.matches(&lines).collect();
        if hits.is_empty() {
            Observation::Pass(format!("{} lines, no fatal pattern", lines.len()))
        } else {
            let excerpts: Vec<String> = hits
                .iter()
                .take(3)
                .map(|(_, l)| format!("{:?}", truncate(l, 160)))
                .collect();
            Observation::Fatal(format!(
                "{} line(s) match a fatal pattern ({}): {}",
                hits.len(),
                hits[0].0,
                excerpts.join(", ")
            ))
        }
    }
}

/// Where an HTTP probe connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbeConfig {
    /// Port in the container (reached on the container's address), or on the host with `host_port`.
    pub port: u16,
    /// Path (`/health`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Expected status code (any 2xx when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u16>,
    /// Connect to this published port on 127.0.0.1 instead of the container's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

fn default_path() -> String {
    "/health".to_owned()
}

/// HTTP GET against the container's address on its network (or a published port).
#[derive(Debug, Clone)]
pub struct HttpProbe {
    config: HttpProbeConfig,
}

impl HttpProbe {
    /// A probe with this configuration.
    pub fn new(config: HttpProbeConfig) -> HttpProbe {
        HttpProbe { config }
    }
}

#[async_trait]
impl Probe for HttpProbe {
    fn name(&self) -> &str {
        "http"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        match self.config.host_port {
            Some(p) => self.get(&format!("127.0.0.1:{p}")).await,
            None => inspected(self, ctx).await,
        }
    }

    fn reads_inspection(&self) -> bool {
        self.config.host_port.is_none()
    }

    async fn check_inspected(&self, ctx: &ProbeContext, info: &ContainerInfo) -> Observation {
        if self.config.host_port.is_some() {
            return self.check(ctx).await;
        }
        match info.addresses.values().next() {
            Some(ip) => self.get(&format!("{ip}:{}", self.config.port)).await,
            None => Observation::Pending("the container has no network address yet".into()),
        }
    }
}

impl HttpProbe {
    /// The GET of `host` (`ip:port`) and what its answer says.
    async fn get(&self, host: &str) -> Observation {
        let url = format!("http://{host}{}", self.config.path);
        match http::get(&url, Duration::from_secs(5)).await {
            Ok(resp) => {
                let ok = match self.config.expected_status {
                    Some(s) => resp.status == s,
                    None => (200..300).contains(&resp.status),
                };
                let body = truncate(resp.body.trim(), 120);
                if ok {
                    Observation::Pass(format!("GET {url} -> {} {body:?}", resp.status))
                } else {
                    Observation::Fail(format!("GET {url} -> {} {body:?}", resp.status))
                }
            }
            // A refused connection right after start (the agent still binding its port) is an ordinary
            // failure: the failure threshold absorbs it.
            Err(e) => Observation::Fail(format!("GET {url}: {e}")),
        }
    }
}

/// CPU and memory from the engine's stats (computed as `docker stats` does): fails above the limits. Combined
/// with a probation `for` duration it is the rule "CPU above 85 % for 5 min".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProbe {
    /// Fail above this CPU percentage (100 = one CPU).
    pub max_cpu_percent: Option<f64>,
    /// Fail above this much memory.
    pub max_memory_bytes: Option<u64>,
}

#[async_trait]
impl Probe for ResourceProbe {
    fn name(&self) -> &str {
        "resources"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        let u = match ctx.runtime.stats(&ctx.container).await {
            Ok(u) => u,
            Err(e) => return engine_error(&e),
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let seen = format!("cpu {:.1}%, memory {:.1} MiB", u.cpu_percent, mib(u.memory_bytes));
        if let Some(max) = self.max_cpu_percent {
            if u.cpu_percent > max {
                return Observation::Fail(format!("{seen}: CPU above {max}%"));
            }
        }
        if let Some(max) = self.max_memory_bytes {
            if u.memory_bytes > max {
                return Observation::Fail(format!("{seen}: memory above {:.1} MiB", mib(max)));
            }
        }
        Observation::Pass(seen)
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod escape_tests {
    use super::*;
    use agent_core::LogStream;

    fn line(text: &str) -> LogLine {
        LogLine {
            stream: LogStream::Stderr,
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_colour_code_does_not_hide_a_fatal_line() {
        let probe = LogScanProbe::default();
        let lines = [
            line("\x1b[31mFATAL: lost the collector\x1b[0m"),
            line("\x1b]0;pwned\x07panic: index out of range"),
            line("\x1b[32mall good\x1b[0m"),
        ];
        let hits: Vec<String> = probe.matches(&lines).map(|(_, l)| l).collect();
        assert_eq!(hits, ["FATAL: lost the collector", "panic: index out of range"]);
        assert_eq!(plain_text("no escapes"), "no escapes");
    }
}
