//! Rendering: progress on stderr (bars on a terminal, plain lines otherwise), results on stdout as tables,
//! JSON or YAML.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use agent_core::{format_duration, Revision, RevisionHistory};
use agent_rollout::{Event, Reporter, StatusReport, UpdateReport, UpdateStatus};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::cli::Output;

/// Whether colour may be used (a terminal, and `NO_COLOR` unset).
pub(crate) fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

fn paint(text: &str, code: &str) -> String {
    if colour() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

pub(crate) fn red(t: &str) -> String {
    paint(t, "31")
}
pub(crate) fn green(t: &str) -> String {
    paint(t, "32")
}
pub(crate) fn yellow(t: &str) -> String {
    paint(t, "33")
}

/// Renders events on stderr.
pub(crate) struct Progress {
    bars: Option<MultiProgress>,
    layers: Mutex<HashMap<String, ProgressBar>>,
    spinner: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Progress {
    pub(crate) fn new(no_progress: bool, quiet: bool) -> Progress {
        let fancy = !no_progress && !quiet && std::io::stderr().is_terminal();
        Progress {
            bars: fancy.then(MultiProgress::new),
            layers: Mutex::new(HashMap::new()),
            spinner: Mutex::new(None),
            quiet,
        }
    }

    pub(crate) fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let text = terminal_safe(text);
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => errln!("{text}"),
        }
    }

    /// Progress of one image layer in a pull or push: a bar per layer on a terminal, else a line when it is done.
    pub(crate) fn layer(&self, verb: &str, p: &agent_core::PullProgress) {
        let done = p.status.contains("complete") || p.status.contains("exists") || p.status == "Pushed";
        let Some(m) = &self.bars else {
            if done || p.status.starts_with("Status") || p.status.starts_with("Digest") {
                self.line(&format!("  {verb} {} {}", p.layer, p.status));
            }
            return;
        };
        if p.layer.is_empty() {
            return;
        }
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        let bar = layers.entry(p.layer.clone()).or_insert_with(|| {
            let b = m.add(ProgressBar::new(p.total.unwrap_or(0)));
            b.set_style(
                ProgressStyle::with_template("  {prefix:12} {bar:30} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(p.layer.clone());
            b
        });
        if let Some(t) = p.total {
            bar.set_length(t);
        }
        if let Some(c) = p.current {
            bar.set_position(c);
        }
        bar.set_message(p.status.clone());
        if done {
            bar.finish();
        }
    }

    fn finish_spinner(&self) {
        if let Some(s) = self.spinner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            s.finish_and_clear();
        }
    }
}

impl Reporter for Progress {
    fn report(&self, event: &Event) {
        match event {
            Event::Recovered(r) => self.line(&yellow(&format!(
                "repaired an interrupted operation ({}, stopped at step {}): {}",
                r.operation, r.interrupted_at, r.action
            ))),
            Event::Preflight {
                container,
                from,
                to,
                digest,
            } => {
                self.line(&format!("preflight ok: {container} {from} -> {to}"));
                if let Some(d) = digest {
                    self.line(&format!("  digest {d}"));
                }
            }
            Event::Pull(p) => self.layer("pull", p),
            Event::Pulled { image, digest } => self.line(&format!(
                "pulled {image}{}",
                digest.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
            )),
            Event::BackedUp { path, mounts } => self.line(&format!("backed up spec and {mounts} mount(s) to {path}")),
            Event::Step { step, detail } => self.line(&format!("[{step}] {detail}")),
            Event::Verifying {
                container,
                probes,
                timing,
            } => {
                self.line(&format!("verifying {container} with {} ({timing})", probes.join(", ")));
                if let Some(m) = &self.bars {
                    let s = m.add(ProgressBar::new_spinner());
                    s.enable_steady_tick(std::time::Duration::from_millis(120));
                    *self.spinner.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                }
            }
            Event::Waiting(g) => {
                let waiting: Vec<String> = g.waiting_on.iter().map(|(n, d)| format!("{n}: {d}")).collect();
                let msg = format!("{} waiting on {}", format_duration(g.elapsed), waiting.join("; "));
                if let Some(s) = &*self.spinner.lock().unwrap_or_else(|p| p.into_inner()) {
                    s.set_message(msg);
                }
            }
            Event::Verdict(v) => {
                self.finish_spinner();
                let text = v.to_string();
                let text = match v.outcome {
                    agent_health::VerdictOutcome::Healthy => green(&text),
                    agent_health::VerdictOutcome::Unhealthy => red(&text),
                    agent_health::VerdictOutcome::Inconclusive => yellow(&text),
                };
                self.line(text.trim_end());
            }
            Event::RollingBack { reason } => self.line(&red(&format!("rolling back: {reason}"))),
            Event::Pruned { revision } => self.line(&format!("pruned revision {revision} from the history")),
            Event::Watching {
                container,
                window,
                rules,
            } => self.line(&format!(
                "watching {container} for {window} (alert rules: {})",
                rules.join(", ")
            )),
            Event::AlertPending(m) => self.line(&yellow(m)),
            _ => {}
        }
    }
}

pub(crate) fn structured<T: Serialize>(out: Output, value: &T) -> anyhow::Result<String> {
    Ok(match out {
        Output::Json | Output::Table => serde_json::to_string_pretty(value)?,
        Output::Yaml => serde_saphyr::to_string(value)?,
    })
}

fn ts(t: &time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// One history row, the shape `history -o json` prints.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryRow<'a> {
    revision: u64,
    image: String,
    digest: Option<String>,
    status: &'static str,
    reason: Option<&'a str>,
    cause: &'a str,
    by: Option<&'a str>,
    created_at: String,
    finished_at: Option<String>,
    current: bool,
    last_known_good: bool,
    protected: bool,
    retained_container: Option<&'a str>,
    /// The retained container is recorded but no longer on the engine (pruned or removed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retained_gone: bool,
}

/// The history's rows; `gone` lists the revisions whose retained container is no longer on the engine.
pub(crate) fn history_rows<'a>(h: &'a RevisionHistory, gone: &[agent_core::RevisionNumber]) -> Vec<HistoryRow<'a>> {
    let current = h.current().map(|r| r.number);
    let lkg = h.last_known_good().map(|r| r.number);
    h.revisions()
        .iter()
        .map(|r: &Revision| HistoryRow {
            revision: r.number.get(),
            image: r.image.familiar(),
            digest: r.digest.as_ref().map(|d| d.to_string()),
            status: r.outcome.status(),
            reason: match &r.outcome {
                agent_core::Outcome::Failed { reason } | agent_core::Outcome::RolledBack { reason } => Some(reason),
                _ => None,
            },
            cause: &r.cause,
            by: r.by.as_deref(),
            created_at: ts(&r.created_at),
            finished_at: r.finished_at.as_ref().map(ts),
            current: Some(r.number) == current,
            last_known_good: Some(r.number) == lkg,
            protected: r.protected,
            retained_container: r.retained_container.as_deref(),
            retained_gone: gone.contains(&r.number),
        })
        .collect()
}

pub(crate) fn history_table(h: &RevisionHistory, gone: &[agent_core::RevisionNumber]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(["REV", "IMAGE", "DIGEST", "STATUS", "CAUSE", "BY", "CREATED", "RETAINED"]);
    for r in history_rows(h, gone) {
        let mut status = r.status.to_owned();
        if r.protected {
            status.push_str(" [protected]");
        }
        if r.current {
            status.push_str(" (current)");
        } else if r.last_known_good {
            status.push_str(" (last good)");
        }
        t.add_row([
            r.revision.to_string(),
            r.image,
            r.digest
                .map(|d| d.chars().take(19).collect())
                .unwrap_or_else(|| "-".into()),
            status,
            r.cause.to_owned(),
            r.by.unwrap_or("-").to_owned(),
            r.created_at,
            match (r.retained_container, r.retained_gone) {
                (Some(c), true) => format!("{c} (gone: pruned or removed)"),
                (Some(c), false) => c.to_owned(),
                (None, _) => "-".to_owned(),
            },
        ]);
    }
    t.to_string()
}

/// One line of `rollout list`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutRow {
    name: String,
    phase: agent_core::Phase,
    image: String,
    step: usize,
    steps: usize,
    targets: usize,
    updated: usize,
    started_at: String,
    updated_at: String,
    age_seconds: i64,
    reason: Option<String>,
}

pub(crate) fn rollout_list_rows(states: &[agent_rollout::RolloutState]) -> Vec<RolloutRow> {
    let now = time::OffsetDateTime::now_utc();
    states
        .iter()
        .map(|s| RolloutRow {
            name: s.spec.name.to_string(),
            phase: s.phase(),
            image: s.pinned.familiar(),
            step: s.next_step,
            steps: s.plan.steps.len(),
            targets: s.targets.len(),
            updated: s
                .targets
                .iter()
                .filter(|t| t.status == agent_rollout::TargetStatus::Updated)
                .count(),
            started_at: ts(&s.started_at),
            updated_at: ts(&s.updated_at),
            age_seconds: (now - s.started_at).whole_seconds(),
            reason: s.reason.clone(),
        })
        .collect()
}

/// `rollout list`: every rollout, newest change first.
pub(crate) fn rollout_list(states: &[agent_rollout::RolloutState]) -> String {
    if states.is_empty() {
        return "no rollouts yet: start one with `agentctl apply -f SPEC`".into();
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(["ROLLOUT", "PHASE", "IMAGE", "STEP", "UPDATED", "AGE", "REASON"]);
    for r in rollout_list_rows(states) {
        t.add_row([
            terminal_safe(&r.name).into_owned(),
            r.phase.to_string(),
            terminal_safe(&r.image).into_owned(),
            format!("{}/{}", r.step, r.steps),
            format!("{}/{}", r.updated, r.targets),
            agent_core::format_duration(std::time::Duration::from_secs(r.age_seconds.max(0) as u64)),
            terminal_safe(r.reason.as_deref().unwrap_or("-")).into_owned(),
        ]);
    }
    t.to_string()
}

/// `rollout history`: every target's revisions, one row each.
pub(crate) fn rollout_history_table(
    h: &[(agent_rollout::TargetState, Vec<agent_core::Revision>)],
    services: &[(String, String, Vec<agent_rollout::ServiceRevision>)],
) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(["TARGET", "REV", "IMAGE", "STATUS", "CAUSE", "CREATED"]);
    for (target, revs) in h {
        for r in revs {
            t.add_row([
                format!("{}@{}", target.container, target.host),
                r.number.to_string(),
                r.image.familiar(),
                r.outcome.status().to_owned(),
                r.cause.clone(),
                r.created_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ]);
        }
    }
    for (host, service, revs) in services {
        for r in revs {
            t.add_row([
                format!("service {service}@{host}"),
                r.number.to_string(),
                r.image.clone(),
                "recorded".to_owned(),
                r.cause.clone(),
                r.at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ]);
        }
    }
    t.to_string()
}

pub(crate) fn update_text(r: &UpdateReport) -> String {
    let mut out = String::new();
    match r.status {
        UpdateStatus::Updated => out.push_str(&green(&format!(
            "{} updated to {} (revision {}{})",
            r.container,
            r.revision.image.familiar(),
            r.revision.number,
            r.previous
                .map(|p| format!(", previous {p} retained"))
                .unwrap_or_default()
        ))),
        UpdateStatus::Staged => out.push_str(&green(&format!(
            "{} staged: {} verified beside it as {}; promotion makes it revision {}",
            r.container,
            r.revision.image.familiar(),
            agent_rollout::preview_name(&r.container),
            r.revision.number
        ))),
        UpdateStatus::Unverified => out.push_str(&format!(
            "{} runs {} unverified (revision {}): {}\nneither proven nor rolled back; `agentctl undo {0}` goes back to revision {}",
            r.container,
            r.revision.image.familiar(),
            r.revision.number,
            r.reason.as_deref().unwrap_or("verification inconclusive"),
            r.previous.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        )),
        UpdateStatus::Unchanged => out.push_str(&format!(
            "{} already runs {}; nothing changed",
            r.container,
            r.revision.image.familiar()
        )),
        UpdateStatus::RolledBack => {
            out.push_str(&red(&format!(
                "{} rolled back: revision {} ({}) failed and revision {} runs again",
                r.container,
                r.revision.number,
                r.revision.image.familiar(),
                r.previous.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
            )));
            if let Some(restored) = &r.restored {
                out.push_str(&format!("\nrevision {}: {restored}", r.previous.map(|p| p.to_string()).unwrap_or_else(|| "-".into())));
            }
            if let Some(reason) = &r.reason {
                out.push_str(&format!("\nreason: {reason}"));
            }
            if !r.last_logs.is_empty() {
                out.push_str("\nlast output of the failed container:");
                for l in &r.last_logs {
                    // Shown as a terminal would show it, without the container's colours.
                    out.push_str(&format!("\n  | {}", agent_health::plain_text(l)));
                }
            }
        }
    }
    for note in &r.notes {
        out.push('\n');
        out.push_str(&yellow(&format!("note: {note}")));
    }
    if let Some(b) = &r.backup {
        out.push_str(&format!("\nbackup: {}", b.display()));
    }
    out
}

pub(crate) fn status_table(s: &StatusReport) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let rows: Vec<(&str, String)> = vec![
        ("container", s.container.clone()),
        ("engine", s.endpoint.clone()),
        ("image", s.image.clone().unwrap_or_else(|| "(no such container)".into())),
        ("state", s.state.map(|x| x.to_string()).unwrap_or_else(|| "-".into())),
        ("health", s.health.clone().unwrap_or_else(|| "-".into())),
        (
            "restarts",
            s.restart_count.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
        ),
        (
            "revision",
            s.revision
                .as_ref()
                .map(|r| format!("{} ({}, {})", r.number, r.image.familiar(), r.cause))
                .unwrap_or_else(|| "not managed yet".into()),
        ),
        ("in progress", s.in_progress.clone().unwrap_or_else(|| "-".into())),
        (
            "repaired",
            if s.recovered.is_empty() {
                "-".into()
            } else {
                s.recovered
                    .iter()
                    .map(|r| format!("{} at {}: {}", r.operation, r.interrupted_at, r.action))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
    ];
    for (k, v) in rows {
        t.add_row([k.to_owned(), v]);
    }
    let mut out = t.to_string();
    if let Some(d) = &s.drift {
        out.push_str(&format!("\n{}", red(&format!("DRIFT: {d}"))));
    }
    for f in &s.findings {
        out.push_str(&format!("\n{}", red(&format!("FOUND: {f}"))));
    }
    out
}

pub(crate) fn agents_table(agents: &[agent_health::AgentRecord]) -> String {
    if agents.is_empty() {
        return "no agent has sent a heartbeat yet".into();
    }
    let now = time::OffsetDateTime::now_utc();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header([
        "AGENT",
        "STATE",
        "VERSION",
        "CONTAINER",
        "HOST",
        "LAST SEEN",
        "HEARTBEATS",
    ]);
    for a in agents {
        let age = (now - a.last_seen).max(time::Duration::ZERO);
        let state = match a.state {
            agent_health::AgentState::Up => green("up"),
            agent_health::AgentState::Late => yellow("late"),
            agent_health::AgentState::Down => red("down"),
        };
        t.add_row([
            a.last.agent_id.clone(),
            state,
            a.last.version.clone(),
            a.last.container.chars().take(12).collect(),
            a.last.host.clone(),
            format!(
                "{} ago",
                format_duration(std::time::Duration::from_secs_f64(age.as_seconds_f64()))
            ),
            a.heartbeats.to_string(),
        ]);
    }
    t.to_string()
}

pub(crate) fn fleet_event(e: &agent_rollout::FleetEvent) -> String {
    use agent_rollout::FleetEvent as E;
    match e {
        E::Started {
            rollout,
            image,
            targets,
            steps,
            from_step,
        } => {
            format!(
                "rollout {rollout}: {image} to {targets} target(s), {steps} step(s){}",
                if *from_step > 0 {
                    format!(", resuming at step {}", from_step + 1)
                } else {
                    String::new()
                }
            )
        }
        E::StepStarted { step, detail, .. } => format!("step {}: {detail}", step + 1),
        E::TargetUpdated {
            host,
            container,
            status,
            revision,
            reason,
            ..
        } => {
            let word = format!("{status:?}").to_lowercase();
            let word = match status {
                agent_rollout::TargetStatus::Updated => green(&word),
                agent_rollout::TargetStatus::Failed | agent_rollout::TargetStatus::Broken => red(&word),
                _ => yellow(&word),
            };
            format!(
                "  {container}@{host}: {word}{}{}",
                revision.map(|r| format!(" (revision {r})")).unwrap_or_default(),
                reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            )
        }
        E::Analysis { name, run, .. } => format!(
            "analysis {name}: {:?} ({})",
            run.outcome,
            run.measurements
                .iter()
                .map(|m| m.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        E::Traffic {
            backend,
            weight,
            servers,
            ..
        } => format!(
            "traffic: {weight} % to the new version through backend {backend} ({})",
            servers.join(", ")
        ),
        E::TrafficCorrected { found, weight, .. } => {
            yellow(&format!("traffic: {found}; set back to {weight} % to the new version"))
        }
        E::Paused { reason, until, .. } => yellow(&format!(
            "paused: {reason}{}",
            until.as_ref().map(|u| format!(" (until {u})")).unwrap_or_default()
        )),
        E::RollingBack { reason, touched, .. } => {
            red(&format!("rolling back {} touched target(s): {reason}", touched.len()))
        }
        E::Finished {
            rollout,
            phase,
            exit_code,
            ..
        } => format!("rollout {rollout} {phase} (exit {exit_code})"),
    }
}

pub(crate) fn rollout_table(s: &agent_rollout::RolloutState) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(["TARGET", "HOST", "STATUS", "PREVIOUS", "REVISION", "MESSAGE"]);
    for x in &s.targets {
        t.add_row([
            x.container.clone(),
            x.host.clone(),
            format!("{:?}", x.status).to_lowercase(),
            x.previous.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            x.revision.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            x.message.clone().unwrap_or_default(),
        ]);
    }
    let actions: Vec<String> = s
        .audit
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|a| format!("{} by {} at {}", a.action, a.by, ts(&a.at)))
        .collect();
    format!(
        "rollout {}: {}, {}/{} steps done, image {}{}{}\n{}{t}",
        s.spec.name,
        s.phase(),
        s.next_step.min(s.plan.steps.len()),
        s.plan.steps.len(),
        s.pinned,
        s.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        match (&s.spec.traffic, &s.traffic) {
            (Some(spec), Some(t)) => format!(
                "\ntraffic: {} % to the new version through backend {}",
                t.weight, spec.haproxy.backend
            ),
            _ => String::new(),
        },
        if actions.is_empty() {
            String::new()
        } else {
            format!("actions: {}\n", actions.join("; "))
        }
    )
}

/// A progress bar for a fleet rollout on a terminal (step, targets done / total, last outcome); plain lines
/// otherwise.
pub(crate) struct FleetBar {
    bar: Option<ProgressBar>,
}

impl FleetBar {
    pub(crate) fn new(plain: bool) -> FleetBar {
        let fancy = !plain && std::io::stderr().is_terminal();
        FleetBar {
            bar: fancy.then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} targets  {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            }),
        }
    }

    pub(crate) fn event(&self, e: &agent_rollout::FleetEvent) {
        use agent_rollout::FleetEvent as E;
        let line = terminal_safe(&fleet_event(e)).into_owned();
        let Some(b) = &self.bar else {
            errln!("{line}");
            return;
        };
        match e {
            E::Started { targets, rollout, .. } => {
                b.set_length(*targets as u64);
                b.set_prefix(rollout.clone());
            }
            E::StepStarted { step, detail, .. } => b.set_message(format!("step {}: {detail}", step + 1)),
            E::TargetUpdated { container, status, .. } => {
                if matches!(
                    status,
                    agent_rollout::TargetStatus::Updated | agent_rollout::TargetStatus::Failed
                ) {
                    b.inc(1);
                }
                b.set_message(format!("{container}: {status:?}").to_lowercase());
            }
            E::Finished { .. } => b.finish_and_clear(),
            _ => {}
        }
        b.println(line);
    }
}

/// `text` made safe for a terminal: the colour codes agentctl itself writes (`ESC [ digits m`) pass, every
/// other escape sequence and control character (except newline and tab) is shown escaped (`\u{1b}]0;x`), so
/// that what a container or an engine said cannot retitle, clear or move around the operator's terminal.
pub(crate) fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            let sgr_len = rest[1..]
                .strip_prefix('[')
                .and_then(|r| r.find(|ch: char| !ch.is_ascii_digit() && ch != ';').map(|i| (r, i)))
                .filter(|(r, i)| r[*i..].starts_with('m'))
                .map(|(_, i)| i + 3);
            if let Some(len) = sgr_len {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod terminal_tests {
    use super::terminal_safe;

    #[test]
    fn escapes_everything_but_colours_newlines_and_tabs() {
        assert_eq!(terminal_safe("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(terminal_safe("\x1b[31mred\x1b[0m"), "\x1b[31mred\x1b[0m");
        assert_eq!(terminal_safe("\x1b]0;pwned\x07x"), "\\u{1b}]0;pwned\\u{7}x");
        assert_eq!(terminal_safe("\x1b[2Jclear"), "\\u{1b}[2Jclear");
        assert_eq!(terminal_safe("a\rb\u{9b}c"), "a\\u{d}b\\u{9b}c");
        assert_eq!(terminal_safe("\x1b"), "\\u{1b}");
    }
}
