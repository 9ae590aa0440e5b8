//! Conversions between bollard's models and the domain types.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agent_core::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStatus, EnvVar, HealthLogEntry, HealthState, HealthStatus,
    Healthcheck, ImageDefaults, ImageInfo, ImageRef, LogConfig, Mount, MountKind, NetworkAttachment, PortBinding,
    Resources, RestartPolicy, RuntimeError, SecretPolicy, Ulimit,
};
use bollard::models as m;
use time::OffsetDateTime;

const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    // The engine reports "0001-01-01T00:00:00Z" for never.
    (t.year() > 1).then_some(t)
}

fn nonzero(v: Option<i64>) -> Option<i64> {
    v.filter(|x| *x != 0)
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn dur(ns: Option<i64>) -> Option<Duration> {
    ns.filter(|n| *n > 0).map(|n| Duration::from_nanos(n as u64))
}

fn ns(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
}

pub(crate) fn healthcheck(h: Option<m::HealthConfig>) -> Option<Healthcheck> {
    let h = h?;
    let test = h.test.unwrap_or_default();
    if test.is_empty() {
        return None;
    }
    Some(Healthcheck {
        test,
        interval: dur(h.interval),
        timeout: dur(h.timeout),
        start_period: dur(h.start_period),
        retries: h.retries.filter(|r| *r > 0).map(|r| r as u32),
    })
}

pub(crate) fn health_config(h: &Healthcheck) -> m::HealthConfig {
    m::HealthConfig {
        test: Some(h.test.clone()),
        interval: ns(h.interval),
        timeout: ns(h.timeout),
        start_period: ns(h.start_period),
        retries: h.retries.map(i64::from),
        start_interval: None,
    }
}

pub(crate) fn image_info(raw: m::ImageInspect) -> ImageInfo {
    let config = raw.config.unwrap_or_default();
    ImageInfo {
        id: raw.id.unwrap_or_default(),
        repo_digests: raw.repo_digests.unwrap_or_default(),
        os: raw.os.unwrap_or_default(),
        arch: raw.architecture.unwrap_or_default(),
        created: raw.created.as_deref().and_then(parse_time),
        defaults: ImageDefaults {
            env: config.env.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            working_dir: nonempty(config.working_dir),
            user: nonempty(config.user),
            healthcheck: healthcheck(config.healthcheck),
            exposed_ports: config.exposed_ports.unwrap_or_default(),
            volumes: config.volumes.unwrap_or_default(),
            stop_signal: nonempty(config.stop_signal),
        },
    }
}

pub(crate) fn restart_policy(p: RestartPolicy) -> m::RestartPolicy {
    use m::RestartPolicyNameEnum as N;
    let (name, max) = match p {
        RestartPolicy::No => (N::NO, None),
        RestartPolicy::Always => (N::ALWAYS, None),
        RestartPolicy::UnlessStopped => (N::UNLESS_STOPPED, None),
        RestartPolicy::OnFailure(n) => (N::ON_FAILURE, Some(i64::from(n))),
    };
    m::RestartPolicy {
        name: Some(name),
        maximum_retry_count: max,
    }
}

fn restart_from(p: Option<m::RestartPolicy>) -> RestartPolicy {
    use m::RestartPolicyNameEnum as N;
    let Some(p) = p else { return RestartPolicy::No };
    match p.name {
        Some(N::ALWAYS) => RestartPolicy::Always,
        Some(N::UNLESS_STOPPED) => RestartPolicy::UnlessStopped,
        Some(N::ON_FAILURE) => RestartPolicy::OnFailure(p.maximum_retry_count.unwrap_or(0).max(0) as u32),
        _ => RestartPolicy::No,
    }
}

pub(crate) fn summary_status(s: m::ContainerSummaryStateEnum) -> ContainerStatus {
    use m::ContainerSummaryStateEnum as S;
    match s {
        S::RUNNING => ContainerStatus::Running,
        S::PAUSED => ContainerStatus::Paused,
        S::RESTARTING => ContainerStatus::Restarting,
        S::EXITED | S::STOPPING => ContainerStatus::Exited,
        S::REMOVING => ContainerStatus::Removing,
        S::DEAD => ContainerStatus::Dead,
        _ => ContainerStatus::Created,
    }
}

fn state_from(raw: Option<m::ContainerState>, restart_count: i64) -> ContainerState {
    use m::ContainerStateStatusEnum as S;
    let s = raw.unwrap_or_default();
    let status = match s.status {
        Some(S::RUNNING) => ContainerStatus::Running,
        Some(S::PAUSED) => ContainerStatus::Paused,
        Some(S::RESTARTING) => ContainerStatus::Restarting,
        Some(S::EXITED) | Some(S::STOPPING) => ContainerStatus::Exited,
        Some(S::REMOVING) => ContainerStatus::Removing,
        Some(S::DEAD) => ContainerStatus::Dead,
        _ => ContainerStatus::Created,
    };
    let health = s.health.and_then(|h| {
        use m::HealthStatusEnum as H;
        let status = match h.status? {
            H::STARTING => HealthStatus::Starting,
            H::HEALTHY => HealthStatus::Healthy,
            H::UNHEALTHY => HealthStatus::Unhealthy,
            _ => return None,
        };
        Some(HealthState {
            status,
            failing_streak: h.failing_streak.unwrap_or(0).max(0) as u64,
            log: h
                .log
                .unwrap_or_default()
                .into_iter()
                .map(|r| HealthLogEntry {
                    exit_code: r.exit_code.unwrap_or(-1),
                    output: r.output.unwrap_or_default().trim().to_owned(),
                })
                .collect(),
        })
    });
    ContainerState {
        status,
        exit_code: s.exit_code.filter(|_| status != ContainerStatus::Running),
        started_at: s.started_at.as_deref().and_then(parse_time),
        restart_count: restart_count.max(0) as u64,
        oom_killed: s.oom_killed.unwrap_or(false),
        error: nonempty(s.error),
        health,
    }
}

fn invalid(container: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        container: container.to_owned(),
        message: message.into(),
    }
}

pub(crate) fn container_info(
    raw: m::ContainerInspectResponse,
    image: &ImageDefaults,
    secrets: &SecretPolicy,
) -> Result<ContainerInfo, RuntimeError> {
    let id = raw.id.clone().unwrap_or_default();
    let short_id: String = id.chars().take(12).collect();
    let name_text = raw.name.clone().unwrap_or_default();
    let name = name_text
        .parse()
        .map_err(|e: agent_core::ContainerNameError| invalid(&name_text, e.to_string()))?;
    let config = raw.config.unwrap_or_default();
    let host = raw.host_config.unwrap_or_default();
    let image_text = config.image.clone().unwrap_or_default();
    let image_ref: ImageRef = image_text.parse().map_err(|e| {
        invalid(
            &name_text,
            format!("it runs image {image_text:?}, which is not a reference agentctl can update from ({e}); recreate it from a tagged image"),
        )
    })?;
    let all_labels: BTreeMap<String, String> = config.labels.clone().unwrap_or_default().into_iter().collect();

    let mut spec = ContainerSpec::new(name, image_ref);
    spec.command = config.cmd;
    spec.entrypoint = config.entrypoint;
    spec.env = config
        .env
        .unwrap_or_default()
        .iter()
        .map(|e| secrets.classify(e))
        .collect::<Vec<EnvVar>>();
    spec.labels = all_labels.clone();
    spec.user = nonempty(config.user);
    spec.working_dir = nonempty(config.working_dir);
    spec.hostname = nonempty(config.hostname).filter(|h| *h != short_id);
    spec.domainname = nonempty(config.domainname);
    spec.exposed_ports = config.exposed_ports.unwrap_or_default();
    // The engine reports them as a map, in no stable order.
    spec.exposed_ports.sort();
    spec.healthcheck = healthcheck(config.healthcheck);
    spec.tty = config.tty.unwrap_or(false);
    spec.stop_signal = nonempty(config.stop_signal);
    spec.stop_timeout = config
        .stop_timeout
        .filter(|t| *t >= 0)
        .map(|t| Duration::from_secs(t as u64));

    // Mounts: what the engine mounted.
    let tmpfs_opts: HashMap<String, m::MountTmpfsOptions> = host
        .mounts
        .iter()
        .flatten()
        .filter(|mnt| mnt.typ == Some(m::MountType::TMPFS))
        .filter_map(|mnt| Some((mnt.target.clone()?, mnt.tmpfs_options.clone().unwrap_or_default())))
        .collect();
    for mp in raw.mounts.unwrap_or_default() {
        let target = mp.destination.clone().unwrap_or_default();
        let typ = mp.typ.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let read_only = !mp.rw.unwrap_or(true);
        let kind = match typ.as_str() {
            "bind" => MountKind::Bind {
                source: mp.source.clone().unwrap_or_default(),
            },
            "volume" => {
                let vname = mp.name.clone().unwrap_or_default();
                // The engine names anonymous volumes with 64 hex digits; that stays true after agentctl
                // re-attaches one by name, so the flag does not change across a recreate.
                let generated = crate::carried::is_generated_volume(&vname);
                MountKind::Volume {
                    anonymous: generated,
                    name: vname,
                }
            }
            "tmpfs" => {
                let o = tmpfs_opts.get(&target).cloned().unwrap_or_default();
                MountKind::Tmpfs {
                    size_bytes: o.size_bytes,
                    mode: o.mode.map(|m| m as u32),
                }
            }
            _ => continue,
        };
        spec.mounts.push(Mount {
            target,
            kind,
            read_only,
        });
    }
    // `--tmpfs /path` lives in HostConfig.Tmpfs and not in Mounts.
    for (path, _opts) in host.tmpfs.unwrap_or_default() {
        if !spec.mounts.iter().any(|mnt| mnt.target == path) {
            spec.mounts.push(Mount {
                target: path,
                kind: MountKind::Tmpfs {
                    size_bytes: None,
                    mode: None,
                },
                read_only: false,
            });
        }
    }
    spec.mounts.sort_by(|a, b| a.target.cmp(&b.target));

    let mut ports = Vec::new();
    for (key, bindings) in host.port_bindings.unwrap_or_default() {
        let (port, proto) = key.split_once('/').unwrap_or((&key, "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            ports.push(PortBinding {
                container_port,
                protocol: proto.to_owned(),
                host_ip: nonempty(b.host_ip),
                host_port: b.host_port.and_then(|p| p.parse().ok()).filter(|p| *p != 0),
            });
        }
    }
    ports.sort_by_key(|p| (p.container_port, p.protocol.clone(), p.host_port));
    spec.ports = ports;

    spec.network_mode = nonempty(host.network_mode.clone()).filter(|n| n != "default");
    let mut addresses = BTreeMap::new();
    let mut networks: Vec<NetworkAttachment> = Vec::new();
    for (net, ep) in raw.network_settings.and_then(|n| n.networks).unwrap_or_default() {
        if let Some(ip) = nonempty(ep.ip_address.clone()) {
            addresses.insert(net.clone(), ip);
        }
        let ipam = ep.ipam_config.unwrap_or_default();
        networks.push(NetworkAttachment {
            aliases: ep
                .aliases
                .unwrap_or_default()
                .into_iter()
                .filter(|a| *a != short_id && *a != id)
                .collect(),
            ipv4_address: nonempty(ipam.ipv4_address),
            ipv6_address: nonempty(ipam.ipv6_address),
            // The engine reports a MAC for every endpoint, chosen or not; the one the user chose is read from
            // the container-level config by the caller and set on the primary network.
            mac_address: None,
            links: ep.links.unwrap_or_default(),
            name: net,
        });
    }
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    spec.networks = networks;

    spec.restart_policy = restart_from(host.restart_policy);
    spec.resources = Resources {
        memory: nonzero(host.memory),
        memory_swap: nonzero(host.memory_swap),
        memory_reservation: nonzero(host.memory_reservation),
        cpu_shares: nonzero(host.cpu_shares),
        cpu_quota: nonzero(host.cpu_quota),
        cpu_period: nonzero(host.cpu_period),
        nano_cpus: nonzero(host.nano_cpus),
        cpuset_cpus: nonempty(host.cpuset_cpus),
        pids_limit: host.pids_limit.filter(|p| *p > 0),
    };
    spec.cap_add = host.cap_add.unwrap_or_default();
    spec.cap_drop = host.cap_drop.unwrap_or_default();
    spec.ulimits = host
        .ulimits
        .unwrap_or_default()
        .into_iter()
        .map(|u| Ulimit {
            name: u.name.unwrap_or_default(),
            soft: u.soft.unwrap_or(0),
            hard: u.hard.unwrap_or(0),
        })
        .collect();
    spec.log_config = host.log_config.and_then(|l| {
        Some(LogConfig {
            driver: nonempty(l.typ)?,
            options: l.config.unwrap_or_default().into_iter().collect(),
        })
    });
    spec.security_opt = host.security_opt.unwrap_or_default();
    spec.extra_hosts = host.extra_hosts.unwrap_or_default();
    spec.dns = host.dns.unwrap_or_default();
    spec.dns_search = host.dns_search.unwrap_or_default();
    spec.dns_options = host.dns_options.unwrap_or_default();
    spec.init = host.init;
    spec.read_only_rootfs = host.readonly_rootfs.unwrap_or(false);
    spec.privileged = host.privileged.unwrap_or(false);
    spec.sysctls = host.sysctls.unwrap_or_default().into_iter().collect();
    spec.shm_size = host.shm_size.filter(|s| *s != DEFAULT_SHM_SIZE && *s != 0);

    spec.strip_image_defaults(image);

    Ok(ContainerInfo {
        id,
        spec,
        image_id: raw.image.unwrap_or_default(),
        state: state_from(raw.state, raw.restart_count.unwrap_or(0)),
        addresses,
        all_labels,
    })
}

/// The network attached at create (named by network_mode, else the first): the one a container-level MAC
/// address belongs to.
pub(crate) fn primary_network(spec: &ContainerSpec) -> Option<usize> {
    if spec.networks.is_empty() {
        return None;
    }
    Some(
        spec.network_mode
            .as_ref()
            .and_then(|mode| spec.networks.iter().position(|n| &n.name == mode))
            .unwrap_or(0),
    )
}

pub(crate) fn endpoint_settings(net: &NetworkAttachment) -> m::EndpointSettings {
    let ipam = (net.ipv4_address.is_some() || net.ipv6_address.is_some()).then(|| m::EndpointIpamConfig {
        ipv4_address: net.ipv4_address.clone(),
        ipv6_address: net.ipv6_address.clone(),
        link_local_ips: None,
    });
    m::EndpointSettings {
        ipam_config: ipam,
        aliases: (!net.aliases.is_empty()).then(|| net.aliases.clone()),
        links: (!net.links.is_empty()).then(|| net.links.clone()),
        mac_address: net.mac_address.clone(),
        ..Default::default()
    }
}

/// The create request for a spec without a carried document (a template, or a revision recorded before
/// documents were carried), built from the typed fields.
pub(crate) fn create_request(spec: &ContainerSpec) -> Result<crate::carried::CreateRequest, RuntimeError> {
    let (body, extra) = create_body(spec)?;
    let mut body = serde_json::to_value(&body).map_err(|e| invalid(spec.name.as_str(), e.to_string()))?;
    // bollard's create type has no container-level MacAddress, which API < 1.44 engines read there.
    if let Some(mac) = primary_network(spec).and_then(|i| spec.networks[i].mac_address.clone()) {
        body["MacAddress"] = serde_json::Value::String(mac);
    }
    let connect_after = extra
        .iter()
        .map(|net| {
            let settings = serde_json::to_value(endpoint_settings(net)).unwrap_or_default();
            (net.name.clone(), settings)
        })
        .collect();
    Ok(crate::carried::CreateRequest { body, connect_after })
}

/// The typed create body for `spec`, and the networks to connect after create (API 1.41 takes one at
/// create).
fn create_body(spec: &ContainerSpec) -> Result<(m::ContainerCreateBody, Vec<NetworkAttachment>), RuntimeError> {
    let env = crate::carried::engine_env(spec)?;
    let mut exposed: Vec<String> = spec.exposed_ports.clone();
    let mut port_map: HashMap<String, Option<Vec<m::PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        port_map
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(m::PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    let mounts: Vec<m::Mount> = spec
        .mounts
        .iter()
        .map(|mnt| {
            let mut out = m::Mount {
                target: Some(mnt.target.clone()),
                read_only: Some(mnt.read_only),
                ..Default::default()
            };
            match &mnt.kind {
                MountKind::Bind { source } => {
                    out.typ = Some(m::MountType::BIND);
                    out.source = Some(source.clone());
                }
                MountKind::Volume { name, .. } => {
                    out.typ = Some(m::MountType::VOLUME);
                    out.source = Some(name.clone());
                }
                MountKind::Tmpfs { size_bytes, mode } => {
                    out.typ = Some(m::MountType::TMPFS);
                    out.tmpfs_options = Some(m::MountTmpfsOptions {
                        size_bytes: *size_bytes,
                        mode: mode.map(i64::from),
                        options: None,
                    });
                }
            }
            out
        })
        .collect();

    // The network named by network_mode (or the first one) is attached at create; the rest after.
    let mut networks = spec.networks.clone();
    let first_idx = primary_network(spec).unwrap_or(0);
    let first = (!networks.is_empty()).then(|| networks.remove(first_idx));
    // Like the docker CLI, a container on user networks takes the first one as its network mode; one on the
    // default bridge keeps the engine's `default` mode (setting `bridge` would be a visible change).
    let network_mode = spec
        .network_mode
        .clone()
        .or_else(|| first.as_ref().map(|n| n.name.clone()).filter(|n| n != "bridge"));
    let networking_config = first.as_ref().map(|n| m::NetworkingConfig {
        endpoints_config: Some(HashMap::from([(n.name.clone(), endpoint_settings(n))])),
    });
    // Networks that share the container's namespace (host, none, container:X) cannot take more attachments.
    let extra = if network_mode.as_deref().is_some_and(crate::carried::shares_namespace) {
        Vec::new()
    } else {
        networks
    };

    let r = &spec.resources;
    let host = m::HostConfig {
        memory: r.memory,
        memory_swap: r.memory_swap,
        memory_reservation: r.memory_reservation,
        cpu_shares: r.cpu_shares,
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period,
        nano_cpus: r.nano_cpus,
        cpuset_cpus: r.cpuset_cpus.clone(),
        pids_limit: r.pids_limit,
        ulimits: (!spec.ulimits.is_empty()).then(|| {
            spec.ulimits
                .iter()
                .map(|u| m::ResourcesUlimits {
                    name: Some(u.name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        }),
        log_config: spec.log_config.as_ref().map(|l| m::HostConfigLogConfig {
            typ: Some(l.driver.clone()),
            config: Some(l.options.clone().into_iter().collect()),
        }),
        network_mode,
        port_bindings: (!port_map.is_empty()).then_some(port_map),
        restart_policy: Some(restart_policy(spec.restart_policy)),
        mounts: (!mounts.is_empty()).then_some(mounts),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        dns_options: (!spec.dns_options.is_empty()).then(|| spec.dns_options.clone()),
        dns_search: (!spec.dns_search.is_empty()).then(|| spec.dns_search.clone()),
        extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
        init: spec.init,
        privileged: Some(spec.privileged),
        readonly_rootfs: Some(spec.read_only_rootfs),
        security_opt: (!spec.security_opt.is_empty()).then(|| spec.security_opt.clone()),
        sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone().into_iter().collect()),
        shm_size: spec.shm_size,
        ..Default::default()
    };
    let body = m::ContainerCreateBody {
        hostname: spec.hostname.clone(),
        domainname: spec.domainname.clone(),
        user: spec.user.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        tty: Some(spec.tty),
        env: Some(env),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        healthcheck: spec.healthcheck.as_ref().map(health_config),
        image: Some(spec.image.pull_ref()),
        working_dir: spec.working_dir.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec.stop_timeout.map(|d| d.as_secs() as i64),
        host_config: Some(host),
        networking_config,
        ..Default::default()
    };
    Ok((body, extra))
}

/// Cumulative CPU counters of one sample: (container CPU ns, system CPU ns, online CPUs).
pub(crate) type CpuSample = (u64, u64, f64);

/// CPU and memory as `docker stats` computes them: CPU from the delta against the previous sample (the
/// engine's own `precpu` when it sent one, else `previous`), scaled by the online CPUs; memory without the
/// inactive page cache. Returns the usage and this sample's counters.
pub(crate) fn usage(
    s: &m::ContainerStatsResponse,
    previous: Option<CpuSample>,
) -> (agent_core::ResourceUsage, CpuSample) {
    let cpu = s.cpu_stats.clone().unwrap_or_default();
    let total = |c: &m::ContainerCpuStats| c.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0);
    let online = cpu
        .online_cpus
        .map(f64::from)
        .or_else(|| {
            cpu.cpu_usage
                .as_ref()
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as f64)
        })
        .unwrap_or(1.0);
    let now: CpuSample = (total(&cpu), cpu.system_cpu_usage.unwrap_or(0), online);
    let pre = s
        .precpu_stats
        .as_ref()
        .filter(|p| p.system_cpu_usage.unwrap_or(0) > 0)
        .map(|p| (total(p), p.system_cpu_usage.unwrap_or(0)))
        .or(previous.map(|(t, sys, _)| (t, sys)));
    let cpu_percent = match pre {
        Some((pt, ps)) if now.1 > ps => now.0.saturating_sub(pt) as f64 / (now.1 - ps) as f64 * online * 100.0,
        // The first sample of a container has nothing to compare with.
        _ => 0.0,
    };
    let mem = s.memory_stats.clone().unwrap_or_default();
    let stats = mem.stats.unwrap_or_default();
    // cgroup v1 reports total_inactive_file, v2 inactive_file; the docker CLI subtracts whichever exists.
    let cache = stats
        .get("total_inactive_file")
        .or_else(|| stats.get("inactive_file"))
        .copied()
        .unwrap_or(0);
    let usage = agent_core::ResourceUsage {
        cpu_percent,
        memory_bytes: mem.usage.unwrap_or(0).saturating_sub(cache),
        memory_limit: mem.limit.unwrap_or(0),
    };
    (usage, now)
}
