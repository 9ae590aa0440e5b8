//! OpAMP over plain HTTP (`POST /v1/opamp`): the messages the control center reads and answers, written with
//! prost's derive from the published `opamp.proto` (field numbers and types as there; only the fields the
//! control center uses are declared, and prost skips the others, as protobuf decoders must), and the
//! mapping of what an agent reports onto agentctl's heartbeat.
//!
//! The messages are declared by hand rather than generated in a build step: that step would need `protoc`
//! (not installed on the machines this builds on) or a vendored copy of it, for eleven small messages.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::control_center::{authorized, ComponentStatus, Heartbeat, SelfHealth, MAX_OPAMP_INSTANCES};
use crate::ControlCenter;

/// `AgentToServer`: what an agent sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentToServer {
    /// A 16-byte id of this agent instance.
    #[prost(bytes = "vec", tag = "1")]
    pub instance_uid: Vec<u8>,
    /// Increases with every message.
    #[prost(uint64, tag = "2")]
    pub sequence_num: u64,
    /// Who it is; sent on the first message and when it changes.
    #[prost(message, optional, tag = "3")]
    pub agent_description: Option<AgentDescription>,
    /// `AgentCapabilities` bits.
    #[prost(uint64, tag = "4")]
    pub capabilities: u64,
    /// Its own health, when it reports it.
    #[prost(message, optional, tag = "5")]
    pub health: Option<ComponentHealth>,
    /// Set when it disconnects.
    #[prost(message, optional, tag = "9")]
    pub agent_disconnect: Option<AgentDisconnect>,
    /// `AgentToServerFlags` bits.
    #[prost(uint64, tag = "10")]
    pub flags: u64,
}

/// `AgentDescription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentDescription {
    /// Attributes that identify the agent (`service.name`, `service.version`, `service.instance.id`).
    #[prost(message, repeated, tag = "1")]
    pub identifying_attributes: Vec<KeyValue>,
    /// Other attributes (`host.name`, `container.id`, `os.type`).
    #[prost(message, repeated, tag = "2")]
    pub non_identifying_attributes: Vec<KeyValue>,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue` (the array, key-value list and bytes forms are not read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

/// The scalar forms of `AnyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// `string_value`.
    #[prost(string, tag = "1")]
    String(String),
    /// `bool_value`.
    #[prost(bool, tag = "2")]
    Bool(bool),
    /// `int_value`.
    #[prost(int64, tag = "3")]
    Int(i64),
    /// `double_value`.
    #[prost(double, tag = "4")]
    Double(f64),
}

/// `ComponentHealth`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ComponentHealth {
    /// Whether it is healthy.
    #[prost(bool, tag = "1")]
    pub healthy: bool,
    /// When it started (Unix nanoseconds).
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// Its last error.
    #[prost(string, tag = "3")]
    pub last_error: String,
    /// Its status in words.
    #[prost(string, tag = "4")]
    pub status: String,
    /// When the status was set (Unix nanoseconds).
    #[prost(fixed64, tag = "5")]
    pub status_time_unix_nano: u64,
    /// Its components' health.
    #[prost(map = "string, message", tag = "6")]
    pub component_health_map: std::collections::HashMap<String, ComponentHealth>,
}

/// `AgentDisconnect` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentDisconnect {}

/// `ServerToAgent`: the answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerToAgent {
    /// The agent's `instance_uid`.
    #[prost(bytes = "vec", tag = "1")]
    pub instance_uid: Vec<u8>,
    /// Set when the request was refused.
    #[prost(message, optional, tag = "2")]
    pub error_response: Option<ServerErrorResponse>,
    /// Offered connection settings (the heartbeat interval).
    #[prost(message, optional, tag = "4")]
    pub connection_settings: Option<ConnectionSettingsOffers>,
    /// `ServerToAgentFlags` bits.
    #[prost(uint64, tag = "6")]
    pub flags: u64,
    /// `ServerCapabilities` bits.
    #[prost(uint64, tag = "7")]
    pub capabilities: u64,
}

/// `ServerErrorResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerErrorResponse {
    /// `ServerErrorResponseType`: 0 unknown, 1 bad request, 2 unavailable.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// What is wrong.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `ConnectionSettingsOffers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionSettingsOffers {
    /// Changes when the offer changes.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
    /// The OpAMP connection's settings.
    #[prost(message, optional, tag = "2")]
    pub opamp: Option<OpAmpConnectionSettings>,
}

/// `OpAMPConnectionSettings`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpAmpConnectionSettings {
    /// Where to connect (empty: where it is connected now).
    #[prost(string, tag = "1")]
    pub destination_endpoint: String,
    /// Seconds between heartbeats.
    #[prost(uint64, tag = "4")]
    pub heartbeat_interval_seconds: u64,
}

/// `ServerCapabilities_AcceptsStatus`.
pub const SERVER_ACCEPTS_STATUS: u64 = 1;
/// `ServerCapabilities_OffersConnectionSettings`.
pub const SERVER_OFFERS_CONNECTION_SETTINGS: u64 = 0x20;
/// `ServerToAgentFlags_ReportFullState`.
pub const REPORT_FULL_STATE: u64 = 1;
/// `ServerErrorResponseType_BadRequest`.
pub const ERROR_BAD_REQUEST: i32 = 1;

fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
    }
}

/// Who an OpAMP agent is, from its description (remembered per `instance_uid`: later messages omit it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `service.instance.id`, else `service.name@host.name`, else the instance uid in hex.
    pub agent_id: String,
    /// `service.version`.
    pub version: String,
    /// `container.id`, else `host.name` (a container's host name is its short id unless set).
    pub container: String,
    /// `host.id` (the machine), when given.
    pub host: String,
}

impl Identity {
    /// The identity `description` gives the instance `uid`.
    pub fn of(uid: &[u8], description: &AgentDescription) -> Identity {
        let attrs: BTreeMap<&str, String> = description
            .identifying_attributes
            .iter()
            .chain(&description.non_identifying_attributes)
            .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_ref().and_then(text)?)))
            .collect();
        let get = |k: &str| attrs.get(k).cloned().filter(|v| !v.is_empty());
        let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
        let agent_id = get("service.instance.id")
            .or_else(|| Some(format!("{}@{}", get("service.name")?, get("host.name")?)))
            .unwrap_or_else(|| format!("opamp:{hex}"));
        Identity {
            agent_id,
            version: get("service.version").unwrap_or_default(),
            container: get("container.id").or_else(|| get("host.name")).unwrap_or_default(),
            host: get("host.id").unwrap_or_default(),
        }
    }
}

fn component(h: &ComponentHealth) -> ComponentStatus {
    ComponentStatus {
        healthy: h.healthy,
        status: h.status.clone(),
        last_error: h.last_error.clone(),
    }
}

/// What an agent's OpAMP health says, as the control center's record of it (bounded by
/// [`SelfHealth::bound`] when it is recorded, as every agent string is).
pub fn self_health(h: &ComponentHealth) -> SelfHealth {
    SelfHealth {
        healthy: h.healthy,
        status: h.status.clone(),
        last_error: h.last_error.clone(),
        components: h
            .component_health_map
            .iter()
            .map(|(k, v)| (k.clone(), component(v)))
            .collect(),
    }
}

/// The heartbeat an OpAMP message from `who` amounts to: its arrival is the heartbeat, its health (when
/// reported) the agent's own view ([`self_health`]); without it, the status is `unknown`, never a failure.
pub fn heartbeat(who: &Identity, health: Option<&ComponentHealth>) -> Heartbeat {
    heartbeat_with(who, health.map(self_health))
}

fn heartbeat_with(who: &Identity, health: Option<SelfHealth>) -> Heartbeat {
    Heartbeat {
        agent_id: who.agent_id.clone(),
        container: who.container.clone(),
        host: who.host.clone(),
        version: who.version.clone(),
        revision: String::new(),
        status: match &health {
            Some(h) if h.healthy => "ok".into(),
            Some(_) => "unhealthy".into(),
            None => "unknown".into(),
        },
        protocol: String::new(),
        health,
    }
}

impl ControlCenter {
    /// Handles one OpAMP message: records the heartbeat it amounts to and builds the answer. `Err` is a bad
    /// request, with the reason.
    pub fn opamp(&self, msg: crate::opamp::AgentToServer) -> Result<crate::opamp::ServerToAgent, String> {
        if msg.instance_uid.len() != 16 {
            return Err(format!(
                "instance_uid is {} bytes long; OpAMP's is 16",
                msg.instance_uid.len()
            ));
        }
        let mut flags = 0;
        let (known, gap) = {
            let mut ids = self.opamp.write().unwrap_or_else(|p| p.into_inner());
            // OpAMP: a sequence number that is not the previous one plus one means a message was lost (an
            // agent restarted, a request failed): what was kept of that agent may be stale, so its health is
            // forgotten until it says again, and it is asked for its full state.
            let gap = ids
                .get(&msg.instance_uid)
                .is_some_and(|i| msg.sequence_num != i.sequence.wrapping_add(1));
            if let Some(description) = &msg.agent_description {
                if !ids.contains_key(&msg.instance_uid) && ids.len() >= MAX_OPAMP_INSTANCES {
                    if let Some(k) = ids.keys().next().cloned() {
                        ids.remove(&k);
                    }
                }
                let entry = ids.entry(msg.instance_uid.clone()).or_default();
                entry.who = Identity::of(&msg.instance_uid, description);
            }
            if let Some(entry) = ids.get_mut(&msg.instance_uid) {
                entry.sequence = msg.sequence_num;
                if gap && (msg.agent_description.is_none() || msg.health.is_none()) {
                    flags |= REPORT_FULL_STATE;
                }
            }
            (ids.get(&msg.instance_uid).cloned(), gap)
        };
        match known {
            Some(i) if msg.agent_disconnect.is_none() => {
                // Its health as it says now; else, with no message lost, as it said last (kept once, in its
                // record); after a gap, unknown until it says again.
                let health = match &msg.health {
                    Some(h) => Some(self_health(h)),
                    None if gap => None,
                    None => self.last_health(&i.who.agent_id, &i.who.container),
                };
                let hb = heartbeat_with(&i.who, health);
                crate::control_center::validate(&hb).map_err(|e| format!("the agent's description: {e}"))?;
                self.record(hb);
            }
            Some(_) => {}
            // Not described yet (its first message was lost, or this control center restarted): ask for the
            // full state, which carries the description.
            None => flags |= REPORT_FULL_STATE,
        }
        let interval = if self.rollout_active() {
            self.config.rollout_heartbeat_interval
        } else {
            self.config.heartbeat_interval
        };
        let seconds = interval.as_secs().max(1);
        Ok(ServerToAgent {
            instance_uid: msg.instance_uid,
            error_response: None,
            connection_settings: Some(ConnectionSettingsOffers {
                hash: seconds.to_be_bytes().to_vec(),
                opamp: Some(OpAmpConnectionSettings {
                    destination_endpoint: String::new(),
                    heartbeat_interval_seconds: seconds,
                }),
            }),
            flags,
            capabilities: SERVER_ACCEPTS_STATUS | SERVER_OFFERS_CONNECTION_SETTINGS,
        })
    }
}

/// `POST /v1/opamp`: protobuf in and out; errors as HTTP statuses with a `ServerToAgent` carrying
/// `error_response` where the body could be read.
pub(crate) async fn post(State(cc): State<Arc<ControlCenter>>, headers: HeaderMap, body: Bytes) -> Response {
    use prost::Message;
    let protobuf = |status: StatusCode, msg: ServerToAgent| {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
            msg.encode_to_vec(),
        )
            .into_response()
    };
    let refuse = |status: StatusCode, uid: Vec<u8>, message: String| {
        cc.rejected.fetch_add(1, Ordering::Relaxed);
        protobuf(
            status,
            ServerToAgent {
                instance_uid: uid,
                error_response: Some(ServerErrorResponse {
                    r#type: ERROR_BAD_REQUEST,
                    error_message: message,
                }),
                ..Default::default()
            },
        )
    };
    if !authorized(&cc, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            Vec::new(),
            "missing or wrong bearer token".into(),
        );
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Vec::new(),
            format!("content type {content_type:?}: OpAMP over HTTP sends application/x-protobuf"),
        );
    }
    let gzip = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let raw = if gzip {
        use std::io::Read;
        // Bound what it inflates to, as the body itself is bound: a small bomb must not cost memory.
        let limit = cc.config.body_limit;
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out);
        match read {
            Err(e) => return refuse(StatusCode::BAD_REQUEST, Vec::new(), format!("gzip body: {e}")),
            Ok(n) if n > limit => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Vec::new(),
                    format!("the body inflates beyond {limit} bytes"),
                )
            }
            Ok(_) => Bytes::from(out),
        }
    } else {
        body
    };
    let msg = match AgentToServer::decode(raw) {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                Vec::new(),
                format!("not an OpAMP AgentToServer message: {e}"),
            )
        }
    };
    let uid = msg.instance_uid.clone();
    match cc.opamp(msg) {
        Ok(answer) => protobuf(StatusCode::OK, answer),
        Err(e) => refuse(StatusCode::BAD_REQUEST, uid, e),
    }
}
