//! [`EngineConfig`]: a container's configuration as its engine reports it, carried whole through a recreate.
//!
//! A typed model only holds the fields someone listed; anything else would be dropped by a recreate built from
//! it. So the configuration is carried as the engine's own document, normalized once by the engine adapter
//! (engine-generated values and the keys the typed [`ContainerSpec`](crate::ContainerSpec) holds are taken
//! out; see agent-docker's `carried` module for the table), and sent back to the engine as it is, with only
//! what an update must change put in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The engine's configuration document of one container: `{"Config": {…}, "HostConfig": {…}, "Endpoints":
/// {network: {…}}}` in the engine's own field names, normalized by the adapter that read it.
///
/// It never holds the environment (secrets live in the typed spec's [`EnvVar`](crate::EnvVar)s, redacted where
/// stored) nor the keys whose value depends on the image; those are in the typed spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EngineConfig(Map<String, Value>);

/// The sections of an [`EngineConfig`].
const SECTIONS: [&str; 3] = ["Config", "HostConfig", "Endpoints"];

impl EngineConfig {
    /// A document from its three sections (`Config`, `HostConfig`, and the endpoint settings by network).
    pub fn new(config: Map<String, Value>, host_config: Map<String, Value>, endpoints: Map<String, Value>) -> Self {
        let mut doc = Map::new();
        for (key, section) in SECTIONS.into_iter().zip([config, host_config, endpoints]) {
            doc.insert(key.to_owned(), Value::Object(section));
        }
        EngineConfig(doc)
    }

    fn section(&self, key: &str) -> Map<String, Value> {
        self.0.get(key).and_then(Value::as_object).cloned().unwrap_or_default()
    }

    /// The container-level settings (the engine's `Config`, minus what the typed spec holds).
    pub fn config(&self) -> Map<String, Value> {
        self.section("Config")
    }

    /// The host-level settings (the engine's `HostConfig`).
    pub fn host_config(&self) -> Map<String, Value> {
        self.section("HostConfig")
    }

    /// The endpoint settings of each network the container is attached to, by network name.
    pub fn endpoints(&self) -> Map<String, Value> {
        self.section("Endpoints")
    }

    /// Whether the engine removes the container (and its anonymous volumes) when it stops
    /// (`HostConfig.AutoRemove`, `docker run --rm`): such a container cannot be kept for a rollback.
    pub fn removed_when_stopped(&self) -> bool {
        self.host_config().get("AutoRemove") == Some(&Value::Bool(true))
    }

    /// Removes the `HostConfig.Binds` entries mounted at `target` (`SOURCE:TARGET[:OPTIONS]`).
    pub fn remove_binds_at(&mut self, target: &str) {
        let Some(Value::Object(host)) = self.0.get_mut("HostConfig") else {
            return;
        };
        if let Some(Value::Array(binds)) = host.get_mut("Binds") {
            binds.retain(|b| b.as_str().and_then(|b| b.split(':').nth(1)) != Some(target));
        }
    }

    /// Removes the `VOLUME` paths an image declares from `Config.Volumes`: the engine adds the image's own,
    /// and the old image's must not be frozen into the new container.
    pub fn strip_image_volumes(&mut self, image_volumes: &[String]) {
        let Some(Value::Object(config)) = self.0.get_mut("Config") else {
            return;
        };
        let Some(Value::Object(volumes)) = config.get_mut("Volumes") else {
            return;
        };
        volumes.retain(|path, _| !image_volumes.contains(path));
        if volumes.is_empty() {
            config.remove("Volumes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn sections_round_trip_through_json() {
        let doc = EngineConfig::new(
            obj(json!({"Volumes": {"/data": {}, "/img": {}}, "Unknown": 1})),
            obj(json!({"GroupAdd": ["123"]})),
            obj(json!({"net": {"Aliases": ["a"]}})),
        );
        let text = serde_json::to_string(&doc).unwrap();
        let back: EngineConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.config()["Unknown"], 1, "unknown fields pass through");
        assert_eq!(back.host_config()["GroupAdd"], json!(["123"]));
        assert_eq!(back.endpoints()["net"]["Aliases"], json!(["a"]));
    }

    #[test]
    fn image_volumes_are_stripped_and_user_volumes_kept() {
        let mut doc = EngineConfig::new(
            obj(json!({"Volumes": {"/data": {}, "/img": {}}})),
            Map::new(),
            Map::new(),
        );
        doc.strip_image_volumes(&["/img".to_owned()]);
        assert_eq!(doc.config()["Volumes"], json!({"/data": {}}));
        doc.strip_image_volumes(&["/data".to_owned()]);
        assert!(!doc.config().contains_key("Volumes"));
    }

    #[test]
    fn binds_are_removed_by_target() {
        let mut doc = EngineConfig::new(
            Map::new(),
            obj(json!({"Binds": ["a:/x", "b:/y:ro", "/host:/x2"]})),
            Map::new(),
        );
        doc.remove_binds_at("/y");
        doc.remove_binds_at("/x");
        assert_eq!(doc.host_config()["Binds"], json!(["/host:/x2"]));
    }
}
