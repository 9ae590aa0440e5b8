//! `agentctl build`: the library's build with its progress on stderr and its report on stdout.

use std::process::ExitCode;

use agent_docker::build::{BuildError, BuildEvent, BuildReport};

use crate::cli::{BuildArgs, Global, Output, Usage};
use crate::render::{self, Progress};

pub(crate) async fn run(g: &Global, args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let req = args.request();
    // Names are checked before connecting: a bad version is a usage error (2) whatever the engine's state.
    agent_docker::build::check_names(&req.repository, &req.version).map_err(|e| Usage(e.to_string()))?;
    let quiet = g.output != Output::Table;
    let progress = Progress::new(g.no_progress, quiet);
    let runtime = crate::connect(g).await?;
    let on_event = |e: BuildEvent| match e {
        BuildEvent::Allowed(f) => progress.line(&render::yellow(&format!(
            "allowed: {}",
            f.display_in(
                &req.dockerfile
                    .as_ref()
                    .map_or("Dockerfile".into(), |p| p.display().to_string())
            )
        ))),
        BuildEvent::Dirty { commit } => progress.line(&render::yellow(&format!(
            "warning: the work tree has uncommitted changes; the tag of commit {} does not describe them",
            &commit[..7.min(commit.len())]
        ))),
        // The classic builder's intermediate-container chatter is left out; steps and results are shown.
        BuildEvent::Output(line) if line.starts_with("Step ") || line.starts_with("Successfully") => {
            progress.line(&format!("  {line}"))
        }
        BuildEvent::Output(line) => tracing::debug!("{line}"),
        BuildEvent::Push(p) => progress.layer("push", &p),
        BuildEvent::Skipped { path, why } => progress.line(&render::yellow(&format!(
            "skipped: {} is {why}; it is not sent with the build context",
            path.display()
        ))),
    };
    match runtime.build(&req, &on_event).await {
        Ok(report) => {
            match g.output {
                Output::Table => crate::print_out(g.output, text(&report)),
                o => crate::print_out(o, render::structured(o, &report)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Findings { file, findings }) => {
            for f in &findings {
                errln!("{}", render::terminal_safe(&f.display_in(&file)));
            }
            Err(BuildError::Findings { file, findings }.into())
        }
        Err(e @ (BuildError::Repository { .. } | BuildError::Version { .. })) => Err(Usage(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

fn text(r: &BuildReport) -> String {
    let mut out = format!(
        "built {} ({}, {} layer(s), {} stage(s), {})\n",
        r.tags[0],
        short_id(&r.image_id),
        r.layers,
        r.stages,
        size(r.size)
    );
    if let Some((base, bytes)) = &r.base {
        out.push_str(&format!("  base      {base} ({})\n", size(*bytes)));
    } else {
        out.push_str("  base      scratch\n");
    }
    out.push_str(&format!("  user      {}\n", r.user));
    out.push_str(&format!(
        "  health    {}\n",
        r.healthcheck.as_ref().map_or("none".into(), |t| t.join(" "))
    ));
    out.push_str(&format!("  platform  {}\n", r.platform));
    out.push_str(&format!("  tags      {}\n", r.tags.join(", ")));
    for (k, v) in &r.labels {
        out.push_str(&format!("  label     {k}={v}\n"));
    }
    for a in &r.allowed {
        out.push_str(&format!("  allowed   {a}\n"));
    }
    match (&r.digest, &r.pinned) {
        (Some(d), Some(p)) => out.push_str(&format!("pushed {d}\n  deploy    {p}")),
        _ => out.push_str("not pushed (pass --push to push both tags)"),
    }
    out
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..12.min(hex.len())]
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
