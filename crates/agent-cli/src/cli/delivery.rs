//! Arguments of the delivery loop: `build`, `test` and `deliver`.

use std::path::PathBuf;
use std::time::Duration;

use agent_core::ImageRef;
use clap::Args;

use super::{parse_duration, Usage, VerifyArgs};

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The build context directory.
    pub(crate) context: PathBuf,
    /// The repository to tag, without a tag: `REGISTRY/NAME`.
    #[arg(long, value_name = "REPO")]
    pub(crate) image: String,
    /// The semantic version (`1.4.2`, `v1.4.2`); `latest` and non-semver versions are refused.
    #[arg(long, value_name = "SEMVER")]
    pub(crate) version: String,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// Push both tags to the repository's registry and print the digest.
    #[arg(long)]
    pub(crate) push: bool,
    /// Let findings of this lint rule through (repeatable): non-root-user, healthcheck, pinned-base,
    /// no-secrets, exec-form, copy-not-add.
    #[arg(long = "allow", value_name = "RULE")]
    pub(crate) allow: Vec<agent_docker::lint::Rule>,
    /// `org.opencontainers.image.source` (default: the git remote `origin`).
    #[arg(long, value_name = "URL")]
    pub(crate) source: Option<String>,
    /// `org.opencontainers.image.title` (default: the repository's last path component).
    #[arg(long)]
    pub(crate) title: Option<String>,
}

impl BuildArgs {
    /// The library request.
    pub(crate) fn request(&self) -> agent_docker::build::BuildRequest {
        agent_docker::build::BuildRequest {
            context: self.context.clone(),
            dockerfile: self.file.clone(),
            repository: self.image.clone(),
            version: self.version.clone(),
            allow: self.allow.clone(),
            push: self.push,
            source: self.source.clone(),
            title: self.title.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The image to test (`registry/repo:tag` or `@sha256:…`).
    pub(crate) image: String,
    /// Write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// Environment of the agent (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// The variable that tells the agent the control center's URL.
    #[arg(long, default_value = "CONTROL_CENTER_URL", value_name = "NAME")]
    pub(crate) url_env: String,
    /// The variable that gives the agent the control center's token.
    #[arg(long, default_value = "CONTROL_CENTER_TOKEN", value_name = "NAME")]
    pub(crate) token_env: String,
    /// Protocol versions the control center accepts, as a semver range (`>=1.0, <2`).
    #[arg(long, value_name = "RANGE")]
    pub(crate) protocol: Option<String>,
    /// A metric name the metrics page (--metrics-port, --metrics-path) must have (repeatable).
    #[arg(long = "require-series", value_name = "NAME")]
    pub(crate) require_series: Vec<String>,
    /// Run the agent with a read-only root filesystem.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// A command run in the agent that must exit 0 (repeatable; split on spaces, no shell).
    #[arg(long = "exec", value_name = "COMMAND")]
    pub(crate) exec: Vec<String>,
    /// A container started on the test network before the agent, reachable by NAME (repeatable); its address
    /// is `${IP:NAME}` in --env values and test-container commands.
    #[arg(long = "dependency", value_name = "NAME=IMAGE")]
    pub(crate) dependencies: Vec<String>,
    /// A container run on the test network once the agent is healthy, which must exit 0 (repeatable): its
    /// name, image and command split on spaces; `${AGENT_IP}` is the agent's address.
    #[arg(long = "test-container", value_name = "NAME=IMAGE [ARG...]")]
    pub(crate) test_containers: Vec<String>,
    /// The stop timeout the agent runs with; it must exit 0 on its stop signal within it (default: the
    /// engine's 10 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) stop_timeout: Option<Duration>,
    /// An engine the image will run on (repeatable): the image must match its OS and architecture.
    #[arg(long = "target-host", value_name = "ENDPOINT")]
    pub(crate) target_hosts: Vec<String>,
    #[command(flatten)]
    pub(crate) verify: VerifyArgs,
}

impl TestArgs {
    /// The contract, without the target engines (the caller connects to them).
    pub(crate) fn contract(&self) -> Result<agent_rollout::contract::Contract, Usage> {
        if self.verify.heartbeat.is_some() || self.verify.watch.is_some() {
            return Err(Usage(
                "--heartbeat and --watch do not apply to `test`: it runs its own control center, and the agent is removed at the end".into(),
            ));
        }
        let image: ImageRef = self
            .image
            .parse()
            .map_err(|e: agent_core::ImageRefError| Usage(format!("IMAGE {}: {e}", self.image)))?;
        let mut c = agent_rollout::contract::Contract::new(image);
        c.verify = self.verify.config()?;
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| Usage(format!("--env {e}: give NAME=VALUE")))?;
            c.env.push((k.to_owned(), v.to_owned()));
        }
        c.url_env = self.url_env.clone();
        c.token_env = self.token_env.clone();
        c.protocol = self
            .protocol
            .as_deref()
            .map(|p| {
                semver::VersionReq::parse(p).map_err(|e| {
                    Usage(format!(
                        "--protocol {p}: not a semver range ({e}); give one like `>=1.0, <2`"
                    ))
                })
            })
            .transpose()?;
        if !self.require_series.is_empty() {
            c.metrics = Some(agent_rollout::contract::MetricsContract {
                port: self.verify.metrics_port,
                path: self.verify.metrics_path.clone(),
                series: self.require_series.clone(),
            });
        }
        c.read_only = self.read_only;
        c.stop_timeout = self.stop_timeout;
        let name_image = |flag: &str, text: &str| -> Result<(String, ImageRef), Usage> {
            let (name, image) = text
                .split_once('=')
                .ok_or_else(|| Usage(format!("{flag} {text}: give NAME=IMAGE")))?;
            let image = image
                .parse()
                .map_err(|e: agent_core::ImageRefError| Usage(format!("{flag} {text}: {e}")))?;
            Ok((name.to_owned(), image))
        };
        for d in &self.dependencies {
            let (name, image) = name_image("--dependency", d)?;
            c.dependencies.push(agent_rollout::contract::Dependency {
                name,
                image,
                env: Default::default(),
                command: None,
            });
        }
        for t in &self.test_containers {
            let mut words = t.split_whitespace();
            let (name, image) = name_image("--test-container", words.next().unwrap_or_default())?;
            c.test_containers.push(agent_rollout::contract::TestContainer {
                name,
                image,
                command: words.map(str::to_owned).collect(),
                env: Default::default(),
                timeout: Duration::from_secs(60),
            });
        }
        c.exec = self
            .exec
            .iter()
            .map(|cmd| cmd.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|argv| !argv.is_empty())
            .collect();
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub(crate) struct DeliverArgs {
    /// The delivery file (YAML or JSON): `build:`, `test:`, `rollout:` (without `image`), optional `watch:`.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The version to build (overrides `build.version`; CI passes its tag).
    #[arg(long, value_name = "SEMVER")]
    pub(crate) version: Option<String>,
}
