//! Update hooks: a command in the old container before anything is stopped (`preUpdate`; exit 75 skips the
//! target, Watchtower's convention; any other failure refuses the update), a command in the new container
//! that must pass for it to be verified (`postUpdate`), and an update lock the agent can hold (a file in its
//! container: the update waits for it to go away).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::{duration_text, ContainerRuntime, RuntimeError};
use agent_health::{Observation, Probe, ProbeContext};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The exit code with which a `preUpdate` hook asks to skip this target.
pub const SKIP_EXIT_CODE: i64 = 75;

/// Hooks of an update (`hooks:` in a rollout spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Hooks {
    /// Run in the old container before it is stopped (argv, no shell).
    pub pre_update: Vec<String>,
    /// Run in the new container after it starts; it must exit 0 for the new version to pass.
    pub post_update: Vec<String>,
    /// How long a hook may run.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// A file the agent creates in its container while it must not be updated. It is read through the
    /// engine's archive API (no tool needed in the image), which sees the container's filesystem and its
    /// volumes but not a tmpfs mount.
    pub lock_file: Option<String>,
    /// How long to wait for the lock file to go away.
    #[serde(with = "duration_text")]
    pub lock_timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            pre_update: Vec::new(),
            post_update: Vec::new(),
            timeout: Duration::from_secs(30),
            lock_file: None,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

/// What the checks before an update decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Before {
    /// Go on.
    Proceed,
    /// The pre-update hook asked to skip this target: why.
    Skip(String),
}

/// Waits for the update lock and runs the pre-update hook in `container`; errors change nothing.
pub(crate) async fn before_update(
    runtime: &dyn ContainerRuntime,
    container: &str,
    hooks: &Hooks,
    waiting: &(dyn Fn(&str) + Send + Sync),
) -> Result<Before, Error> {
    let refuse = |message: String| Error::InvalidInput {
        what: format!("the update of {container}"),
        message,
    };
    if let Some(path) = &hooks.lock_file {
        let started = Instant::now();
        let mut said = false;
        loop {
            match runtime.export_path(container, path).await {
                Err(RuntimeError::ContainerNotFound { .. }) | Err(RuntimeError::Engine { status: Some(404), .. }) => {
                    break
                }
                Err(e) => return Err(refuse(format!("cannot read its update lock {path}: {e}"))),
                Ok(_) if started.elapsed() >= hooks.lock_timeout => {
                    return Err(refuse(format!(
                        "the agent still holds its update lock {path} after {}; nothing was changed: try again later, or raise hooks.lockTimeout",
                        agent_core::format_duration(hooks.lock_timeout)
                    )))
                }
                Ok(_) => {
                    if !said {
                        waiting(&format!("{container} holds its update lock {path}: waiting up to {}", agent_core::format_duration(hooks.lock_timeout)));
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if said {
            waiting(&format!(
                "{container} released its update lock after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    if hooks.pre_update.is_empty() {
        return Ok(Before::Proceed);
    }
    let shown = hooks.pre_update.join(" ");
    let out = runtime
        .exec(container, &hooks.pre_update, hooks.timeout)
        .await
        .map_err(|e| {
            refuse(format!(
                "its preUpdate hook `{shown}` could not run: {e}; nothing was changed"
            ))
        })?;
    match out.exit_code {
        0 => Ok(Before::Proceed),
        SKIP_EXIT_CODE => Ok(Before::Skip(format!(
            "its preUpdate hook `{shown}` exited {SKIP_EXIT_CODE}: skipped, nothing was changed{}",
            tail(&out.output)
        ))),
        code => Err(refuse(format!(
            "its preUpdate hook `{shown}` exited {code}; nothing was changed{}",
            tail(&out.output)
        ))),
    }
}

fn tail(output: &str) -> String {
    let t = output.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(" (output: {})", t.chars().take(300).collect::<String>())
    }
}

/// The post-update hook as a probe of the gate: it runs once, in the background (a hook may take longer
/// than one check may), pending until it ends, then passes or fails the new version for good.
pub(crate) struct PostUpdateProbe {
    argv: Vec<String>,
    timeout: Duration,
    result: Arc<Mutex<Option<Observation>>>,
    started: Mutex<bool>,
}

impl PostUpdateProbe {
    pub(crate) fn new(hooks: &Hooks) -> PostUpdateProbe {
        PostUpdateProbe {
            argv: hooks.post_update.clone(),
            timeout: hooks.timeout,
            result: Arc::new(Mutex::new(None)),
            started: Mutex::new(false),
        }
    }
}

#[async_trait]
impl Probe for PostUpdateProbe {
    fn name(&self) -> &str {
        "post-update"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        if let Some(done) = self.result.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return done;
        }
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            *started = true;
            let (runtime, container) = (ctx.runtime.clone(), ctx.container.clone());
            let (argv, timeout, result) = (self.argv.clone(), self.timeout, self.result.clone());
            tokio::spawn(async move {
                let shown = argv.join(" ");
                let seen = match runtime.exec(&container, &argv, timeout).await {
                    Ok(o) if o.exit_code == 0 => Observation::Pass(format!("`{shown}` exited 0")),
                    Ok(o) => Observation::Fatal(format!("`{shown}` exited {}{}", o.exit_code, tail(&o.output))),
                    Err(e) => Observation::Fatal(format!("`{shown}` could not run: {e}")),
                };
                *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
            });
        }
        Observation::Pending(format!("`{}` is running", self.argv.join(" ")))
    }
}
