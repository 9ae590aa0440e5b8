//! [`SpecDiff`]: what differs between two [`ContainerSpec`]s, field by field, with secret values redacted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::secret::REDACTED;
use crate::spec::ContainerSpec;

impl ContainerSpec {
    /// The fields that differ between `self` (before) and `other` (after). Secret values are compared but
    /// shown as [`REDACTED`].
    pub fn diff(&self, other: &ContainerSpec) -> SpecDiff {
        let a = self.flatten();
        let b = other.flatten();
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let fields = keys
            .into_iter()
            .filter_map(|k| {
                let (x, y) = (a.get(k), b.get(k));
                if x.map(|c| &c.raw) == y.map(|c| &c.raw) {
                    return None;
                }
                Some(FieldDiff {
                    field: k.clone(),
                    before: x.map(|c| c.shown.clone()),
                    after: y.map(|c| c.shown.clone()),
                })
            })
            .collect();
        SpecDiff(fields)
    }

    fn flatten(&self) -> BTreeMap<String, Cell> {
        let mut out = BTreeMap::new();
        for var in &self.env {
            out.insert(
                format!("env.{}", var.name),
                Cell {
                    shown: var.shown().to_owned(),
                    raw: var.expose().unwrap_or(REDACTED).to_owned(),
                },
            );
        }
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.remove("env");
            let keyed = |obj: &mut serde_json::Map<String, serde_json::Value>,
                         field: &str,
                         key: &dyn Fn(&serde_json::Value) -> String| {
                if let Some(serde_json::Value::Array(items)) = obj.remove(field) {
                    let map: serde_json::Map<String, serde_json::Value> =
                        items.into_iter().map(|item| (key(&item), item)).collect();
                    obj.insert(field.to_owned(), serde_json::Value::Object(map));
                }
            };
            let s = |v: &serde_json::Value, k: &str| {
                v.get(k)
                    .map(|x| x.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            keyed(obj, "mounts", &|v| s(v, "target"));
            keyed(obj, "ports", &|v| {
                format!("{}/{}", s(v, "containerPort"), s(v, "protocol"))
            });
            keyed(obj, "networks", &|v| s(v, "name"));
            keyed(obj, "ulimits", &|v| s(v, "name"));
        }
        flatten_json("", &value, &mut out);
        out
    }
}

struct Cell {
    shown: String,
    raw: String,
}

fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, Cell>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&path, v, out);
            }
        }
        serde_json::Value::Null => {}
        leaf => {
            let text = match leaf {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(
                prefix.to_owned(),
                Cell {
                    shown: text.clone(),
                    raw: text,
                },
            );
        }
    }
}

/// One field that differs between two specs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// Dotted path (`env.LOG_LEVEL`, `mounts./data.name`, `restartPolicy`).
    pub field: String,
    /// Value before, `None` when absent.
    pub before: Option<String>,
    /// Value after, `None` when absent.
    pub after: Option<String>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
        write!(f, "{}: {} -> {}", self.field, show(&self.before), show(&self.after))
    }
}

/// The fields that differ between two specs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecDiff(Vec<FieldDiff>);

impl SpecDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The differing fields.
    pub fn fields(&self) -> &[FieldDiff] {
        &self.0
    }

    /// The same diff without the `image` field (for proving a recreate changed only the image).
    pub fn ignoring_image(mut self) -> SpecDiff {
        self.0.retain(|d| d.field != "image");
        self
    }
}

impl fmt::Display for SpecDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no differences");
        }
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
