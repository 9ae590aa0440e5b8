//! Command-line arguments (clap derive) and their validation into library requests.

use std::path::PathBuf;
use std::time::Duration;

use agent_core::{ContainerName, ImageRef, RevisionNumber, TagPolicy};
use agent_health::Condition;
use agent_health::{HttpProbeConfig, Timing};
use agent_rollout::{HeartbeatCheck, PullPolicy, QueryCheck, ScrapeCheck, UpdateRequest, VerifyConfig, WatchConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod delivery;

pub(crate) use delivery::{BuildArgs, DeliverArgs, TestArgs};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AGENTCTL_GIT_REV"), ")");

/// Safe, progressive delivery of containerized agents on plain Docker hosts.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version = VERSION, about, long_about = None)]
#[command(
    after_help = "Examples:\n  agentctl update node-agent --image 127.0.0.1:5000/acme/node-agent:1.4.2\n  agentctl history node-agent\n  agentctl undo node-agent --to-revision 3\n  agentctl demo"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Where agentctl keeps its files (the default state store `DIR/state.db`, backups).
    #[arg(long, global = true, env = "AGENTCTL_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// The state store (revisions, journal, leases, rollouts, deliveries): a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB?sslmode=require`, password from the URL or PGPASSWORD; never shown in
    /// help or errors) shared by a team and its CI, or a SQLite file for one machine. Default:
    /// STATE_DIR/state.db.
    #[arg(
        long,
        global = true,
        env = "AGENTCTL_STATE",
        hide_env_values = true,
        value_name = "URL|FILE"
    )]
    pub(crate) state: Option<String>,
    /// Docker engine endpoint (unix:///var/run/docker.sock, tcp://HOST:PORT).
    #[arg(
        long = "host",
        short = 'H',
        global = true,
        env = "DOCKER_HOST",
        hide_env_values = true,
        value_name = "ENDPOINT"
    )]
    pub(crate) host: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Plain line output instead of progress bars.
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
    /// More logs on stderr (-v info, -vv debug).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Also treat env variables whose name matches GLOB as secret (`*` any run, case-insensitive); added to
    /// the defaults (names containing SECRET, PASSWORD, PASSWD, PWD, TOKEN, KEY, CREDENTIAL, PRIVATE, AUTH,
    /// or ending in _PAT). Secret values are never stored or printed.
    #[arg(long = "secret-pattern", global = true, value_name = "GLOB")]
    pub(crate) secret_patterns: Vec<String>,
    /// Never treat the env variable NAME as secret (a name the patterns catch by accident). A value with URL
    /// credentials (`scheme://user:password@host`) stays secret anyway.
    #[arg(long = "not-secret", global = true, value_name = "NAME")]
    pub(crate) not_secret: Vec<String>,
}

impl Global {
    /// The secret policy: the defaults plus what the flags add.
    pub(crate) fn secret_policy(&self) -> agent_core::SecretPolicy {
        let mut policy = agent_core::SecretPolicy::default();
        policy.patterns.extend(self.secret_patterns.iter().cloned());
        policy.plain.extend(self.not_secret.iter().cloned());
        policy
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable text and tables.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Lint a Dockerfile, build it, check the image, tag it `REPO:SEMVER` (and `REPO:SEMVER-COMMIT`), push it.
    #[command(
        after_help = "Example:\n  agentctl build . --image 127.0.0.1:5000/acme/node-agent --version 1.4.2 --push\n\nExit codes: 0 built (and pushed), 1 a lint finding or the build failed (no tag is left), 2 usage."
    )]
    Build(BuildArgs),
    /// Contract-test an agent image in a throwaway environment: healthy, heartbeat with its version and
    /// protocol, metrics, reconnect, graceful stop, non-root, platform. Nothing outside it is touched.
    #[command(
        after_help = "Example:\n  agentctl test 127.0.0.1:5000/acme/node-agent:1.4.2 --http-port 8080 --protocol '>=1.0, <2' --require-series agent_up --junit contract.xml\n\nExit codes: 0 every case passed, 1 a case failed or the environment could not be set up (nothing outside it changed), 2 usage, 130 interrupted (the environment is removed)."
    )]
    Test(TestArgs),
    /// Build, test, roll out and watch from one delivery file; stops at the first stage that fails.
    #[command(
        after_help = "Example:\n  agentctl deliver -f delivery.yaml --version 1.4.2\n\nExit codes: 0 delivered, 1 build or test failed (no host changed), 2 usage, 3 rolled back, 4 paused, 5 not fully reverted."
    )]
    Deliver(DeliverArgs),
    /// List the deliveries: who, when, commit, digest, tests and outcome.
    #[command(after_help = "Example:\n  agentctl deliveries -o json")]
    Deliveries,
    /// Move the state store's history, journal, rollouts and deliveries to another store (SQLite ⇄
    /// PostgreSQL): export to JSON, import into the store `--state` names.
    #[command(
        subcommand,
        after_help = "Example:\n  agentctl state export > state.json\n  AGENTCTL_STATE=postgres://agentctl@db.internal/agentctl agentctl state import state.json\n\nExit codes: 0 done, 1 error (an import that conflicts with what the store holds imports nothing), 2 usage."
    )]
    State(StateCommand),
    /// Update one agent container to a new image, verify it, and roll back by itself if it fails.
    #[command(
        after_help = "Example:\n  agentctl update node-agent --image 127.0.0.1:5000/acme/node-agent:1.4.2 --http-port 8080\n\nExit codes: 0 updated and verified, 1 error (nothing changed), 2 usage, 3 the new version failed and was rolled back."
    )]
    Update(UpdateArgs),
    /// Go back to the previous (or a given) revision, verified like an update.
    #[command(after_help = "Example:\n  agentctl undo node-agent --to-revision 3")]
    Undo(UndoArgs),
    /// List the revisions of a container.
    #[command(
        after_help = "Examples:\n  agentctl history node-agent -o json\n  agentctl history node-agent --protect 3"
    )]
    History(HistoryArgs),
    /// Show a container's current revision and health, repairing an interrupted operation first.
    #[command(after_help = "Example:\n  agentctl status node-agent")]
    Status(NameArgs),
    /// Roll out an image across a fleet from a spec (YAML or JSON): recreate, rolling, blue-green or canary.
    #[command(
        after_help = "Example:\n  agentctl apply -f rollout.yaml -o json\n\nExit codes: 0 succeeded, 1 error before any change, 3 rolled back (fully reverted), 4 paused, 5 failed and could not fully revert."
    )]
    Apply(ApplyArgs),
    /// Act on a rollout from any process: status, pause, promote, resume, abort, retry, undo, history.
    #[command(
        subcommand,
        after_help = "Examples:\n  agentctl rollout status node-agent\n  agentctl rollout promote node-agent\n  agentctl rollout abort node-agent"
    )]
    Rollout(RolloutCommand),
    /// Run the heartbeat control center that agents report to.
    #[command(
        name = "control-center",
        after_help = "Example:\n  agentctl control-center --listen 127.0.0.1:7070 --token-file /etc/agentctl/cc-token"
    )]
    ControlCenter(ControlCenterArgs),
    /// List the agents a control center knows, with version, last seen and state.
    #[command(
        after_help = "Example:\n  agentctl agents --control-center http://127.0.0.1:7070 --token-file /etc/agentctl/cc-token"
    )]
    Agents(AgentsArgs),
    /// Build the demo agent, deploy a small fleet, update it, break it, and watch it roll back.
    #[command(after_help = "Example:\n  agentctl demo --keep")]
    Demo(DemoArgs),
    /// Print shell completions.
    #[command(after_help = "Example:\n  agentctl completions bash > /etc/bash_completion.d/agentctl")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Container name.
    pub(crate) name: String,
    /// Revisions kept in the history.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub(crate) history_limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Container name.
    pub(crate) name: String,
    /// Revisions shown (and kept: pruning follows the same limit).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub(crate) history_limit: u32,
    /// Protect revision N: it is never pruned and its retained container is kept.
    #[arg(long, value_name = "N", conflicts_with = "unprotect")]
    pub(crate) protect: Option<String>,
    /// Take the protection of revision N away (pruning may drop it again).
    #[arg(long, value_name = "N")]
    pub(crate) unprotect: Option<String>,
}

impl HistoryArgs {
    /// The revision to (un)protect and how, when one is asked for.
    pub(crate) fn protection(&self) -> Result<Option<(RevisionNumber, bool)>, Usage> {
        let parse = |flag: &str, s: &str| s.parse::<RevisionNumber>().map_err(|e| Usage(format!("{flag}: {e}")));
        Ok(match (&self.protect, &self.unprotect) {
            (Some(n), _) => Some((parse("--protect", n)?, true)),
            (None, Some(n)) => Some((parse("--unprotect", n)?, false)),
            (None, None) => None,
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The rollout spec (YAML or JSON); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Serve Prometheus metrics of the rollouts (phase counts, current step, duration, targets by status)
    /// on this address while the command runs, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,
    /// When a rollout of this name has not finished and runs another spec, revert it (every target it
    /// touched back to its previous revision) and start this spec; without it, such an apply is refused.
    #[arg(long)]
    pub(crate) replace: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Write everything the store holds except leases as JSON (to stdout, or to FILE).
    Export {
        /// Write here instead of stdout (created with mode 0600).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Add an export to the store, all or nothing: identical items are skipped, differing ones refused.
    Import {
        /// The export (`-` for stdin).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// List every rollout with its phase, step, targets and age.
    #[command(after_help = "Example:\n  agentctl rollout list -o json")]
    List,
    /// Show a rollout's phase, step and every target's state.
    #[command(after_help = "Example:\n  agentctl rollout status node-agent -o json")]
    Status {
        /// Rollout name.
        name: String,
    },
    /// Continue a rollout paused until promotion (or after an inconclusive analysis).
    #[command(after_help = "Example:\n  agentctl rollout promote node-agent")]
    Promote {
        /// Rollout name.
        name: String,
    },
    /// Same as promote: continue a paused rollout.
    #[command(after_help = "Example:\n  agentctl rollout resume node-agent")]
    Resume {
        /// Rollout name.
        name: String,
    },
    /// Stop a rollout and revert every target it updated.
    #[command(after_help = "Example:\n  agentctl rollout abort node-agent")]
    Abort {
        /// Rollout name.
        name: String,
    },
    /// Pause a running rollout at its next step (from any process); continue with promote or resume.
    #[command(after_help = "Example:\n  agentctl rollout pause node-agent --reason 'error budget'")]
    Pause {
        /// Rollout name.
        name: String,
        /// Why (shown in status and events).
        #[arg(long, default_value = "paused by the operator")]
        reason: String,
    },
    /// Run an aborted, rolled-back or failed rollout again from its first step.
    #[command(after_help = "Example:\n  agentctl rollout retry node-agent")]
    Retry {
        /// Rollout name.
        name: String,
    },
    /// Take a succeeded or paused rollout back: every target it updated returns to its previous revision.
    /// With `--to-revision N`, every service target gets the whole spec of its revision N back.
    #[command(
        after_help = "Examples:\n  agentctl rollout undo node-agent\n  agentctl rollout undo node-agent --to-revision 1"
    )]
    Undo {
        /// Rollout name.
        name: String,
        /// The revision of its services to put back (`agentctl rollout history NAME` lists them).
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Every target's revisions (what each update, rollback and undo recorded).
    #[command(after_help = "Example:\n  agentctl rollout history node-agent -o json")]
    History {
        /// Rollout name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ControlCenterArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(crate) listen: String,
    /// File holding the bearer token agents must send (or env AGENTCTL_CC_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// An agent is late after this long without a heartbeat.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) late_after: Duration,
    /// And down after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) down_after: Duration,
    /// Serve `/metrics` (which lists every agent id) without the token.
    #[arg(long)]
    pub(crate) public_metrics: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    /// The control center (`http://IP:PORT`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7070")]
    pub(crate) control_center: String,
    /// File holding its token (or env AGENTCTL_CC_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Leave the demo fleet running for you to explore.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Number of demo agents.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub(crate) agents: u32,
}

/// Verification options shared by update and undo.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// How long every probe must pass before the new container counts as healthy.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) min_healthy_time: Duration,
    /// Give up verifying (and roll back) after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) deadline: Duration,
    /// Time between probe checks.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub(crate) period: Duration,
    /// Consecutive failures that fail verification.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) failure_threshold: u32,
    /// A regular expression for fatal log lines (repeatable; default: fatal, panic).
    #[arg(long = "fatal-pattern", value_name = "REGEX")]
    pub(crate) fatal_patterns: Vec<String>,
    /// Probe HTTP GET on this container port (on the container's address).
    #[arg(long)]
    pub(crate) http_port: Option<u16>,
    /// Path for the HTTP probe.
    #[arg(long, default_value = "/health", requires = "http_port")]
    pub(crate) http_path: String,
    /// Probe the port published on the host (127.0.0.1:P) instead of the container's address.
    #[arg(long, value_name = "P", requires = "http_port")]
    pub(crate) http_host_port: Option<u16>,
    /// The status the HTTP probe expects (default: any 2xx).
    #[arg(long, value_name = "CODE", requires = "http_port", value_parser = clap::value_parser!(u16).range(100..=599))]
    pub(crate) http_status: Option<u16>,
    /// Control center the agent sends heartbeats to (`http://IP:PORT`): the new container must report the new version.
    #[arg(long, value_name = "URL")]
    pub(crate) heartbeat: Option<String>,
    /// File holding the control center's token (or env AGENTCTL_CC_TOKEN).
    #[arg(long, value_name = "FILE", requires = "heartbeat")]
    pub(crate) heartbeat_token_file: Option<PathBuf>,
    /// A heartbeat older than this fails the heartbeat probe.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) heartbeat_max_age: Duration,
    /// Prometheus server for --query (`http://127.0.0.1:9090`).
    #[arg(long, value_name = "URL", requires = "query")]
    pub(crate) prometheus: Option<String>,
    /// A PromQL query that must meet --success-condition while verifying.
    #[arg(long, requires_all = ["prometheus", "success_condition"])]
    pub(crate) query: Option<String>,
    /// Condition over the query's value, like `result < 0.05`.
    #[arg(long, requires = "query")]
    pub(crate) success_condition: Option<String>,
    /// A check of the agent's own metrics, like `agent_up == 1` or `agent_requests_total{code="500"} < 5` (repeatable).
    #[arg(long = "metric", value_name = "CHECK")]
    pub(crate) metrics: Vec<String>,
    /// Port and path where the agent serves its metrics.
    #[arg(long, default_value_t = 8080)]
    pub(crate) metrics_port: u16,
    /// Path of the agent's metrics.
    #[arg(long, default_value = "/metrics")]
    pub(crate) metrics_path: String,
    /// Fail when the container uses more CPU than this percentage (100 = one CPU), from the engine's stats.
    #[arg(long, value_name = "PERCENT")]
    pub(crate) max_cpu: Option<f64>,
    /// Fail when the container uses more memory than this (bytes, or with KiB/MiB/GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_memory: Option<u64>,
    /// After success, keep watching this long and roll back when a probe keeps failing (probation).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) watch: Option<Duration>,
    /// During --watch, how long a probe must fail before its alert fires (a crash fires at once).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) alert_for: Duration,
    /// Revisions kept in the history (retained containers beyond it are removed).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub(crate) history_limit: u32,
    /// When to pull the image.
    #[arg(long, value_enum, default_value_t = PullArg::Missing)]
    pub(crate) pull: PullArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PullArg {
    /// When the image is not on the engine.
    Missing,
    /// Every time.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Container name.
    pub(crate) name: String,
    /// The new image (`registry/repo:tag` or `@sha256:…`).
    #[arg(long, short = 'i')]
    pub(crate) image: String,
    /// Allow floating tags such as `latest`.
    #[arg(long)]
    pub(crate) allow_floating_tag: bool,
    /// Only accept semantic-version tags.
    #[arg(long)]
    pub(crate) semver_only: bool,
    /// Only accept a version newer than the running one.
    #[arg(long)]
    pub(crate) newer_only: bool,
    /// Copy the content of config-carrying mounts here before changing anything.
    #[arg(long, value_name = "DIR")]
    pub(crate) backup_dir: Option<PathBuf>,
    /// Why (recorded in the history).
    #[arg(long)]
    pub(crate) cause: Option<String>,
    /// stop-first: never two instances, a short gap; start-first: the new version starts and is verified
    /// beside the old one as NAME.preview, then takes the name (no gap; refused for fixed host ports and
    /// static addresses).
    #[arg(long, value_enum, default_value_t = ModeArg::StopFirst)]
    pub(crate) strategy: ModeArg,
    /// Run this command in the old container before anything is stopped (split on spaces, no shell): exit
    /// 75 skips the update, any other non-zero exit refuses it; nothing is changed either way.
    #[arg(long, value_name = "COMMAND")]
    pub(crate) pre_update: Option<String>,
    /// Run this command in the new container after it starts: it must exit 0 for the new version to pass.
    #[arg(long, value_name = "COMMAND")]
    pub(crate) post_update: Option<String>,
    /// How long a hook may run.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) hook_timeout: Duration,
    /// A file the agent creates in its container while it must not be updated: wait for it to go away.
    #[arg(long, value_name = "PATH")]
    pub(crate) update_lock: Option<String>,
    /// How long to wait for --update-lock.
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "update_lock")]
    pub(crate) update_lock_timeout: Duration,
    #[command(flatten)]
    pub(crate) verify: VerifyArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    /// Stop the old container, then start the new one.
    StopFirst,
    /// Start and verify the new one beside the old one, then switch.
    StartFirst,
}

#[derive(Debug, Args)]
pub(crate) struct UndoArgs {
    /// Container name.
    pub(crate) name: String,
    /// The revision to go back to (default: the last known-good before the current one).
    #[arg(long, value_name = "N")]
    pub(crate) to_revision: Option<String>,
    #[command(flatten)]
    pub(crate) verify: VerifyArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim(), *m)))
    .unwrap_or((t, 1));
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}: write bytes or a number with KiB, MiB or GiB, like 256MiB"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    agent_core::parse_duration(s)
}

/// A usage error: exit 2 with this message.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub(crate) fn container_name(s: &str) -> Result<ContainerName, Usage> {
    s.parse()
        .map_err(|e: agent_core::ContainerNameError| Usage(e.to_string()))
}

impl VerifyArgs {
    fn config(&self) -> Result<VerifyConfig, Usage> {
        for p in &self.fatal_patterns {
            regex_check(p)?;
        }
        if self.min_healthy_time >= self.deadline {
            return Err(Usage(format!(
                "--min-healthy-time ({}) must be shorter than --deadline ({}), or verification can never pass",
                agent_core::format_duration(self.min_healthy_time),
                agent_core::format_duration(self.deadline)
            )));
        }
        let mut v = VerifyConfig {
            timing: Timing {
                period: self.period,
                min_healthy_time: self.min_healthy_time,
                deadline: self.deadline,
                failure_threshold: self.failure_threshold,
                ..Timing::default()
            },
            ..VerifyConfig::default()
        };
        if !self.fatal_patterns.is_empty() {
            v.fatal_patterns = self.fatal_patterns.clone();
        }
        v.http = self.http_port.map(|port| HttpProbeConfig {
            port,
            path: self.http_path.clone(),
            expected_status: self.http_status,
            host_port: self.http_host_port,
        });
        if let Some(url) = &self.heartbeat {
            v.heartbeat = Some(HeartbeatCheck {
                url: url.clone(),
                token: read_token(self.heartbeat_token_file.as_deref())?,
                max_age: self.heartbeat_max_age,
            });
        }
        if let (Some(url), Some(query), Some(cond)) = (&self.prometheus, &self.query, &self.success_condition) {
            v.queries.push(QueryCheck {
                prometheus: url.clone(),
                query: query.clone(),
                condition: Condition::parse(cond).map_err(|e| Usage(format!("--success-condition: {e}")))?,
            });
        }
        if self.max_cpu.is_some() || self.max_memory.is_some() {
            if self.max_cpu.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                return Err(Usage("--max-cpu must be a positive percentage, like 85".into()));
            }
            v.resources = Some(agent_health::ResourceProbe {
                max_cpu_percent: self.max_cpu,
                max_memory_bytes: self.max_memory,
            });
        }
        for m in &self.metrics {
            let (selector, condition) =
                agent_rollout::parse_metric_check(m).map_err(|e| Usage(format!("--metric: {e}")))?;
            v.scrapes.push(ScrapeCheck {
                port: self.metrics_port,
                path: self.metrics_path.clone(),
                selector,
                condition,
            });
        }
        Ok(v)
    }

    fn pull(&self) -> PullPolicy {
        match self.pull {
            PullArg::Missing => PullPolicy::Missing,
            PullArg::Always => PullPolicy::Always,
            PullArg::Never => PullPolicy::Never,
        }
    }

    pub(crate) fn undo_request(&self, name: ContainerName) -> Result<agent_rollout::UndoRequest, Usage> {
        let mut r = agent_rollout::UndoRequest::new(name);
        r.verify = self.config()?;
        r.pull = self.pull();
        r.history_limit = self.history_limit as usize;
        Ok(r)
    }

    pub(crate) fn request(&self, name: ContainerName, image: ImageRef) -> Result<UpdateRequest, Usage> {
        let mut r = UpdateRequest::new(name, image);
        r.verify = self.config()?;
        r.pull = self.pull();
        r.history_limit = self.history_limit as usize;
        r.watch = self.watch.map(|window| WatchConfig {
            window,
            alert_for: self.alert_for,
            period: self.period.max(Duration::from_millis(500)),
        });
        Ok(r)
    }
}

fn regex_check(p: &str) -> Result<(), Usage> {
    agent_health::LogScanProbe::new(vec![p.to_owned()])
        .map(|_| ())
        .map_err(|e| Usage(format!("invalid --fatal-pattern {p:?}: {e}")))
}

impl UpdateArgs {
    pub(crate) fn request(&self) -> Result<UpdateRequest, Usage> {
        let name = container_name(&self.name)?;
        let image: ImageRef = self
            .image
            .parse()
            .map_err(|e: agent_core::ImageRefError| Usage(format!("--image: {e}")))?;
        let mut r = self.verify.request(name, image)?;
        r.policy = TagPolicy {
            allow_floating: self.allow_floating_tag,
            semver_only: self.semver_only,
            newer_only: self.newer_only,
            ..TagPolicy::default()
        };
        r.backup_dir = self.backup_dir.clone();
        r.cause = self.cause.clone();
        r.mode = match self.strategy {
            ModeArg::StopFirst => agent_core::UpdateMode::StopFirst,
            ModeArg::StartFirst => agent_core::UpdateMode::StartFirst,
        };
        let argv = |c: &Option<String>| {
            c.as_deref()
                .map(|c| c.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        r.hooks = agent_rollout::Hooks {
            pre_update: argv(&self.pre_update),
            post_update: argv(&self.post_update),
            timeout: self.hook_timeout,
            lock_file: self.update_lock.clone(),
            lock_timeout: self.update_lock_timeout,
        };
        Ok(r)
    }
}

impl UndoArgs {
    pub(crate) fn revision(&self) -> Result<Option<RevisionNumber>, Usage> {
        self.to_revision
            .as_deref()
            .map(|s| s.parse().map_err(|e: String| Usage(format!("--to-revision: {e}"))))
            .transpose()
    }
}

/// Reads the control-center token (see [`agent_rollout::read_token`]); its warning goes to stderr.
pub(crate) fn read_token(file: Option<&std::path::Path>) -> Result<String, Usage> {
    let token = agent_rollout::read_token(file).map_err(|e| Usage(e.to_string()))?;
    if let Some(w) = &token.warning {
        errln!("warning: {w}");
    }
    Ok(token.value)
}
