//! The [`ContainerRuntime`] trait: what the rest of agentctl needs from a container engine, in domain terms.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::image::{Digest, ImageRef};
use crate::service::{ServiceChange, ServiceInfo, TaskInfo};
use crate::spec::{ContainerSpec, ImageDefaults, RestartPolicy};

/// Facts about an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// The endpoint it was reached at.
    pub endpoint: String,
    /// Engine version (`20.10.24`).
    pub version: String,
    /// The API version negotiated with it (`1.41`).
    pub api_version: String,
    /// Operating system of its containers (`linux`).
    pub os: String,
    /// Architecture in OCI terms (`amd64`).
    pub arch: String,
}

/// An image present on an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// Engine image id (`sha256:…` of the config).
    pub id: String,
    /// Registry digests (`registry/repo@sha256:…`).
    pub repo_digests: Vec<String>,
    /// OS (`linux`).
    pub os: String,
    /// Architecture (`amd64`).
    pub arch: String,
    /// Creation time, if the image records one.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    /// The defaults it gives containers.
    pub defaults: ImageDefaults,
}

impl ImageInfo {
    /// The registry digest of this image for `image`'s repository, when the engine knows it.
    pub fn digest_for(&self, image: &ImageRef) -> Option<Digest> {
        let name = image.name();
        let familiar_name = image.familiar();
        let familiar_name = familiar_name.split([':', '@']).next().unwrap_or_default();
        self.repo_digests.iter().find_map(|rd| {
            let (repo, digest) = rd.split_once('@')?;
            (repo == name || repo == familiar_name)
                .then(|| digest.parse().ok())
                .flatten()
        })
    }
}

/// The engine's view of a container's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by its restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead.
    Dead,
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// HEALTHCHECK status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Within the start period, no verdict yet.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// One HEALTHCHECK run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthLogEntry {
    /// Exit code of the check.
    pub exit_code: i64,
    /// What it printed (trimmed).
    pub output: String,
}

/// HEALTHCHECK state of a container whose image or spec defines one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthState {
    /// The status.
    pub status: HealthStatus,
    /// Consecutive failures.
    pub failing_streak: u64,
    /// The last runs, oldest first.
    pub log: Vec<HealthLogEntry>,
}

/// A container's runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// Lifecycle status.
    pub status: ContainerStatus,
    /// Exit code of the last run (when exited).
    pub exit_code: Option<i64>,
    /// When it last started.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// How often the engine restarted it.
    pub restart_count: u64,
    /// Killed for lack of memory.
    pub oom_killed: bool,
    /// Engine error message, if any.
    pub error: Option<String>,
    /// HEALTHCHECK state, when there is a healthcheck.
    pub health: Option<HealthState>,
}

impl ContainerState {
    /// Whether it is running (and not restarting).
    pub fn is_running(&self) -> bool {
        self.status == ContainerStatus::Running
    }
}

/// A container as inspected: its user-set spec plus runtime facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    /// Engine id.
    pub id: String,
    /// What the user configured (image defaults removed).
    pub spec: ContainerSpec,
    /// Id of the image it runs.
    pub image_id: String,
    /// Runtime state.
    pub state: ContainerState,
    /// Address on each network (`network -> ip`).
    pub addresses: BTreeMap<String, String>,
    /// Labels as the engine reports them (user's and image's).
    pub all_labels: BTreeMap<String, String>,
}

/// A container in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    /// Engine id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image as the engine reports it.
    pub image: String,
    /// Lifecycle status.
    pub status: ContainerStatus,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Progress of one layer of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullProgress {
    /// Layer id (empty for image-wide messages).
    pub layer: String,
    /// Engine status text (`Downloading`, `Pull complete`, …).
    pub status: String,
    /// Bytes done.
    pub current: Option<u64>,
    /// Bytes in all.
    pub total: Option<u64>,
}

/// A container's resource use, computed as `docker stats` does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    /// CPU use in percent of one CPU (200 = two CPUs busy), over the engine's sampling interval.
    pub cpu_percent: f64,
    /// Memory in use, without the page cache, in bytes.
    pub memory_bytes: u64,
    /// The memory limit in bytes (the host's memory when unlimited).
    pub memory_limit: u64,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Stream.
    pub stream: LogStream,
    /// Text, without the trailing newline.
    pub text: String,
}

/// What went wrong talking to an engine, in domain terms. Messages name the container or image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No such container.
    #[error("container {container:?} not found on {endpoint}; check the name with `docker ps -a`")]
    ContainerNotFound {
        /// The container.
        container: String,
        /// The engine.
        endpoint: String,
    },
    /// No such image locally, or the registry does not have it.
    #[error("image {image} not found: {message}")]
    ImageNotFound {
        /// The image.
        image: String,
        /// The engine's or registry's message.
        message: String,
    },
    /// A name conflict or a state that forbids the operation.
    #[error("conflict on container {container:?}: {message}")]
    Conflict {
        /// The container.
        container: String,
        /// The engine's message.
        message: String,
    },
    /// A pull failed.
    #[error("pulling {image} failed: {message}")]
    PullFailed {
        /// The image.
        image: String,
        /// Why.
        message: String,
    },
    /// The engine refused a container spec.
    #[error("the engine refused the configuration of container {container:?}: {message}")]
    InvalidSpec {
        /// The container.
        container: String,
        /// The engine's message.
        message: String,
    },
    /// The engine could not be reached.
    #[error("cannot reach the Docker engine at {endpoint}: {message}; is it running, and is DOCKER_HOST right?")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// Any other engine error.
    #[error("{operation} failed on {subject:?}: {message}")]
    Engine {
        /// What was attempted (`start`, `rename`, …).
        operation: &'static str,
        /// The container or image.
        subject: String,
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// The engine's message.
        message: String,
    },
    /// A fault injected by a test runtime.
    #[error("injected fault: {operation} on {subject:?} (call {call})")]
    InjectedFault {
        /// The operation.
        operation: &'static str,
        /// The container or image.
        subject: String,
        /// The call number.
        call: u64,
    },
}

/// A progress callback for pulls.
pub type ProgressFn<'a> = &'a (dyn Fn(PullProgress) + Send + Sync);

/// What agentctl needs from a container engine. Implemented over bollard by `agent-docker` and in memory by
/// [`FakeRuntime`](crate::FakeRuntime) (feature `fake`).
///
/// Container arguments are names (or ids). Every method either does what it says or returns an error and
/// changes nothing, unless the engine itself failed half-way (reported as [`RuntimeError::Engine`]).
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// The endpoint this runtime talks to, as given by the user.
    fn endpoint(&self) -> &str;

    /// Engine version, negotiated API version, OS and architecture.
    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError>;

    /// The container's user-set spec (image defaults removed) and runtime state.
    async fn inspect_container(&self, container: &str) -> Result<ContainerInfo, RuntimeError>;

    /// A local image by reference or id; [`RuntimeError::ImageNotFound`] when absent.
    async fn inspect_image(&self, image: &str) -> Result<ImageInfo, RuntimeError>;

    /// Pulls `image`, reporting per-layer progress, and returns the pulled image. Fails without side effects
    /// when the registry does not have it.
    async fn pull_image(&self, image: &ImageRef, progress: ProgressFn<'_>) -> Result<ImageInfo, RuntimeError>;

    /// Creates (does not start) a container from `spec`, attached to all its networks. Returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;

    /// Starts a created or stopped container.
    async fn start_container(&self, container: &str) -> Result<(), RuntimeError>;

    /// Stops a container with its stop signal, killing it after `timeout` (its own stop timeout when `None`).
    /// Stopping a stopped container succeeds.
    async fn stop_container(&self, container: &str, timeout: Option<Duration>) -> Result<(), RuntimeError>;

    /// Renames a container.
    async fn rename_container(&self, container: &str, new_name: &str) -> Result<(), RuntimeError>;

    /// Changes a container's restart policy in place.
    async fn set_restart_policy(&self, container: &str, policy: RestartPolicy) -> Result<(), RuntimeError>;

    /// Removes a stopped container; its volumes are kept.
    async fn remove_container(&self, container: &str) -> Result<(), RuntimeError>;

    /// Output lines since `since` (all when `None`), at most the last `tail` lines when given.
    async fn logs(
        &self,
        container: &str,
        since: Option<OffsetDateTime>,
        tail: Option<usize>,
    ) -> Result<Vec<LogLine>, RuntimeError>;

    /// Containers (running or not) having every label in `labels` (`key` or `key=value`).
    async fn list_containers(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, RuntimeError>;

    /// Removes an image that no container uses.
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError>;

    /// Whether the volume `name` exists on the engine: `Some(false)` when it is gone (a `docker volume
    /// prune`), so that a container created with it gets a new, empty one. `None` (the default) is a runtime
    /// that cannot tell.
    async fn volume_exists(&self, name: &str) -> Result<Option<bool>, RuntimeError> {
        let _ = name;
        Ok(None)
    }

    /// Gives the local image `image` (an id or a reference) the reference `reference` (a tag; a reference
    /// with a digest is refused): how an image pulled back by its digest gets the tag a container was
    /// created with. A runtime that cannot tag says so with [`RuntimeError::Engine`] (the default).
    async fn tag_image(&self, image: &str, reference: &ImageRef) -> Result<(), RuntimeError> {
        let _ = reference;
        Err(RuntimeError::Engine {
            operation: "tag",
            subject: image.to_owned(),
            status: None,
            message: "this runtime cannot tag images".into(),
        })
    }

    /// A tar archive of `path` inside the container (the engine's archive API), for backups.
    async fn export_path(&self, container: &str, path: &str) -> Result<Vec<u8>, RuntimeError>;

    /// CPU and memory use of a running container (one sample; the engine may take about a second).
    async fn stats(&self, container: &str) -> Result<ResourceUsage, RuntimeError>;

    /// Creates a bridge network of its own for a throwaway environment (contract tests), labelled `labels`;
    /// returns its gateway address, where containers on it reach this host. The default says the runtime
    /// has no networks.
    async fn create_isolated_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let _ = labels;
        Err(RuntimeError::Engine {
            operation: "network-create",
            subject: name.to_owned(),
            status: None,
            message: "this runtime has no networks".into(),
        })
    }

    /// The networks having every label in `labels` (`key` or `key=value`): each one's name and labels. A
    /// runtime without networks has none (the default).
    async fn list_networks(&self, labels: &[String]) -> Result<Vec<(String, BTreeMap<String, String>)>, RuntimeError> {
        let _ = labels;
        Ok(Vec::new())
    }

    /// Removes a network (no container may be attached).
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Engine {
            operation: "network-remove",
            subject: name.to_owned(),
            status: None,
            message: "this runtime has no networks".into(),
        })
    }

    /// Whether this runtime keeps [records](ContainerRuntime::create_record) on the engine. Without them,
    /// agentctl's locks and history live in its state store only.
    fn supports_records(&self) -> bool {
        false
    }

    /// Creates the record `name`: a small object on the engine that holds `labels` (fixed at creation) and
    /// files (see [`ContainerRuntime::write_record`]). Names are unique on an engine, so creating one is an
    /// atomic claim: a name that exists is [`RuntimeError::Conflict`]. On Docker a record is a container
    /// that never runs, made from an empty image. Returns its id.
    async fn create_record(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<String, RuntimeError> {
        let _ = labels;
        Err(no_records(name))
    }

    /// The record `name`, or `None` when there is none.
    async fn record(&self, name: &str) -> Result<Option<RecordInfo>, RuntimeError> {
        Err(no_records(name))
    }

    /// The file `file` of record `record` (a name or id), or `None` when the record or the file is missing.
    async fn read_record(&self, record: &str, file: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let _ = file;
        Err(no_records(record))
    }

    /// Writes (replaces) the file `file` (a plain name, no `/`) of record `record` (a name or id);
    /// [`RuntimeError::ContainerNotFound`] when the record is gone.
    async fn write_record(&self, record: &str, file: &str, data: &[u8]) -> Result<(), RuntimeError> {
        let _ = (file, data);
        Err(no_records(record))
    }

    /// Removes the record with id `id` (an id, so a record created since under the same name is never
    /// removed by mistake); [`RuntimeError::ContainerNotFound`] when it is gone already.
    async fn remove_record(&self, id: &str) -> Result<(), RuntimeError> {
        Err(no_records(id))
    }

    /// Runs `cmd` (an argv, no shell) in the running container as its user and waits at most `timeout`.
    /// The health probe uses it to run the image's HEALTHCHECK command right after a start, before the
    /// engine's first own run. A runtime that cannot exec says so with [`RuntimeError::Engine`] (the
    /// default).
    async fn exec(&self, container: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput, RuntimeError> {
        let _ = (cmd, timeout);
        Err(RuntimeError::Engine {
            operation: "exec",
            subject: container.to_owned(),
            status: None,
            message: "this runtime cannot run commands in containers".into(),
        })
    }

    /// The service `name` on this engine's cluster manager. A runtime without services (an engine that is
    /// no manager, the fake) says so with [`RuntimeError::Engine`] (the default).
    async fn service(&self, name: &str) -> Result<ServiceInfo, RuntimeError> {
        Err(no_services(name))
    }

    /// Makes `change` to the service `name` from the spec its manager holds now, naming the current version
    /// index; returns the service as it stands after.
    async fn change_service(&self, name: &str, change: ServiceChange<'_>) -> Result<ServiceInfo, RuntimeError> {
        let _ = change;
        Err(no_services(name))
    }

    /// Every task of the service `name` the manager still reports (running and ended), newest first.
    async fn service_tasks(&self, name: &str) -> Result<Vec<TaskInfo>, RuntimeError> {
        Err(no_services(name))
    }

    /// Output lines of the task `task` since `since` (through the manager, wherever the task runs).
    async fn task_logs(&self, task: &str, since: Option<OffsetDateTime>) -> Result<Vec<LogLine>, RuntimeError> {
        let _ = since;
        Err(no_services(task))
    }
}

fn no_services(subject: &str) -> RuntimeError {
    RuntimeError::Engine {
        operation: "service",
        subject: subject.to_owned(),
        status: None,
        message: "this runtime runs no services (the engine is not a swarm manager)".into(),
    }
}

fn no_records(subject: &str) -> RuntimeError {
    RuntimeError::Engine {
        operation: "record",
        subject: subject.to_owned(),
        status: None,
        message: "this runtime keeps no records on the engine".into(),
    }
}

/// The label every record carries (its value names the kind: `lock`, `history`), so that a container
/// agentctl did not make is never taken for one.
pub const RECORD_LABEL: &str = "io.agentctl.record";

/// A record on an engine (see [`ContainerRuntime::create_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The labels it was created with.
    pub labels: BTreeMap<String, String>,
}

/// What a command run with [`ContainerRuntime::exec`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code.
    pub exit_code: i64,
    /// Its output (stdout and stderr, in order), at most the first 4 KiB.
    pub output: String,
}

/// Connects to an engine endpoint (`unix:///…`, `tcp://…`): how a fleet reaches the engines of its targets.
/// `agent_docker::connector` builds one from `DOCKER_HOST` and the docker CLI's TLS settings; tests and
/// SDK users can hand out any [`ContainerRuntime`].
pub type Connector = std::sync::Arc<
    dyn Fn(
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<std::sync::Arc<dyn ContainerRuntime>, RuntimeError>> + Send>,
        > + Send
        + Sync,
>;
