//! `agentctl test`: the library's contract run, each case on stderr as it ends, the report on stdout, JUnit
//! XML on request, and the environment removed on Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use agent_core::ContainerRuntime;
use agent_rollout::contract::{self, Case, CaseOutcome, ContractReport};

use crate::cli::{Global, Output, TestArgs, Usage};
use crate::render::{self, Progress};

pub(crate) async fn run(g: &Global, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let mut c = args.contract()?;
    let progress = Progress::new(g.no_progress, g.output != Output::Table);
    let runtime: Arc<dyn ContainerRuntime> = crate::connect(g).await?;
    for host in &args.target_hosts {
        let engine = agent_docker::DockerRuntime::connect(Some(host))
            .await
            .map_err(|e| Usage(format!("--target-host {host}: {e}")))?;
        let info = engine.engine_info().await?;
        c.targets.push((host.clone(), info));
    }
    let run_id = format!(
        "{}-{:x}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp() & 0xffff
    );
    progress.line(&format!(
        "testing {} in a throwaway environment (run {run_id})",
        c.image
    ));
    let on_case = |case: &Case| progress.line(&case_line(case));
    let report = tokio::select! {
        r = contract::run(runtime.clone(), &c, &run_id, &on_case) => r,
        _ = tokio::signal::ctrl_c() => {
            // The run was dropped mid-step: an engine call in flight (a create) may still land, so a second
            // pass a moment later removes what the first could not see yet.
            let mut removed = contract::cleanup(runtime.as_ref(), &run_id).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            removed += contract::cleanup(runtime.as_ref(), &run_id).await;
            errln!("interrupted: removed the test environment ({removed} object(s))");
            return Ok(ExitCode::from(130));
        }
    }?;
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit())
            .map_err(|e| anyhow::anyhow!("--junit {}: cannot write: {e}", path.display()))?;
    }
    match g.output {
        Output::Table => crate::print_out(g.output, text(&report)),
        o => crate::print_out(o, render::structured(o, &report)?),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn case_line(c: &Case) -> String {
    let word = match c.outcome {
        CaseOutcome::Passed => render::green("pass"),
        CaseOutcome::Failed => render::red("FAIL"),
        CaseOutcome::Skipped => render::yellow("skip"),
    };
    format!("  {word} {:<14} {}", c.name, c.detail)
}

fn text(r: &ContractReport) -> String {
    let failed = r.cases.iter().filter(|c| c.outcome == CaseOutcome::Failed).count();
    let passed = r.cases.iter().filter(|c| c.outcome == CaseOutcome::Passed).count();
    let skipped = r.cases.len() - failed - passed;
    // Each case was shown on stderr as it ended; stdout repeats the failures under the summary.
    let mut out = String::new();
    out.push_str(&format!(
        "{} {} (version {}): {passed} passed, {failed} failed, {skipped} skipped",
        if failed == 0 { "PASSED" } else { "FAILED" },
        r.image,
        r.version.as_deref().unwrap_or("unknown"),
    ));
    for c in r.cases.iter().filter(|c| c.outcome == CaseOutcome::Failed) {
        out.push_str(&format!("\n  failed {}: {}", c.name, c.detail));
    }
    out
}
