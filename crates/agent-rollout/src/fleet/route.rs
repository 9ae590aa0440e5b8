//! Traffic through HAProxy: the backend's servers set to what the rollout's state says, from the containers
//! the engines run. The share is saved before it is applied and applied again by every command that takes
//! the rollout up (a resumed `apply`, `promote`, `abort`), so weights lost to a crash of agentctl or a reload
//! of HAProxy (which forgets servers added at runtime) are put back.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::state::RolloutState;
use super::Fleet;
use crate::error::Error;
use crate::events::FleetEvent;
use crate::report::preview_name;
use crate::target::TargetStatus;
use crate::traffic::{server_name, Haproxy, HaproxyError, HaproxySpec};

/// The traffic a rollout has set, saved with its state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficState {
    /// The new versions' share of the requests, in percent, as last set.
    pub weight: u8,
    /// Every `addr:port` the rollout has routed to: a server at one of them that the state no longer wants
    /// is removed; servers at other addresses are not the rollout's and are left alone.
    pub routed: BTreeSet<String>,
    /// The weight last set at each `addr:port`: what the weights read back are compared with.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weights: std::collections::BTreeMap<String, u16>,
}

/// What the backend should send where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routing {
    /// This share to the staged previews, the rest to the running containers.
    Share(u8),
    /// Everything to the previews, the containers they replace drained and removed.
    Promoting,
    /// Everything to the running containers, the previews drained and removed.
    Reverting,
    /// As [`Routing::Reverting`], and the container of the target at this index drained and removed too
    /// (it is about to be replaced in place).
    RevertingWithout(usize),
}

/// One server the backend should have.
struct Wanted {
    endpoint: String,
    addr: String,
    /// `CONTAINER-VERSION`: what runs there, as a judge selecting by server name reads it.
    name: String,
    weight: u16,
}

fn refused(backend: &str) -> impl Fn(HaproxyError) -> Error + '_ {
    move |e| Error::InvalidInput {
        what: format!("traffic of backend {backend}"),
        message: e.to_string(),
    }
}

impl Fleet {
    /// [`Fleet::route`] for a rollback, which goes on when the load balancer cannot be set: the containers
    /// are put back all the same, and the audit trail says what happened to the traffic.
    pub(super) async fn route_back(&self, state: &mut RolloutState, routing: Routing) -> Result<(), Error> {
        if let Err(e) = self.route(state, routing).await {
            tracing::warn!(error = %e, "the rollback goes on without setting the traffic");
            state.record(format!("rollback: traffic not set: {e}"));
            self.save(state).await?;
        }
        Ok(())
    }

    /// Sets the backend of the rollout's `traffic` (if it has one) to `routing`: servers added for
    /// containers that have none, weights set, servers of the rollout's containers no longer wanted drained
    /// and removed. New and raised servers are set before any is lowered or removed, so requests always have
    /// a server.
    pub(super) async fn route(&self, state: &mut RolloutState, routing: Routing) -> Result<(), Error> {
        let Some(spec) = state.spec.traffic.as_ref().map(|t| t.haproxy.clone()) else {
            return Ok(());
        };
        let share = match routing {
            Routing::Share(w) => w,
            Routing::Promoting => 100,
            Routing::Reverting | Routing::RevertingWithout(_) => 0,
        };
        // Journaled before it is applied: a process that dies half way applies it again.
        let mut traffic = state.traffic.clone().unwrap_or_default();
        traffic.weight = share;
        state.traffic = Some(traffic.clone());
        self.save(state).await?;

        let (wanted, complete) = self.wanted(state, &spec, routing).await?;
        let haproxy = Haproxy::new(&spec.socket, &spec.backend);
        let err = refused(&spec.backend);
        let servers = haproxy.servers().await.map_err(&err)?;
        let mut names: BTreeSet<String> = servers.iter().map(|s| s.name.clone()).collect();
        let mut renamed = Vec::new();
        // `CONTAINER-`: the start of every name the rollout gives a server of one of its targets.
        let prefixes: Vec<String> = state.targets.iter().map(|t| server_name(&t.container, "")).collect();
        for w in &wanted {
            let at: Vec<_> = servers.iter().filter(|s| s.endpoint() == w.endpoint).collect();
            // A server this rollout's scheme named for another version or another target than runs there
            // now (the previews of a killed rollout whose addresses new previews got, in any order) must not
            // stay: a judge selecting the canary by server name would count the new version's requests as
            // the old one's. It is replaced by a server named for what runs; a server the configuration
            // named is kept as it is.
            let stale: Vec<_> = at
                .iter()
                .filter(|s| {
                    s.name != w.name
                        && !named_for(&s.name, &w.name)
                        && prefixes.iter().any(|p| s.name.starts_with(p.as_str()))
                })
                .collect();
            let right = at.iter().any(|s| !stale.iter().any(|x| x.name == s.name));
            if !right {
                let mut name = w.name.clone();
                let mut n = 2;
                while names.contains(&name) {
                    name = format!("{}-{n}", w.name);
                    n += 1;
                }
                haproxy.add(&name, &w.addr, spec.port, w.weight).await.map_err(&err)?;
                names.insert(name);
            }
            for s in &at {
                if stale.iter().any(|x| x.name == s.name) {
                    renamed.push(s.name.clone());
                } else if s.weight != w.weight || s.admin != 0 {
                    haproxy.set_weight(&s.name, w.weight).await.map_err(&err)?;
                }
            }
            traffic.routed.insert(w.endpoint.clone());
        }
        for name in renamed {
            haproxy.remove(&name, spec.drain_timeout).await.map_err(&err)?;
        }
        // An engine that could not be asked leaves its containers' servers as they are.
        if complete {
            let keep: BTreeSet<&str> = wanted.iter().map(|w| w.endpoint.as_str()).collect();
            for s in &servers {
                let endpoint = s.endpoint();
                if traffic.routed.contains(&endpoint) && !keep.contains(endpoint.as_str()) {
                    haproxy.remove(&s.name, spec.drain_timeout).await.map_err(&err)?;
                }
            }
        }
        traffic.weights = wanted.iter().map(|w| (w.endpoint.clone(), w.weight)).collect();
        state.traffic = Some(traffic);
        self.save(state).await?;
        self.emit(FleetEvent::Traffic {
            rollout: state.spec.name.to_string(),
            backend: spec.backend.clone(),
            weight: share,
            servers: wanted.iter().map(|w| format!("{} {}", w.endpoint, w.weight)).collect(),
        });
        Ok(())
    }

    /// What differs between the weights the rollout last set and what the load balancer reports now (a
    /// weight changed, a server drained, disabled or gone), in words; `None` when they agree.
    pub(super) async fn weights_differ(&self, state: &RolloutState) -> Result<Option<String>, Error> {
        let (Some(spec), Some(traffic)) = (state.spec.traffic.as_ref(), state.traffic.as_ref()) else {
            return Ok(None);
        };
        let haproxy = Haproxy::new(&spec.haproxy.socket, &spec.haproxy.backend);
        let servers = haproxy.servers().await.map_err(refused(&spec.haproxy.backend))?;
        let mut found = Vec::new();
        for (endpoint, want) in &traffic.weights {
            let at: Vec<_> = servers.iter().filter(|s| s.endpoint() == *endpoint).collect();
            if at.is_empty() {
                found.push(format!("no server at {endpoint} (weight {want} was set)"));
            }
            for s in at {
                if s.weight != *want || s.admin != 0 {
                    let admin = if s.admin != 0 {
                        format!(", admin state {}", s.admin)
                    } else {
                        String::new()
                    };
                    found.push(format!(
                        "server {} at {endpoint} has weight {}{admin}, not {want}",
                        s.name, s.weight
                    ));
                }
            }
        }
        Ok((!found.is_empty())
            .then(|| format!("read back from backend {}: {}", spec.haproxy.backend, found.join("; "))))
    }

    /// The servers `routing` wants, and whether every target's engine answered.
    async fn wanted(
        &self,
        state: &RolloutState,
        spec: &HaproxySpec,
        routing: Routing,
    ) -> Result<(Vec<Wanted>, bool), Error> {
        let mut wanted = Vec::new();
        let mut complete = true;
        let version = state
            .pinned
            .tag()
            .map(|t| t.as_str().to_owned())
            .or_else(|| {
                state
                    .pinned
                    .digest()
                    .map(|d| d.to_string().chars().skip(7).take(12).collect())
            })
            .unwrap_or_else(|| "new".into());
        for (i, t) in state.targets.iter().enumerate() {
            let Ok((rt, name)) = self.target(t).await else {
                complete = false;
                continue;
            };
            let staged = t.status == TargetStatus::Staged;
            let (live, new) = match (routing, staged) {
                (Routing::Share(w), true) => (Some(100 - u16::from(w)), Some(u16::from(w))),
                (Routing::Promoting, true) => (None, Some(100)),
                (Routing::RevertingWithout(j), _) if j == i => (None, None),
                _ => (Some(100), None),
            };
            let mut add = |container: &str, info: agent_core::ContainerInfo, weight: u16, version: String| {
                if !info.state.is_running() {
                    return Ok(());
                }
                let addr = address(&info, spec, container)?;
                wanted.push(Wanted {
                    endpoint: format!("{addr}:{}", spec.port),
                    addr,
                    name: server_name(container, &version),
                    weight,
                });
                Ok::<(), Error>(())
            };
            if let Some(weight) = live {
                match rt.inspect_container(name.as_str()).await {
                    Ok(info) => {
                        let v = running_version(&info, &state.pinned, &version);
                        add(name.as_str(), info, weight, v)?
                    }
                    Err(agent_core::RuntimeError::ContainerNotFound { .. }) => {}
                    Err(_) => complete = false,
                }
            }
            if let Some(weight) = new {
                match rt.inspect_container(&preview_name(name.as_str())).await {
                    Ok(info) => add(name.as_str(), info, weight, version.clone())?,
                    Err(agent_core::RuntimeError::ContainerNotFound { .. }) => {}
                    Err(_) => complete = false,
                }
            }
        }
        Ok((wanted, complete))
    }
}

/// The version a live container runs, for its server's name: the rollout's `version` when it runs the
/// pinned digest (the engine records a `repo:tag@digest` reference by its digest alone, so a promoted
/// preview's reference reads back without a tag), else
/// its image's tag, else its `org.opencontainers.image.version` label, else `old`.
fn running_version(info: &agent_core::ContainerInfo, pinned: &agent_core::ImageRef, version: &str) -> String {
    if pinned.digest().is_some() && info.spec.image.digest() == pinned.digest() {
        return version.to_owned();
    }
    info.spec
        .image
        .tag()
        .map(|t| t.as_str().to_owned())
        .or_else(|| info.all_labels.get("org.opencontainers.image.version").cloned())
        .unwrap_or_else(|| "old".into())
}

/// Whether the server `name` is `wanted` made unique with a `-N` suffix (two servers of one name at once).
fn named_for(name: &str, wanted: &str) -> bool {
    name.strip_prefix(wanted)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The container's address on the traffic's network.
fn address(info: &agent_core::ContainerInfo, spec: &HaproxySpec, container: &str) -> Result<String, Error> {
    let invalid = |message: String| Error::InvalidInput {
        what: format!("traffic to {container}"),
        message,
    };
    let networks = || info.addresses.keys().cloned().collect::<Vec<_>>().join(", ");
    match &spec.network {
        Some(n) => info.addresses.get(n).cloned().ok_or_else(|| {
            invalid(format!(
                "it has no address on network {n} (it is on: {}); set `traffic.haproxy.network` to the network HAProxy reaches",
                networks()
            ))
        }),
        None if info.addresses.len() == 1 => Ok(info.addresses.values().next().cloned().unwrap_or_default()),
        None => Err(invalid(format!(
            "it is on {} networks ({}); set `traffic.haproxy.network` to the one HAProxy reaches",
            info.addresses.len(),
            networks()
        ))),
    }
}
