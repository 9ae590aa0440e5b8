//! Swarm services behind [`ContainerRuntime`](agent_core::ContainerRuntime)'s service methods.
//!
//! The spec is read and written as the engine's own JSON through the raw client: an update replaces the
//! whole spec, so a typed model that dropped a field it does not know would drop it from the service.
//! Every change starts from the spec the manager holds at that moment and names its version index.
//!
//! A step of a rollout is the manager's own updater, held: `UpdateConfig` gets `Parallelism: N` and a
//! `Delay` longer than any rollout step, so the updater replaces N tasks and then waits; agentctl verifies
//! them, and the next change (a new `Parallelism`, the finish with the service's own settings, or a revert)
//! replaces the waiting updater. `FailureAction: pause` keeps the updater from going on over a failed task.

use agent_core::{LogLine, RuntimeError, ServiceChange, ServiceInfo, ServiceMode, TaskInfo};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::DockerRuntime;

/// How long a held updater waits before its next batch: far longer than a rollout step, shorter than
/// forever (an abandoned rollout's service goes on updating a day later, with the service's failure action).
const HOLD: u64 = 24 * 3600 * 1_000_000_000;

impl DockerRuntime {
    async fn service_document(&self, name: &str) -> Result<Value, RuntimeError> {
        let body = self
            .raw_request("service", name, "GET", &format!("/services/{name}"), None)
            .await
            .map_err(|e| self.service_error(name, e))?;
        serde_json::from_slice(&body).map_err(|e| RuntimeError::Engine {
            operation: "service",
            subject: name.to_owned(),
            status: None,
            message: format!("the manager's answer is not the JSON of a service: {e}"),
        })
    }

    /// 404 means the service, not a container; 503 is an engine that is no manager.
    fn service_error(&self, name: &str, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::ContainerNotFound { .. } => RuntimeError::Engine {
                operation: "service",
                subject: name.to_owned(),
                status: Some(404),
                message: format!(
                    "no service {name} on {}; check the name with `docker service ls` on that manager",
                    self.endpoint
                ),
            },
            other => other,
        }
    }

    pub(crate) async fn service_info(&self, name: &str) -> Result<ServiceInfo, RuntimeError> {
        service_from(&self.service_document(name).await?).ok_or_else(|| RuntimeError::Engine {
            operation: "service",
            subject: name.to_owned(),
            status: None,
            message: "the manager's answer has no ID, Version or Spec".into(),
        })
    }

    pub(crate) async fn change(&self, name: &str, change: ServiceChange<'_>) -> Result<ServiceInfo, RuntimeError> {
        let current = self.service_info(name).await?;
        let spec = changed_spec(&current.spec, change);
        let path = format!("/services/{}/update?version={}", current.id, current.version);
        self.raw_request("service-update", name, "POST", &path, Some(&spec))
            .await
            .map_err(|e| self.service_error(name, e))?;
        self.service_info(name).await
    }

    pub(crate) async fn tasks(&self, name: &str) -> Result<Vec<TaskInfo>, RuntimeError> {
        let filters = json!({ "service": { name: true } }).to_string();
        let path = format!("/tasks?filters={}", percent(&filters));
        let body = self
            .raw_request("tasks", name, "GET", &path, None)
            .await
            .map_err(|e| self.service_error(name, e))?;
        let all: Vec<Value> = serde_json::from_slice(&body).map_err(|e| RuntimeError::Engine {
            operation: "tasks",
            subject: name.to_owned(),
            status: None,
            message: format!("the manager's answer is not a list of tasks: {e}"),
        })?;
        let mut tasks: Vec<TaskInfo> = all.iter().filter_map(task_from).collect();
        tasks.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(tasks)
    }

    pub(crate) async fn logs_of_task(
        &self,
        task: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<LogLine>, RuntimeError> {
        let mut b = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true);
        if let Some(s) = since {
            b = b.since(s.unix_timestamp().clamp(0, i32::MAX as i64) as i32);
        }
        crate::collect_lines(self.docker.task_logs(task, Some(b.build())))
            .await
            .map_err(|e| self.err("task-logs", task, e))
    }
}

/// The spec to send for `change`, from the manager's `current` spec.
pub(crate) fn changed_spec(current: &Value, change: ServiceChange<'_>) -> Value {
    match change {
        ServiceChange::Restore { spec } => spec.clone(),
        ServiceChange::Step { image, tasks, reached } => {
            let mut spec = with_image(current, image);
            let order = current["UpdateConfig"]["Order"].clone();
            let mut update = json!({
                "Parallelism": tasks.max(1),
                // A nanosecond more per task reached: each step's spec differs from the last, so the manager
                // starts a new update for it (the same spec again would leave the held updater waiting).
                "Delay": HOLD + reached,
                "FailureAction": "pause",
                "Monitor": 1_000_000_000u64,
                "MaxFailureRatio": 0,
            });
            if !order.is_null() {
                update["Order"] = order;
            }
            spec["UpdateConfig"] = update;
            spec
        }
        ServiceChange::Finish { image, original } => {
            let mut spec = with_image(current, image);
            match original.get("UpdateConfig") {
                Some(u) => spec["UpdateConfig"] = u.clone(),
                None => {
                    if let Some(m) = spec.as_object_mut() {
                        m.remove("UpdateConfig");
                    }
                }
            }
            spec
        }
    }
}

fn with_image(spec: &Value, image: &str) -> Value {
    let mut spec = spec.clone();
    spec["TaskTemplate"]["ContainerSpec"]["Image"] = Value::String(image.to_owned());
    spec
}

fn service_from(doc: &Value) -> Option<ServiceInfo> {
    let spec = doc.get("Spec")?.clone();
    let mode = if spec["Mode"].get("Global").is_some() {
        ServiceMode::Global
    } else {
        ServiceMode::Replicated(spec["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(1))
    };
    Some(ServiceInfo {
        id: doc.get("ID")?.as_str()?.to_owned(),
        name: spec["Name"].as_str().unwrap_or_default().to_owned(),
        version: doc["Version"]["Index"].as_u64()?,
        image: spec["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        mode,
        update_state: doc["UpdateStatus"]["State"].as_str().map(str::to_owned),
        spec,
    })
}

fn task_from(t: &Value) -> Option<TaskInfo> {
    let status = &t["Status"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Some(TaskInfo {
        id: t.get("ID")?.as_str()?.to_owned(),
        slot: t["Slot"].as_u64(),
        node: text(&t["NodeID"]),
        image: text(&t["Spec"]["ContainerSpec"]["Image"]),
        state: text(&status["State"]),
        desired_state: text(&t["DesiredState"]),
        message: text(&status["Message"]),
        error: status["Err"].as_str().filter(|e| !e.is_empty()).map(str::to_owned),
        container: status["ContainerStatus"]["ContainerID"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
        created_at: text(&t["CreatedAt"]),
    })
}

/// What percent-encoding leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value (everything but the unreserved characters).
fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED_KEPT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspected() -> Value {
        json!({
            "ID": "abc", "Version": {"Index": 42},
            "Spec": {
                "Name": "agent", "Labels": {"team": "obs"},
                "TaskTemplate": {"ContainerSpec": {"Image": "agent:1.0.0", "Env": ["A=1"], "Init": true},
                                 "Placement": {"Constraints": ["node.role==worker"]}, "ForceUpdate": 0},
                "Mode": {"Global": {}},
                "UpdateConfig": {"Parallelism": 2, "Delay": 0, "Order": "start-first", "FailureAction": "rollback"},
                "EndpointSpec": {"Mode": "vip"}
            },
            "UpdateStatus": {"State": "completed"}
        })
    }

    #[test]
    fn a_step_changes_the_image_and_holds_the_updater_and_nothing_else() {
        let current = service_from(&inspected()).unwrap();
        assert_eq!(current.mode, ServiceMode::Global);
        assert_eq!(current.version, 42);
        let step = changed_spec(
            &current.spec,
            ServiceChange::Step {
                image: "agent:2.0.0@sha256:00",
                tasks: 3,
                reached: 3,
            },
        );
        assert_eq!(step["TaskTemplate"]["ContainerSpec"]["Image"], "agent:2.0.0@sha256:00");
        assert_eq!(step["UpdateConfig"]["Parallelism"], 3);
        // Two steps of as many tasks are two specs: the manager starts an update for each.
        let next = changed_spec(
            &step,
            ServiceChange::Step {
                image: "agent:2.0.0@sha256:00",
                tasks: 3,
                reached: 6,
            },
        );
        assert_ne!(next["UpdateConfig"], step["UpdateConfig"]);
        assert_eq!(step["UpdateConfig"]["FailureAction"], "pause");
        assert_eq!(step["UpdateConfig"]["Order"], "start-first");
        let (mut a, mut b) = (step.clone(), current.spec.clone());
        for v in [&mut a, &mut b] {
            v["TaskTemplate"]["ContainerSpec"]["Image"] = Value::Null;
            v["UpdateConfig"] = Value::Null;
        }
        assert_eq!(a, b, "only the image and the update settings differ");
        let finish = changed_spec(
            &step,
            ServiceChange::Finish {
                image: "agent:2.0.0@sha256:00",
                original: &current.spec,
            },
        );
        assert_eq!(finish["UpdateConfig"], current.spec["UpdateConfig"]);
        assert_eq!(
            finish["TaskTemplate"]["ContainerSpec"]["Image"],
            "agent:2.0.0@sha256:00"
        );
        assert_eq!(
            changed_spec(&finish, ServiceChange::Restore { spec: &current.spec }),
            current.spec
        );
    }

    #[test]
    fn tasks_read_their_state_error_and_container() {
        let t = task_from(&json!({
            "ID": "t1", "Slot": 2, "NodeID": "n1", "DesiredState": "shutdown", "CreatedAt": "2026-12-01T10:00:00Z",
            "Spec": {"ContainerSpec": {"Image": "agent:2"}},
            "Status": {"State": "failed", "Message": "started", "Err": "task: non-zero exit (1)",
                       "ContainerStatus": {"ContainerID": "c0ffee", "ExitCode": 1}}
        }))
        .unwrap();
        assert!(t.failed());
        assert_eq!(t.slot, Some(2));
        assert_eq!(t.container.as_deref(), Some("c0ffee"));
        assert_eq!(percent("{\"a\":1}"), "%7B%22a%22%3A1%7D");
    }
}
