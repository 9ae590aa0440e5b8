//! `agentctl`: a thin CLI over the agentctl crates. Raw arguments are validated into a library request, one
//! library call does the work, and the result is rendered.

// Output goes through `outln!` and `errln!`, never `println!`: a closed pipe must not panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// Writes a line to standard output. A closed pipe (`agentctl … | head -1`) is not an error: the line is
/// dropped, the command goes on and exits with its own code, as Unix tools do.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Writes a line to standard error; a closed pipe drops it, as for [`outln!`].
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod build;
mod cli;
mod contract;
mod deliver;
mod demo;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agent_core::{ContainerRuntime, StateStore};
use agent_docker::DockerRuntime;
use agent_rollout::Updater;
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, Global, Output, Usage};
use render::Progress;

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("agentctl");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/agentctl"),
        None => PathBuf::from(".agentctl"),
    }
}

/// The state store: `--state` (a PostgreSQL URL or a SQLite file), else `STATE_DIR/state.db`.
pub(crate) async fn open_store(global: &Global) -> anyhow::Result<Arc<dyn StateStore>> {
    let location = match &global.state {
        Some(l) => l.clone(),
        None => {
            let dir = global.state_dir.clone().unwrap_or_else(default_state_dir);
            dir.join("state.db").to_string_lossy().into_owned()
        }
    };
    Ok(agent_rollout::open_state(&location).await?)
}

pub(crate) async fn connect(global: &Global) -> anyhow::Result<Arc<DockerRuntime>> {
    let rt = DockerRuntime::connect(global.host.as_deref())
        .await?
        .with_secret_policy(global.secret_policy());
    if rt.is_plain_tcp_remote() {
        errln!(
            "{}",
            render::yellow(&format!(
                "WARNING: {} is plain TCP to a remote engine: anyone on that network can control it. Use TLS (DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH).",
                rt.endpoint()
            ))
        );
    }
    Ok(Arc::new(rt))
}

pub(crate) fn print_out(out: Output, text: String) {
    let _ = out;
    outln!("{}", render::terminal_safe(&text));
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let quiet = g.output != Output::Table;
    match &cli.command {
        Command::Build(args) => build::run(g, args).await,
        Command::Test(args) => contract::run(g, args).await,
        Command::Deliver(args) => deliver::run(g, args).await,
        Command::Deliveries => deliver::list(g).await,
        Command::State(cmd) => state(g, cmd).await,
        Command::Update(args) => {
            let req = args.request()?;
            let progress = Arc::new(Progress::new(g.no_progress, false));
            let runtime = connect(g).await?;
            let store: Arc<dyn StateStore> = open_store(g).await?;
            let updater = Updater::new(runtime, store, progress.clone());
            let report = updater.update(&req).await?;
            match g.output {
                Output::Table => print_out(g.output, render::update_text(&report)),
                o => print_out(o, render::structured(o, &report)?),
            }
            Ok(ExitCode::from(report.status.exit_code() as u8))
        }
        Command::Undo(args) => {
            let name = cli::container_name(&args.name)?;
            let to = args.revision()?;
            let mut req = args.verify.undo_request(name.clone())?;
            req.to = to;
            let progress = Arc::new(Progress::new(g.no_progress, false));
            let runtime = connect(g).await?;
            let store: Arc<dyn StateStore> = open_store(g).await?;
            let updater = Updater::new(runtime, store, progress.clone());
            let report = updater.undo(&req).await?;
            match g.output {
                Output::Table => print_out(g.output, render::update_text(&report)),
                o => print_out(o, render::structured(o, &report)?),
            }
            Ok(ExitCode::from(report.status.exit_code() as u8))
        }
        Command::History(args) => {
            let name = cli::container_name(&args.name)?;
            let runtime: Arc<dyn ContainerRuntime> = connect(g).await?;
            let store: Arc<dyn StateStore> = open_store(g).await?;
            let updater = Updater::new(runtime, store, Arc::new(Progress::new(true, quiet)));
            if let Some((n, protected)) = args.protection()? {
                let r = updater.protect(&name, n, protected).await?;
                let word = if r.protected {
                    "protected: never pruned"
                } else {
                    "no longer protected"
                };
                errln!("{name}: revision {} ({}) is {word}", r.number, r.image.familiar());
            }
            let h = updater.history(&name, args.history_limit as usize).await?;
            let gone: Vec<agent_core::RevisionNumber> =
                updater.retained_gone(&h).await.into_iter().map(|(n, _)| n).collect();
            match g.output {
                Output::Table if h.revisions().is_empty() => print_out(
                    g.output,
                    format!(
                        "{name} has no revisions: none in the state store, none on the engine {} (no {name}.agentctl-history.0 or .1 record); agentctl records them from its first update (`docker container prune` removes the engine's copy: filter it with --filter label!=io.agentctl.record)",
                        updater.endpoint()
                    ),
                ),
                Output::Table => print_out(g.output, render::history_table(&h, &gone)),
                o => print_out(o, render::structured(o, &render::history_rows(&h, &gone))?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let name = cli::container_name(&args.name)?;
            let runtime: Arc<dyn ContainerRuntime> = connect(g).await?;
            let store: Arc<dyn StateStore> = open_store(g).await?;
            let updater = Updater::new(runtime, store, Arc::new(Progress::new(g.no_progress, quiet)));
            let s = updater.status(&name, args.history_limit as usize).await?;
            match g.output {
                Output::Table => print_out(g.output, render::status_table(&s)),
                o => print_out(o, render::structured(o, &s)?),
            }
            Ok(if s.state.is_none() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply(args) => {
            let (text, source) = agent_rollout::RolloutSpec::read(&args.file).map_err(|e| Usage(e.to_string()))?;
            let spec = agent_rollout::RolloutSpec::parse(&text, &source).map_err(|e| Usage(e.to_string()))?;
            let fleet = fleet(g).await?;
            if let Some(addr) = &args.metrics_listen {
                serve_metrics(addr, Arc::new(self::fleet(g).await?)).await?;
            }
            let state = if args.replace {
                fleet.replace(spec).await?
            } else {
                fleet.apply(spec).await?
            };
            Ok(fleet_exit(g, &state))
        }
        Command::Rollout(cmd) => {
            let fleet = fleet(g).await?;
            let state = match cmd {
                cli::RolloutCommand::List => {
                    let mut all = fleet.all().await?;
                    all.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
                    match g.output {
                        Output::Table => print_out(g.output, render::rollout_list(&all)),
                        o => print_out(o, render::structured(o, &render::rollout_list_rows(&all))?),
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                cli::RolloutCommand::Status { name } => {
                    let s = fleet.state(name).await?.ok_or_else(|| {
                        anyhow::anyhow!("no rollout named {name}; start one with `agentctl apply -f SPEC`")
                    })?;
                    match g.output {
                        Output::Table => print_out(g.output, render::rollout_table(&s)),
                        o => print_out(o, render::structured(o, &s)?),
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                cli::RolloutCommand::Promote { name } | cli::RolloutCommand::Resume { name } => {
                    let s = fleet.promote(name).await?;
                    if !s.phase().is_terminal() && s.phase() != agent_core::Phase::Paused {
                        // Handed to the apply that runs it (it waited in a timed pause or an analysis).
                        errln!("promoted: the process running {name} took the promotion and goes on");
                        return Ok(ExitCode::SUCCESS);
                    }
                    s
                }
                cli::RolloutCommand::Abort { name } => fleet.abort(name, "aborted by the operator").await?,
                cli::RolloutCommand::Pause { name, reason } => {
                    let s = fleet.pause(name, reason).await?;
                    if s.phase() != agent_core::Phase::Paused {
                        errln!("pause requested: {name} pauses before its next step");
                        return Ok(ExitCode::SUCCESS);
                    }
                    s
                }
                cli::RolloutCommand::Retry { name } => fleet.retry(name).await?,
                cli::RolloutCommand::Undo {
                    name,
                    to_revision: Some(n),
                } => {
                    let restored = fleet.undo_services_to(name, *n).await?;
                    let rows: Vec<serde_json::Value> = restored
                        .iter()
                        .map(|(host, service, recorded)| {
                            serde_json::json!({"host": host, "service": service, "revision": n, "recordedAs": recorded})
                        })
                        .collect();
                    match g.output {
                        Output::Table => {
                            for (host, service, recorded) in &restored {
                                outln!("service {service} on {host}: revision {n} put back (recorded as revision {recorded})");
                            }
                        }
                        o => print_out(o, render::structured(o, &rows)?),
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                cli::RolloutCommand::Undo {
                    name,
                    to_revision: None,
                } => fleet.undo(name).await?,
                cli::RolloutCommand::History { name } => {
                    let h = fleet.history(name).await?;
                    let services = fleet.service_history(name).await?;
                    match g.output {
                        Output::Table => print_out(g.output, render::rollout_history_table(&h, &services)),
                        o => {
                            let mut rows: Vec<serde_json::Value> = h
                                .iter()
                                .map(|(t, revs)| {
                                    serde_json::json!({
                                        "host": t.host,
                                        "container": t.container,
                                        "status": t.status,
                                        "revisions": revs,
                                    })
                                })
                                .collect();
                            rows.extend(services.iter().map(|(host, service, revs)| {
                                serde_json::json!({"host": host, "service": service, "revisions": revs})
                            }));
                            print_out(o, render::structured(o, &rows)?)
                        }
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            };
            Ok(fleet_exit(g, &state))
        }
        Command::ControlCenter(args) => {
            let token = cli::read_token(args.token_file.as_deref())?;
            if args.late_after >= args.down_after {
                return Err(Usage("--late-after must be shorter than --down-after".into()).into());
            }
            let store: Arc<dyn StateStore> = open_store(g).await?;
            let config = agent_health::ControlCenterConfig {
                late_after: args.late_after,
                down_after: args.down_after,
                public_metrics: args.public_metrics,
                ..Default::default()
            };
            let loopback = args
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
                || args.listen.starts_with("localhost:");
            if !loopback {
                errln!(
                    "{}",
                    render::yellow(&format!(
                        "WARNING: {} is not a loopback address and the control center speaks plain HTTP: the token and heartbeats cross the network in clear text; put it behind a TLS proxy or a private network",
                        args.listen
                    ))
                );
            }
            let cc = agent_health::ControlCenter::new(token, config, Some(store.clone())).await?;
            // The web view's promote, pause, resume and abort run the rollout library on the same store.
            cc.set_actions(Arc::new(agent_rollout::WebActions::new(
                store,
                agent_docker::connector(g.secret_policy()),
            )));
            // SIGINT or SIGTERM (what `docker stop`, systemd and Kubernetes send): stop, drain, flush.
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let shutdown = async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            };
            cc.serve(
                &args.listen,
                |addr| errln!("control center listening on http://{addr}"),
                shutdown,
            )
            .await?;
            errln!("control center stopped; state saved");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents(args) => {
            let token = cli::read_token(args.token_file.as_deref())?;
            // Page by page (the control center returns at most 1000 agents at a time).
            let base = format!("{}/v1/agents", args.control_center.trim_end_matches('/'));
            let mut agents: Vec<agent_health::AgentRecord> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let url = match &after {
                    Some(a) => format!(
                        "{base}?after={}",
                        percent_encoding::utf8_percent_encode(a, percent_encoding::NON_ALPHANUMERIC)
                    ),
                    None => base.clone(),
                };
                let resp = agent_health::http::request(
                    "GET",
                    &url,
                    &[("Authorization", &format!("Bearer {token}"))],
                    None,
                    std::time::Duration::from_secs(10),
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the control center at {}: {e}", args.control_center))?;
                if resp.status != 200 {
                    anyhow::bail!("the control center answered {}: {}", resp.status, resp.body.trim());
                }
                let page: Vec<agent_health::AgentRecord> = serde_json::from_str(&resp.body)?;
                agents.extend(page);
                match resp.header(agent_health::NEXT_PAGE_HEADER) {
                    Some(next) if after.as_deref() != Some(next) => after = Some(next.to_owned()),
                    _ => break,
                }
            }
            match g.output {
                Output::Table => print_out(g.output, render::agents_table(&agents)),
                o => print_out(o, render::structured(o, &agents)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(g, args).await,
        Command::Completions { shell } => {
            // Written whole, and a closed pipe is not an error.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "agentctl", &mut script);
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(&script);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `agentctl state export|import`: needs the store only, not an engine.
async fn state(g: &Global, cmd: &cli::StateCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(g).await?;
    match cmd {
        cli::StateCommand::Export { file } => {
            let dump = store.export().await?;
            let text = serde_json::to_string_pretty(&dump)?;
            match file {
                Some(path) => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    // History holds specs (secrets redacted) and who did what: the owner's only.
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    f.write_all(text.as_bytes())?;
                    f.sync_all()?;
                }
                None => outln!("{text}"),
            }
            errln!(
                "exported {} revisions, {} operations, {} documents",
                dump.revisions.len(),
                dump.operations.len(),
                dump.documents.len()
            );
        }
        cli::StateCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
            };
            let dump: agent_core::StateDump = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an agentctl state export ({e}); make one with `agentctl state export`",
                    file.display()
                )
            })?;
            let summary = store.import(&dump).await?;
            match g.output {
                Output::Table => print_out(
                    g.output,
                    format!(
                        "imported {} revisions, {} operations, {} documents; {} already there, unchanged",
                        summary.revisions, summary.operations, summary.documents, summary.unchanged
                    ),
                ),
                o => print_out(o, render::structured(o, &summary)?),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn fleet(g: &Global) -> anyhow::Result<agent_rollout::Fleet> {
    let store: Arc<dyn StateStore> = open_store(g).await?;
    let policy = g.secret_policy();
    let connect = agent_docker::connector(policy);
    let json = g.output == Output::Json;
    let bar = render::FleetBar::new(g.no_progress || g.output != Output::Table);
    let events: agent_rollout::FleetReporter = Arc::new(move |e: &agent_rollout::FleetEvent| {
        if json {
            // One JSON event per line on stdout, for CI systems.
            if let Ok(line) = serde_json::to_string(e) {
                outln!("{line}");
            }
        } else {
            bar.event(e);
        }
    });
    // On a terminal the bar and the fleet events (with each target's outcome and reason) are the view;
    // --no-progress prints every target's steps and verdict instead.
    let detail_quiet =
        g.output != Output::Table || (!g.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let progress = Arc::new(Progress::new(true, detail_quiet));
    Ok(agent_rollout::Fleet::new(store, connect, events, progress))
}

fn fleet_exit(g: &Global, state: &agent_rollout::RolloutState) -> ExitCode {
    match g.output {
        Output::Table => print_out(g.output, render::rollout_table(state)),
        // JSON already streamed one event per line; YAML gets the final state.
        Output::Yaml => match render::structured(g.output, state) {
            Ok(text) => print_out(g.output, text),
            Err(e) => errln!("error: cannot render the rollout state: {e}"),
        },
        Output::Json => {}
    }
    ExitCode::from(state.exit_code().clamp(0, 255) as u8)
}

fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{e:#}");
    if text.contains("cannot reach the Docker engine") {
        Some("start the engine (`dockerd`), or point --host / DOCKER_HOST at it")
    } else if text.contains("is locked by") {
        Some("another agentctl works on this container; wait for it to finish")
    } else if text.contains("locked on the engine") {
        Some("another agentctl (with any state store) works on this container; wait for it to finish, or if the process the message names is gone, remove the lock record it names")
    } else if text.contains("state store postgres") {
        Some("check the URL in --state / AGENTCTL_STATE: host, port, user, database, the password (or PGPASSWORD), sslmode")
    } else if text.contains("state store") {
        Some("use --state-dir (or --state FILE) to choose another location")
    } else {
        None
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let filter = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AGENTCTL_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(render::colour())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // A spec that conflicts with a running rollout is a usage error: nothing was changed.
            let usage = e.downcast_ref::<Usage>().is_some()
                || matches!(
                    e.downcast_ref::<agent_rollout::Error>(),
                    Some(agent_rollout::Error::RolloutConflict { .. })
                );
            // No error shows a URL's password or token, whoever wrote the message.
            let shown = |text: String| render::terminal_safe(&agent_core::redact_url_credentials(&text)).into_owned();
            errln!("{} {}", render::red("error:"), shown(e.to_string()));
            for cause in e.chain().skip(1) {
                errln!("  caused by: {}", shown(cause.to_string()));
            }
            if let Some(h) = hint(&e) {
                errln!("  hint: {h}");
            }
            if let Some(agent_rollout::Error::RevertFailed { .. } | agent_rollout::Error::NotAsExpected { .. }) =
                e.downcast_ref::<agent_rollout::Error>()
            {
                return ExitCode::from(5);
            }
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Serves the rollouts' Prometheus metrics on `addr` in the background while this process runs.
async fn serve_metrics(addr: &str, fleet: Arc<agent_rollout::Fleet>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Usage(format!("--metrics-listen {addr}: {e}")))?;
    errln!("rollout metrics on http://{}/metrics", listener.local_addr()?);
    // At most 64 scrapes at once, 5 s to send a request; an accept error (EMFILE) backs off and retries
    // instead of ending the loop.
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(10);
        loop {
            let (mut conn, _) = match listener.accept().await {
                Ok(c) => {
                    backoff = std::time::Duration::from_millis(10);
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "--metrics-listen: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(conn);
                continue;
            };
            let fleet = fleet.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = [0u8; 2048];
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return;
                }
                let body = match fleet.all().await {
                    Ok(states) => agent_rollout::metrics_text(&states),
                    Err(e) => format!("# error: {e}\n"),
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}
