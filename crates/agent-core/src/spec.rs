//! [`ContainerSpec`]: everything a faithful recreate of one agent container needs, runtime-neutral.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::serde_text_opt;
use crate::engine_config::EngineConfig;
use crate::image::ImageRef;
pub use crate::secret::{EnvValue, EnvVar, Secret, SecretPolicy, REDACTED};

/// A validated container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerName(String);

/// Why a container name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid container name {input:?}: {reason}; names are letters, digits, '_', '.' and '-', starting with a letter or digit (like `node-agent-1`)")]
pub struct ContainerNameError {
    /// The rejected input.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

impl ContainerName {
    /// The name text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContainerName {
    type Err = ContainerNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s2 = s.strip_prefix('/').unwrap_or(s);
        let err = |reason: String| ContainerNameError {
            input: s.to_owned(),
            reason,
        };
        if s2.is_empty() {
            return Err(err("it is empty".into()));
        }
        if s2.len() > 128 {
            return Err(err(format!(
                "it is {} characters long, at most 128 are allowed",
                s2.len()
            )));
        }
        for (i, c) in s2.char_indices() {
            let ok = c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(err(format!("character {c:?} at position {i} is not allowed")));
            }
        }
        Ok(ContainerName(s2.to_owned()))
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ContainerName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ContainerName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MountKind {
    /// A host path.
    Bind {
        /// The host path.
        source: String,
    },
    /// A volume. Anonymous volumes are re-attached by their generated name, never replaced.
    Volume {
        /// The volume's name.
        name: String,
        /// Whether the engine generated the name (`-v /data` or an image `VOLUME`).
        #[serde(default)]
        anonymous: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_bytes: Option<i64>,
        /// File mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
}

/// A filesystem mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Path inside the container.
    pub target: String,
    /// The source.
    #[serde(flatten)]
    pub kind: MountKind,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl Mount {
    /// Whether this mount carries configuration or data worth backing up (binds and volumes).
    pub fn carries_data(&self) -> bool {
        !matches!(self.kind, MountKind::Tmpfs { .. })
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortBinding {
    /// Port inside the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host address to bind, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Host port; `None` lets the engine choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// The container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAttachment {
    /// Network name.
    pub name: String,
    /// DNS aliases the user gave (not the engine's automatic short-id alias).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Static IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Static IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// MAC address set by the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Legacy links on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
}

/// The engine's restart policy for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Always restart.
    Always,
    /// Restart unless stopped by the user.
    UnlessStopped,
    /// Restart on a non-zero exit, at most this many times (0 = no limit).
    OnFailure(u32),
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
            RestartPolicy::OnFailure(0) => f.write_str("on-failure"),
            RestartPolicy::OnFailure(n) => write!(f, "on-failure:{n}"),
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure(0)),
            _ => s
                .strip_prefix("on-failure:")
                .and_then(|n| n.parse().ok())
                .map(RestartPolicy::OnFailure)
                .ok_or_else(|| {
                    format!("invalid restart policy {s:?}: use no, always, unless-stopped, on-failure or on-failure:N")
                }),
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A Docker HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Healthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(default, with = "serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time one check may take.
    #[serde(default, with = "serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Grace period after start.
    #[serde(default, with = "serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    /// Consecutive failures before `unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// Resource limits. `None` means unset (the engine's default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// Memory + swap limit in bytes (-1 unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<i64>,
    /// Soft memory limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    /// Relative CPU weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    /// CFS quota in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    /// CPUs in units of 1e-9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    /// CPUs allowed (`0-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
    /// Process count limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
}

/// A ulimit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Name (`nofile`).
    pub name: String,
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// Logging driver and its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Driver name (`json-file`).
    pub driver: String,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The defaults an image gives its containers; used to tell what the user set from what the image set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ImageDefaults {
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Default command.
    pub cmd: Option<Vec<String>>,
    /// Default entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Default working directory.
    pub working_dir: Option<String>,
    /// Default user.
    pub user: Option<String>,
    /// Image HEALTHCHECK.
    pub healthcheck: Option<Healthcheck>,
    /// `8080/tcp` entries.
    pub exposed_ports: Vec<String>,
    /// Paths declared with `VOLUME`.
    pub volumes: Vec<String>,
    /// Default stop signal.
    pub stop_signal: Option<String>,
}

/// A runtime-neutral description of one agent container: what the user configured, without what only came
/// from its image, so that a recreate with another image keeps the first and takes the new image's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Container name.
    pub name: ContainerName,
    /// Image reference.
    pub image: ImageRef,
    /// Command (arguments), when the user set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Entrypoint, when the user set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment set by the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Labels set by the user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// User, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Hostname, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Domain name, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
    /// Ports the user exposed beyond the image's (`8080/tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// `host`, `none`, `container:NAME`, or a network name; `None` for the default bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Network attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// HEALTHCHECK set by the user (the image's own applies when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Resources,
    /// Added capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Dropped capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Ulimits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// Log configuration, when not the engine default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_config: Option<LogConfig>,
    /// Security options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Extra `/etc/hosts` entries (`host:ip`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// DNS options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// Run an init process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Read-only root filesystem.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Privileged mode.
    #[serde(default)]
    pub privileged: bool,
    /// Allocate a TTY.
    #[serde(default)]
    pub tty: bool,
    /// Stop signal set by the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Stop timeout set by the user.
    #[serde(default, with = "serde_text_opt", skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Duration>,
    /// Kernel parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Size of /dev/shm in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    /// The whole configuration as the engine reported it, when this spec came from an inspect. When set, it
    /// is what a recreate sends to the engine, with the image, the name, the restart policy and the typed
    /// fields that depend on the image (command, entrypoint, env, labels, user, working dir, stop signal,
    /// healthcheck, exposed ports, hostname) put in from this spec; the other typed fields are a view of it.
    /// `None` for templates and revisions recorded before it existed: they are created from the typed fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineConfig>,
}

impl ContainerSpec {
    /// A minimal spec: a name and an image, everything else at the engine's defaults.
    pub fn new(name: ContainerName, image: ImageRef) -> ContainerSpec {
        ContainerSpec {
            name,
            image,
            command: None,
            entrypoint: None,
            env: Vec::new(),
            labels: BTreeMap::new(),
            user: None,
            working_dir: None,
            hostname: None,
            domainname: None,
            mounts: Vec::new(),
            ports: Vec::new(),
            exposed_ports: Vec::new(),
            network_mode: None,
            networks: Vec::new(),
            restart_policy: RestartPolicy::No,
            healthcheck: None,
            resources: Resources::default(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            ulimits: Vec::new(),
            log_config: None,
            security_opt: Vec::new(),
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            dns_options: Vec::new(),
            init: None,
            read_only_rootfs: false,
            privileged: false,
            tty: false,
            stop_signal: None,
            stop_timeout: None,
            sysctls: BTreeMap::new(),
            shm_size: None,
            engine: None,
        }
    }

    /// Removes what equals the image's defaults, so that only what the user set remains.
    ///
    /// Anonymous volumes created for the image's `VOLUME`s are kept (by name): their data must survive.
    pub fn strip_image_defaults(&mut self, image: &ImageDefaults) {
        let image_env: BTreeSet<&str> = image.env.iter().map(String::as_str).collect();
        self.env.retain(|v| {
            !matches!(&v.value, EnvValue::Plain(p) if image_env.contains(format!("{}={}", v.name, p).as_str()))
                && !v
                    .expose()
                    .is_some_and(|val| image_env.contains(format!("{}={}", v.name, val).as_str()))
        });
        self.labels.retain(|k, v| image.labels.get(k) != Some(v));
        if self.command.is_some() && self.command == image.cmd {
            self.command = None;
        }
        if self.entrypoint.is_some() && self.entrypoint == image.entrypoint {
            self.entrypoint = None;
        }
        let clear_if_default = |field: &mut Option<String>, default: &Option<String>| {
            if field.as_deref().is_some_and(|v| v.is_empty()) || (field.is_some() && field == default) {
                *field = None;
            }
        };
        clear_if_default(&mut self.working_dir, &image.working_dir);
        clear_if_default(&mut self.user, &image.user);
        clear_if_default(&mut self.stop_signal, &image.stop_signal);
        if self.healthcheck.is_some() && self.healthcheck == image.healthcheck {
            self.healthcheck = None;
        }
        self.exposed_ports.retain(|p| !image.exposed_ports.contains(p));
        // A published port implies exposure; keep only exposures nothing else explains.
        let published: BTreeSet<String> = self
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, p.protocol))
            .collect();
        self.exposed_ports.retain(|p| !published.contains(p));
        if let Some(engine) = &mut self.engine {
            engine.strip_image_volumes(&image.volumes);
        }
    }

    /// What only one container at a time can hold: fixed host ports, static IP and MAC addresses. A
    /// start-first or blue-green replacement runs two instances at once and is refused when this is not
    /// empty (each entry says what and where, e.g. `host port 8080/tcp`).
    pub fn exclusive_resources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ports
            .iter()
            .filter_map(|p| {
                p.host_port
                    .filter(|&h| h != 0)
                    .map(|h| format!("host port {h}/{}", p.protocol))
            })
            .collect();
        for n in &self.networks {
            let fixed = [
                ("IPv4 address", &n.ipv4_address),
                ("IPv6 address", &n.ipv6_address),
                ("MAC address", &n.mac_address),
            ];
            for (what, value) in fixed {
                if let Some(v) = value {
                    out.push(format!("static {what} {v} on network {}", n.name));
                }
            }
        }
        out
    }

    /// This spec with `image` instead of the current one: what the user set is kept, and everything that
    /// only came from the old image (`old_defaults`) is dropped so the new image's own defaults apply.
    pub fn with_image(&self, image: ImageRef, old_defaults: &ImageDefaults) -> ContainerSpec {
        let mut next = self.clone();
        next.strip_image_defaults(old_defaults);
        next.image = image;
        next
    }

    /// Marks the variables that `policy` calls secret.
    pub fn mark_secrets(&mut self, policy: &SecretPolicy) {
        for var in &mut self.env {
            if let EnvValue::Plain(v) = &var.value {
                if policy.is_secret(&var.name) {
                    var.value = EnvValue::Secret(Secret::new(v.clone()));
                }
            }
        }
    }

    /// Fills redacted secret values from `source` (variables of the same name); returns the names it could
    /// not fill.
    pub fn restore_secrets(&mut self, source: &ContainerSpec) -> Vec<String> {
        let mut missing = Vec::new();
        for var in &mut self.env {
            if let EnvValue::Secret(s) = &var.value {
                if s.expose().is_none() {
                    match source.env.iter().find(|v| v.name == var.name).and_then(EnvVar::expose) {
                        Some(value) => var.value = EnvValue::Secret(Secret::new(value)),
                        None => missing.push(var.name.clone()),
                    }
                }
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        let mut s = ContainerSpec::new("node-agent".parse().unwrap(), "acme/agent:1.0".parse().unwrap());
        s.env = vec![
            EnvVar::plain("PATH", "/usr/bin"),
            EnvVar::plain("LOG_LEVEL", "debug"),
            EnvVar::plain("API_TOKEN", "hunter2"),
        ];
        s.labels = BTreeMap::from([
            ("team".into(), "ops".into()),
            ("org.opencontainers.image.version".into(), "1.0".into()),
        ]);
        s.command = Some(vec!["run".into()]);
        s.working_dir = Some("/app".into());
        s.mounts = vec![Mount {
            target: "/data".into(),
            kind: MountKind::Volume {
                name: "3f2a".into(),
                anonymous: true,
            },
            read_only: false,
        }];
        s.restart_policy = RestartPolicy::UnlessStopped;
        s.mark_secrets(&SecretPolicy::default());
        s
    }

    fn old_image() -> ImageDefaults {
        ImageDefaults {
            env: vec!["PATH=/usr/bin".into()],
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "1.0".into())]),
            cmd: Some(vec!["run".into()]),
            working_dir: Some("/app".into()),
            volumes: vec!["/data".into()],
            ..ImageDefaults::default()
        }
    }

    #[test]
    fn with_image_keeps_user_settings_and_drops_old_image_defaults() {
        let next = spec().with_image("acme/agent:2.0".parse().unwrap(), &old_image());
        assert_eq!(next.image.to_string(), "docker.io/acme/agent:2.0");
        let names: Vec<&str> = next.env.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["LOG_LEVEL", "API_TOKEN"]);
        assert_eq!(next.labels.len(), 1, "the old image's version label must not be frozen");
        assert_eq!(next.command, None);
        assert_eq!(next.working_dir, None);
        assert_eq!(next.mounts.len(), 1, "anonymous volume is re-attached by name");
        assert_eq!(next.restart_policy, RestartPolicy::UnlessStopped);
    }

    #[test]
    fn diff_lists_fields_and_redacts_secrets() {
        let a = spec();
        let mut b = spec();
        assert!(a.diff(&b).is_empty());
        b.restart_policy = RestartPolicy::Always;
        b.env[2] = EnvVar::secret("API_TOKEN", "other");
        b.mounts[0].read_only = true;
        let d = a.diff(&b);
        let fields: Vec<&str> = d.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["env.API_TOKEN", "mounts./data.readOnly", "restartPolicy"]);
        let text = d.to_string();
        assert!(!text.contains("hunter2") && !text.contains("other"), "{text}");
        b.image = "acme/agent:9".parse().unwrap();
        assert_eq!(a.diff(&b).ignoring_image().fields().len(), 3);
    }

    #[test]
    fn secrets_never_serialize_and_can_be_restored() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!format!("{s:?}").contains("hunter2"));
        let mut back: ContainerSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.env[2].expose(), None);
        assert!(back.restore_secrets(&s).is_empty());
        assert_eq!(back.env[2].expose(), Some("hunter2"));
        let mut lonely: ContainerSpec = serde_json::from_str(&json).unwrap();
        let empty = ContainerSpec::new("x".parse().unwrap(), "a:1".parse().unwrap());
        assert_eq!(lonely.restore_secrets(&empty), ["API_TOKEN"]);
    }

    #[test]
    fn names_and_restart_policies_validate() {
        assert!("node-agent_1.x".parse::<ContainerName>().is_ok());
        assert_eq!("/lead".parse::<ContainerName>().unwrap().as_str(), "lead");
        let err = "a;rm -rf".parse::<ContainerName>().unwrap_err().to_string();
        assert!(err.contains("';'"), "{err}");
        assert!("-x".parse::<ContainerName>().is_err());
        for p in ["no", "always", "unless-stopped", "on-failure", "on-failure:3"] {
            assert_eq!(p.parse::<RestartPolicy>().unwrap().to_string(), p);
        }
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }
}
