//! The carried configuration: what an inspect becomes, and what a recreate sends.
//!
//! A recreate must give the new container exactly the old one's configuration. A typed model cannot: API
//! 1.41's `HostConfig` alone has about a hundred fields and newer engines add more. So the engine's own
//! document (`Config`, `HostConfig`, and each network endpoint's settings) is carried as the engine returned
//! it, in the representation the user chose (`Binds` stay `Binds` with every option, `Tmpfs` keeps its
//! options, `Mounts` keep their `BindOptions`, `VolumeOptions`, `TmpfsOptions`), unknown fields included.
//!
//! # What changes, and where
//!
//! This table is the only place where the carried document differs from `docker inspect`; the faithfulness
//! check after a recreate compares the two containers' documents and fails on any other difference.
//!
//! | field | treatment | why |
//! |---|---|---|
//! | `Config.Image` | held by the typed spec; the new image is sent | what an update changes |
//! | `Config.Env`, `Labels`, `Cmd`, `Entrypoint`, `User`, `WorkingDir`, `StopSignal`, `Healthcheck`, `ExposedPorts` | held by the typed spec, with values equal to the image's own removed | the new image's defaults apply where the user set nothing; secrets are classified there |
//! | `Config.Hostname` | held by the typed spec; dropped when it is the short container id | the engine generates it |
//! | `Config.Volumes` | paths the image declares removed | the new image's own apply |
//! | anonymous volumes (64-hex names) | re-attached by name: the `Source` of the source-less `HostConfig.Mounts` entry at their target is filled in, else `NAME:TARGET[:ro]` is added to `HostConfig.Binds`; a volume reached through `HostConfig.VolumesFrom` is not the container's own and is left to `VolumesFrom` | a new container would get new, empty volumes |
//! | `HostConfig.Links` | `/other:/self/alias` as reported becomes `other:alias` as accepted | the engine reports them in another form than it takes |
//! | `HostConfig.RestartPolicy` | from the typed spec | the retained container's is switched off |
//! | endpoint `NetworkID`, `EndpointID`, `Gateway`, `IPAddress`, `IPPrefixLen`, `IPv6Gateway`, `GlobalIPv6Address`, `GlobalIPv6PrefixLen`, `MacAddress`, `DNSNames` | dropped | runtime facts of the endpoint, not settings (a MAC the user chose is `Config.MacAddress` on API < 1.44) |
//! | endpoint `Aliases` | the container's short and full id removed | the engine adds them |
//!
//! Everything else is sent back as it was read.

use agent_core::{ContainerSpec, EngineConfig, ImageDefaults, RuntimeError};
use serde_json::{json, Map, Value};

/// `Config` keys held by the typed spec instead of the carried document.
const TYPED_CONFIG_KEYS: [&str; 11] = [
    "Image",
    "Env",
    "Cmd",
    "Entrypoint",
    "Labels",
    "User",
    "WorkingDir",
    "StopSignal",
    "Healthcheck",
    "ExposedPorts",
    "Hostname",
];

/// Endpoint fields that are runtime facts, not settings.
const ENDPOINT_RUNTIME_KEYS: [&str; 10] = [
    "NetworkID",
    "EndpointID",
    "Gateway",
    "IPAddress",
    "IPPrefixLen",
    "IPv6Gateway",
    "GlobalIPv6Address",
    "GlobalIPv6PrefixLen",
    "MacAddress",
    "DNSNames",
];

fn object(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Whether `name` is a volume name the engine generated (64 hex digits).
pub(crate) fn is_generated_volume(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The carried document of a container from its raw inspect answer, normalized by the table above against the
/// defaults of the image it runs; `borrowed` names the volumes it mounts through `VolumesFrom` (the other
/// containers' own).
pub(crate) fn normalize(raw: &Value, image: &ImageDefaults, borrowed: &[String]) -> EngineConfig {
    let id = raw["Id"].as_str().unwrap_or_default();
    let short_id = &id[..id.len().min(12)];
    let mut config = object(raw.get("Config"));
    for key in TYPED_CONFIG_KEYS {
        config.remove(key);
    }
    let mut host = object(raw.get("HostConfig"));
    if let Some(Value::Array(links)) = host.get_mut("Links") {
        for link in links.iter_mut() {
            if let Some(text) = link.as_str() {
                *link = Value::String(accepted_link(text));
            }
        }
    }
    reattach_anonymous_volumes(&mut host, raw.get("Mounts"), borrowed);
    let mut endpoints = object(raw.get("NetworkSettings").and_then(|n| n.get("Networks")));
    for endpoint in endpoints.values_mut() {
        let Some(ep) = endpoint.as_object_mut() else { continue };
        for key in ENDPOINT_RUNTIME_KEYS {
            ep.remove(key);
        }
        if let Some(Value::Array(aliases)) = ep.get_mut("Aliases") {
            aliases.retain(|a| a.as_str().is_some_and(|a| a != short_id && a != id));
            if aliases.is_empty() {
                ep.insert("Aliases".into(), Value::Null);
            }
        }
    }
    let mut doc = EngineConfig::new(config, host, endpoints);
    doc.strip_image_volumes(&image.volumes);
    doc
}

/// A link as `docker inspect` shows it (`/other:/self/alias`) in the form create takes (`other:alias`).
fn accepted_link(reported: &str) -> String {
    let Some((target, alias_path)) = reported.split_once(':') else {
        return reported.to_owned();
    };
    let target = target.trim_start_matches('/');
    let alias = alias_path.rsplit('/').next().unwrap_or(alias_path);
    format!("{target}:{alias}")
}

/// Every anonymous volume mounted (`mounts`, the inspect's runtime list) but not named in `Binds` or
/// `HostConfig.Mounts` is named there, so the new container gets the same volume and its data; volumes in
/// `borrowed` come through `VolumesFrom` and stay with it.
fn reattach_anonymous_volumes(host: &mut Map<String, Value>, mounts: Option<&Value>, borrowed: &[String]) {
    let mut binds: Vec<Value> = host.get("Binds").and_then(Value::as_array).cloned().unwrap_or_default();
    let added_before = binds.len();
    for m in mounts.and_then(Value::as_array).into_iter().flatten() {
        let (Some(name), Some(target)) = (m["Name"].as_str(), m["Destination"].as_str()) else {
            continue;
        };
        if m["Type"] != "volume" || !is_generated_volume(name) || borrowed.iter().any(|b| b == name) {
            continue;
        }
        let named_in_binds = binds
            .iter()
            .any(|b| b.as_str().and_then(|b| b.split(':').next()) == Some(name));
        if named_in_binds {
            continue;
        }
        if let Some(Value::Array(host_mounts)) = host.get_mut("Mounts") {
            let entry = host_mounts
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .find(|hm| hm.get("Target").and_then(Value::as_str) == Some(target));
            if let Some(hm) = entry {
                if hm.get("Source").and_then(Value::as_str).is_none_or(str::is_empty) {
                    hm.insert("Source".into(), Value::String(name.to_owned()));
                }
                continue;
            }
        }
        let ro = if m["RW"] == Value::Bool(false) { ":ro" } else { "" };
        binds.push(Value::String(format!("{name}:{target}{ro}")));
    }
    if binds.len() != added_before {
        host.insert("Binds".into(), Value::Array(binds));
    }
}

fn invalid(container: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        container: container.to_owned(),
        message: message.into(),
    }
}

/// The env of `spec` as the engine takes it; a secret whose value was redacted is an error naming it.
pub(crate) fn engine_env(spec: &ContainerSpec) -> Result<Vec<String>, RuntimeError> {
    spec.env
        .iter()
        .map(|v| {
            v.to_engine().ok_or_else(|| {
                invalid(
                    spec.name.as_str(),
                    format!("env {} is a secret whose value was redacted in the stored revision and is not known here; set it again or restore it from the running container", v.name),
                )
            })
        })
        .collect()
}

/// A create request: the body of `POST /containers/create`, and the networks to connect after it (API 1.41
/// attaches one network at create) with their endpoint settings.
#[derive(Debug)]
pub(crate) struct CreateRequest {
    pub body: Value,
    pub connect_after: Vec<(String, Value)>,
}

/// The network a container is attached to at create: the one its network mode names, else the first.
fn primary_endpoint(network_mode: &str, endpoints: &Map<String, Value>) -> Option<String> {
    if endpoints.contains_key(network_mode) {
        return Some(network_mode.to_owned());
    }
    if matches!(network_mode, "" | "default") && endpoints.contains_key("bridge") {
        return Some("bridge".to_owned());
    }
    endpoints.keys().next().cloned()
}

/// Whether the network mode shares another namespace and takes no further networks.
pub(crate) fn shares_namespace(network_mode: &str) -> bool {
    network_mode == "host" || network_mode == "none" || network_mode.starts_with("container:")
}

/// The create request for `spec` from its carried document `doc`: the document as read, with the typed spec's
/// image, env, image-dependent fields and restart policy put in (the table above).
pub(crate) fn create_request(spec: &ContainerSpec, doc: &EngineConfig) -> Result<CreateRequest, RuntimeError> {
    let mut body = doc.config();
    body.insert("Image".into(), Value::String(spec.image.pull_ref()));
    body.insert("Env".into(), json!(engine_env(spec)?));
    body.insert("Labels".into(), json!(spec.labels));
    let optional = [
        ("Cmd", spec.command.as_ref().map(|c| json!(c))),
        ("Entrypoint", spec.entrypoint.as_ref().map(|e| json!(e))),
        ("User", spec.user.as_ref().map(|u| json!(u))),
        ("WorkingDir", spec.working_dir.as_ref().map(|w| json!(w))),
        ("StopSignal", spec.stop_signal.as_ref().map(|s| json!(s))),
        ("Hostname", spec.hostname.as_ref().map(|h| json!(h))),
        (
            "Healthcheck",
            spec.healthcheck
                .as_ref()
                .map(|h| serde_json::to_value(crate::convert::health_config(h)).unwrap_or_default()),
        ),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            body.insert(key.into(), v);
        }
    }
    let mut host = doc.host_config();
    // A published port is exposed, as the docker CLI does it; the image's own exposures the engine adds.
    let mut exposed: Map<String, Value> = spec.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    if let Some(Value::Object(bindings)) = host.get("PortBindings") {
        exposed.extend(bindings.keys().map(|k| (k.clone(), json!({}))));
    }
    if !exposed.is_empty() {
        body.insert("ExposedPorts".into(), Value::Object(exposed));
    }
    host.insert(
        "RestartPolicy".into(),
        serde_json::to_value(crate::convert::restart_policy(spec.restart_policy)).unwrap_or_default(),
    );
    let network_mode = host
        .get("NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut endpoints = doc.endpoints();
    let primary = primary_endpoint(&network_mode, &endpoints);
    if let Some(name) = &primary {
        let settings = endpoints.remove(name).unwrap_or(Value::Null);
        body.insert(
            "NetworkingConfig".into(),
            json!({ "EndpointsConfig": { name.clone(): settings } }),
        );
    }
    body.insert("HostConfig".into(), Value::Object(host));
    let connect_after = if shares_namespace(&network_mode) {
        Vec::new()
    } else {
        endpoints.into_iter().collect()
    };
    Ok(CreateRequest {
        body: Value::Object(body),
        connect_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docker inspect` of a container on this engine (Docker 20.10, API 1.41) started with `--network pnet
    /// --ip 10.77.0.9 --network-alias foo --device /dev/null:/dev/xnull --group-add 123 --oom-score-adj 100
    /// --tmpfs /run/agent:size=1m,mode=1777 -v /etc/hostname:/h:ro,z -v /anon --mount
    /// type=volume,target=/mv,volume-nocopy --link p0:zz` from an image with `VOLUME /img-vol`.
    const INSPECT: &str = include_str!("../tests/fixtures/inspect-rich.json");

    fn raw() -> Value {
        let v: Value = serde_json::from_str(INSPECT).unwrap();
        v[0].clone()
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            volumes: vec!["/img-vol".into()],
            ..Default::default()
        }
    }

    #[test]
    fn what_the_typed_model_missed_is_carried() {
        let doc = normalize(&raw(), &image(), &[]);
        let host = doc.host_config();
        assert_eq!(host["GroupAdd"], json!(["123"]));
        assert_eq!(host["OomScoreAdj"], json!(100));
        assert_eq!(host["Tmpfs"], json!({"/run/agent": "size=1m,mode=1777"}));
        assert_eq!(host["Devices"][0]["PathInContainer"], "/dev/xnull");
        assert_eq!(host["Binds"][0], "/etc/hostname:/h:ro,z", "binds keep their options");
        assert_eq!(host["Mounts"][0]["VolumeOptions"]["NoCopy"], true);
    }

    #[test]
    fn engine_generated_values_are_normalized() {
        let doc = normalize(&raw(), &image(), &[]);
        let config = doc.config();
        for key in TYPED_CONFIG_KEYS {
            assert!(!config.contains_key(key), "{key} is held by the typed spec");
        }
        assert_eq!(
            config["Volumes"],
            json!({"/anon": {}}),
            "the image's VOLUME is not frozen in"
        );
        let host = doc.host_config();
        // The anonymous volumes: the --mount one gets its Source, the others are bound by name.
        assert_eq!(
            host["Mounts"][0]["Source"],
            "afe1a5f61163d98122f9b57184d4785d060c158cb60d3c93bed7a2ce59121651"
        );
        let binds: Vec<&str> = host["Binds"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            binds,
            [
                "/etc/hostname:/h:ro,z",
                "cb724e38446e1463ce9e5a0f602b2db9642c2c7b9e0a5ef42c5d6634319511b9:/anon",
                "eba2302a78a1a96874fe9c147d41f339d71e70072b77bc5116bbcac58ab00975:/img-vol",
            ]
        );
        let ep = &doc.endpoints()["pnet"];
        assert_eq!(ep["Aliases"], json!(["foo"]), "the short-id alias is the engine's");
        assert_eq!(ep["IPAMConfig"]["IPv4Address"], "10.77.0.9");
        assert_eq!(ep["Links"], json!(["p0:zz"]));
        for key in ENDPOINT_RUNTIME_KEYS {
            assert!(ep.get(key).is_none(), "{key} is a runtime fact");
        }
    }

    #[test]
    fn normalizing_is_idempotent_after_a_recreate() {
        // The recreated container reports the re-attached volumes by name; normalizing that gives the same.
        let first = normalize(&raw(), &image(), &[]);
        let mut again = raw();
        again["HostConfig"] = Value::Object(first.host_config());
        assert_eq!(normalize(&again, &image(), &[]), first);
    }

    #[test]
    fn a_volume_reached_through_volumes_from_is_not_made_the_containers_own() {
        let anon = "cb724e38446e1463ce9e5a0f602b2db9642c2c7b9e0a5ef42c5d6634319511b9";
        let mut sidecar = raw();
        sidecar["HostConfig"]["VolumesFrom"] = json!(["data"]);
        let doc = normalize(&sidecar, &image(), &[anon.to_owned()]);
        let binds = doc.host_config()["Binds"].to_string();
        assert!(!binds.contains(anon), "{binds}");
        assert_eq!(doc.host_config()["VolumesFrom"], json!(["data"]));
        // Its own anonymous volumes are still re-attached.
        assert!(
            binds.contains("eba2302a78a1a96874fe9c147d41f339d71e70072b77bc5116bbcac58ab00975:/img-vol"),
            "{binds}"
        );
    }

    #[test]
    fn links_are_sent_in_the_form_create_takes() {
        assert_eq!(accepted_link("/db:/agent/database"), "db:database");
        assert_eq!(accepted_link("db:database"), "db:database");
    }

    #[test]
    fn the_create_request_is_the_document_with_the_update_put_in() {
        let doc = normalize(&raw(), &image(), &[]);
        let mut spec = ContainerSpec::new("p1".parse().unwrap(), "acme/agent:2.0".parse().unwrap());
        spec.env = vec![agent_core::EnvVar::plain("A", "1")];
        spec.restart_policy = agent_core::RestartPolicy::UnlessStopped;
        spec.engine = Some(doc.clone());
        let req = create_request(&spec, &doc).unwrap();
        let body = req.body.as_object().unwrap();
        assert_eq!(body["Image"], "docker.io/acme/agent:2.0");
        assert_eq!(body["Env"], json!(["A=1"]));
        assert_eq!(body["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(body["HostConfig"]["GroupAdd"], json!(["123"]));
        assert!(body.get("Cmd").is_none(), "no command: the new image's applies");
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"]["pnet"]["IPAMConfig"]["IPv4Address"],
            "10.77.0.9"
        );
        assert!(req.connect_after.is_empty());
        let mut secret = spec.clone();
        let mut token = agent_core::EnvVar::secret("TOKEN", "x");
        token.value = agent_core::EnvValue::Secret(agent_core::Secret::redacted());
        secret.env = vec![token];
        let err = create_request(&secret, &doc).unwrap_err().to_string();
        assert!(err.contains("TOKEN") && err.contains("redacted"), "{err}");
    }
}
