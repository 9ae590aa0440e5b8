//! `agentctl deliver` and `agentctl deliveries`: the library's delivery with the engine's build plugged in.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agent_core::async_trait;
use agent_docker::build::{BuildEvent, BuildRequest};
use agent_docker::lint::Rule;
use agent_docker::DockerRuntime;
use agent_rollout::delivery::{BuildSection, Builder, Built, Deliverer, DeliveryRecord, DeliverySpec};

use crate::cli::{DeliverArgs, Global, Output, Usage};
use crate::render::{self, Progress};

/// The build stage over the engine: lint, build, check, tag, push; findings become the error text.
pub(crate) struct EngineBuilder {
    pub(crate) runtime: Arc<DockerRuntime>,
    pub(crate) base: PathBuf,
    pub(crate) progress: Arc<Progress>,
}

impl EngineBuilder {
    fn on_event(&self) -> impl Fn(BuildEvent) + Send + Sync + 'static {
        let progress = self.progress.clone();
        move |e: BuildEvent| match e {
            BuildEvent::Output(line) if line.starts_with("Step ") => progress.line(&format!("  {line}")),
            BuildEvent::Push(p) => progress.layer("push", &p),
            BuildEvent::Allowed(f) => progress.line(&format!("  allowed: {}", f.display_in("Dockerfile"))),
            BuildEvent::Skipped { path, why } => progress.line(&format!(
                "  skipped: {} is {why}; it is not sent with the build context",
                path.display()
            )),
            _ => {}
        }
    }
}

#[async_trait]
impl Builder for EngineBuilder {
    async fn build(&self, section: &BuildSection, version: &str) -> Result<Built, String> {
        let allow = section
            .allow
            .iter()
            .map(|r| r.parse::<Rule>())
            .collect::<Result<Vec<_>, _>>()?;
        let req = BuildRequest {
            context: self.base.join(&section.context),
            dockerfile: section.file.clone(),
            repository: section.image.clone(),
            version: version.to_owned(),
            allow,
            push: false,
            source: None,
            title: None,
        };
        match self.runtime.build(&req, &self.on_event()).await {
            Ok(report) => Ok(Built {
                repository: section.image.clone(),
                tags: report.tags,
                version: report.version,
                commit: report.commit,
            }),
            Err(agent_docker::build::BuildError::Findings { file, findings }) => Err(findings
                .iter()
                .map(|f| f.display_in(&file))
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn push(&self, built: &Built) -> Result<String, String> {
        let digest = self
            .runtime
            .push_tags(&built.tags, &self.on_event())
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{}@{digest}", built.repository))
    }
}

async fn deliverer(g: &Global, runtime: Arc<DockerRuntime>, progress: Arc<Progress>) -> anyhow::Result<Deliverer> {
    let store = crate::open_store(g).await?;
    let fleet = Arc::new(crate::fleet(g).await?);
    let on_line = Arc::new(move |line: &str| progress.line(line));
    Ok(Deliverer::new(
        store,
        fleet,
        agent_docker::connector(g.secret_policy()),
        runtime,
        on_line,
    ))
}

pub(crate) async fn run(g: &Global, args: &DeliverArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Usage(format!("-f {}: cannot read it: {e}", args.file.display())))?;
    let spec = DeliverySpec::parse(&text, &args.file.display().to_string()).map_err(|e| Usage(e.to_string()))?;
    for r in &spec.build.allow {
        r.parse::<Rule>().map_err(|e| Usage(format!("build.allow: {e}")))?;
    }
    if let Some(v) = args.version.as_deref().or(spec.build.version.as_deref()) {
        agent_docker::build::check_names(&spec.build.image, v).map_err(|e| Usage(e.to_string()))?;
    }
    let progress = Arc::new(Progress::new(g.no_progress, g.output != Output::Table));
    let runtime = crate::connect(g).await?;
    let base = args
        .file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_owned()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let builder = EngineBuilder {
        runtime: runtime.clone(),
        base,
        progress: progress.clone(),
    };
    let d = deliverer(g, runtime, progress).await?;
    let record = d.deliver(&spec, args.version.as_deref(), &builder).await?;
    match g.output {
        Output::Table => crate::print_out(g.output, text_of(&record)),
        // JSON lines: the rollout's events were streamed one per line; the record is the last line.
        Output::Json => crate::print_out(g.output, serde_json::to_string(&record)?),
        o => crate::print_out(o, render::structured(o, &record)?),
    }
    Ok(ExitCode::from(record.outcome.exit_code() as u8))
}

pub(crate) async fn list(g: &Global) -> anyhow::Result<ExitCode> {
    // Reading the records needs the state store only, not an engine.
    let store = crate::open_store(g).await?;
    let records = agent_rollout::delivery::records(store.as_ref()).await?;
    match g.output {
        Output::Table if records.is_empty() => crate::print_out(
            g.output,
            "no deliveries yet: run `agentctl deliver -f delivery.yaml`".into(),
        ),
        Output::Table => crate::print_out(g.output, records_table(&records)),
        o => crate::print_out(o, render::structured(o, &records)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The deliveries as a table.
pub(crate) fn records_table(records: &[DeliveryRecord]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["ID", "BY", "STARTED", "VERSION", "COMMIT", "IMAGE", "TESTS", "OUTCOME"]);
    for r in records {
        let tests = r.tests.as_ref().map_or("-".to_owned(), |rep| {
            let passed = rep
                .cases
                .iter()
                .filter(|c| c.outcome == agent_rollout::contract::CaseOutcome::Passed)
                .count();
            format!("{passed}/{} passed", rep.cases.len())
        });
        t.add_row([
            r.id.clone(),
            r.by.clone(),
            r.started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            r.version.clone(),
            r.commit
                .as_deref()
                .map_or("-".into(), |c| c[..7.min(c.len())].to_owned()),
            r.image.clone().unwrap_or_else(|| "-".into()),
            tests,
            r.outcome.to_string(),
        ]);
    }
    t.to_string()
}

fn text_of(r: &DeliveryRecord) -> String {
    let word = match r.outcome.exit_code() {
        0 => render::green("delivered"),
        _ => render::red(&r.outcome.to_string()),
    };
    let mut out = format!("{word}: {} {} (delivery {}, by {})", r.name, r.version, r.id, r.by);
    if let Some(i) = &r.image {
        out.push_str(&format!("\n  image   {i}"));
    }
    if let Some(c) = &r.commit {
        out.push_str(&format!("\n  commit  {c}"));
    }
    out.push_str(&format!("\n  stage   {}", r.stage));
    if let Some(reason) = &r.reason {
        out.push_str(&format!("\n  reason  {}", reason.replace('\n', "\n          ")));
    }
    out
}
