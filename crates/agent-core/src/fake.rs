//! In-memory [`ContainerRuntime`] and [`StateStore`] for unit tests of pure logic and for SDK users who test
//! their own tools. They behave like an engine and a store and can inject faults. They never stand in for the
//! real engine in tests of Docker behaviour.
//!
//! Where tests rely on it, the fake engine behaves as Docker does:
//! - ids are 64 hex digits whose 12-digit short forms differ (a heartbeat naming one container's short id
//!   never names another's);
//! - names are unique across containers and records (a record is a container on Docker);
//! - a container that exits with a restart policy that says so is started again, its restart count up
//!   (`always`, `unless-stopped`, `on-failure` after a non-zero exit up to its limit);
//! - a stop gives exit code 0, or 137 for an image that ignores the stop signal (killed at the timeout);
//! - `inspect` reports the image's labels among the container's (`all_labels`);
//! - a HEALTHCHECK is `starting` until `ImageBehaviour::healthy_after` has passed since the start;
//! - `logs` honours `since` and `tail`.
//!
//! - a container created with a named volume creates it when missing, a `VOLUME` its image declares where
//!   it mounts nothing gets a new anonymous volume, and `volume_exists` says whether a volume is there
//!   (`drop_volume` is `docker volume prune`).
//!
//! What it does not model: networks and addresses, the data in volumes, ports, resource limits, the
//! timing of real operations (every call returns at once), events, and an engine's restarts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::image::ImageRef;
use crate::revision::{Revision, RevisionNumber};
use crate::runtime::*;
use crate::spec::{ContainerSpec, ImageDefaults, RestartPolicy};
use crate::store::*;

/// How containers of an image behave in the fake engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageBehaviour {
    /// Exit right after start with this code.
    pub exit_on_start: Option<i64>,
    /// HEALTHCHECK status reported while running (`None`: no healthcheck).
    pub health: Option<HealthStatus>,
    /// Lines the container prints when it starts.
    pub logs: Vec<String>,
    /// How long its HEALTHCHECK reports `starting` after a start before it reports [`ImageBehaviour::health`].
    pub healthy_after: Duration,
    /// It ignores the stop signal: a stop kills it at the timeout (exit code 137).
    pub ignores_stop: bool,
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The Nth call (counting every trait call from 1) fails.
    FailCall(u64),
    /// The next call of this operation (`create`, `start`, `stop`, `rename`, `pull`, …) fails, `times` times.
    FailOperation {
        /// The operation name.
        operation: &'static str,
        /// How many calls fail.
        times: u32,
    },
    /// The next container created gets this env variable (`NAME=value`) beside what it was asked for: an
    /// engine that makes something else than the request said, which the faithfulness check must catch.
    AlterCreate {
        /// The variable as the engine adds it, `NAME=value`.
        env: String,
    },
    /// Right before the next create, the tag that create names moves to the image `to` names (another
    /// reference on this engine): someone's `docker tag` or pull between agentctl's pull and its create,
    /// so the container runs another image than the one pulled and verified.
    MoveTag {
        /// The reference whose image the tag moves to, as [`ImageRef::pull_ref`] spells it.
        to: String,
    },
    /// Right after the next rename to `to`, the container is replaced by another of the same configuration
    /// (a new id, running): another operator's `docker rm -f` and `docker run` racing agentctl's revert.
    ReplaceAfterRename {
        /// The name the rename gives.
        to: String,
    },
    /// The next calls of this operation return `error`, `times` times (a registry hiccup, a conflict…).
    Return {
        /// The operation name.
        operation: &'static str,
        /// The error to return.
        error: RuntimeError,
        /// How many calls fail.
        times: u32,
    },
}

#[derive(Debug, Clone)]
struct FakeContainer {
    id: String,
    spec: ContainerSpec,
    image_id: String,
    state: ContainerState,
    /// Output lines with when they were printed.
    logs: Vec<(OffsetDateTime, LogLine)>,
}

/// The `n`-th id of the fake engine: 64 hex digits, spread (splitmix64) so that short ids differ.
fn fake_id(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..4)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

#[derive(Debug, Default)]
struct FakeState {
    images: BTreeMap<String, (ImageInfo, ImageBehaviour)>,
    registry: BTreeMap<String, (ImageInfo, ImageBehaviour)>,
    containers: BTreeMap<String, FakeContainer>,
    calls: u64,
    next_id: u64,
    faults: Vec<Fault>,
    ops: Vec<String>,
    usage: BTreeMap<String, ResourceUsage>,
    records: BTreeMap<String, FakeRecord>,
    volumes: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct FakeRecord {
    id: String,
    labels: BTreeMap<String, String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl FakeState {
    /// The record named or with id `key`.
    fn record_mut(&mut self, key: &str) -> Option<&mut FakeRecord> {
        let name = self
            .records
            .iter()
            .find(|(n, r)| *n == key || r.id == key)
            .map(|(n, _)| n.clone())?;
        self.records.get_mut(&name)
    }
}

/// An in-memory engine with fault injection.
#[derive(Debug)]
pub struct FakeRuntime {
    endpoint: String,
    state: Mutex<FakeState>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new("fake://local")
    }
}

fn image_info(id: &str, defaults: ImageDefaults) -> ImageInfo {
    ImageInfo {
        id: id.to_owned(),
        repo_digests: Vec::new(),
        os: "linux".into(),
        arch: "amd64".into(),
        created: None,
        defaults,
    }
}

impl FakeRuntime {
    /// An empty engine at `endpoint`.
    pub fn new(endpoint: &str) -> FakeRuntime {
        FakeRuntime {
            endpoint: endpoint.to_owned(),
            state: Mutex::new(FakeState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `image` available in the fake registry (pullable) with this behaviour.
    pub fn publish_image(&self, image: &ImageRef, defaults: ImageDefaults, behaviour: ImageBehaviour) {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("sha256:{}", fake_id(s.next_id));
        let mut info = image_info(&id, defaults);
        let by_digest = format!("{}@sha256:{}", image.name(), fake_id(s.next_id + 1_000_000));
        info.repo_digests = vec![by_digest.clone()];
        // Like a registry, serve it by tag and by digest.
        s.registry.insert(by_digest, (info.clone(), behaviour.clone()));
        s.registry.insert(image.pull_ref(), (info, behaviour));
    }

    /// Makes `image` present locally (as if pulled) with this behaviour.
    pub fn add_local_image(&self, image: &ImageRef, defaults: ImageDefaults, behaviour: ImageBehaviour) {
        self.publish_image(image, defaults, behaviour);
        let mut s = self.lock();
        if let Some(entry) = s.registry.get(&image.pull_ref()).cloned() {
            for d in entry.0.repo_digests.clone() {
                s.images.insert(d, entry.clone());
            }
            s.images.insert(image.pull_ref(), entry);
        }
    }

    /// Makes `image` present locally as an image built on this engine and never pushed: no registry digest,
    /// and nothing to pull it back from once it is removed.
    pub fn add_built_image(&self, image: &ImageRef, defaults: ImageDefaults, behaviour: ImageBehaviour) {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("sha256:{:064x}", s.next_id);
        s.images
            .insert(image.pull_ref(), (image_info(&id, defaults), behaviour));
    }

    /// Removes an image from the engine whatever uses it, as `docker system prune -a` does to an image no
    /// container uses any more (test setup; bypasses faults). The registry keeps its copy.
    pub fn drop_image(&self, image: &str) {
        let mut s = self.lock();
        s.images.retain(|key, (info, _)| key != image && info.id != image);
    }

    /// Creates and starts a container from `spec` directly (test setup; bypasses faults).
    pub fn run(&self, spec: ContainerSpec) -> Result<String, RuntimeError> {
        let mut s = self.lock();
        let id = create_locked(&mut s, &self.endpoint, &spec)?;
        start_locked(&mut s, &spec.name.to_string());
        Ok(id)
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// The operations performed so far, as `op subject` strings, for assertions about effects.
    pub fn operations(&self) -> Vec<String> {
        self.lock().ops.clone()
    }

    /// Names of all containers, sorted.
    pub fn container_names(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    /// Changes what containers of `image` (a reference as [`ImageRef::pull_ref`] spells it, or a digest
    /// reference) do from their next start, on the engine and in the registry: a version that no longer
    /// starts where it used to (a dependency gone, a changed host).
    pub fn set_behaviour(&self, image: &str, behaviour: ImageBehaviour) {
        let mut s = self.lock();
        let FakeState { images, registry, .. } = &mut *s;
        let Some(id) = images
            .get(image)
            .or_else(|| registry.get(image))
            .map(|(i, _)| i.id.clone())
        else {
            return;
        };
        for (info, b) in images.values_mut().chain(registry.values_mut()) {
            if info.id == id {
                *b = behaviour.clone();
            }
        }
    }

    /// Removes a volume whatever uses it, as `docker volume prune` does to a volume no container uses any
    /// more (test setup; bypasses faults).
    pub fn drop_volume(&self, name: &str) {
        self.lock().volumes.remove(name);
    }

    /// Sets what `stats` reports for a container.
    pub fn set_usage(&self, container: &str, usage: ResourceUsage) {
        self.lock().usage.insert(container.to_owned(), usage);
    }

    /// Makes a running container exit with `code` (as a crash would); its restart policy then starts it
    /// again as the engine would (its restart count up), or it stays exited.
    pub fn crash(&self, container: &str, code: i64) {
        let mut s = self.lock();
        let Some(c) = s.containers.get_mut(container) else {
            return;
        };
        c.state.status = ContainerStatus::Exited;
        c.state.exit_code = Some(code);
        let restarts = match c.spec.restart_policy {
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure(max) => code != 0 && (max == 0 || c.state.restart_count < u64::from(max)),
            RestartPolicy::No => false,
        };
        if restarts {
            c.state.restart_count += 1;
            let name = container.to_owned();
            start_locked(&mut s, &name);
        }
    }

    fn enter(
        &self,
        operation: &'static str,
        subject: &str,
    ) -> Result<std::sync::MutexGuard<'_, FakeState>, RuntimeError> {
        let mut s = self.lock();
        s.calls += 1;
        let call = s.calls;
        let mut fail: Option<RuntimeError> = None;
        let injected = RuntimeError::InjectedFault {
            operation,
            subject: subject.to_owned(),
            call,
        };
        s.faults.retain_mut(|f| match f {
            Fault::FailCall(n) if *n == call && fail.is_none() => {
                fail = Some(injected.clone());
                false
            }
            Fault::FailOperation { operation: op, times } if *op == operation && fail.is_none() => {
                fail = Some(injected.clone());
                *times -= 1;
                *times > 0
            }
            Fault::Return {
                operation: op,
                error,
                times,
            } if *op == operation && fail.is_none() => {
                fail = Some(error.clone());
                *times -= 1;
                *times > 0
            }
            _ => true,
        });
        if let Some(e) = fail {
            return Err(e);
        }
        s.ops.push(format!("{operation} {subject}"));
        Ok(s)
    }
}

fn not_found(endpoint: &str, container: &str) -> RuntimeError {
    RuntimeError::ContainerNotFound {
        container: container.to_owned(),
        endpoint: endpoint.to_owned(),
    }
}

fn create_locked(s: &mut FakeState, endpoint: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
    let name = spec.name.to_string();
    if s.containers.contains_key(&name) || s.records.contains_key(&name) {
        return Err(RuntimeError::Conflict {
            container: name,
            message: "the name is already in use".into(),
        });
    }
    let Some((info, _)) = s.images.get(&spec.image.pull_ref()).cloned() else {
        return Err(RuntimeError::ImageNotFound {
            image: spec.image.to_string(),
            message: format!("no such image on {endpoint}"),
        });
    };
    if let Some(var) = spec.env.iter().find(|v| v.expose().is_none()) {
        return Err(RuntimeError::InvalidSpec {
            container: name,
            message: format!("env {} is a redacted secret with no value", var.name),
        });
    }
    // A VOLUME the image declares where the spec mounts nothing gets a new anonymous volume, as on an engine.
    let mut spec = spec.clone();
    for path in &info.defaults.volumes {
        if !spec.mounts.iter().any(|m| &m.target == path) {
            s.next_id += 1;
            spec.mounts.push(crate::spec::Mount {
                target: path.clone(),
                kind: crate::spec::MountKind::Volume {
                    name: fake_id(s.next_id),
                    anonymous: true,
                },
                read_only: false,
            });
        }
    }
    for m in &spec.mounts {
        if let crate::spec::MountKind::Volume { name, .. } = &m.kind {
            s.volumes.insert(name.clone());
        }
    }
    s.next_id += 1;
    let id = fake_id(s.next_id);
    s.containers.insert(
        name,
        FakeContainer {
            id: id.clone(),
            spec,
            image_id: info.id,
            state: ContainerState {
                status: ContainerStatus::Created,
                exit_code: None,
                started_at: None,
                restart_count: 0,
                oom_killed: false,
                error: None,
                health: None,
            },
            logs: Vec::new(),
        },
    );
    Ok(id)
}

fn start_locked(s: &mut FakeState, name: &str) {
    let behaviour = s
        .containers
        .get(name)
        .and_then(|c| s.images.get(&c.spec.image.pull_ref()))
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    if let Some(c) = s.containers.get_mut(name) {
        let now = OffsetDateTime::now_utc();
        c.state.started_at = Some(now);
        c.logs.extend(behaviour.logs.iter().map(|l| {
            (
                now,
                LogLine {
                    stream: LogStream::Stdout,
                    text: l.clone(),
                },
            )
        }));
        match behaviour.exit_on_start {
            Some(code) => {
                c.state.status = ContainerStatus::Exited;
                c.state.exit_code = Some(code);
            }
            None => {
                c.state.status = ContainerStatus::Running;
                c.state.exit_code = None;
            }
        }
        c.state.health = behaviour.health.map(|status| HealthState {
            status,
            failing_streak: u64::from(status == HealthStatus::Unhealthy),
            log: Vec::new(),
        });
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError> {
        let _s = self.enter("info", &self.endpoint)?;
        Ok(EngineInfo {
            endpoint: self.endpoint.clone(),
            version: "fake".into(),
            api_version: "1.41".into(),
            os: "linux".into(),
            arch: "amd64".into(),
        })
    }

    async fn inspect_container(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let s = self.enter("inspect", container)?;
        let c = s
            .containers
            .get(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        let image = s.images.values().find(|(i, _)| i.id == c.image_id);
        // As the engine reports them: the image's labels under the container's own.
        let mut all_labels = image.map(|(i, _)| i.defaults.labels.clone()).unwrap_or_default();
        all_labels.extend(c.spec.labels.clone());
        let mut state = c.state.clone();
        let delay = image.map(|(_, b)| b.healthy_after).unwrap_or_default();
        if let (Some(h), Some(started)) = (&mut state.health, state.started_at) {
            if state.status == ContainerStatus::Running && OffsetDateTime::now_utc() < started + delay {
                h.status = HealthStatus::Starting;
                h.failing_streak = 0;
            }
        }
        Ok(ContainerInfo {
            id: c.id.clone(),
            spec: c.spec.clone(),
            image_id: c.image_id.clone(),
            state,
            addresses: BTreeMap::new(),
            all_labels,
        })
    }

    async fn inspect_image(&self, image: &str) -> Result<ImageInfo, RuntimeError> {
        let s = self.enter("inspect-image", image)?;
        let key = image
            .parse::<ImageRef>()
            .map(|r| r.pull_ref())
            .unwrap_or_else(|_| image.to_owned());
        s.images
            .get(&key)
            .or_else(|| s.images.values().find(|(i, _)| i.id == image))
            .map(|(i, _)| i.clone())
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_owned(),
                message: "no such image".into(),
            })
    }

    async fn pull_image(&self, image: &ImageRef, progress: ProgressFn<'_>) -> Result<ImageInfo, RuntimeError> {
        let mut s = self.enter("pull", &image.to_string())?;
        let Some(entry) = s.registry.get(&image.pull_ref()).cloned() else {
            return Err(RuntimeError::ImageNotFound {
                image: image.to_string(),
                message: "manifest unknown".into(),
            });
        };
        progress(PullProgress {
            layer: "fake".into(),
            status: "Pull complete".into(),
            current: Some(1),
            total: Some(1),
        });
        for d in entry.0.repo_digests.clone() {
            s.images.insert(d, entry.clone());
        }
        s.images.insert(image.pull_ref(), entry.clone());
        Ok(entry.0)
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut s = self.enter("create", spec.name.as_str())?;
        let mut spec = spec.clone();
        let (mut altered, mut moved) = (None, None);
        s.faults.retain(|f| match f {
            Fault::AlterCreate { env } if altered.is_none() => {
                altered = Some(env.clone());
                false
            }
            Fault::MoveTag { to } if moved.is_none() => {
                moved = Some(to.clone());
                false
            }
            _ => true,
        });
        if let Some(image) = moved.and_then(|to| s.images.get(&to).cloned()) {
            s.images.insert(spec.image.pull_ref(), image);
        }
        if let Some(env) = altered {
            let (name, value) = env.split_once('=').unwrap_or((&env, ""));
            spec.env.retain(|v| v.name != name);
            spec.env.push(crate::spec::EnvVar::plain(name, value));
        }
        create_locked(&mut s, &self.endpoint, &spec)
    }

    async fn start_container(&self, container: &str) -> Result<(), RuntimeError> {
        let mut s = self.enter("start", container)?;
        if !s.containers.contains_key(container) {
            return Err(not_found(&self.endpoint, container));
        }
        start_locked(&mut s, container);
        Ok(())
    }

    async fn stop_container(&self, container: &str, _timeout: Option<Duration>) -> Result<(), RuntimeError> {
        let mut s = self.enter("stop", container)?;
        let s_ignores_stop = s
            .containers
            .get(container)
            .and_then(|c| s.images.values().find(|(i, _)| i.id == c.image_id))
            .is_some_and(|(_, b)| b.ignores_stop);
        let c = s
            .containers
            .get_mut(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        let ignores = s_ignores_stop;
        if c.state.status == ContainerStatus::Running {
            c.state.status = ContainerStatus::Exited;
            c.state.exit_code = Some(if ignores { 137 } else { 0 });
        }
        Ok(())
    }

    async fn rename_container(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        let mut s = self.enter("rename", container)?;
        if s.containers.contains_key(new_name) || s.records.contains_key(new_name) {
            return Err(RuntimeError::Conflict {
                container: new_name.to_owned(),
                message: "the name is already in use".into(),
            });
        }
        let mut c = s
            .containers
            .remove(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        c.spec.name = new_name
            .parse()
            .map_err(|e: crate::spec::ContainerNameError| RuntimeError::InvalidSpec {
                container: new_name.to_owned(),
                message: e.to_string(),
            })?;
        let spec = c.spec.clone();
        s.containers.insert(new_name.to_owned(), c);
        let before = s.faults.len();
        s.faults
            .retain(|f| !matches!(f, Fault::ReplaceAfterRename { to } if to == new_name));
        if s.faults.len() < before {
            s.containers.remove(new_name);
            create_locked(&mut s, &self.endpoint, &spec)?;
            start_locked(&mut s, new_name);
        }
        Ok(())
    }

    async fn set_restart_policy(&self, container: &str, policy: RestartPolicy) -> Result<(), RuntimeError> {
        let mut s = self.enter("update-restart", container)?;
        let c = s
            .containers
            .get_mut(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        c.spec.restart_policy = policy;
        Ok(())
    }

    async fn remove_container(&self, container: &str) -> Result<(), RuntimeError> {
        let mut s = self.enter("remove", container)?;
        match s.containers.get(container) {
            None => Err(not_found(&self.endpoint, container)),
            Some(c) if c.state.status == ContainerStatus::Running => Err(RuntimeError::Conflict {
                container: container.to_owned(),
                message: "cannot remove a running container; stop it first".into(),
            }),
            Some(_) => {
                s.containers.remove(container);
                Ok(())
            }
        }
    }

    async fn logs(
        &self,
        container: &str,
        since: Option<OffsetDateTime>,
        tail: Option<usize>,
    ) -> Result<Vec<LogLine>, RuntimeError> {
        let s = self.enter("logs", container)?;
        let c = s
            .containers
            .get(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        let lines: Vec<LogLine> = c
            .logs
            .iter()
            .filter(|(at, _)| since.is_none_or(|t| *at >= t))
            .map(|(_, l)| l.clone())
            .collect();
        let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
        Ok(lines[skip..].to_vec())
    }

    async fn list_containers(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let s = self.enter("list", "*")?;
        Ok(s.containers
            .iter()
            .filter(|(_, c)| {
                labels.iter().all(|l| match l.split_once('=') {
                    Some((k, v)) => c.spec.labels.get(k).is_some_and(|x| x == v),
                    None => c.spec.labels.contains_key(l),
                })
            })
            .map(|(name, c)| ContainerSummary {
                id: c.id.clone(),
                name: name.clone(),
                image: c.spec.image.to_string(),
                status: c.state.status,
                labels: c.spec.labels.clone(),
            })
            .collect())
    }

    async fn volume_exists(&self, name: &str) -> Result<Option<bool>, RuntimeError> {
        let s = self.enter("volume-inspect", name)?;
        Ok(Some(s.volumes.contains(name)))
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let mut s = self.enter("remove-image", image)?;
        let key = image
            .parse::<ImageRef>()
            .map(|r| r.pull_ref())
            .unwrap_or_else(|_| image.to_owned());
        if s.containers.values().any(|c| c.spec.image.pull_ref() == key) {
            return Err(RuntimeError::Conflict {
                container: image.to_owned(),
                message: "image is in use by a container".into(),
            });
        }
        s.images.remove(&key);
        Ok(())
    }

    async fn tag_image(&self, image: &str, reference: &ImageRef) -> Result<(), RuntimeError> {
        let mut s = self.enter("tag", image)?;
        let key = image
            .parse::<ImageRef>()
            .map(|r| r.pull_ref())
            .unwrap_or_else(|_| image.to_owned());
        let entry = s
            .images
            .get(&key)
            .or_else(|| s.images.values().find(|(i, _)| i.id == image))
            .cloned()
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_owned(),
                message: "no such image".into(),
            })?;
        s.images.insert(reference.pull_ref(), entry);
        Ok(())
    }

    async fn export_path(&self, container: &str, _path: &str) -> Result<Vec<u8>, RuntimeError> {
        let s = self.enter("export", container)?;
        s.containers
            .get(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        Ok(Vec::new())
    }

    fn supports_records(&self) -> bool {
        true
    }

    async fn create_record(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<String, RuntimeError> {
        let mut s = self.enter("record-create", name)?;
        if s.records.contains_key(name) || s.containers.contains_key(name) {
            return Err(RuntimeError::Conflict {
                container: name.to_owned(),
                message: "the name is in use".into(),
            });
        }
        s.next_id += 1;
        let id = fake_id(s.next_id);
        s.records.insert(
            name.to_owned(),
            FakeRecord {
                id: id.clone(),
                labels: labels.clone(),
                files: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn record(&self, name: &str) -> Result<Option<RecordInfo>, RuntimeError> {
        let s = self.enter("record-inspect", name)?;
        Ok(s.records.get(name).map(|r| RecordInfo {
            id: r.id.clone(),
            name: name.to_owned(),
            labels: r.labels.clone(),
        }))
    }

    async fn read_record(&self, record: &str, file: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let mut s = self.enter("record-read", record)?;
        Ok(s.record_mut(record).and_then(|r| r.files.get(file).cloned()))
    }

    async fn write_record(&self, record: &str, file: &str, data: &[u8]) -> Result<(), RuntimeError> {
        let endpoint = self.endpoint.clone();
        let mut s = self.enter("record-write", record)?;
        let r = s.record_mut(record).ok_or_else(|| not_found(&endpoint, record))?;
        r.files.insert(file.to_owned(), data.to_vec());
        Ok(())
    }

    async fn remove_record(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.enter("record-remove", id)?;
        let name = s.records.iter().find(|(_, r)| r.id == id).map(|(n, _)| n.clone());
        match name {
            Some(n) => {
                s.records.remove(&n);
                Ok(())
            }
            None => Err(not_found(&self.endpoint, id)),
        }
    }

    async fn stats(&self, container: &str) -> Result<ResourceUsage, RuntimeError> {
        let s = self.enter("stats", container)?;
        s.containers
            .get(container)
            .ok_or_else(|| not_found(&self.endpoint, container))?;
        Ok(s.usage.get(container).copied().unwrap_or(ResourceUsage {
            cpu_percent: 1.0,
            memory_bytes: 8 << 20,
            memory_limit: 1 << 30,
        }))
    }
}

#[derive(Debug, Default)]
struct MemoryState {
    revisions: BTreeMap<(String, u64), Revision>,
    /// Every operation's entries, in the order they were appended.
    journal: BTreeMap<String, Vec<JournalEntry>>,
    /// Open operations by subject, in the order they were opened (lookups stay cheap with many subjects).
    open: BTreeMap<String, Vec<String>>,
    /// The subject of each open operation.
    open_subject: BTreeMap<String, String>,
    leases: BTreeMap<String, Lease>,
    documents: BTreeMap<(String, String), serde_json::Value>,
}

/// An in-memory [`StateStore`] (nothing survives the process).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn revisions(&self, subject: &str) -> Result<Vec<Revision>, StoreError> {
        Ok(self
            .lock()
            .revisions
            .range((subject.to_owned(), 0)..=(subject.to_owned(), u64::MAX))
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn put_revision(&self, subject: &str, revision: &Revision) -> Result<(), StoreError> {
        self.lock()
            .revisions
            .insert((subject.to_owned(), revision.number.get()), revision.clone());
        Ok(())
    }

    async fn delete_revision(&self, subject: &str, number: RevisionNumber) -> Result<(), StoreError> {
        self.lock().revisions.remove(&(subject.to_owned(), number.get()));
        Ok(())
    }

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let mut s = self.lock();
        if entry.seq == 0
            && s.open_subject
                .insert(entry.operation.clone(), entry.subject.clone())
                .is_none()
        {
            s.open
                .entry(entry.subject.clone())
                .or_default()
                .push(entry.operation.clone());
        }
        s.journal
            .entry(entry.operation.clone())
            .or_default()
            .push(entry.clone());
        Ok(())
    }

    async fn journal(&self, operation: &str) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(self.lock().journal.get(operation).cloned().unwrap_or_default())
    }

    async fn open_operations(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().open.get(subject).cloned().unwrap_or_default())
    }

    async fn subjects_with_open_operations(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .open
            .iter()
            .filter(|(_, ops)| !ops.is_empty())
            .map(|(subject, _)| subject.clone())
            .collect())
    }

    async fn close_operation(&self, operation: &str) -> Result<(), StoreError> {
        let mut s = self.lock();
        if let Some(subject) = s.open_subject.remove(operation) {
            if let Some(ops) = s.open.get_mut(&subject) {
                ops.retain(|o| o != operation);
            }
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut s = self.lock();
        let lease = lease_rules::acquire(s.leases.get(key).cloned(), key, holder, now, ttl)?;
        s.leases.insert(key.to_owned(), lease.clone());
        Ok(lease)
    }

    async fn take_over_lease(
        &self,
        stale: &Lease,
        holder: &LeaseHolder,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut s = self.lock();
        let lease = lease_rules::take_over(s.leases.get(&stale.key).cloned(), stale, holder, now, ttl)?;
        s.leases.insert(stale.key.clone(), lease.clone());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, now: OffsetDateTime, ttl: Duration) -> Result<Lease, StoreError> {
        let mut s = self.lock();
        let renewed = lease_rules::renew(s.leases.get(&lease.key).cloned(), lease, now, ttl)?;
        s.leases.insert(lease.key.clone(), renewed.clone());
        Ok(renewed)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.leases.get(&lease.key).is_some_and(|l| l.holder.id == lease.holder.id) {
            s.leases.remove(&lease.key);
        }
        Ok(())
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self.lock().leases.get(key).cloned())
    }

    async fn put_document(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        self.lock()
            .documents
            .insert((kind.to_owned(), key.to_owned()), value.clone());
        Ok(())
    }

    async fn document(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.lock().documents.get(&(kind.to_owned(), key.to_owned())).cloned())
    }

    async fn documents(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        Ok(self
            .lock()
            .documents
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((_, key), v)| (key.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;

    #[test]
    fn fake_engine_behaves_and_injects_faults() {
        let rt = FakeRuntime::default();
        let img: ImageRef = "acme/agent:1.0".parse().unwrap();
        rt.publish_image(&img, ImageDefaults::default(), ImageBehaviour::default());
        let spec = ContainerSpec::new("a".parse().unwrap(), img.clone());
        assert!(matches!(
            block_on(rt.create_container(&spec)),
            Err(RuntimeError::ImageNotFound { .. })
        ));
        block_on(rt.pull_image(&img, &|_| {})).unwrap();
        block_on(rt.create_container(&spec)).unwrap();
        assert!(matches!(
            block_on(rt.create_container(&spec)),
            Err(RuntimeError::Conflict { .. })
        ));
        rt.inject(Fault::FailOperation {
            operation: "start",
            times: 1,
        });
        assert!(matches!(
            block_on(rt.start_container("a")),
            Err(RuntimeError::InjectedFault { .. })
        ));
        block_on(rt.start_container("a")).unwrap();
        assert!(block_on(rt.inspect_container("a")).unwrap().state.is_running());
        assert!(
            block_on(rt.remove_container("a")).is_err(),
            "running containers are not removed"
        );
        let n = rt.calls();
        rt.inject(Fault::FailCall(n + 1));
        assert!(block_on(rt.stop_container("a", None)).is_err());
        block_on(rt.stop_container("a", None)).unwrap();
        block_on(rt.rename_container("a", "b")).unwrap();
        assert_eq!(rt.container_names(), ["b"]);
    }

    #[test]
    fn the_fake_engine_behaves_as_an_engine_where_tests_rely_on_it() {
        let rt = FakeRuntime::default();
        let img: ImageRef = "acme/agent:1.0".parse().unwrap();
        let defaults = ImageDefaults {
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "1.0".into())]),
            ..Default::default()
        };
        let behaviour = ImageBehaviour {
            health: Some(HealthStatus::Healthy),
            healthy_after: Duration::from_secs(3600),
            ignores_stop: true,
            logs: vec!["started".into()],
            ..Default::default()
        };
        rt.add_local_image(&img, defaults, behaviour);
        let mut spec = ContainerSpec::new("a".parse().unwrap(), img.clone());
        spec.restart_policy = RestartPolicy::UnlessStopped;
        let a = rt.run(spec.clone()).unwrap();
        spec.name = "b".parse().unwrap();
        spec.restart_policy = RestartPolicy::No;
        let b = rt.run(spec).unwrap();
        assert_ne!(a[..12], b[..12], "short ids differ");
        let info = block_on(rt.inspect_container("a")).unwrap();
        assert_eq!(info.all_labels["org.opencontainers.image.version"], "1.0");
        assert_eq!(info.state.health.unwrap().status, HealthStatus::Starting);
        // A crash under a restart policy is restarted, counted; without one it stays down.
        rt.crash("a", 2);
        let info = block_on(rt.inspect_container("a")).unwrap();
        assert!(
            info.state.is_running() && info.state.restart_count == 1,
            "{:?}",
            info.state
        );
        rt.crash("b", 2);
        assert!(!block_on(rt.inspect_container("b")).unwrap().state.is_running());
        // An image that ignores the stop signal is killed.
        block_on(rt.stop_container("a", None)).unwrap();
        assert_eq!(block_on(rt.inspect_container("a")).unwrap().state.exit_code, Some(137));
        // Records and containers share one name space.
        block_on(rt.create_record("r", &BTreeMap::new())).unwrap();
        assert!(matches!(
            block_on(rt.rename_container("b", "r")),
            Err(RuntimeError::Conflict { .. })
        ));
        // Logs since a time.
        let later = OffsetDateTime::now_utc() + Duration::from_secs(1);
        assert!(block_on(rt.logs("a", Some(later), None)).unwrap().is_empty());
        assert_eq!(block_on(rt.logs("a", None, None)).unwrap().len(), 2);
    }

    #[test]
    fn memory_store_leases_expire_and_are_exclusive() {
        let store = MemoryStore::default();
        let holder = |id: &str| LeaseHolder {
            id: id.into(),
            hostname: "h".into(),
            pid: 1,
            purpose: "t".into(),
        };
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let ttl = Duration::from_secs(10);
        let l = block_on(store.acquire_lease("k", &holder("a"), t0, ttl)).unwrap();
        let err = block_on(store.acquire_lease("k", &holder("b"), t0 + Duration::from_secs(5), ttl)).unwrap_err();
        assert!(err.to_string().contains("locked by pid 1"), "{err}");
        let taken = block_on(store.acquire_lease("k", &holder("b"), t0 + Duration::from_secs(11), ttl)).unwrap();
        assert_eq!(taken.holder.id, "b");
        assert!(matches!(
            block_on(store.renew_lease(&l, t0, ttl)),
            Err(StoreError::LeaseLost { .. })
        ));
    }
}
